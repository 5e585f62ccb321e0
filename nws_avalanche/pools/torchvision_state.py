"""A torchvision-format state_dict read into one of our architectures, and its ``.sha256`` sidecar.

Kept apart from ``pretrained`` (the run's cached assets) so that pool pretraining, which writes such
files, and the run's assets, which may start pool pretraining, do not import each other."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from ..common.atomic import atomic_write_text
from ..common.errors import ArtifactError, ConfigError
from ..common.untrusted import read_text
from ..storage.container import file_sha256
from ..storage.torch_file import load_torch, state_dict_of


def write_sha256_sidecar(path: Path) -> Path:
    """``<file>.sha256`` beside a shared torchvision-format file (which has no room for a checksum)."""
    path = Path(path)
    return atomic_write_text(path.with_name(path.name + ".sha256"), f"{file_sha256(path)}  {path.name}\n")


def check_sha256_sidecar(path: Path) -> None:
    """If ``<file>.sha256`` exists (``pretrain-pools`` writes one), the file must match it."""
    side = Path(path).with_name(Path(path).name + ".sha256")
    fix = f"rebuild it (nws-bench pretrain-pools) or delete {side}"
    if side.is_file() and read_text(side, "checksum sidecar", fix, ArtifactError, 4096).split()[:1] != [
            file_sha256(Path(path))]:
        raise ArtifactError(f"{path}: its sha256 differs from {side} (corrupted or replaced); rebuild it with "
                            f"the command that wrote it (nws-bench pretrain-pools), or delete {side.name} if "
                            f"the file was replaced on purpose")


def load_torchvision_state(path: str, model: nn.Module) -> tuple[dict, int]:
    """Load a state_dict (torchvision naming) into ``model``'s architecture; returns (state, classes)."""
    p = Path(path)
    fix = "give a torchvision-format state_dict file (torch.save(model.state_dict(), FILE))"
    if not p.is_file():
        raise ConfigError(f"pretrained checkpoint {p} not found; {fix}")
    check_sha256_sidecar(p)
    blob = load_torch(p, "pretrained checkpoint", fix, error=ConfigError, finite=True)
    state = state_dict_of(blob, str(p), fix, error=ConfigError)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = adapt_torchvision_keys(state, model)
    state.pop("fc.bias", None)  # the paper's head has no bias
    own = model.state_dict()
    bad = [k for k in own if k != "fc.weight" and (k not in state or state[k].shape != own[k].shape)]
    if bad:
        raise ConfigError(f"{p} does not fit the architecture: first mismatching entry {bad[0]!r}")
    if "fc.weight" not in state:  # e.g. VGG-16, whose three FC layers are not ours: a 1-class head
        state["fc.weight"] = own["fc.weight"][:1].clone()
    return state, state["fc.weight"].shape[0]


def adapt_torchvision_keys(state: dict, model: nn.Module) -> dict:
    """Apply the architecture's renames (``state_renames``, prefix -> prefix) and drop the entries
    it does not use (``state_drop_prefixes``), e.g. MobileNet-V2's ``classifier.1.`` -> ``fc.``."""
    renames = getattr(model, "state_renames", {})
    drops = tuple(getattr(model, "state_drop_prefixes", ()))
    out = {}
    for k, v in state.items():
        if drops and k.startswith(drops):
            continue
        for old, new in renames.items():
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out
