"""``font-glyphs``: the embedded default stream, glyphs rendered from the fonts matplotlib ships.

Real images that need no download: every character is drawn (Pillow) from the TrueType fonts in
matplotlib's ``mpl-data/fonts/ttf`` (DejaVu Sans / Sans Mono / Serif in four styles each, STIX in
four, Computer Modern roman, bold, sans, typewriter and math italic: ``FONTS``). A class is a
character; its images are its glyphs in the different fonts, each drawn a few times with a seeded
random rotation (+-``max_rotation`` degrees), scale and position.

Built so that what the paper measures can show on 2 CPU cores:

- pretraining: the ``pretrain_classes`` characters (default the 26 capitals and 10 digits), every
  font, ``pretrain_renders`` drawings per font; never a task class;
- tasks: ``task_classes`` (default the 25 lower-case letters without ``l``, which is ``I``/``1`` in
  several fonts) cut into ``len // classes_per_task`` tasks of consecutive characters, labels
  ``0..classes_per_task-1`` within a task;
- per task class, a font split fixed by the seed: ``train_fonts`` fonts (x ``train_renders``
  drawings) train, the other fonts (x ``test_renders``) test: a task is learnt from few images in few
  styles and tested on styles it never saw, so what the pretrained network knows of letters in
  general (its initialisation) matters, as ImageNet does for the paper's streams.

Training adds random shifts of up to 2 px (as split-digits). Normalised with the mean/std of the
pretraining images. Rendering is deterministic: the same seed gives the same bytes.
"""
from __future__ import annotations

import string
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from nws_avalanche.common.errors import ConfigError

from .base import BENCHMARK_OPTIONS, BENCHMARKS, BenchmarkData, Task, check_benchmark_options
from .digits import TensorImages

# matplotlib's bundled fonts with Latin letters and digits at their Unicode positions, in a fixed order
FONTS = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique",
         "DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique", "DejaVuSansMono-BoldOblique",
         "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic",
         "STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "STIXGeneralBolIta",
         "cmr10", "cmb10", "cmss10", "cmtt10", "cmmi10")
DEFAULT_PRETRAIN = string.digits
DEFAULT_TASKS = string.ascii_uppercase[:25]  # A-Y: five 5-way tasks
RENDER_SIZE = 64  # glyphs are drawn at this size, then cropped to their ink and shrunk


def font_dir() -> Path:
    """matplotlib's ``mpl-data/fonts/ttf`` (found without importing matplotlib)."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("font-glyphs needs matplotlib's bundled fonts: pip install matplotlib")
    return Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "fonts" / "ttf"


@lru_cache(maxsize=None)
def _charset(path: str) -> frozenset:
    from fontTools.ttLib import TTFont

    return frozenset(chr(c) for c in TTFont(path, lazy=True).getBestCmap())


def available_fonts(chars: str) -> list[Path]:
    """The fonts of ``FONTS`` that are installed and draw every character of ``chars``."""
    root = font_dir()
    out = []
    for name in FONTS:
        p = root / f"{name}.ttf"
        if p.is_file() and set(chars) <= _charset(str(p)):
            out.append(p)
    return out


def render(font_path: Path, char: str, size: int, rng: np.random.RandomState, max_rotation: float,
           base_rotation: float = 0.0) -> np.ndarray:
    """One drawing of ``char``: rotated (``base_rotation`` + a random angle), cropped to its ink, scaled to 65-90 % of ``size`` and placed at
    a random position inside a ``size`` x ``size`` image; float32 in [0, 1], ink bright."""
    from PIL import Image, ImageDraw, ImageFont

    font = _font(str(font_path))
    canvas = Image.new("L", (2 * RENDER_SIZE, 2 * RENDER_SIZE), 0)
    ImageDraw.Draw(canvas).text((RENDER_SIZE, RENDER_SIZE), char, fill=255, font=font, anchor="mm")
    angle = base_rotation + rng.uniform(-max_rotation, max_rotation)
    scale = rng.uniform(0.65, 0.9)
    u, v = rng.uniform(0, 1, 2)
    canvas = canvas.rotate(angle, resample=Image.BICUBIC)
    box = canvas.getbbox()
    if box is None:
        raise ConfigError(f"font-glyphs: {font_path.name} draws nothing for {char!r}")
    glyph = canvas.crop(box)
    w, h = glyph.size
    side = max(1, round(scale * size))
    f = side / max(w, h)
    glyph = glyph.resize((max(1, round(w * f)), max(1, round(h * f))), Image.LANCZOS)
    out = Image.new("L", (size, size), 0)
    out.paste(glyph, (int(u * (size - glyph.size[0])), int(v * (size - glyph.size[1]))))
    return np.asarray(out, dtype=np.float32) / 255.0


@lru_cache(maxsize=None)
def _font(path: str):
    from PIL import ImageFont

    return ImageFont.truetype(path, RENDER_SIZE)


@BENCHMARK_OPTIONS.register("font-glyphs")
@dataclass
class FontGlyphsOptions:
    pretrain_classes: str = DEFAULT_PRETRAIN  # characters the pretrained network learns
    task_classes: str = DEFAULT_TASKS         # characters of the tasks, consecutive groups
    classes_per_task: int = 5
    tasks: int | None = None                  # the first ``tasks`` tasks (None: all)
    train_fonts: int = 4                      # fonts whose drawings train a task (the others test)
    train_renders: int = 4                    # drawings per training font and class
    test_renders: int = 2                     # drawings per test font and class
    pretrain_renders: int = 8                 # drawings per font and pretraining class
    max_rotation: float = 10.0                # degrees, random, every drawing
    task_rotation: float = 0.0                # degrees: turn every task glyph (pretraining: upright)
    # the tasks' domain: none | quadrants (the four quadrants of each task image swapped by one permutation
    # fixed by the seed: strokes stay, the layout the pretrained network knows does not)
    task_transform: str = "none"
    image_size: int = 16
    fonts: list[str] = field(default_factory=list)  # names from FONTS (default: all that draw every class)
    # true: for choosing hyper-parameters; a task trains on its first train_fonts - 1 training fonts and is
    # evaluated on 2 x train_renders drawings of its last training font (no test font is drawn)
    validation: bool = False

    def __post_init__(self):  # checked with the rest of the config, before anything is written
        pre, task = self.pretrain_classes, self.task_classes
        if len(set(pre)) != len(pre) or len(set(task)) != len(task) or set(pre) & set(task) or not pre:
            raise ConfigError("benchmark_options.pretrain_classes and task_classes must be disjoint strings of "
                              f"distinct characters (got {pre!r} and {task!r})")
        if self.classes_per_task < 2 or len(task) < self.classes_per_task:
            raise ConfigError(f"benchmark_options.classes_per_task must be >= 2 and <= len(task_classes) "
                              f"= {len(task)} (got {self.classes_per_task})")
        n = len(task) // self.classes_per_task
        if self.tasks is not None and not 1 <= self.tasks <= n:
            raise ConfigError(f"benchmark_options.tasks must be between 1 and {n} (got {self.tasks})")
        for key in ("train_fonts", "train_renders", "test_renders", "pretrain_renders"):
            if getattr(self, key) < 1:
                raise ConfigError(f"benchmark_options.{key} must be >= 1 (got {getattr(self, key)})")
        if self.validation and self.train_fonts < 2:
            raise ConfigError("benchmark_options.validation needs train_fonts >= 2 (one of them validates)")
        if self.task_transform not in TASK_TRANSFORMS:
            raise ConfigError(f"benchmark_options.task_transform must be one of {', '.join(TASK_TRANSFORMS)} "
                              f"(got {self.task_transform!r})")
        if self.image_size < 8:
            raise ConfigError(f"benchmark_options.image_size must be >= 8 (got {self.image_size})")
        if not 0 <= self.max_rotation <= 45:
            raise ConfigError(f"benchmark_options.max_rotation must be in 0..45 degrees (got {self.max_rotation})")
        unknown = sorted(set(self.fonts) - set(FONTS))
        if unknown:
            raise ConfigError(f"benchmark_options.fonts: unknown {unknown}; choose from {', '.join(FONTS)}")


TASK_TRANSFORMS = ("none", "quadrants")
QUADRANT_ORDERS = ((3, 2, 1, 0), (2, 3, 0, 1), (1, 0, 3, 2), (3, 0, 1, 2), (1, 2, 3, 0), (2, 0, 3, 1))


def quadrants(x: torch.Tensor, order) -> torch.Tensor:
    """[N, C, S, S] with quadrant ``order[i]`` of ``x`` in place ``i`` (places: top-left, top-right,
    bottom-left, bottom-right); odd sides keep their middle row/column."""
    s = x.shape[-1]
    h = s // 2
    blocks = [(slice(0, h), slice(0, h)), (slice(0, h), slice(s - h, s)),
              (slice(s - h, s), slice(0, h)), (slice(s - h, s), slice(s - h, s))]
    out = x.clone()
    for dst, src in enumerate(order):
        out[..., blocks[dst][0], blocks[dst][1]] = x[..., blocks[src][0], blocks[src][1]]
    return out


def _draw(fonts, chars, renders, size, rng, max_rotation, base_rotation=0.0):
    """Images [N, 1, size, size] and labels (index into ``chars``), font-major for each character."""
    xs, ys = [], []
    for label, ch in enumerate(chars):
        for f in fonts:
            for _ in range(renders):
                xs.append(render(f, ch, size, rng, max_rotation, base_rotation))
                ys.append(label)
    return torch.from_numpy(np.stack(xs)).unsqueeze(1), torch.tensor(ys)


@BENCHMARKS.register("font-glyphs")
def font_glyphs(cfg) -> BenchmarkData:
    o = check_benchmark_options(cfg)
    fonts = available_fonts(o.pretrain_classes + o.task_classes)
    if o.fonts:
        fonts = [f for f in fonts if f.stem in o.fonts]
    if len(fonts) <= o.train_fonts:
        raise ConfigError(f"font-glyphs: {len(fonts)} usable font(s) in {font_dir()} for train_fonts="
                          f"{o.train_fonts}; lower benchmark_options.train_fonts (each task needs test fonts)")
    k = o.classes_per_task
    n_tasks = o.tasks or len(o.task_classes) // k
    tasks = []
    pre_x, pre_y = _draw(fonts, o.pretrain_classes, o.pretrain_renders, o.image_size,
                         np.random.RandomState([cfg.seed, 19]), o.max_rotation)
    mean, std = pre_x.mean(), pre_x.std()
    # one layout for every task (one shared domain), a permutation that moves every quadrant
    layout = QUADRANT_ORDERS[np.random.RandomState([cfg.seed, 19, 3]).randint(len(QUADRANT_ORDERS))]
    move = (lambda v: quadrants(v, layout)) if o.task_transform == "quadrants" else (lambda v: v)
    for t in range(n_tasks):
        chars = o.task_classes[t * k:(t + 1) * k]
        # this task's training fonts (the rest test) and its drawings: streams of their own, so that the
        # validation split and the test split of a seed share their fonts and training images
        order = np.random.RandomState([cfg.seed, 19, 1, t]).permutation(len(fonts))
        rng = np.random.RandomState([cfg.seed, 19, 2, t])
        train_f = [fonts[i] for i in sorted(order[:o.train_fonts])]
        test_f = [fonts[i] for i in sorted(order[o.train_fonts:])]
        if o.validation:  # the test fonts stay unseen: validate on the last training font
            train_f, test_f = train_f[:-1], train_f[-1:]
        tr_x, tr_y = _draw(train_f, chars, o.train_renders, o.image_size, rng, o.max_rotation, o.task_rotation)
        te_x, te_y = _draw(test_f, chars, 2 * o.train_renders if o.validation else o.test_renders, o.image_size, rng,
                           o.max_rotation, o.task_rotation)
        tr_x, te_x = move(tr_x), move(te_x)
        tasks.append(Task(f"glyphs-{chars}", list(chars), TensorImages((tr_x - mean) / std, tr_y, augment=True),
                          TensorImages((te_x - mean) / std, te_y)))
        tasks[-1].train.fonts, tasks[-1].test.fonts = [f.stem for f in train_f], [f.stem for f in test_f]
    return BenchmarkData("font-glyphs", tasks, in_channels=1, image_size=o.image_size,
                         pretrain=TensorImages((pre_x - mean) / std, pre_y, augment=True),
                         pretrain_classes=len(o.pretrain_classes),
                         info={"fonts": [f.stem for f in fonts], "pretrain_classes": o.pretrain_classes,
                               "task_classes": o.task_classes[:n_tasks * k], "train_fonts": o.train_fonts,
                               "train_renders": o.train_renders, "test_renders": o.test_renders,
                               "validation": o.validation, "task_transform": o.task_transform,
                               "quadrant_order": list(layout) if o.task_transform == "quadrants" else None})
