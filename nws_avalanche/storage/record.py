"""One storage record for every method: a method declares what it stores, one writer and one
reader do the rest (container with checksum, format version, codec, clear errors).

A record is the checksummed container (``container.py``) holding an ordered set of fields:

- ``State(tensors)`` (one at most): a flat tensor dict, raw little-endian, described under the header's
  ``"state"`` (dtype, shape) and stored as blobs ``<prefix><key>`` (prefix ``"state/"``);
- ``Ints(values, alphabet)``: integers in ``[0, alphabet)``, coded losslessly with the record's
  codec (``codecs.encode_ints``; the header names the codec);
- ``F32(array)``: float32 values as raw little-endian bytes.

The header carries ``kind``, ``format`` (``RECORD_FORMAT``), ``task`` when given, ``codec``
when given, and the method's own entries. Fields are written in the order given, so a method's
files keep their bytes. The reader checks kind and format and raises ``ArtifactError`` naming
the file and the field that is missing or does not decode.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.errors import ArtifactError
from ..common.schema import MAX_CLASSES, MAX_INTS, MAX_TASKS, Int, List, Obj, Str, check  # noqa: F401 - re-exported
from .codecs import CODECS, decode_ints, encode_ints
from .container import pack_state, read_container, unpack_state, write_container

RECORD_FORMAT = 1
FIX = "re-create it (delete the file and rerun the command that wrote it)"
# header pieces the methods' schemas (``read_record(..., schema=)``) are made of
SHAPE = List(Int(0, 1 << 24), min_len=1, max_len=8)
CLASSES = Int(1, MAX_CLASSES)
TASK_HEADER = Obj({"arch": Str(), "num_classes": CLASSES})  # what every per-task model file declares
STATE_PREFIX = "state/"
LEGACY_CODEC = "bitpack"  # files written before the shared codec bit-packed their integers


@dataclass(frozen=True)
class State:
    tensors: dict[str, torch.Tensor]
    prefix: str = STATE_PREFIX


@dataclass(frozen=True)
class Ints:
    values: Any  # array-like of integers, read flat
    alphabet: int


@dataclass(frozen=True)
class F32:
    values: Any  # tensor or array, read flat


def write_record(path, kind: str, fields: dict[str, State | Ints | F32] | State, *, header: dict | None = None,
                 task: int | None = None, codec: str | None = None) -> Path:
    """Write a record of ``kind``: ``fields`` (name -> field, in file order; a bare ``State`` is
    ``{"state": State}``) under a header of ``header``'s entries. ``codec`` codes every ``Ints``."""
    if isinstance(fields, State):
        fields = {"state": fields}
    head: dict[str, Any] = {"kind": kind, "format": RECORD_FORMAT, **(header or {})}
    if task is not None:
        head["task"] = task
    if codec is not None:
        head["codec"] = codec
    blobs: dict[str, bytes] = {}
    for name, field in fields.items():
        if isinstance(field, State):
            if "state" in head:
                raise ValueError(f"{kind} record: one State field at most (second: {name!r})")
            head["state"], sblobs = pack_state(field.tensors, prefix=field.prefix)
            blobs.update(sblobs)
        elif isinstance(field, Ints):
            if codec is None:
                raise ValueError(f"{kind} record: integer field {name!r} needs a codec")
            blobs[name] = encode_ints(np.asarray(field.values).astype(np.int64), field.alphabet, codec)
        elif isinstance(field, F32):
            values = field.values.detach().cpu() if isinstance(field.values, torch.Tensor) else field.values
            blobs[name] = np.asarray(values, dtype="<f4").reshape(-1).tobytes()
        else:
            raise TypeError(f"{kind} record: field {name!r} has unknown type {type(field).__name__}")
    return write_container(path, head, blobs)


class Record:
    """A read record: its ``header``, its ``state`` and typed access to the other fields."""

    def __init__(self, path: Path, header: dict, blobs: dict[str, bytes], state_prefix: str):
        self.path, self.header, self.blobs = path, header, blobs
        self.state = unpack_state(header.get("state", {}), blobs, state_prefix, source=str(path))

    def _blob(self, name: str) -> bytes:
        if name not in self.blobs:
            raise ArtifactError(f"{self.path}: field {name!r} is missing from the file; "
                                f"re-create it (delete the file and rerun the command that wrote it)")
        return self.blobs[name]

    def ints(self, name: str, n: int, alphabet: int) -> np.ndarray:
        """``n`` int64 values of field ``name``, decoded with the record's codec; ``n`` and ``alphabet``
        (often read from the header) are bounded first: at most ``MAX_INTS`` values are allocated."""
        fix = "re-create it (delete the file and rerun the command that wrote it)"
        check(n, Int(0, MAX_INTS), str(self.path), fix, where=f"{name} count")
        check(alphabet, Int(1, 1 << 32), str(self.path), fix, where=f"{name} alphabet")
        codec = self.header.get("codec", LEGACY_CODEC)
        if not isinstance(codec, str) or codec not in CODECS.names():
            raise ArtifactError(f"{self.path}: field codec {codec!r} is not one this version reads "
                                f"({', '.join(sorted(CODECS.names()))}); {fix}")
        try:
            values = decode_ints(self._blob(name), n, alphabet, codec)
        except (ValueError, IndexError, OverflowError) as e:
            raise ArtifactError(f"{self.path}: field {name!r} does not decode: {e}") from None
        if values.size != n or (n and (int(values.min()) < 0 or int(values.max()) >= alphabet)):
            bad = int(values.max()) if n and int(values.max()) >= alphabet else int(values.min()) if n else 0
            raise ArtifactError(f"{self.path}: field {name!r} holds {values.size} values, one of them {bad}, "
                                f"expected {n} values in [0, {alphabet}); {fix}")
        return values

    def f32(self, name: str, n: int | None = None) -> np.ndarray:
        """Field ``name``'s float32 values (``n`` of them when given)."""
        data = self._blob(name)
        if len(data) % 4 or (n is not None and len(data) != 4 * n):
            raise ArtifactError(f"{self.path}: field {name!r} holds {len(data)} bytes, "
                                f"expected {'a multiple of 4' if n is None else 4 * n}")
        return np.frombuffer(data, dtype="<f4").copy()


def read_record(path, kind: str, *, state_prefix: str = STATE_PREFIX, schema=None) -> Record:
    """Read and check a record written by ``write_record`` with this ``kind``; ``schema`` (``common.schema``):
    what the method's header must hold, checked before the method uses any of it."""
    path = Path(path)
    header, blobs = read_container(path)
    if header.get("kind") != kind:
        raise ArtifactError(f"{path}: expected a {kind!r} file, found {header.get('kind')!r}")
    if header.get("format") != RECORD_FORMAT:
        raise ArtifactError(f"{path}: format {header.get('format')} unsupported (expected {RECORD_FORMAT})")
    if schema is not None:
        header = check(header, schema, str(path), FIX)
    return Record(path, header, blobs, state_prefix)

