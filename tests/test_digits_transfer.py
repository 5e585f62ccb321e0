"""digits-transfer (issue 16): an embedded stream that tells the methods apart.

The data facts (pretraining never sees a task class, train and test disjoint, transforms are what
they claim), and the behavioural gap it exists for: Finetune beats the frozen control by a clear
margin (over seeds 0-3 this reduced configuration gave gaps of 26-40 points)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import build_benchmark
from benchmarks.digits_transfer import transform
from nws_avalanche.common.errors import ConfigError
from nws_avalanche.config.run_config import build_config

REDUCED = ["arch=resnet-tiny", "benchmark_options.image_size=16", "pretrain_epochs=5", "epochs=10",
           "batch_size=32", "benchmark_options.transforms=[patches,pixels]",
           "benchmark_options.shared_permutation=false"]


def bench(*sets, seed=0):
    return build_benchmark(build_config([], ["benchmark=digits-transfer", f"seed={seed}", *sets]))


def test_tasks_pretraining_and_splits():
    from sklearn.datasets import load_digits

    y = load_digits().target
    b = bench()
    assert [t.name.split("-")[0] for t in b.tasks] == ["identity", "pixels", "pixels+invert", "pixels+rot90",
                                                       "pixels+rot180"]
    assert b.pretrain_classes == 5 and set(b.pretrain.targets) == set(range(5))
    assert len(b.pretrain) == int((y < 5).sum())
    for t in b.tasks:
        assert t.classes == ["5", "6", "7", "8", "9"]
        assert sorted(set(t.train.targets)) == list(range(5)) and np.bincount(t.train.targets).tolist() == [30] * 5
        assert len(t.train) + len(t.test) == int((y >= 5).sum()) and set(t.test.targets) == set(range(5))
    # the identity task's images are no pretraining image and no train image is a test image
    pre = {tuple(x.flatten().tolist()) for x in b.pretrain.x}
    train = {tuple(x.flatten().tolist()) for x in b.tasks[0].train.x}
    test = {tuple(x.flatten().tolist()) for x in b.tasks[0].test.x}
    assert not pre & (train | test) and not train & test


def test_transforms_move_pixels_as_claimed():
    rng = np.random.RandomState(0)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(transform("invert", x, rng), 1 - x)
    assert torch.equal(transform("rot90", x, rng)[:, :, 0, 0], x[:, :, 0, 7])
    for name, block in (("pixels", 1), ("patches", 2)):
        y = transform(name, x, np.random.RandomState(1))
        assert torch.equal(torch.sort(y.flatten(1)).values, torch.sort(x.flatten(1)).values)  # a permutation
        assert not torch.equal(y, x)
        blocks = y.reshape(3, 1, 8 // block, block, 8 // block, block)
        src = x.reshape(3, 1, 8 // block, block, 8 // block, block)
        # every block of the output is a whole block of the input
        for i in range(8 // block):
            for j in range(8 // block):
                b = blocks[0, 0, i, :, j, :]
                assert any(torch.equal(b, src[0, 0, k, :, m, :]) for k in range(8 // block) for m in range(8 // block))
    same = [bench(seed=0).tasks[4].train.x, bench(seed=0).tasks[4].train.x, bench(seed=1).tasks[4].train.x]
    assert torch.equal(same[0], same[1]) and not torch.equal(same[0][:10], same[2][:10])


def test_shared_permutation_is_one_domain():
    """By default every ``pixels`` task uses the same permutation: pixels+invert is the inverted
    pixels task; with shared_permutation=false the tasks draw their own."""
    for shared in (True, False):
        b = bench("benchmark_options.transforms=[pixels,pixels+invert]",
                  f"benchmark_options.shared_permutation={str(shared).lower()}",
                  "benchmark_options.image_size=8")
        x0, x1 = b.tasks[0].test.x, b.tasks[1].test.x
        # 8x8 is not resampled and normalisation is affine: P(x) and 1 - P(x) sum to one constant
        total = x0 + x1
        same = torch.allclose(total, torch.full_like(total, float(total.flatten()[0])), atol=1e-4)
        assert same == shared


@pytest.mark.parametrize("sets", [["benchmark_options.transforms=[nope]"], ["benchmark_options.train_per_class=0"],
                                  ["benchmark_options.pretrain_classes=[5]"]])
def test_bad_options_name_the_key(sets):
    with pytest.raises(ConfigError, match="digits-transfer"):
        bench(*sets)


def test_finetune_beats_the_frozen_control(tmp_path, one_thread):
    from nws_avalanche.runner.run import run_single

    acc = {m: run_single(build_config([], ["benchmark=digits-transfer", *REDUCED], method=m), tmp_path,
                         progress=False)["average_accuracy"] for m in ("frozen", "finetune")}
    assert acc["finetune"] > acc["frozen"] + 10, acc
    assert acc["frozen"] > 100 / 5 + 10, acc  # the control itself learns (well above chance)
