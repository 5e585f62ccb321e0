"""``pools import``: the NWS authors' pretraining checkpoint and ``shared_kernel_pools.pt``, both
written here in their format from the published facts (their key names and buffer shapes; their
quantiser class pickled under its module path), become our pool file and network exactly; other
pickled code is refused without running; a file for another architecture is refused by layer."""
from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn as nn

from nws_avalanche.cli import main as cli
from nws_avalanche.method.grouping import group_sizes_for
from nws_avalanche.pools.authors import import_authors, quantise_theirs
from nws_avalanche.pools.from_checkpoint import model_from_checkpoint
from nws_avalanche.pools.pool_set import PoolSet

pytestmark = pytest.mark.usefixtures("one_thread")

EMA_BUFFERS = ("cluster_size", "embed_avg", "acum_embed_sum", "acum_embed_onehot_sum")


def their_layers(blocks, widths, stem_k, in_ch, classes, last_gs=1):
    """Their NWS ResNet's layers in module order: (name, weight shape, BN channels or None)."""
    out = [("conv1.0", [widths[0], in_ch, stem_k, stem_k], ("conv1.1", widths[0]))]
    inplanes = widths[0]
    for s, (n, w) in enumerate(zip(blocks, widths)):
        for b in range(n):
            stride = 2 if (b == 0 and s > 0) else 1
            pre = f"conv{s + 2}_x.NwsRes{b}"
            out.append((f"{pre}.residual_function.0", [w, inplanes, 3, 3], (f"{pre}.residual_function.1", w)))
            out.append((f"{pre}.residual_function.3", [w, w, 3, 3], (f"{pre}.residual_function.4", w)))
            if stride != 1 or inplanes != w:
                out.append((f"{pre}.shortcut.0", [w, inplanes, 1, 1], (f"{pre}.shortcut.1", w)))
            inplanes = w
    out.append(("last_layer", [classes, inplanes, 1, 1], None))
    return out


def write_theirs(tmp, *, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), stem_k=7, in_ch=3,
                 classes=10, K=8, last_gs=1, seed=0, monkeypatch=None):
    """Their checkpoint ({'model': state_dict}) and pool list, with the same random contents."""
    gen = torch.Generator().manual_seed(seed)
    state, embeds = {}, []
    for name, shape, bn in their_layers(blocks, widths, stem_k, in_ch, classes):
        state[f"{name}.weight"] = torch.randn(*shape, generator=gen) * 0.1
        d = (last_gs if name == "last_layer" else 1) * shape[2] * shape[3]
        embed = torch.randn(d, K, generator=gen) * 0.1
        embeds.append(embed)
        state[f"{name}.qtz.embed"] = embed
        for buf in EMA_BUFFERS:
            state[f"{name}.qtz.{buf}"] = torch.rand(K if "onehot" in buf or buf == "cluster_size" else (d, K),
                                                    generator=gen)
        if bn:
            bname, c = bn
            state.update({f"{bname}.weight": torch.rand(c, generator=gen) + 0.5,
                          f"{bname}.bias": torch.randn(c, generator=gen) * 0.1,
                          f"{bname}.running_mean": torch.randn(c, generator=gen) * 0.1,
                          f"{bname}.running_var": torch.rand(c, generator=gen) + 0.5,
                          f"{bname}.num_batches_tracked": torch.tensor(7)})
    ckpt = tmp / "KP_160.pt"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epochs": 160,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0]}]}}, ckpt)
    # their pool list: a list of their quantiser modules (class models.quantizer.Quantize)
    mod = types.ModuleType("models.quantizer")

    class Quantize(nn.Module):
        def __init__(self, embed):
            super().__init__()
            self.dim, self.n_embed, self.decay, self.eps = embed.shape[0], embed.shape[1], 0.99, 1e-5
            self.register_buffer("embed", embed.clone())
            self.register_buffer("cluster_size", torch.zeros(embed.shape[1]))
            self.register_buffer("embed_avg", embed.clone())
            self.register_buffer("acum_embed_sum", torch.zeros_like(embed))
            self.register_buffer("acum_embed_onehot_sum", torch.zeros(embed.shape[1]))

    Quantize.__module__, Quantize.__qualname__ = "models.quantizer", "Quantize"
    mod.Quantize = Quantize
    monkeypatch.setitem(sys.modules, "models", types.ModuleType("models"))
    monkeypatch.setitem(sys.modules, "models.quantizer", mod)
    pools = tmp / "shared_kernel_pools.pt"
    torch.save([Quantize(e) for e in embeds], pools)
    return ckpt, pools, state


RENAMES = [("conv3_x.NwsRes0.shortcut.0.weight", "layer2.0.downsample.0.weight"),
           ("conv3_x.NwsRes0.shortcut.1.running_var", "layer2.0.downsample.1.running_var"),
           ("conv5_x.NwsRes1.residual_function.3.weight", "layer4.1.conv2.weight"),
           ("conv2_x.NwsRes0.residual_function.4.bias", "layer1.0.bn2.bias"),
           ("conv1.0.weight", "conv1.weight"), ("conv1.1.running_mean", "bn1.running_mean")]


def test_checkpoint_and_pool_list_import_resnet18(tmp_path, monkeypatch):
    ckpt, plist, theirs = write_theirs(tmp_path, monkeypatch=monkeypatch)
    out, net = tmp_path / "p.nwsp", tmp_path / "net.pt"
    assert cli(["pools", "import", str(ckpt), "--arch", "resnet18", "--out", str(out),
                "--pretrained-out", str(net)]) == 0
    pools = PoolSet.load(out)
    assert len(pools.specs) == 21 and pools.K == 8  # the paper's 21 NWS layers
    for ours_name, their_name in [("conv1", "conv1.0"), ("layer2.0.downsample.0", "conv3_x.NwsRes0.shortcut.0"),
                                  ("layer3.1.conv1", "conv4_x.NwsRes1.residual_function.0"), ("fc", "last_layer")]:
        assert torch.equal(pools.tables[ours_name], theirs[f"{their_name}.qtz.embed"].t())
    state = torch.load(net, weights_only=True)
    for their_key, our_key in RENAMES:
        assert torch.equal(state[our_key], theirs[their_key]), our_key
    assert torch.equal(state["fc.weight"], theirs["last_layer.weight"].flatten(1))
    assert not any("qtz" in k for k in state)
    # the run's checks accept both: the network loads into resnet18 and the pools fit it
    model = model_from_checkpoint(str(net), "resnet18")
    pools.check_model(model, source=str(out), group_sizes=group_sizes_for(model, 1))
    # their pool list gives the same pools, matched to our layers in module order
    out2 = tmp_path / "p2.nwsp"
    assert cli(["pools", "import", str(plist), "--arch", "resnet18", "--out", str(out2)]) == 0
    p2 = PoolSet.load(out2)
    assert p2.digest == pools.digest and p2.fingerprint == pools.fingerprint


def test_quantised_network_is_nearest_pool_rows(tmp_path, monkeypatch):
    ckpt, _, _ = write_theirs(tmp_path, blocks=(1, 1, 1, 1), widths=(8, 16, 32, 64), stem_k=3, in_ch=1,
                              K=16, monkeypatch=monkeypatch)
    pools, cont, classes = import_authors(ckpt, "resnet-tiny", in_channels=1)
    _, quant, _ = import_authors(ckpt, "resnet-tiny", in_channels=1, quantised=True)
    assert classes == 10
    for s in pools.specs:  # brute force in float64: every vector took its nearest pool row
        key = f"{s['name']}.weight"
        table = pools.tables[s["name"]].double()
        vec = cont[key].reshape(-1, s["d"]).double()
        assert torch.equal(quant[key].reshape(-1, s["d"]).double(), table[torch.cdist(vec, table).argmin(1)])
    assert all(torch.equal(cont[k], quant[k]) for k in cont if k.rsplit(".", 1)[0] not in pools.tables)


def test_lightning_checkpoint_with_backbone_prefix_reads_the_same(tmp_path, monkeypatch):
    ckpt, _, _ = write_theirs(tmp_path, blocks=(1, 1, 1, 1), widths=(8, 16, 32, 64), stem_k=3, in_ch=1,
                              monkeypatch=monkeypatch)
    blob = torch.load(ckpt, weights_only=True)
    lightning = tmp_path / "checkpoint.pt"  # their main.py's trainer.save_checkpoint: 'state_dict', 'backbone.'
    torch.save({"state_dict": {"backbone." + k.removeprefix("module."): v for k, v in blob["model"].items()},
                "epoch": 3}, lightning)
    a_pools, a_state, _ = import_authors(ckpt, "resnet-tiny", in_channels=1)
    b_pools, b_state, _ = import_authors(lightning, "resnet-tiny", in_channels=1)
    assert a_pools.digest == b_pools.digest and a_state.keys() == b_state.keys()
    assert all(torch.equal(a_state[k], b_state[k]) for k in a_state)


def test_grouped_vectors_follow_their_layout():
    torch.manual_seed(0)
    w, gs = torch.randn(4, 6, 1, 1), 3
    table = torch.randn(5, gs)
    q = quantise_theirs(w, table, gs)
    c = w.shape[1] // gs
    for o in range(4):  # theirs: vector (o, i) = channels i, i + C/gs, i + 2C/gs
        for i in range(c):
            chans = [s * c + i for s in range(gs)]
            vec = w[o, chans, 0, 0].double()
            row = table.double()[torch.cdist(vec[None], table.double()).argmin()]
            assert torch.equal(q[o, chans, 0, 0].double(), row)


def test_wrong_architecture_refused_naming_the_layer(tmp_path, monkeypatch, capsys):
    ckpt, plist, _ = write_theirs(tmp_path, monkeypatch=monkeypatch)
    out = tmp_path / "p.nwsp"
    assert cli(["pools", "import", str(ckpt), "--arch", "resnet34", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "layer1.2" in err and not out.exists() and "Traceback" not in err
    assert cli(["pools", "import", str(plist), "--arch", "resnet34", "--out", str(out)]) == 2
    assert "21 pools" in capsys.readouterr().err and not out.exists()
    assert cli(["pools", "import", str(plist), "--arch", "resnet18", "--out", str(out),
                "--pretrained-out", str(tmp_path / "n.pt")]) == 2
    assert "pools only" in capsys.readouterr().err and not out.exists()


def test_bad_pool_length_refused(tmp_path, monkeypatch, capsys):
    ckpt, _, _ = write_theirs(tmp_path, blocks=(1, 1, 1, 1), widths=(8, 16, 32, 64), stem_k=3, in_ch=1,
                              monkeypatch=monkeypatch)
    blob = torch.load(ckpt, weights_only=True)
    blob["model"]["module.conv3_x.NwsRes0.residual_function.3.qtz.embed"] = torch.zeros(18, 8)
    torch.save(blob, ckpt)
    assert cli(["pools", "import", str(ckpt), "--arch", "resnet-tiny", "--in-channels", "1",
                "--out", str(tmp_path / "p.nwsp")]) == 2
    assert "'layer2.0.conv2'" in capsys.readouterr().err


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_other_pickled_code_refused_without_running(tmp_path, capsys):
    marker = tmp_path / "ran"
    bad = tmp_path / "shared_kernel_pools.pt"
    torch.save([_Payload(marker)], bad)
    assert cli(["pools", "import", str(bad), "--arch", "resnet18", "--out", str(tmp_path / "p.nwsp")]) == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "p.nwsp").exists()
