"""Per-task artifact of a dense state_dict (Finetune, and the baselines' float parts) in the
checksummed container; the NWS task file (``nws_avalanche.method.task_artifact``) shares its
format version.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..common.errors import ArtifactError
from .container import pack_state, read_container, unpack_state, write_container

TASK_FORMAT = 1


def save_state_artifact(path, state: dict[str, torch.Tensor], *, kind: str, task: int,
                        header: dict | None = None, extra_blobs: dict[str, bytes] | None = None) -> Path:
    metas, blobs = pack_state(state, prefix="state/")
    blobs.update(extra_blobs or {})
    return write_container(path, {"kind": kind, "format": TASK_FORMAT, "task": task, "state": metas,
                                  **(header or {})}, blobs)


def load_state_artifact(path, kind: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, bytes]]:
    header, blobs = read_container(path)
    if header.get("kind") != kind:
        raise ArtifactError(f"{path}: expected a {kind!r} artifact, found {header.get('kind')!r}")
    if header.get("format") != TASK_FORMAT:
        raise ArtifactError(f"{path}: format {header.get('format')} unsupported (expected {TASK_FORMAT})")
    return header, unpack_state(header["state"], blobs, "state/"), blobs
