"""``digits-transfer``: an embedded stream on which the methods come apart (sklearn's digits).

split-digits pretrains on the same ten classes, upright, that its tasks then ask for, so every
method scores ~99 % and a method that learns nothing looks fine. Here the pretrained network has
never seen the tasks' classes nor their domain:

- pretraining: digits 0-4, upright (all their images; never a task image);
- tasks: digits 5-9, 5-way each (labels 0..4 = digits 5..9), task ``t`` under the transform
  ``transforms[t]``; default ``identity``, then four tasks in one shared domain the pretrained
  network lacks, the 64 pixels permuted (one permutation fixed by the seed), composed with
  nothing, ``invert``, ``rot90`` and ``rot180``;
- per class of 5-9, a split fixed by the seed: ``train_per_class`` images (default 30) train,
  the rest (~150 per class) test; every task uses the same images under its own transform.

What each method may change shows: a frozen backbone (per-task BatchNorm and head only) cannot
build features for permuted digits; Finetune restarts from the pretrained network every task;
NWS with ``init=previous`` carries what task ``t-1`` learned of the shared domain into task ``t``,
``init=random`` does not.

Transforms act on the 8x8 images (before the bilinear upsampling to 32x32): ``pixels`` permutes
single pixels, ``patches`` the 16 2x2 blocks; ``a+b`` applies ``a`` then ``b``. With
``shared_permutation: false`` each task draws its own permutation (seeded by seed and task).
Training adds random shifts of up to 2 px, as in split-digits. Normalised with the mean/std of
the pretraining images.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from nws_avalanche.common.errors import ConfigError

from .base import BENCHMARK_OPTIONS, BENCHMARKS, BenchmarkData, Task, check_benchmark_options
from .digits import TensorImages

DEFAULT_TRANSFORMS = ("identity", "pixels", "pixels+invert", "pixels+rot90", "pixels+rot180")


def _block_permutation(rng: np.random.RandomState, block: int) -> np.ndarray:
    """A permutation of the 64 pixels of an 8x8 image that moves whole ``block`` x ``block`` blocks."""
    n = 8 // block
    order = rng.permutation(n * n)
    grid = np.arange(64).reshape(8, 8)
    out = np.empty_like(grid)
    for dst, src in enumerate(order):
        (dr, dc), (sr, sc) = divmod(dst, n), divmod(int(src), n)
        out[dr * block:(dr + 1) * block, dc * block:(dc + 1) * block] = \
            grid[sr * block:(sr + 1) * block, sc * block:(sc + 1) * block]
    return out.reshape(-1)


def transform(name: str, x: torch.Tensor, rng: np.random.RandomState) -> torch.Tensor:
    """``x``: [N, 1, 8, 8] in [0, 1]; ``a+b`` applies ``a`` then ``b``."""
    if "+" in name:
        for part in name.split("+"):
            x = transform(part, x, rng)
        return x
    if name == "identity":
        return x
    if name == "invert":
        return 1.0 - x
    if name == "rot90":
        return torch.rot90(x, 1, dims=(2, 3))
    if name == "rot180":
        return torch.rot90(x, 2, dims=(2, 3))
    if name in ("patches", "pixels"):
        perm = torch.from_numpy(_block_permutation(rng, 2 if name == "patches" else 1))
        return x.reshape(len(x), 1, 64)[:, :, perm].reshape(x.shape)
    raise ValueError(f"digits-transfer: unknown transform {name!r}; choose from {', '.join(TRANSFORMS)}")


TRANSFORMS = ("identity", "invert", "rot90", "rot180", "patches", "pixels")


@BENCHMARK_OPTIONS.register("digits-transfer")
@dataclass
class DigitsTransferOptions:
    transforms: list[str] = field(default_factory=lambda: list(DEFAULT_TRANSFORMS))  # one per task
    tasks: int | None = None       # the first ``tasks`` transforms (None: all)
    train_per_class: int = 30      # training images per class; the rest of the class is test
    image_size: int = 32           # side the 8x8 images are upsampled to
    pretrain_classes: list[int] = field(default_factory=lambda: list(range(5)))
    task_classes: list[int] = field(default_factory=lambda: list(range(5, 10)))
    shared_permutation: bool = True  # one pixel/patch permutation for every task (one domain)

    def __post_init__(self):  # checked with the rest of the config, before anything is written
        bad = [n for n in self.transforms if not set(str(n).split("+")) <= set(TRANSFORMS)]
        if bad or not self.transforms:
            raise ConfigError(f"benchmark_options.transforms: {bad or 'empty'}; each a name or a+b of "
                              f"{', '.join(TRANSFORMS)}")
        if self.tasks is not None and not 1 <= self.tasks <= len(self.transforms):
            raise ConfigError(f"benchmark_options.tasks must be between 1 and {len(self.transforms)} "
                              f"(the number of transforms), got {self.tasks}")
        if not 1 <= self.train_per_class <= MAX_TRAIN_PER_CLASS:
            raise ConfigError(f"benchmark_options.train_per_class must be between 1 and {MAX_TRAIN_PER_CLASS} "
                              f"(every class keeps test images), got {self.train_per_class}")
        if self.image_size < 8:
            raise ConfigError(f"benchmark_options.image_size must be >= 8 (got {self.image_size})")
        pre, task = set(self.pretrain_classes), set(self.task_classes)
        if (pre & task or not (pre | task) <= set(range(10)) or len(pre) != len(self.pretrain_classes)
                or len(task) != len(self.task_classes) or len(task) < 2 or not pre):
            raise ConfigError("benchmark_options.pretrain_classes and task_classes must be disjoint lists of "
                              f"distinct digits 0-9, at least two task classes (got {self.pretrain_classes} and "
                              f"{self.task_classes})")


MAX_TRAIN_PER_CLASS = 170  # the smallest class of sklearn's digits has 174 images


@BENCHMARKS.register("digits-transfer")
def digits_transfer(cfg) -> BenchmarkData:
    from sklearn.datasets import load_digits

    o = check_benchmark_options(cfg)
    names = o.transforms[:o.tasks]
    digits = load_digits()
    x8 = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = digits.target.astype(np.int64)
    rng = np.random.RandomState(cfg.seed)
    train_idx, test_idx = [], []
    for c in o.task_classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        train_idx += idx[:o.train_per_class].tolist()
        test_idx += idx[o.train_per_class:].tolist()
    train_idx, test_idx = np.array(sorted(train_idx)), np.array(sorted(test_idx))
    pre_idx = np.flatnonzero(np.isin(y, o.pretrain_classes))

    def up(v):
        return F.interpolate(v, size=(o.image_size, o.image_size), mode="bilinear", align_corners=False)

    pre_x = up(x8[pre_idx])
    mean, std = pre_x.mean(), pre_x.std()
    label = {c: i for i, c in enumerate(o.task_classes)}
    y_task = torch.tensor([label.get(int(c), -1) for c in y])
    tasks = []
    for t, name in enumerate(names):
        rng_t = np.random.RandomState([cfg.seed] if o.shared_permutation else [cfg.seed, t])
        xt = (up(transform(name, x8, rng_t)) - mean) / std
        tasks.append(Task(f"{name}-{'-'.join(map(str, o.task_classes))}", [str(c) for c in o.task_classes],
                          TensorImages(xt[train_idx], y_task[train_idx], augment=True),
                          TensorImages(xt[test_idx], y_task[test_idx])))
    pre_label = {c: i for i, c in enumerate(o.pretrain_classes)}
    return BenchmarkData("digits-transfer", tasks, in_channels=1, image_size=o.image_size,
                         pretrain=TensorImages((pre_x - mean) / std,
                                               torch.tensor([pre_label[int(c)] for c in y[pre_idx]]), augment=True),
                         pretrain_classes=len(o.pretrain_classes),
                         info={"transforms": names, "train_per_class": o.train_per_class,
                               "shared_permutation": o.shared_permutation,
                               "pretrain_classes": o.pretrain_classes, "task_classes": o.task_classes})
