"""cub-to-sketches from generated image-folder trees: tasks, transforms, odd images, errors, a run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import build_benchmark
from benchmarks.cub import DATASETS, Cutout
from benchmarks.synthetic import write_image_tree
from nws_avalanche.cli import main as cli
from nws_avalanche.common.errors import DataError
from nws_avalanche.config.run_config import RunConfig, build_config

CLASSES = dict(zip(DATASETS, (3, 2, 4, 2, 3)))  # a different head size per task
SIZE = 16  # tiny stand-in for 224


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("cub")
    for i, (name, n) in enumerate(CLASSES.items()):
        write_image_tree(base, name, n, train_per_class=2, test_per_class=1, size=(30, 22), seed=i,
                         fmt="PNG" if name == "flowers" else "JPEG")
    # odd but valid images: grayscale and CMYK JPEGs, an RGBA PNG, a palette GIF
    odd = base / "wikiart" / "train" / "class_000"
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 255, (20, 26), np.uint8), "L").save(odd / "gray.jpg")
    Image.fromarray(rng.randint(0, 255, (20, 26, 4), np.uint8), "CMYK").save(odd / "cmyk.jpg")
    Image.fromarray(rng.randint(0, 255, (20, 26, 4), np.uint8), "RGBA").save(odd / "alpha.png")
    Image.fromarray(rng.randint(0, 255, (20, 26, 3), np.uint8)).convert("P").save(odd / "palette.gif")
    (odd / "notes.txt").write_text("not an image: ignored")
    return base


def bench(root, **opts):
    return build_benchmark(RunConfig(benchmark="cub-to-sketches", data_root=str(root),
                                     benchmark_options={"image_size": SIZE, **opts}))


@pytest.fixture(scope="module")
def built(root):
    return bench(root)


def test_five_tasks_in_paper_order_with_own_heads(built):
    assert built.task_names == DATASETS
    assert built.image_size == SIZE and built.pretrain is None
    for task in built.tasks:
        n = CLASSES[task.name]
        extra = 4 if task.name == "wikiart" else 0  # the odd images live in wikiart/train/class_000
        assert task.classes == [f"class_{c:03d}" for c in range(n)]
        assert np.bincount(task.train.targets).tolist() == [2 + extra] + [2] * (n - 1)
        assert np.bincount(task.test.targets).tolist() == [1] * n
        assert len(task.train) == 2 * n + extra and len(task.test) == n


def test_transforms_give_rgb_squares_for_every_image(built):
    for task in built.tasks:
        for ds in (task.train, task.test):
            for i in range(len(ds)):
                x, y = ds[i]
                assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32
                assert y == int(ds.targets[i]) and 0 <= y < task.num_classes
    # test transforms are deterministic; train ones are not
    wiki = built.tasks[DATASETS.index("wikiart")]
    names = [Path(wiki.train.path(i)).name for i in range(len(wiki.train))]
    assert {"gray.jpg", "cmyk.jpg", "alpha.png", "palette.gif"} <= set(names) and "notes.txt" not in names
    assert torch.equal(wiki.test[0][0], wiki.test[0][0])
    torch.manual_seed(0)
    assert not all(torch.equal(wiki.train[0][0], wiki.train[0][0]) for _ in range(3))


def test_test_transform_is_resize_then_center_crop_with_imagenet_stats(built):
    import torchvision.transforms.functional as TF

    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    for name, crop in (("flowers", True), ("cubs_cropped", False)):
        ds = built.tasks[DATASETS.index(name)].test
        x, _ = ds[0]
        with Image.open(ds.path(0)) as im:
            img = im.convert("RGB")
        if crop:  # Resize(256/224 * S) then CenterCrop(S)
            ref = TF.center_crop(TF.resize(img, round(SIZE * 256 / 224)), SIZE)
        else:  # "cropped" sets: straight to S x S
            ref = TF.resize(img, (SIZE, SIZE))
        assert torch.allclose(x * std + mean, TF.to_tensor(ref), atol=1e-5)


def test_cutout_zeroes_one_clipped_square():
    torch.manual_seed(0)
    for _ in range(20):
        out = Cutout(6)(torch.ones(3, 20, 20))
        zero = (out == 0).all(0)
        ys, xs = torch.nonzero(zero, as_tuple=True)
        h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert 0 < h <= 6 and 0 < w <= 6 and int(zero.sum()) == h * w
        assert torch.equal(out[:, ~zero], torch.ones(3, int((~zero).sum())))


def test_datasets_subset_order_and_other_names_from_config(root, tmp_path):
    b = bench(root, datasets=["flowers", "cubs_cropped"])
    assert b.task_names == ["flowers", "cubs_cropped"] and [t.num_classes for t in b.tasks] == [4, 3]
    write_image_tree(tmp_path, "my_birds", 5, 1, 1, size=(20, 20))
    b = bench(tmp_path, datasets="my_birds")  # comma-separated string is accepted too
    assert b.task_names == ["my_birds"] and b.tasks[0].num_classes == 5


def test_paper_presets_load_and_agree():
    auto = build_config([], [], benchmark="cub-to-sketches")
    named = build_config(["paper-cub-to-sketches"], [])
    assert named.benchmark == "cub-to-sketches" and named.to_dict() == auto.to_dict()
    assert (auto.lr, auto.beta, auto.epochs, auto.milestones, auto.pool_size) == (0.001, 0.1, 100, [50, 80], 512)
    assert auto.benchmark_options["datasets"] == DATASETS


# -- bad data -----------------------------------------------------------------------------------------
def _copy(root, tmp_path, names=("cubs_cropped", "flowers")) -> Path:
    for n in names:
        shutil.copytree(root / n, tmp_path / n)
    return tmp_path


def test_missing_dataset_names_path_layout_and_source(root, tmp_path, capsys):
    _copy(root, tmp_path)
    with pytest.raises(DataError) as e:
        bench(tmp_path)
    msg = str(e.value)
    for name in ("stanford_cars_cropped", "wikiart", "sketches"):
        assert str(tmp_path / name) in msg
    assert "<dataset>/train/<class>/<image>" in msg and "piggyback" in msg
    shutil.rmtree(tmp_path / "flowers" / "test")
    with pytest.raises(DataError, match=r"flowers/test not found"):
        bench(tmp_path, datasets=["flowers"])
    assert cli(["data", "check", "--benchmark", "cub-to-sketches", "--data-root", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_class_mismatch_and_empty_class(root, tmp_path):
    r = _copy(root, tmp_path)
    (r / "cubs_cropped" / "test" / "class_002").rename(r / "cubs_cropped" / "test" / "class_009")
    with pytest.raises(DataError, match=r"only in .*cubs_cropped/train: class_002.*only in .*test: class_009"):
        bench(r, datasets=["cubs_cropped"])
    (r / "flowers" / "train" / "class_005").mkdir()
    (r / "flowers" / "test" / "class_005").mkdir()
    with pytest.raises(DataError, match=r"empty class folder.*flowers/train/class_005"):
        bench(r, datasets=["flowers"])


def test_unreadable_images_error_or_opt_in_skip(root, tmp_path, capsys):
    r = _copy(root, tmp_path)
    garbage = r / "cubs_cropped" / "train" / "class_001" / "garbage.jpg"
    garbage.write_bytes(b"definitely not a jpeg")
    with pytest.raises(DataError, match=r"1 unreadable image.*garbage\.jpg.*skip_unreadable"):
        bench(r, datasets=["cubs_cropped"])
    b = bench(r, datasets=["cubs_cropped"], skip_unreadable=True)
    assert b.info["skipped_unreadable"] == {"cubs_cropped": 1} and len(b.tasks[0].train) == 6
    assert "skipped 1 unreadable" in capsys.readouterr().err
    # a truncated JPEG has a valid header: a run's quick check passes it, data check decodes it
    garbage.unlink()
    good = r / "flowers" / "test" / "class_000"
    src = Image.open(sorted(good.iterdir())[0]).convert("RGB").resize((64, 64))
    src.save(good / "full.jpg", quality=95)
    blob = (good / "full.jpg").read_bytes()
    (good / "truncated.jpg").write_bytes(blob[: len(blob) // 2])
    (good / "full.jpg").unlink()
    with pytest.raises(DataError, match=r"truncated\.jpg"):
        bench(r, datasets=["flowers"], verify="full")
    assert cli(["data", "check", "--benchmark", "cub-to-sketches", "--data-root", str(r),
                "--set", "benchmark_options.datasets=[flowers]"]) == 2
    assert "truncated.jpg" in capsys.readouterr().err
    ds = bench(r, datasets=["flowers"]).tasks[0].test  # header check only: fails when decoded, naming the file
    i = next(i for i in range(len(ds)) if ds.path(i).endswith("truncated.jpg"))
    with pytest.raises(DataError, match=r"cannot read image .*truncated\.jpg"):
        ds[i]
    assert cli(["data", "check", "--benchmark", "cub-to-sketches", "--data-root", str(r), "--set",
                "benchmark_options.datasets=[flowers]", "--set", "benchmark_options.skip_unreadable=true"]) == 0
    assert "skipped" in capsys.readouterr().out
    # skip_unreadable covers it: found up front (skipping decodes every file) and dropped from the split
    capsys.readouterr()
    b = bench(r, datasets=["flowers"], skip_unreadable=True)
    test = b.tasks[0].test
    assert b.info["skipped_unreadable"] == {"flowers": 1} and len(test) == len(ds) - 1
    assert not any(test.path(k).endswith("truncated.jpg") for k in range(len(test)))
    assert "truncated.jpg" in capsys.readouterr().err
    # ... and in a DataLoader worker (verify: none lets it through): the next readable image instead
    ds = bench(r, datasets=["flowers"], skip_unreadable=True, verify="none").tasks[0].test
    i = next(i for i in range(len(ds)) if ds.path(i).endswith("truncated.jpg"))
    j = (i + 1) % len(ds)
    x, y = next(iter(torch.utils.data.DataLoader(torch.utils.data.Subset(ds, [i]), num_workers=1)))
    assert torch.equal(x[0], ds[j][0]) and int(y) == ds[j][1]
    ds[i]
    assert "truncated.jpg" in capsys.readouterr().err


def test_data_check_prints_counts(root, capsys):
    assert cli(["data", "check", "--benchmark", "cub-to-sketches", "--data-root", str(root),
                "--set", f"benchmark_options.image_size={SIZE}"]) == 0
    out = capsys.readouterr().out
    assert "5 task(s)" in out and out.rstrip().endswith("OK")
    for name, n in CLASSES.items():
        row = next(line for line in out.splitlines() if f" {name} " in line)
        extra = 4 if name == "wikiart" else 0
        assert row.split()[2:5] == [str(n), str(2 * n + extra), str(n)]


# -- end to end ---------------------------------------------------------------------------------------
def test_run_end_to_end_and_bad_data_writes_nothing(root, tmp_path):
    tiny = ["--set", "arch=resnet-tiny", "--set", "pretrained=random", "--set", "pool_size=8", "--set", "epochs=1",
            "--set", "num_workers=0", "--set", f"benchmark_options.image_size={SIZE}",
            "--set", "benchmark_options.datasets=[cubs_cropped,flowers]", "--no-report", "--methods", "nws"]
    out = tmp_path / "out"
    assert cli(["run", "--benchmark", "cub-to-sketches", "--data-root", str(root), "--out", str(out), *tiny]) == 0
    res = json.loads((out / "cub-to-sketches" / "nws" / "seed0" / "results.json").read_text())
    assert res["tasks"] == ["cubs_cropped", "flowers"] and len(res["final_accuracy"]) == 2
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert cli(["run", "--benchmark", "cub-to-sketches", "--data-root", str(tmp_path / "missing"),
                "--out", str(out), "--overwrite", *tiny]) == 2
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_data_speed_and_generate_commands(root, tmp_path, capsys):
    assert cli(["data", "speed", "--benchmark", "cub-to-sketches", "--data-root", str(root), "--workers", "0",
                "--set", f"benchmark_options.image_size={SIZE}", "--set", "benchmark_options.datasets=[flowers]"]) == 0
    out = capsys.readouterr().out
    assert "flowers" in out and f"{2 * CLASSES['flowers']} images" in out and "images/s" in out
    gen = tmp_path / "gen"
    assert cli(["data", "generate", "--benchmark", "cub-to-sketches", "--data-root", str(gen), "--per-class", "1",
                "--set", "benchmark_options.datasets=[a_cropped,b]"]) == 0
    assert cli(["data", "check", "--benchmark", "cub-to-sketches", "--data-root", str(gen),
                "--set", "benchmark_options.datasets=[a_cropped,b]"]) == 0
    assert "2 task(s)" in capsys.readouterr().out
