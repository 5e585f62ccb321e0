"""``split-digits``: the embedded benchmark, built from sklearn's bundled 8x8 digits.

1,797 real images, no download. Per class, a split fixed by the seed: 25 % test, 25 % pretrain,
50 % train. Tasks: 5 tasks of 2 classes, (0,1), (2,3), ..., labels 0/1 within a task. Images
are scaled to [0, 1], upsampled bilinearly to 32x32 and normalised with the mean/std of the
train split. The pretrain split (all 10 classes, never a test image) trains the network that the
pools and the initial weights come from.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from nws_avalanche.common.errors import ConfigError

from .base import BENCHMARK_OPTIONS, BENCHMARKS, BenchmarkData, Task

SPLIT = (0.25, 0.25, 0.5)  # test, pretrain, train


@BENCHMARK_OPTIONS.register("split-digits")
@dataclass
class DigitsOptions:
    tasks: int = 5         # number of tasks; must divide the 10 classes
    image_size: int = 32   # side the 8x8 images are upsampled to

    def __post_init__(self):  # checked with the rest of the config, before anything is written
        if self.tasks not in (1, 2, 5, 10):
            raise ConfigError(f"benchmark_options.tasks must divide 10: 1, 2, 5 or 10 (got {self.tasks})")
        if self.image_size < 8:
            raise ConfigError(f"benchmark_options.image_size must be >= 8 (got {self.image_size})")


class TensorImages(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: bool = False, seed: int = 0):
        self.x, self.y, self.augment = x, y, augment
        self.targets = y.tolist()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        if self.augment:  # random shift by up to 2 px, deterministic under the global torch seed
            dx, dy = torch.randint(-2, 3, (2,)).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(1, 2))
        return x, int(self.y[i])


def split_indices(y: np.ndarray, seed: int):
    rng = np.random.RandomState(seed)
    parts = {"test": [], "pretrain": [], "train": []}
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test, n_pre = int(round(SPLIT[0] * len(idx))), int(round(SPLIT[1] * len(idx)))
        parts["test"] += idx[:n_test].tolist()
        parts["pretrain"] += idx[n_test:n_test + n_pre].tolist()
        parts["train"] += idx[n_test + n_pre:].tolist()
    return {k: np.array(sorted(v)) for k, v in parts.items()}


@BENCHMARKS.register("split-digits")
def split_digits(cfg) -> BenchmarkData:
    from sklearn.datasets import load_digits

    opts = dict(getattr(cfg, "benchmark_options", {}) or {})
    n_tasks = int(opts.get("tasks", 5))
    size = int(opts.get("image_size", 32))
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = digits.target.astype(np.int64)
    parts = split_indices(y, cfg.seed)
    mean, std = x[parts["train"]].mean(), x[parts["train"]].std()
    x = (x - mean) / std
    per = 10 // n_tasks
    tasks = []
    for t in range(n_tasks):
        classes = list(range(t * per, (t + 1) * per))

        def subset(part, augment, classes=classes):
            idx = parts[part][np.isin(y[parts[part]], classes)]
            return TensorImages(x[idx], torch.tensor(y[idx] - classes[0]), augment=augment)

        tasks.append(Task(f"digits-{'-'.join(map(str, classes))}", [str(c) for c in classes],
                          subset("train", True), subset("test", False)))
    pre = parts["pretrain"]
    return BenchmarkData("split-digits", tasks, in_channels=1, image_size=size,
                         pretrain=TensorImages(x[pre], torch.tensor(y[pre]), augment=True),
                         pretrain_classes=10, info={"split": dict(zip(("test", "pretrain", "train"), SPLIT))})
