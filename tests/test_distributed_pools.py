"""Pool pretraining on 2 gloo processes keeps the pools identical on both ranks and equal to a
1-process run on the same global batches; an interrupted run resumes to the same pools."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from nws_avalanche.pools.pool_set import PoolSet
from nws_avalanche.pools.pretrain import PretrainConfig, pretrain


def make_folder(root, classes=3, per_class=8, size=12, seed=0):
    rng = np.random.RandomState(seed)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = (rng.rand(size, size, 3) * 90 + c * 70).astype("uint8")
            Image.fromarray(img).save(d / f"{i}.png")
    return root


def tiny_cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), arch="resnet-tiny", epochs=2, batch_size=8, pool_size=8,
                image_size=12, augment=False, workers=0, device="cpu", progress=False, lr=0.05)
    return PretrainConfig(**{**base, **kw})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, cfg, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    summary = pretrain(cfg)
    torch.save(summary["pools"], os.path.join(result_dir, f"pools-rank{rank}.pt"))
    torch.distributed.destroy_process_group()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("imgs"))


def test_two_processes_match_one_process(folder, tmp_path):
    one = pretrain(tiny_cfg(folder, tmp_path / "one"))
    cfg2 = tiny_cfg(folder, tmp_path / "two")
    # fork: the children inherit the imported modules (spawn re-imports torch: ~30 s on a busy machine)
    mp.start_processes(_worker, args=(2, _free_port(), cfg2, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    r0 = torch.load(tmp_path / "pools-rank0.pt")
    r1 = torch.load(tmp_path / "pools-rank1.pt")
    assert set(r0) == set(one["pools"])
    for name in r0:
        assert torch.equal(r0[name], r1[name]), f"ranks disagree on {name}"
        torch.testing.assert_close(r0[name], one["pools"][name], rtol=1e-4, atol=1e-5, msg=name)
    # the written pool file is rank 0's pools, and only the tables (no EMA buffers)
    saved = PoolSet.load(tmp_path / "two" / "pools.nwsp")
    for name in r0:
        assert torch.equal(saved.tables[name], r0[name])


def test_resume_gives_same_pools_as_uninterrupted(folder, tmp_path):
    full = pretrain(tiny_cfg(folder, tmp_path / "full", epochs=3, augment=True))
    part = pretrain(tiny_cfg(folder, tmp_path / "part", epochs=3, augment=True, stop_after=1))
    assert part["epochs_done"] == 1 and not part["finished"]
    assert not (tmp_path / "part" / "pools.nwsp").exists()
    rest = pretrain(tiny_cfg(folder, tmp_path / "part", epochs=3, augment=True))
    assert rest["finished"] and rest["epochs_done"] == 3
    for name, pool in full["pools"].items():
        assert torch.equal(rest["pools"][name], pool), name
    a = torch.load(tmp_path / "full" / "pretrained.pt")
    b = torch.load(tmp_path / "part" / "pretrained.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_settings(folder, tmp_path):
    from nws_avalanche.common.errors import ConfigError

    pretrain(tiny_cfg(folder, tmp_path, epochs=2, stop_after=1))
    with pytest.raises(ConfigError, match="pool_size"):
        pretrain(tiny_cfg(folder, tmp_path, epochs=2, pool_size=16))


def test_outputs_feed_runs_and_a_second_pretraining(folder, tmp_path):
    from nws_avalanche.nets.models import build_arch
    from nws_avalanche.pools.kmeans import quantisation_error
    from nws_avalanche.pools.pool_set import layer_vectors
    from nws_avalanche.pools.pretrained import load_torchvision_state

    pretrain(tiny_cfg(folder, tmp_path / "a", epochs=1))
    pools = PoolSet.load(tmp_path / "a" / "pools.nwsp")
    state, classes = load_torchvision_state(str(tmp_path / "a" / "pretrained.pt"), build_arch("resnet-tiny", 1))
    model = build_arch("resnet-tiny", classes)
    model.load_state_dict(state)
    pools.check_model(model)
    for spec in pools.specs:  # the saved kernels are the quantised ones: pool rows exactly
        w = layer_vectors(model.get_submodule(spec["name"]), spec["group_size"])
        assert quantisation_error(w, pools.tables[spec["name"]]) == 0.0, spec["name"]
    # pool file: only the tables (K x d float32 each) and a header, no EMA statistics
    table_bytes = sum(t.numel() * 4 for t in pools.tables.values())
    assert (tmp_path / "a" / "pools.nwsp").stat().st_size < 2 * table_bytes + 16384
    # from a checkpoint: its kernels, pools by k-means of them
    again = pretrain(tiny_cfg(folder, tmp_path / "b", epochs=1, init=str(tmp_path / "a" / "pretrained.pt")))
    assert again["finished"]
