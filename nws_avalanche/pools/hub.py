"""``pretrained=imagenet``: torchvision's ImageNet weights for the run's architecture, by name.

The weights are torchvision's own (``ResNet18_Weights.IMAGENET1K_V1`` and the matching entries
for ResNet-34, MobileNet-V2, VGG-16 and VGG-16-BN), named through torchvision's weights API and
kept where torchvision keeps them: ``<torch hub dir>/checkpoints/<file>`` (``$TORCH_HOME/hub``;
``~/.cache/torch/hub`` by default). A missing file is downloaded (its name's hash prefix is
checked); offline, the cached file is read. With neither, the error names the file, its URL
and the folder to put it in. The file is read with ``weights_only=True`` (no code runs).

How torchvision's networks map onto ours (``pools.pretrained.load_torchvision_state``): the ResNets have
the same parameter names. Ours, like the paper's, has no max-pool after the stem; it has no
parameters, so every weight loads, but later layers see maps at twice torchvision's resolution.
The ImageNet classifier loads as a 1000-way head without its ``fc.bias`` (ours is bias-free;
every task replaces the head anyway). MobileNet-V2's ``classifier.1`` becomes ``fc``; VGG-16's three
FC layers are dropped (ours has one ``fc`` after global average pooling).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..common.errors import ConfigError

IMAGENET = "imagenet"

# our architecture name -> torchvision's weights enum entry (name used by get_model_weights)
TORCHVISION_NAMES = {"resnet18": "resnet18", "resnet34": "resnet34", "mobilenet_v2": "mobilenet_v2",
                     "vgg16": "vgg16", "vgg16-bn": "vgg16_bn"}


def imagenet_weights(arch: str):
    """torchvision's ``IMAGENET1K_V1`` weights entry for ``arch`` (a ConfigError if it has none)."""
    from torchvision.models import get_model_weights

    if arch not in TORCHVISION_NAMES:
        raise ConfigError(f"pretrained=imagenet: no torchvision ImageNet weights for arch {arch!r}; "
                          f"archs with them: {', '.join(TORCHVISION_NAMES)} (or give a state_dict FILE)")
    return get_model_weights(TORCHVISION_NAMES[arch]).IMAGENET1K_V1


def cache_dir() -> Path:
    """Where torchvision (``load_state_dict_from_url``) caches weights: ``<hub dir>/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def imagenet_file(arch: str, download: bool = True) -> Path:
    """The cached file of ``arch``'s ImageNet weights, downloaded first when missing and possible."""
    weights = imagenet_weights(arch)
    url = weights.url
    path = cache_dir() / Path(url).name
    if path.is_file():
        return path
    problem = "downloads are off"
    if download:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            prefix = torch.hub.HASH_REGEX.search(path.name)
            torch.hub.download_url_to_file(url, str(path), prefix.group(1) if prefix else None, progress=True)
            return path
        except Exception as e:  # no network, proxy, disk, or a corrupt download: all fixed the same way
            path.unlink(missing_ok=True)
            problem = f"the download failed ({type(e).__name__}: {e})"
    raise ConfigError(
        f"pretrained=imagenet for {arch}: torchvision's {type(weights).__name__}.{weights.name} is not in the "
        f"cache and {problem}. Put the file {path.name} (from {url}) in {path.parent} "
        f"(set TORCH_HOME to use another cache), or give --set pretrained=FILE")


def resolve_pretrained(value: str | None, arch: str) -> str | None:
    """``imagenet`` -> the cached torchvision file for ``arch``; anything else unchanged."""
    if value == IMAGENET:
        return str(imagenet_file(arch))
    return value
