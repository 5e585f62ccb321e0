"""A small checksummed binary container used by every stored file (pools, task artifacts).

Layout: MAGIC(8) | u32 header length | header JSON (utf-8) | blobs back to back | sha256(32)
of everything before it. The header lists each blob's name and byte length, so a reader can
detect truncation and corruption before it trusts any byte.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.atomic import atomic_write_bytes
from ..common.errors import ArtifactError
from ..common.schema import Int, List, Map, Obj, Str, check
from ..common.untrusted import read_file_bytes

MAGIC = b"NWSAVL\x00\x01"


def pack_container(header: dict[str, Any], blobs: dict[str, bytes]) -> bytes:
    header = dict(header)
    header["blobs"] = [[name, len(data)] for name, data in blobs.items()]
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    body = MAGIC + struct.pack("<I", len(head)) + head + b"".join(blobs.values())
    return body + hashlib.sha256(body).digest()


def write_container(path, header: dict[str, Any], blobs: dict[str, bytes]) -> Path:
    return atomic_write_bytes(path, pack_container(header, blobs))


FIX = "re-create it (delete the file and rerun the command that wrote it)"
# the blob list: [name, byte length] pairs, each length within the file (checked against it below)
_BLOBS = List(List(lambda v, where: v, min_len=2, max_len=2), max_len=1 << 20)


def unpack_container(data: bytes, source: str = "<bytes>") -> tuple[dict[str, Any], dict[str, bytes]]:
    """Header and blobs of a container, every size checked against the file's own length and the
    checksum verified before any byte is trusted; any damage is an ``ArtifactError`` naming ``source``."""
    if len(data) < len(MAGIC) + 4 + 32 or data[: len(MAGIC)] != MAGIC:
        raise ArtifactError(f"{source}: not an nws-avalanche file (bad magic or too short); {FIX}")
    body, digest = data[:-32], data[-32:]
    (hlen,) = struct.unpack("<I", body[len(MAGIC): len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if start + hlen > len(body):
        raise ArtifactError(f"{source}: header length {hlen} runs past the end of the {len(data)}-byte file "
                            f"(truncated or corrupted); {FIX}")
    if hashlib.sha256(body).digest() != digest:
        raise ArtifactError(f"{source}: checksum mismatch, the file is corrupted; {FIX}")
    try:
        header = json.loads(body[start: start + hlen].decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ArtifactError(f"{source}: header is unreadable (truncated or corrupted); {FIX}") from None
    header = check(header, Obj({"blobs": _BLOBS}), source, FIX)
    pairs = header.pop("blobs")
    for i, (name, n) in enumerate(pairs):
        if not isinstance(name, str) or isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ArtifactError(f"{source}: field blobs[{i}] must be [name, byte length]; {FIX}")
    expected = start + hlen + sum(n for _, n in pairs)
    if expected != len(body):
        raise ArtifactError(
            f"{source}: file is {len(data)} bytes but its header describes {expected + 32}: "
            f"truncated or corrupted; {FIX}")
    if len({name for name, _ in pairs}) != len(pairs):
        raise ArtifactError(f"{source}: field blobs names a blob twice; {FIX}")
    blobs, pos = {}, start + hlen
    for name, n in pairs:
        blobs[name] = body[pos: pos + n]
        pos += n
    return header, blobs


def file_sha256(path) -> str:
    """sha256 of a file's bytes (hex), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_container(path) -> tuple[dict[str, Any], dict[str, bytes]]:
    path = Path(path)
    return unpack_container(read_file_bytes(path, "file", FIX, error=ArtifactError), str(path))


# -- tensors as raw little-endian bytes, described in the header ---------------------------
# the dtypes a file may declare (never ``getattr(torch, name)``: a header could name any attribute)
DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "float32": (torch.float32, np.dtype("<f4")), "float64": (torch.float64, np.dtype("<f8")),
    "float16": (torch.float16, np.dtype("<f2")), "bfloat16": (torch.bfloat16, np.dtype("<i2")),
    "int64": (torch.int64, np.dtype("<i8")), "int32": (torch.int32, np.dtype("<i4")),
    "int16": (torch.int16, np.dtype("<i2")), "int8": (torch.int8, np.dtype("i1")),
    "uint8": (torch.uint8, np.dtype("u1")), "bool": (torch.bool, np.dtype("?")),
}
MAX_DIMS = 8
TENSOR_META = Obj({"dtype": Str(tuple(DTYPES)), "shape": List(Int(0, None), max_len=MAX_DIMS)})


def tensor_entry(t: torch.Tensor) -> tuple[dict[str, Any], bytes]:
    t = t.detach().cpu().contiguous()
    if str(t.dtype).replace("torch.", "") not in DTYPES:
        raise ValueError(f"dtype {t.dtype} cannot be stored (allowed: {', '.join(DTYPES)})")
    arr = t.numpy() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy()
    return {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape)}, arr.tobytes()


def entry_tensor(meta: dict[str, Any], data: bytes, source: str = "<bytes>", name: str = "") -> torch.Tensor:
    """The tensor ``meta`` describes, from ``data``; its size is checked against ``len(data)`` before
    anything is allocated (so a tensor is never larger than the file that holds it)."""
    meta = check(meta, TENSOR_META, source, FIX, where=name)
    tdtype, np_dtype = DTYPES[meta["dtype"]]
    count = math.prod(meta["shape"])
    if count * np_dtype.itemsize != len(data):
        raise ArtifactError(f"{source}: field {name} declares {meta['dtype']} {meta['shape']} "
                            f"({count * np_dtype.itemsize} bytes) but holds {len(data)} bytes; {FIX}")
    arr = np.frombuffer(data, dtype=np_dtype).reshape(meta["shape"]).copy()
    if tdtype == torch.bool and arr.view(np.uint8).max(initial=0) > 1:
        raise ArtifactError(f"{source}: field {name} is bool but holds bytes other than 0 and 1; {FIX}")
    t = torch.from_numpy(arr)
    return t.view(torch.bfloat16) if tdtype == torch.bfloat16 else t


def pack_state(state: dict[str, torch.Tensor], prefix: str = "") -> tuple[dict, dict[str, bytes]]:
    """Turn a flat tensor dict into (header entries, blobs) with names prefixed by ``prefix``."""
    metas, blobs = {}, {}
    for k, v in state.items():
        meta, data = tensor_entry(v)
        metas[k] = meta
        blobs[prefix + k] = data
    return metas, blobs


def unpack_state(metas: dict[str, Any], blobs: dict[str, bytes], prefix: str = "", source: str = "<bytes>",
                 field: str = "state") -> dict[str, torch.Tensor]:
    """The tensors ``metas`` (header field ``field``) describes; a missing blob or a size that does not
    match its declared shape is an ``ArtifactError`` naming ``source`` and the entry."""
    metas = check(metas, Map(lambda v, w: v), source, FIX, where=field)
    out = {}
    for k, m in metas.items():
        if prefix + k not in blobs:
            raise ArtifactError(f"{source}: {field} entry {k!r} is missing from the file; {FIX}")
        out[k] = entry_tensor(m, blobs[prefix + k], source, f"{field}.{k}")
    return out
