"""``pretrained=imagenet``: torchvision's weights read from torch's hub cache (offline: the test
puts a randomly initialised torchvision state_dict under torchvision's file name in a temporary
``TORCH_HOME``), mapped onto our architectures; with no file and no network, exit 2 naming both."""
from __future__ import annotations

import types
import urllib.error

import pytest
import torch
import torch.nn as nn
import torchvision

from nws_avalanche.cli import main as cli
from nws_avalanche.common.errors import ConfigError
from nws_avalanche.pools import hub
from nws_avalanche.pools.from_checkpoint import model_from_checkpoint
from nws_avalanche.pools.pretrained import prepare_assets

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, *a, **k):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch"


def put_in_cache(arch: str, seed: int = 0) -> tuple[nn.Module, dict]:
    """A random torchvision network saved where torchvision would cache ``arch``'s ImageNet file."""
    torch.manual_seed(seed)
    tv = getattr(torchvision.models, hub.TORCHVISION_NAMES[arch])(weights=None).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a wrong mapping shows in the outputs
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = hub.cache_dir() / hub.imagenet_weights(arch).url.rsplit("/", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tv.state_dict(), path)
    return tv, tv.state_dict()


def test_cache_folder_follows_torch_home(torch_home):
    assert hub.cache_dir() == torch_home / "hub" / "checkpoints"
    assert hub.imagenet_weights("resnet18") is torchvision.models.ResNet18_Weights.IMAGENET1K_V1


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_imagenet_loads_from_cache_and_computes_torchvisions_function(torch_home, arch):
    tv, state = put_in_cache(arch)
    ours = model_from_checkpoint("imagenet", arch).eval()
    assert ours.fc.out_features == 1000
    own = ours.state_dict()
    renamed = {k.replace("classifier.1.", "fc."): v for k, v in state.items()}
    for k, v in own.items():
        assert torch.equal(v, renamed[k]), k
    # restated: torchvision's network without the max-pool and without the head's bias
    if arch == "resnet18":
        tv.maxpool = nn.Identity()
    head = tv.fc if arch == "resnet18" else tv.classifier[1]
    with torch.no_grad():
        head.bias.zero_()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-4, atol=1e-5)


def test_run_assets_resolve_imagenet(torch_home, tmp_path):
    from tests.conftest import tiny_config

    _, state = put_in_cache("resnet18", seed=3)
    cfg = tiny_config(arch="resnet18", pretrained="imagenet", pool_size=4, kmeans_iters=1)
    bench = types.SimpleNamespace(name="fake", in_channels=3, pretrain=None, pretrain_classes=0)
    assets = prepare_assets(cfg, bench, tmp_path / "assist", need_pools=True)
    assert assets.pretrained_classes == 1000
    assert torch.equal(assets.pretrained_state["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    assert "conv1" in assets.pools.tables and assets.pools.tables["fc"].shape == (4, 1)


def test_missing_offline_is_exit_2_naming_file_and_folder(torch_home, tmp_path, capsys):
    out = tmp_path / "pools.nwsp"
    rc = cli(["build-pools", "--from-checkpoint", "imagenet", "--arch", "resnet34", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "resnet34-b627a593.pth" in err and str(torch_home / "hub" / "checkpoints") in err
    assert "Traceback" not in err


def test_arch_without_imagenet_weights_is_refused(torch_home):
    with pytest.raises(ConfigError, match="resnet-tiny"):
        hub.resolve_pretrained("imagenet", "resnet-tiny")
    assert hub.resolve_pretrained("some/file.pt", "resnet-tiny") == "some/file.pt"
