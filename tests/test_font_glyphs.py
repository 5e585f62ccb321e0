"""font-glyphs (issue 19), the embedded default stream: deterministic, pretraining classes disjoint from
the task classes, train and test fonts disjoint, validation never touching a test font; pretraining on
the benchmark's own split (``pretrain-pools --benchmark``) gives files a run accepts."""
from __future__ import annotations

import string

import pytest
import torch

from benchmarks import build_benchmark
from benchmarks.font_glyphs import DEFAULT_PRETRAIN, DEFAULT_TASKS, QUADRANT_ORDERS, available_fonts, quadrants
from nws_avalanche.common.errors import ConfigError
from nws_avalanche.config.run_config import build_config

SMALL = ["benchmark=font-glyphs", "benchmark_options.pretrain_classes=ABCD", "benchmark_options.task_classes=abcdef",
         "benchmark_options.classes_per_task=3", "benchmark_options.image_size=12",
         "benchmark_options.pretrain_renders=1", "benchmark_options.train_renders=1",
         "benchmark_options.test_renders=1"]


def bench(*sets, seed=0):
    return build_benchmark(build_config([], [*SMALL, f"seed={seed}", *sets]))


def test_same_seed_same_bytes_other_seed_other_split():
    a, b, c = bench(), bench(), bench(seed=1)
    assert torch.equal(a.pretrain.x, b.pretrain.x)
    for ta, tb in zip(a.tasks, b.tasks):
        assert torch.equal(ta.train.x, tb.train.x) and torch.equal(ta.test.x, tb.test.x)
        assert ta.train.fonts == tb.train.fonts
    assert any(ta.train.fonts != tc.train.fonts for ta, tc in zip(a.tasks, c.tasks))


def test_classes_and_fonts_split():
    b = bench()
    fonts = available_fonts("ABCDabcdef")
    assert len(fonts) >= 10  # matplotlib ships DejaVu, STIX and Computer Modern
    assert b.pretrain_classes == 4 and sorted(set(b.pretrain.targets)) == [0, 1, 2, 3]
    assert len(b.pretrain) == 4 * len(fonts)
    assert [t.classes for t in b.tasks] == [list("abc"), list("def")]
    task_chars = {c for t in b.tasks for c in t.classes}
    assert not task_chars & set(b.info["pretrain_classes"])
    for t in b.tasks:
        assert len(t.train.fonts) == 4 and not set(t.train.fonts) & set(t.test.fonts)
        assert len(t.train.fonts) + len(t.test.fonts) == len(fonts)
        assert t.train.targets == sorted(t.train.targets) and set(t.train.targets) == {0, 1, 2}
        assert len(t.test) == 3 * len(t.test.fonts)
        # no test image is a training image
        tr = {tuple(x.flatten().tolist()) for x in t.train.x}
        assert not tr & {tuple(x.flatten().tolist()) for x in t.test.x}
    # default: the ten digits pretrain, capitals A-Y make five 5-way tasks
    assert DEFAULT_PRETRAIN == string.digits and DEFAULT_TASKS == string.ascii_uppercase[:25]


def test_quadrants_move_every_quadrant_and_keep_the_pixels():
    x = torch.arange(2 * 36.0).reshape(2, 1, 6, 6)
    for order in QUADRANT_ORDERS:
        y = quadrants(x, order)
        assert torch.equal(torch.sort(y.flatten()).values, torch.sort(x.flatten()).values)
        for dst, src in enumerate(order):
            (dr, dc), (sr, sc) = divmod(dst, 2), divmod(src, 2)
            assert src != dst and torch.equal(y[..., 3 * dr:3 * dr + 3, 3 * dc:3 * dc + 3],
                                              x[..., 3 * sr:3 * sr + 3, 3 * sc:3 * sc + 3])


def test_validation_uses_training_fonts_only():
    full, val = bench(), bench("benchmark_options.validation=true")
    for tf, tv in zip(full.tasks, val.tasks):
        assert tv.train.fonts + tv.test.fonts == tf.train.fonts  # the test fonts stay unseen
        assert not set(tv.test.fonts) & set(tf.test.fonts)


@pytest.mark.parametrize("bad,msg", [
    ("benchmark_options.task_classes=abcA", "disjoint"),
    ("benchmark_options.train_fonts=40", "usable font"),
    ("benchmark_options.fonts=[Comic]", "unknown"),
])
def test_bad_options_name_the_fix(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        bench(bad)
