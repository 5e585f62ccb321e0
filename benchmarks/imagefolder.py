"""Image-folder trees (``<split>/<class>/<image>``): indexing, checks and a lean dataset.

A tree is indexed once with ``os.scandir`` (no ``stat`` per file); the dataset holds paths as one
numpy byte array and targets as an int array, so per-item work is "open, decode, transform"
whatever the number of classes, and forked workers do not copy Python objects by touching them.
Every problem is a ``DataError`` naming the folder or files and the fix.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from torch.utils.data import Dataset

from nws_avalanche.common.errors import ConfigError, DataError

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
VERIFY_MODES = ("none", "header", "full")
SKIP_HINT = ("replace or remove these files, or set benchmark_options.skip_unreadable=true "
             "(--set benchmark_options.skip_unreadable=true) to skip them")


def _entries(folder: Path, keep: Callable) -> list[str]:
    """Sorted names of ``folder``'s entries that ``keep(entry)``; a folder or entry that cannot be read
    (a symbolic link loop, a dangling link, no permission) is a ``DataError`` naming it."""
    try:
        with os.scandir(folder) as it:
            out = []
            for e in it:
                if e.name.startswith("."):
                    continue
                try:
                    if keep(e):
                        out.append(e.name)
                except OSError as err:
                    raise DataError(f"{os.path.join(folder, e.name)}: cannot be read ({err.strerror or err}: a "
                                    f"symbolic link loop or an unreadable entry); remove or fix it") from None
            return sorted(out)
    except OSError as err:
        raise DataError(f"{folder}: cannot be listed ({err.strerror or err}: a symbolic link loop or an "
                        f"unreadable folder); remove or fix it") from None


def list_dirs(folder: Path) -> list[str]:
    return _entries(folder, lambda e: e.is_dir())


def list_images(folder: Path) -> list[str]:
    return _entries(folder, lambda e: os.path.splitext(e.name)[1].lower() in IMAGE_EXTS and e.is_file())


def scan_split(split_dir: Path) -> dict[str, list[str]]:
    """``{class: sorted image file names}`` for one ``<split>/<class>/<image>`` folder."""
    return {c: list_images(split_dir / c) for c in list_dirs(split_dir)}


def check_same_classes(train: dict, test: dict, train_dir: Path, test_dir: Path) -> None:
    only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
    if only_train or only_test:
        parts = []
        if only_train:
            parts.append(f"only in {train_dir}: {_few(only_train)}")
        if only_test:
            parts.append(f"only in {test_dir}: {_few(only_test)}")
        raise DataError("class folders differ between train and test; " + "; ".join(parts) +
                        ". Every class needs a folder with images in both train/ and test/.")


def check_not_empty(split: dict, split_dir: Path) -> None:
    if not split:
        raise DataError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image>")
    empty = [str(split_dir / c) for c, files in split.items() if not files]
    if empty:
        raise DataError(f"{len(empty)} empty class folder(s) (no image files with extension "
                        f"{', '.join(sorted(IMAGE_EXTS))}): {_few(empty)}. Add images or remove the folder "
                        f"from both train/ and test/.")


def _few(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" (and {len(items) - n} more)" if len(items) > n else "")


def check_options(benchmark: str, opts: dict, known: set[str]) -> None:
    """A misspelt option must not be silently ignored."""
    unknown = sorted(set(opts) - known)
    if unknown:
        raise ConfigError(f"unknown benchmark_options for {benchmark}: {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")


# -- decoding -------------------------------------------------------------------------------------
MAX_PIXELS = 89_478_485  # PIL's own default bound (about 268 MB decoded as RGB): a larger header is refused
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


_CONVERT_BLOCK = 1 << 20  # pixels converted at a time from a 16-bit or float image


def _exact_rgb(im, path: str):
    """``im`` as 8-bit RGB without clipping: 16-bit and 32-bit integer images scaled from [0, 65535], float
    images from [0, 1]; values outside those ranges (their meaning unknown) are refused naming the file."""
    from PIL import Image

    if im.mode in _SIXTEEN_BIT or im.mode in ("I", "F"):
        a = np.asarray(im)
        if im.mode == "F":
            lo_hi, scale = (0.0, 1.0), 255.0
        else:
            lo_hi, scale = (0, 65535), 255.0 / 65535.0
        if a.size and (not np.isfinite(a).all() or a.min() < lo_hi[0] or a.max() > lo_hi[1]):
            kind = "float" if im.mode == "F" else "integer"
            raise BadImage(f"a {kind} ({im.mode}) image with values outside [{lo_hi[0]}, {lo_hi[1]}], whose "
                           f"scale to 8 bits is unknown: convert it to 8-bit RGB")
        out = np.empty(a.shape, np.uint8)
        rows = max(1, _CONVERT_BLOCK // max(1, a.shape[1] if a.ndim > 1 else 1))
        for r in range(0, a.shape[0], rows):  # in blocks of rows: temporaries stay small at any image size
            blk = a[r:r + rows]
            if im.mode == "F":
                out[r:r + rows] = np.rint(blk.astype(np.float32) * np.float32(scale))
            else:  # exact integer rounding of v * 255 / 65535
                out[r:r + rows] = (blk.astype(np.uint32) * 255 + 32767) // 65535
        return Image.fromarray(out, "L").convert("RGB")
    return im.convert("RGB")


def _check_png_chunks(path: str) -> None:
    """Every PNG chunk's declared length fits in the file: Pillow reads a chunk in one piece, so a
    damaged length (up to 4 GiB) would be an allocation the file's bytes cannot back."""
    import struct

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        pos = 8  # the signature
        while pos + 8 <= size:
            f.seek(pos)
            length, kind = struct.unpack(">I4s", f.read(8))
            if pos + 12 + length > size:
                raise BadImage(f"its PNG chunk {kind!r} at byte {pos} declares {length} bytes, more than the "
                               f"file holds ({size} bytes): the file is damaged")
            if kind == b"IEND":
                return
            pos += 12 + length


def _open_checked(path: str):
    """``Image.open`` with the pixel bound checked from the header, before any decoding."""
    from PIL import Image

    im = Image.open(path)
    if im.format == "PNG":
        try:
            _check_png_chunks(path)
        except BadImage:
            im.close()
            raise
    w, h = im.size
    if w * h > MAX_PIXELS:
        im.close()
        raise BadImage(f"its header declares {w} x {h} pixels, more than the {MAX_PIXELS} this harness decodes "
                       f"(a decompression bomb or a huge scan): resize it")
    return im


class BadImage(Exception):
    """An image refused by this reader (the reason in words)."""


_PIL_ERRORS = (OSError, ValueError, SyntaxError, BadImage)  # + Image.DecompressionBombError (imported lazily)


def _reason(e: BaseException) -> str:
    return str(e) if isinstance(e, BadImage) else f"{type(e).__name__}: {str(e)[:200]}"


def open_rgb(path: str, draft: int | None = None):
    """Decode ``path`` as an RGB PIL image (grayscale, palette, CMYK, alpha all become RGB; 16-bit and
    float images are scaled exactly, ``_exact_rgb``).

    ``draft``: for JPEGs, let the decoder downscale by 1/2, 1/4 or 1/8 in the DCT domain while
    keeping both sides >= ``draft``: far less decoding work when the file is much larger than
    the size it is resized to next.
    """
    from PIL import Image

    try:
        with _open_checked(path) as im:
            if draft and im.format == "JPEG":
                im.draft("RGB", (draft, draft))
            return _exact_rgb(im, path)
    except (*_PIL_ERRORS, Image.DecompressionBombError) as e:  # PIL's errors for unreadable files
        raise DataError(f"cannot read image {path} ({_reason(e)}); {SKIP_HINT}") from None


def rgb_or_reason(path: str):
    """``(RGB image, None)`` or ``(None, why it is refused)``: ``open_rgb`` for callers that collect reasons."""
    from PIL import Image

    try:
        with _open_checked(path) as im:
            return _exact_rgb(im, path), None
    except (*_PIL_ERRORS, Image.DecompressionBombError) as e:
        return None, _reason(e)


def _problem(path: str, mode: str) -> str | None:
    from PIL import Image

    try:
        with _open_checked(path) as im:
            if mode == "full":
                _exact_rgb(im, path)
    except (*_PIL_ERRORS, Image.DecompressionBombError) as e:
        return _reason(e)
    return None


def find_unreadable(paths: list[str], mode: str = "header", workers: int | None = None) -> list[tuple[str, str]]:
    """``[(path, reason)]`` for files PIL cannot identify (``header``) or fully decode (``full``)."""
    if mode not in VERIFY_MODES:
        raise DataError(f"benchmark_options.verify must be one of {', '.join(VERIFY_MODES)} (got {mode!r})")
    if mode == "none" or not paths:
        return []
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while reading/decoding
        reasons = list(pool.map(lambda p: _problem(p, mode), paths, chunksize=256))
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]


def handle_unreadable(bad: list[tuple[str, str]], skip: bool, what: str) -> set[str]:
    """Raise naming the files, or (opt-in) return them to skip and say how many."""
    if not bad:
        return set()
    if not skip:
        listed = "; ".join(f"{p} ({r})" for p, r in bad[:10])
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        raise DataError(f"{len(bad)} unreadable image(s) in {what}: {listed}{more}. {SKIP_HINT}")
    print(f"{what}: skipped {len(bad)} unreadable image(s) (benchmark_options.skip_unreadable=true), "
          f"first: {bad[0][0]}", file=sys.stderr)
    return {p for p, _ in bad}


# -- index and dataset ----------------------------------------------------------------------------
@dataclass
class SplitIndex:
    """Paths and targets of one split; ``classes[target]`` is the class folder name."""
    classes: list[str]
    paths: list[str]
    targets: list[int]
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, split_dir: Path, listing: dict[str, list[str]], classes: list[str]) -> "SplitIndex":
        paths, targets = [], []
        for t, c in enumerate(classes):
            base = os.path.join(split_dir, c)
            paths += [os.path.join(base, f) for f in listing[c]]
            targets += [t] * len(listing[c])
        return cls(classes, paths, targets)

    def without(self, drop: set[str]) -> "SplitIndex":
        if not drop:
            return self
        keep = [i for i, p in enumerate(self.paths) if p not in drop]
        return SplitIndex(self.classes, [self.paths[i] for i in keep], [self.targets[i] for i in keep],
                          sorted(drop & set(self.paths)))

    def counts(self) -> list[int]:
        return np.bincount(np.asarray(self.targets, dtype=np.int64), minlength=len(self.classes)).tolist()


class ImageFiles(Dataset):
    """``(transform(rgb_image), target)`` for a list of image files.

    ``skip_unreadable``: a file that fails to decode here (in a DataLoader worker: it changed
    after the up-front check, or ``verify: none``) is replaced by the next readable file of the
    list, with a warning naming it, rather than stopping the run; the choice depends only on the
    files, so every epoch and every rerun see the same images. The up-front check, which drops
    such files from the list entirely, is the normal path (``verify: full`` when skipping)."""

    def __init__(self, paths: list[str], targets: list[int], transform: Callable, draft: int | None = None,
                 skip_unreadable: bool = False):
        # one contiguous byte array: forked workers share it without refcount copy-on-write
        self._paths = np.array([os.fsencode(p) for p in paths], dtype=np.bytes_)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform, self.draft, self.skip_unreadable = transform, draft, skip_unreadable

    def __len__(self) -> int:
        return len(self.targets)

    def path(self, i: int) -> str:
        return os.fsdecode(self._paths[i])

    def __getitem__(self, i: int):
        if not self.skip_unreadable:
            return self.transform(open_rgb(self.path(i), self.draft)), int(self.targets[i])
        for j in range(i, i + len(self)):
            try:
                img = open_rgb(self.path(j % len(self)), self.draft)
            except DataError as e:
                print(f"skipping unreadable image (benchmark_options.skip_unreadable=true): {e}", file=sys.stderr)
                continue
            return self.transform(img), int(self.targets[j % len(self)])
        raise DataError(f"no readable image among the {len(self)} files of this split (first: {self.path(0)})")
