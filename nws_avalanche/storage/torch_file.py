"""The one reader of torch pickles (pretrained state_dicts, the authors' files, checkpoints).

``torch.load(weights_only=True)`` runs no code, but what it returns is still untrusted: a 12 KB
file can hold a stride-0 view ``[9, 2**31]`` of a one-element storage (77 GB once made
contiguous), complex or quantised tensors, integer keys, NaN. ``load_torch`` refuses, naming the
file and the entry: anything but torch's zip format (the legacy format sizes its storages from
the header before reading them), a load error of any kind, and, through ``check_tensors``, any
tensor whose elements need more bytes than its storage holds (so no tensor is larger than the
file), a dtype outside ``TENSOR_DTYPES``, a non-strided layout, and (``finite=True``) NaN/Inf.
"""
from __future__ import annotations

import os
import pickle
import stat
import warnings
from pathlib import Path
from typing import Any

import torch

from ..common.errors import ArtifactError, NWSError

ZIP_MAGIC = b"PK\x03\x04"
TENSOR_DTYPES = frozenset({torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                           torch.int16, torch.int8, torch.uint8, torch.bool})
MAX_DEPTH = 32


def load_torch(path, what: str, fix: str, error: type[NWSError] = ArtifactError, safe_globals=(),
               finite: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with every failure an ``error`` naming ``path``, and
    every tensor in the result checked (``check_tensors``)."""
    p = Path(path)
    try:
        st = os.stat(p)
        with open(p, "rb") as fh:
            head = fh.read(4)
    except FileNotFoundError:
        raise error(f"{p}: {what} not found; {fix}") from None
    except OSError as e:
        raise error(f"{p}: {what} cannot be read ({e.strerror}); {fix}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{p}: {what} is not a regular file; {fix}")
    if head != ZIP_MAGIC:
        raise error(f"{p}: not a torch file in the zip format torch.save writes ({what}); {fix}")
    try:  # torch warns about odd pickle protocols of damaged files: the error below says it all
        with torch.serialization.safe_globals(list(safe_globals)), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise error(f"{p}: refused ({what}): it names objects other than tensors and plain values, or it "
                    f"is damaged ({first[:200]}); {fix}") from None
    except Exception as e:  # noqa: BLE001 - any other failure of a foreign or damaged file: the same advice
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise error(f"{p}: not a readable torch file ({what}; {type(e).__name__}: {first[:160]}); {fix}") from None
    check_tensors(obj, str(p), fix, error, finite)
    return obj


def check_tensor(t: torch.Tensor, source: str, where: str, fix: str, error: type[NWSError] = ArtifactError,
                 finite: bool = False) -> None:
    if t.dtype not in TENSOR_DTYPES:
        raise error(f"{source}: entry {where} has dtype {str(t.dtype).replace('torch.', '')}, not a real "
                    f"number type this harness reads; {fix}")
    if t.layout != torch.strided or t.is_quantized:
        raise error(f"{source}: entry {where} is a {t.layout} tensor, not a plain dense one; {fix}")
    need = t.numel() * t.element_size()
    have = t.untyped_storage().nbytes()
    if need > have:
        raise error(f"{source}: entry {where} is a view of {list(t.shape)} over {have} bytes of storage (it "
                    f"would take {need} bytes once copied): not a plain saved tensor; {fix}")
    if finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise error(f"{source}: entry {where} holds NaN or Inf values; {fix}")


def check_tensors(obj: Any, source: str, fix: str, error: type[NWSError] = ArtifactError, finite: bool = False,
                  where: str = "", depth: int = 0) -> None:
    """Every tensor reachable from ``obj`` through dicts, lists, tuples and plain objects' attributes."""
    if depth > MAX_DEPTH:
        raise error(f"{source}: nested more than {MAX_DEPTH} levels deep at {where or 'the top'}; {fix}")
    if isinstance(obj, torch.Tensor):
        check_tensor(obj, source, where or "(top)", fix, error, finite)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            check_tensors(v, source, fix, error, finite, f"{where}.{k}" if where else str(k), depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_tensors(v, source, fix, error, finite, f"{where}[{i}]", depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        check_tensors(vars(obj), source, fix, error, finite, where, depth + 1)


def state_dict_of(obj: Any, source: str, fix: str, error: type[NWSError] = ArtifactError) -> dict[str, torch.Tensor]:
    """``obj`` as a flat ``{str: tensor}`` state_dict (or ``obj['state_dict']``), else ``error``."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise error(f"{source}: not a state_dict (found {type(obj).__name__} at its top); {fix}")
    for k, v in obj.items():
        if not isinstance(k, str):
            raise error(f"{source}: key {k!r} is not a string: not a state_dict; {fix}")
        if not isinstance(v, torch.Tensor):
            raise error(f"{source}: entry {k!r} is {type(v).__name__}, not a tensor: not a state_dict; {fix}")
    return obj
