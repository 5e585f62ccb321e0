"""A small checksummed binary container used by every stored file (pools, task artifacts).

Layout: MAGIC(8) | u32 header length | header JSON (utf-8) | blobs back to back | sha256(32)
of everything before it. The header lists each blob's name and byte length, so a reader can
detect truncation and corruption before it trusts any byte.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.atomic import atomic_write_bytes
from ..common.errors import ArtifactError

MAGIC = b"NWSAVL\x00\x01"


def pack_container(header: dict[str, Any], blobs: dict[str, bytes]) -> bytes:
    header = dict(header)
    header["blobs"] = [[name, len(data)] for name, data in blobs.items()]
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    body = MAGIC + struct.pack("<I", len(head)) + head + b"".join(blobs.values())
    return body + hashlib.sha256(body).digest()


def write_container(path, header: dict[str, Any], blobs: dict[str, bytes]) -> Path:
    return atomic_write_bytes(path, pack_container(header, blobs))


def unpack_container(data: bytes, source: str = "<bytes>") -> tuple[dict[str, Any], dict[str, bytes]]:
    fix = "re-create it (delete the file and rerun the command that wrote it)"
    if len(data) < len(MAGIC) + 4 + 32 or data[: len(MAGIC)] != MAGIC:
        raise ArtifactError(f"{source}: not an nws-avalanche file (bad magic or too short); {fix}")
    body, digest = data[:-32], data[-32:]
    (hlen,) = struct.unpack("<I", body[len(MAGIC): len(MAGIC) + 4])
    start = len(MAGIC) + 4
    try:
        header = json.loads(body[start: start + hlen].decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ArtifactError(f"{source}: header is unreadable (truncated or corrupted); {fix}") from None
    expected = start + hlen + sum(n for _, n in header.get("blobs", []))
    if expected != len(body):
        raise ArtifactError(
            f"{source}: file is {len(data)} bytes but its header describes {expected + 32}: "
            f"truncated or corrupted; {fix}")
    if hashlib.sha256(body).digest() != digest:
        raise ArtifactError(f"{source}: checksum mismatch, the file is corrupted; {fix}")
    blobs, pos = {}, start + hlen
    for name, n in header.pop("blobs"):
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
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found")
    return unpack_container(path.read_bytes(), str(path))


# -- tensors as raw little-endian bytes, described in the header ---------------------------

def tensor_entry(t: torch.Tensor) -> tuple[dict[str, Any], bytes]:
    t = t.detach().cpu().contiguous()
    arr = t.numpy() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy()
    return {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape)}, arr.tobytes()


def entry_tensor(meta: dict[str, Any], data: bytes) -> torch.Tensor:
    dtype = getattr(torch, meta["dtype"])
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    arr = np.frombuffer(data, dtype=np_dtype).reshape(meta["shape"]).copy()
    return torch.from_numpy(arr)


def pack_state(state: dict[str, torch.Tensor], prefix: str = "") -> tuple[dict, dict[str, bytes]]:
    """Turn a flat tensor dict into (header entries, blobs) with names prefixed by ``prefix``."""
    metas, blobs = {}, {}
    for k, v in state.items():
        meta, data = tensor_entry(v)
        metas[k] = meta
        blobs[prefix + k] = data
    return metas, blobs


def unpack_state(metas: dict[str, Any], blobs: dict[str, bytes], prefix: str = "") -> dict[str, torch.Tensor]:
    return {k: entry_tensor(m, blobs[prefix + k]) for k, m in metas.items()}
