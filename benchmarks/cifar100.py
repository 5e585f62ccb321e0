"""``split-cifar100``: CIFAR-100 as a task-incremental stream, read from local files.

Variants (``benchmark_options.variant``):

- ``20x5`` (default, the paper's): one task per superclass in alphabetical order, its 5 fine
  classes (alphabetical) labelled 0..4;
- ``10x10``: 10 tasks of 10 classes, the class order a permutation fixed by the seed.

``max_tasks`` keeps only the first N tasks (smoke tests); ``skip_unreadable`` skips undecodable
image-folder files (reporting how many); ``download`` fetches the pickles through torchvision
when nothing is found (never needed when the files are there).

Layouts under ``data_root`` (``LAYOUTS``, tried in order): torchvision's extracted
``cifar-100-python/{train,test,meta}`` pickles (or those three files directly in the root), or
image folders ``train/<superclass>/<class>/<image>`` + ``test/...`` (the CPG/authors' layout).
The pickles are read with a restricted unpickler (``nws_avalanche.common.safepickle``): plain data only,
so a crafted file cannot run code. Within a class, images are ordered by file name, so both layouts give identical tasks when the
folder files carry the pickles' ``filenames``.

All images are decoded once into one uint8 tensor; a training item is a crop of the zero-padded
image (RandomCrop(32, padding=4)), a random horizontal flip and the task's normalisation (per-task
channel mean/std of its training images): a few tensor ops, no PIL, no per-class work.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from nws_avalanche.common.errors import ConfigError, DataError
from nws_avalanche.common.registry import Registry
from nws_avalanche.common.safepickle import ForbiddenPickle, load_plain

from .base import BENCHMARK_OPTIONS, BENCHMARKS, BenchmarkData, Task
from .imagefolder import (VERIFY_MODES, check_not_empty, check_options, check_same_classes, handle_unreadable,
                          list_dirs, rgb_or_reason, scan_split)

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
PICKLES = ("train", "test", "meta")


@dataclass
class CifarSplit:
    images: np.ndarray  # (N, 3, 32, 32) uint8
    fine: np.ndarray  # (N,) int64 fine label
    coarse: np.ndarray  # (N,) int64 coarse label
    filenames: list[str]


@dataclass
class CifarData:
    fine_names: list[str]
    coarse_names: list[str]
    train: CifarSplit
    test: CifarSplit
    source: str
    skipped: int = 0


# -- layout 1: torchvision's python pickles ---------------------------------------------------------
def _unpickle(path: Path) -> dict:
    # a restricted unpickler: a crafted file is refused by name instead of running code on load
    try:
        with open(path, "rb") as fh:
            obj = load_plain(fh, encoding="latin1")
    except ForbiddenPickle as e:
        raise DataError(f"{path}: refused, not a genuine CIFAR-100 file: {e}. The real files hold only lists, "
                        f"strings, numbers and numpy arrays; re-extract {URL}") from None
    except Exception as e:  # noqa: BLE001 - any other failure of a damaged pickle (struct, type, index, memo...)
        raise DataError(f"{path}: not a readable CIFAR-100 python pickle ({type(e).__name__}: {' '.join(str(e).split())[:160]}); "
                        f"re-extract {URL} so that cifar-100-python/ holds train, test and meta") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict pickle (CIFAR-100 python version), got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _need(d: dict, keys: tuple[str, ...], path: Path) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}; is this the CIFAR-100 (not CIFAR-10) "
                        f"python version from {URL}?")


_REFETCH = f"re-extract {URL}"


def _flat(values, path: Path, key: str, kinds: tuple[type, ...], what: str) -> list:
    """``values`` as a flat list whose every item is one of ``kinds`` (checked item by item, so nested or
    shared lists are refused at their first item instead of being walked)."""
    if isinstance(values, np.ndarray):
        if values.ndim != 1 or (np.integer in kinds and values.dtype.kind not in "iu"):
            raise DataError(f"{path}: {key!r} is a {values.dtype} array of shape {values.shape}, expected a flat "
                            f"list of {what}; {_REFETCH}")
        return values.tolist()
    if not isinstance(values, (list, tuple)):
        raise DataError(f"{path}: {key!r} is {type(values).__name__}, expected a list of {what}; {_REFETCH}")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, kinds):
            raise DataError(f"{path}: {key}[{i}] is {type(v).__name__} {str(v)[:40]!r}, expected {what}; {_REFETCH}")
    return list(values)


def _labels(d: dict, key: str, path: Path) -> np.ndarray:
    values = _flat(d[key], path, key, (int, np.integer), "integer labels")
    if any(not -(1 << 62) < int(v) < (1 << 62) for v in values):
        raise DataError(f"{path}: {key!r} holds an integer beyond any label; {_REFETCH}")
    return np.asarray(values, dtype=np.int64)


def _names(values, path: Path, key: str) -> list[str]:
    names = [x.decode("latin1") if isinstance(x, bytes) else x
             for x in _flat(values, path, key, (str, bytes, np.str_, np.bytes_), "names")]
    names = [str(x) for x in names]
    dup = next((x for i, x in enumerate(names) if x in names[:i]), None)
    if dup is not None:
        raise DataError(f"{path}: {key!r} lists {dup!r} twice; class names must be distinct; {_REFETCH}")
    return names


def _read_pickle_split(path: Path) -> CifarSplit:
    d = _unpickle(path)
    _need(d, ("data", "fine_labels", "coarse_labels"), path)
    data = d["data"]
    # the real files hold one uint8 array; anything else (floats, values above 255, nested lists) would be
    # cast or walked silently
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = f"a {data.dtype} array" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' is {kind}, expected a uint8 array of (N, 3072) rows of 32x32 RGB; "
                        f"{_REFETCH}")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' has shape {data.shape}, expected (N, 3072) uint8 rows of 32x32 RGB")
    n = len(data)
    fine, coarse = _labels(d, "fine_labels", path), _labels(d, "coarse_labels", path)
    if len(fine) != n or len(coarse) != n:
        raise DataError(f"{path}: {n} images but {len(fine)} fine and {len(coarse)} coarse labels")
    names = d.get("filenames")
    names = [x.decode("latin1") if isinstance(x, bytes) else str(x)
             for x in _flat(names, path, "filenames", (str, bytes, np.str_, np.bytes_), "file names")] \
        if names is not None else [f"{i:06d}.png" for i in range(n)]
    if len(names) != n:
        raise DataError(f"{path}: {n} images but {len(names)} file names; {_REFETCH}")
    return CifarSplit(data.reshape(n, 3, 32, 32), fine, coarse, names)


def _pickle_dir(root: Path) -> Path | None:
    for d in (root / "cifar-100-python", root):
        if all((d / f).is_file() for f in PICKLES):
            return d
    return None


def read_pickles(d: Path, opts: dict) -> CifarData:
    meta = _unpickle(d / "meta")
    _need(meta, ("fine_label_names", "coarse_label_names"), d / "meta")
    fine_names = _names(meta["fine_label_names"], d / "meta", "fine_label_names")
    coarse_names = _names(meta["coarse_label_names"], d / "meta", "coarse_label_names")
    train, test = _read_pickle_split(d / "train"), _read_pickle_split(d / "test")
    for name, split in (("train", train), ("test", test)):
        for labels, names, kind in ((split.fine, fine_names, "fine"), (split.coarse, coarse_names, "coarse")):
            if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
                raise DataError(f"{d / name}: {kind} labels outside 0..{len(names) - 1} ({d / 'meta'} "
                                f"lists {len(names)} {kind} classes)")
    return CifarData(fine_names, coarse_names, train, test, source=f"pickles:{d}")


# -- layout 2: image folders train/<superclass>/<class>/<image> ---------------------------------------
def _folder_root(root: Path) -> Path | None:
    return root if (root / "train").is_dir() and (root / "test").is_dir() else None


def _decode32(path: str) -> np.ndarray | str:
    im, why = rgb_or_reason(path)
    if im is None:
        return why
    a = np.asarray(im)
    if a.shape != (32, 32, 3):
        return f"size {a.shape[1]}x{a.shape[0]}, CIFAR-100 images are 32x32"
    return a


def read_folders(root: Path, opts: dict) -> CifarData:
    splits = {}
    listings = {}
    for split in ("train", "test"):
        sdir = root / split
        supers = list_dirs(sdir)
        if not supers:
            raise DataError(f"{sdir} has no superclass folders; expected {sdir}/<superclass>/<class>/<image>")
        listings[split] = {s: scan_split(sdir / s) for s in supers}
    check_same_classes(listings["train"], listings["test"], root / "train", root / "test")
    for s in listings["train"]:
        check_same_classes(listings["train"][s], listings["test"][s], root / "train" / s, root / "test" / s)
        for split in ("train", "test"):
            check_not_empty(listings[split][s], root / split / s)
    coarse_names = sorted(listings["train"])
    owner = {c: s for s in coarse_names for c in listings["train"][s]}
    if len(owner) != sum(len(listings["train"][s]) for s in coarse_names):
        raise DataError(f"{root / 'train'}: a class folder name appears under more than one superclass")
    fine_names = sorted(owner)
    fine_id = {c: i for i, c in enumerate(fine_names)}
    skipped = 0
    workers = min(8, os.cpu_count() or 1)
    for split in ("train", "test"):
        paths, fine, coarse, names = [], [], [], []
        for ci, s in enumerate(coarse_names):
            for c, files in listings[split][s].items():
                paths += [os.path.join(root, split, s, c, f) for f in files]
                fine += [fine_id[c]] * len(files)
                coarse += [ci] * len(files)
                names += files
        with ThreadPoolExecutor(workers) as pool:
            arrays = list(pool.map(_decode32, paths, chunksize=256))
        bad = [(p, a) for p, a in zip(paths, arrays) if isinstance(a, str)]
        drop = handle_unreadable(bad, bool(opts.get("skip_unreadable", False)), f"split-cifar100 {root / split}")
        skipped += len(drop)
        keep = [i for i, p in enumerate(paths) if p not in drop]
        images = np.stack([arrays[i] for i in keep]).transpose(0, 3, 1, 2) if keep \
            else np.zeros((0, 3, 32, 32), np.uint8)
        splits[split] = CifarSplit(np.ascontiguousarray(images), np.asarray(fine, np.int64)[keep],
                                   np.asarray(coarse, np.int64)[keep], [names[i] for i in keep])
    return CifarData(fine_names, coarse_names, splits["train"], splits["test"], source=f"folders:{root}",
                     skipped=skipped)


# Layouts by name: (find the folder under data_root or None, read it).
LAYOUTS: Registry = Registry("CIFAR-100 layout")
LAYOUTS.register("pickles")((_pickle_dir, read_pickles))
LAYOUTS.register("folders")((_folder_root, read_folders))


def missing_message(root: Path) -> str:
    return (f"split-cifar100: no CIFAR-100 data under {root}. Looked for {root}/cifar-100-python/{{train,test,meta}} "
            f"(torchvision's extracted python version; also accepted directly in {root}) and for image folders "
            f"{root}/train/<superclass>/<class>/<image> + {root}/test/<superclass>/<class>/<image>. "
            f"Get it: download {URL} and extract it into {root}, or add --set benchmark_options.download=true "
            f"on a machine with network access.")


def load_cifar100(root: Path, opts: dict) -> CifarData:
    if not root.is_dir() and not opts.get("download"):
        raise DataError(missing_message(root))
    for name in LAYOUTS:
        find, read = LAYOUTS.get(name)
        found = find(root) if root.is_dir() else None
        if found is not None:
            return read(found, opts)
    if opts.get("download"):
        try:
            from torchvision.datasets import CIFAR100

            CIFAR100(str(root), train=True, download=True)
        except Exception as e:  # no network, disk full, bad archive: all end the same way for the user
            raise DataError(f"split-cifar100: download into {root} failed ({type(e).__name__}: {e}). "
                            + missing_message(root)) from None
        return read_pickles(root / "cifar-100-python", opts)
    raise DataError(missing_message(root))


# -- consistency checks and ordering ----------------------------------------------------------------
def check_cifar(data: CifarData) -> None:
    n_fine = len(data.fine_names)
    for name, split in (("train", data.train), ("test", data.test)):
        counts = np.bincount(split.fine, minlength=n_fine)
        empty = [data.fine_names[i] for i in np.flatnonzero(counts == 0)]
        if empty:
            raise DataError(f"split-cifar100 ({data.source}): {len(empty)} class(es) without {name} images: "
                            f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}; every class needs "
                            f"train and test images")
    pairs = np.unique(np.concatenate([np.stack([s.fine, s.coarse], 1) for s in (data.train, data.test)]), axis=0)
    if len(pairs) != n_fine:
        fine, counts = np.unique(pairs[:, 0], return_counts=True)
        clash = [data.fine_names[i] for i in fine[counts > 1]]
        raise DataError(f"split-cifar100 ({data.source}): class(es) {', '.join(clash[:5])} carry more than one "
                        f"coarse label; fine and coarse labels must come from the same CIFAR-100 release")


def _order(split: CifarSplit) -> np.ndarray:
    """Indices sorted by fine label, then file name: layout-independent image order."""
    return np.lexsort((np.asarray(split.filenames), split.fine))


# -- task splits (variants by name) ---------------------------------------------------------------------
def groups_20x5(data: CifarData, seed: int) -> list[tuple[str, list[int]]]:
    fine_to_coarse = dict(zip(data.train.fine.tolist(), data.train.coarse.tolist()))
    out = []
    for c in sorted(range(len(data.coarse_names)), key=lambda i: data.coarse_names[i]):
        members = sorted((f for f, cc in fine_to_coarse.items() if cc == c), key=lambda f: data.fine_names[f])
        if members:
            out.append((data.coarse_names[c], members))
    return out


def groups_10x10(data: CifarData, seed: int) -> list[tuple[str, list[int]]]:
    n = len(data.fine_names)
    if n % 10:
        raise DataError(f"split-cifar100 variant 10x10 needs a multiple of 10 classes, found {n} ({data.source})")
    by_name = sorted(range(n), key=lambda i: data.fine_names[i])
    perm = np.random.RandomState(seed).permutation(n)
    order = [by_name[i] for i in perm]
    per = n // 10
    return [(f"classes-{t:02d}", order[t * per:(t + 1) * per]) for t in range(10)]


VARIANTS: Registry = Registry("split-cifar100 variant")
VARIANTS.register("20x5")(groups_20x5)
VARIANTS.register("10x10")(groups_10x10)


@BENCHMARK_OPTIONS.register("split-cifar100")
@dataclass
class CifarOptions:
    variant: str = "20x5"
    max_tasks: int | None = None
    skip_unreadable: bool = False
    download: bool = False
    verify: str = "header"

    def __post_init__(self):  # checked with the rest of the config, before anything is written
        if self.variant not in VARIANTS:
            raise ConfigError(f"benchmark_options.variant must be one of {', '.join(VARIANTS.names())} "
                              f"(got {self.variant!r})")
        if self.max_tasks is not None and self.max_tasks < 1:
            raise ConfigError(f"benchmark_options.max_tasks must be >= 1 (got {self.max_tasks})")
        if self.verify not in VERIFY_MODES:
            raise ConfigError(f"benchmark_options.verify must be one of {', '.join(VERIFY_MODES)} (got {self.verify!r})")


class CifarImages(Dataset):
    """uint8 CIFAR images with the paper's train augmentation and a fixed normalisation."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 augment: bool):
        self.augment = augment
        # zero padding in pixel space, as RandomCrop(32, padding=4) does before ToTensor/Normalize
        self.images = F.pad(images, (4, 4, 4, 4)) if augment else images
        self.targets = targets
        self.mean, self.std = mean.view(3, 1, 1), std.view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        x = self.images[i]
        if self.augment:
            r = int(torch.randint(0, 162, (1,)))  # 9 x 9 crop offsets x 2 flips from one draw
            dy, dx, flip = r // 18, (r // 2) % 9, r % 2
            x = x[:, dy:dy + 32, dx:dx + 32]
            if flip:
                x = x.flip(2)
        return (x.float().div_(255) - self.mean) / self.std, int(self.targets[i])


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images on the [0, 1] scale, exact, from 256-bin histograms
    (far cheaper than float copies of the whole task)."""
    a = images.numpy()
    levels = np.arange(256, dtype=np.float64) / 255
    mean, std = [], []
    for c in range(a.shape[1]):
        h = np.bincount(a[:, c].ravel(), minlength=256).astype(np.float64)
        m = (h * levels).sum() / h.sum()
        mean.append(m)
        std.append(np.sqrt(max((h * (levels - m) ** 2).sum() / h.sum(), 1e-12)))
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def _task(name: str, members: list[int], data: CifarData, order_train, order_test) -> Task:
    lookup = np.full(len(data.fine_names), -1, np.int64)
    lookup[members] = np.arange(len(members))

    def pick(split: CifarSplit, order: np.ndarray):
        idx = order[np.isin(split.fine[order], members)]
        return torch.from_numpy(split.images[idx]), torch.from_numpy(lookup[split.fine[idx]])

    xtr, ytr = pick(data.train, order_train)
    xte, yte = pick(data.test, order_test)
    mean, std = channel_stats(xtr)
    return Task(name, [data.fine_names[f] for f in members],
                CifarImages(xtr, ytr, mean, std, augment=True), CifarImages(xte, yte, mean, std, augment=False))


def build_tasks(data: CifarData, variant: str, seed: int) -> list[Task]:
    groups = VARIANTS.get(variant)(data, seed)
    otr, ote = _order(data.train), _order(data.test)
    return [_task(name, members, data, otr, ote) for name, members in groups]


@BENCHMARKS.register("split-cifar100")
def split_cifar100(cfg) -> BenchmarkData:
    opts = dict(getattr(cfg, "benchmark_options", {}) or {})
    check_options("split-cifar100", opts, {"variant", "max_tasks", "skip_unreadable", "download", "verify"})
    if not cfg.data_root:
        raise DataError("split-cifar100 reads local data: give --data-root DIR (the folder holding "
                        f"cifar-100-python/, or train/ and test/ image folders); get the files from {URL}")
    data = load_cifar100(Path(cfg.data_root).expanduser(), opts)
    check_cifar(data)
    variant = str(opts.get("variant", "20x5"))
    tasks = build_tasks(data, variant, cfg.seed)
    if opts.get("max_tasks"):  # the first N tasks only, for smoke tests
        tasks = tasks[:int(opts["max_tasks"])]
    return BenchmarkData("split-cifar100", tasks, in_channels=3, image_size=32, pretrain=None,
                         info={"variant": variant, "source": data.source, "skipped_unreadable": data.skipped})
