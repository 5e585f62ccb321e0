"""Small generated data in the real on-disk formats, for tests, demos and loader timing.

- ``write_cifar100_pickles``: ``<root>/cifar-100-python/{train,test,meta}`` as torchvision's
  extracted python version (dict pickles with ``data``, ``fine_labels``, ``coarse_labels``,
  ``filenames``; ``meta`` with the real class names).
- ``write_cifar100_folders``: the same images as ``<root>/{train,test}/<superclass>/<class>/<file>.png``.
- ``write_image_tree``: ``<root>/<name>/{train,test}/<class>/<i>.jpg`` image folders.

Images are class-tinted gradients plus noise: cheap, and the class is learnable.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from nws_avalanche.common.safepickle import load_plain

from .cifar100_names import COARSE_LABEL_NAMES, FINE_LABEL_NAMES, SUPERCLASSES


def _image(rng: np.random.RandomState, label: int, h: int, w: int) -> np.ndarray:
    tint = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], np.float32)
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    img = tint * (0.4 + 0.6 * ramp) + rng.normal(0, 24, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_cifar100_pickles(root: Path, train_per_class: int = 3, test_per_class: int = 2, seed: int = 0) -> Path:
    root = Path(root) / "cifar-100-python"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    coarse_of = {f: COARSE_LABEL_NAMES.index(s) for s, fs in SUPERCLASSES.items() for f in fs}
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        fine = [f for f in range(len(FINE_LABEL_NAMES)) for _ in range(per)]
        rng.shuffle(fine)  # real files are not sorted by class
        data = np.stack([_image(rng, f, 32, 32).transpose(2, 0, 1).reshape(-1) for f in fine])
        names = [f"{FINE_LABEL_NAMES[f]}_s_{i:06d}.png" for i, f in enumerate(fine)]
        blob = {"filenames": names, "batch_label": f"{split} batch", "fine_labels": fine,
                "coarse_labels": [coarse_of[FINE_LABEL_NAMES[f]] for f in fine], "data": data}
        with open(root / split, "wb") as fh:
            pickle.dump(blob, fh, protocol=2)
    with open(root / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": FINE_LABEL_NAMES, "coarse_label_names": COARSE_LABEL_NAMES}, fh, protocol=2)
    return root


def write_cifar100_folders(pickle_dir: Path, root: Path) -> Path:
    """The images of a pickle set as ``<root>/{train,test}/<superclass>/<class>/<filename>`` PNGs."""
    from PIL import Image

    root = Path(root)
    with open(Path(pickle_dir) / "meta", "rb") as fh:
        meta = load_plain(fh, encoding="latin1")
    for split in ("train", "test"):
        with open(Path(pickle_dir) / split, "rb") as fh:
            d = load_plain(fh, encoding="latin1")
        for row, f, c, name in zip(d["data"], d["fine_labels"], d["coarse_labels"], d["filenames"]):
            folder = root / split / meta["coarse_label_names"][c] / meta["fine_label_names"][f]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(row, np.uint8).reshape(3, 32, 32).transpose(1, 2, 0)).save(folder / name)
    return root


def write_image_tree(root: Path, name: str, classes: int, train_per_class: int = 2, test_per_class: int = 1,
                     size: tuple[int, int] = (40, 30), seed: int = 0, fmt: str = "JPEG") -> Path:
    from PIL import Image

    rng = np.random.RandomState(seed)
    base = Path(root) / name
    ext = {"JPEG": "jpg", "PNG": "png"}[fmt]
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        for c in range(classes):
            folder = base / split / f"class_{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per):
                Image.fromarray(_image(rng, c, size[1], size[0])).save(folder / f"{i:04d}.{ext}", fmt)
    return base
