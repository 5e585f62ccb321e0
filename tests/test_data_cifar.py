"""split-cifar100 from generated data in both real on-disk layouts: tasks, transforms, errors, a run."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import build_benchmark
from benchmarks.cifar100_names import COARSE_LABEL_NAMES, FINE_LABEL_NAMES, SUPERCLASSES
from benchmarks.synthetic import write_cifar100_folders, write_cifar100_pickles
from nws_avalanche.cli import main as cli
from nws_avalanche.common.errors import DataError
from nws_avalanche.config.run_config import RunConfig, build_config

TRAIN, TEST = 3, 2  # images per class


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("cifar")
    pdir = write_cifar100_pickles(base / "pickles", TRAIN, TEST, seed=1)
    write_cifar100_folders(pdir, base / "folders")
    return {"pickles": base / "pickles", "folders": base / "folders", "pickle_dir": pdir}


@pytest.fixture(scope="module")
def built(roots):
    """The default split of each layout, built once for the read-only tests."""
    return {k: bench(roots[k]) for k in ("pickles", "folders")}


def bench(root, seed=0, **opts):
    return build_benchmark(RunConfig(benchmark="split-cifar100", data_root=str(root), seed=seed,
                                     benchmark_options=opts))


def test_paper_split_20_superclasses_in_order(built):
    b = built["pickles"]
    assert b.task_names == sorted(SUPERCLASSES) == COARSE_LABEL_NAMES
    assert b.image_size == 32 and b.in_channels == 3
    for task in b.tasks:
        assert task.classes == sorted(SUPERCLASSES[task.name])
        for ds, per in ((task.train, TRAIN), (task.test, TEST)):
            targets = np.asarray(ds.targets)
            assert len(ds) == 5 * per and np.bincount(targets).tolist() == [per] * 5
            x, y = ds[len(ds) - 1]
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == targets[-1]


def test_both_layouts_give_identical_tasks(roots, built):
    a, b = built["pickles"], built["folders"]
    assert a.task_names == b.task_names
    for ta, tb in zip(a.tasks, b.tasks):
        assert ta.classes == tb.classes
        for da, db in ((ta.train, tb.train), (ta.test, tb.test)):
            assert torch.equal(da.images, db.images) and torch.equal(da.targets, db.targets)
            assert torch.equal(da.mean, db.mean) and torch.equal(da.std, db.std)
    # the pickle folder itself is accepted as data_root too
    assert bench(roots["pickle_dir"]).task_names == a.task_names


def test_images_and_labels_match_the_pickles(roots, built):
    with open(roots["pickle_dir"] / "train", "rb") as fh:
        raw = pickle.load(fh, encoding="latin1")
    data = np.asarray(raw["data"]).reshape(-1, 3, 32, 32)
    task = built["pickles"].tasks[COARSE_LABEL_NAMES.index("trees")]
    for img, y in zip(task.train.images[:, :, 4:36, 4:36], task.train.targets.tolist()):
        fine = FINE_LABEL_NAMES.index(task.classes[y])
        matches = [i for i in np.flatnonzero(np.asarray(raw["fine_labels"]) == fine)
                   if np.array_equal(data[i], img.numpy())]
        assert len(matches) == 1


def test_train_items_are_padded_crops_with_flips_and_per_task_normalisation(built):
    task = built["pickles"].tasks[0]
    ds = task.train
    raw = ds.images[0].float() / 255  # padded 40x40
    assert raw.shape == (3, 40, 40)
    torch.manual_seed(0)
    seen_flip = seen_shift = False
    for _ in range(40):
        x, _ = ds[0]
        pix = x * ds.std + ds.mean
        hits = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)
                if torch.allclose(pix, (raw[:, dy:dy + 32, dx:dx + 32].flip(2) if f else
                                        raw[:, dy:dy + 32, dx:dx + 32]), atol=1e-5)]
        assert hits, "a train item must be a 32x32 window of the zero-padded image, maybe flipped"
        seen_flip |= any(f for *_, f in hits)
        seen_shift |= all((dy, dx) != (4, 4) for dy, dx, _ in hits)
    assert seen_flip and seen_shift
    # normalisation: the task's own train mean/std, so its un-augmented train pixels are ~N(0, 1)
    xs = torch.stack([(img.float() / 255 - ds.mean) / ds.std for img in ds.images[:, :, 4:36, 4:36]])
    assert torch.allclose(xs.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(xs.std((0, 2, 3)), torch.ones(3), atol=1e-3)
    # test items: no augmentation, same normalisation
    x, _ = task.test[0]
    assert torch.allclose(x, (task.test.images[0].float() / 255 - ds.mean) / ds.std)


def test_10x10_variant_order_fixed_by_seed(roots):
    a, a2, c = (bench(roots["pickles"], seed=s, variant="10x10") for s in (5, 5, 6))
    assert len(a.tasks) == 10 and all(t.num_classes == 10 for t in a.tasks)
    assert sorted(c for t in a.tasks for c in t.classes) == FINE_LABEL_NAMES
    assert [t.classes for t in a.tasks] == [t.classes for t in a2.tasks]
    assert [t.classes for t in a.tasks] != [t.classes for t in c.tasks]
    for t in a.tasks:
        assert set(np.asarray(t.train.targets).tolist()) == set(range(10))
    f = bench(roots["folders"], seed=5, variant="10x10")
    assert [t.classes for t in f.tasks] == [t.classes for t in a.tasks]


def test_paper_presets_load_and_agree():
    auto = build_config([], [], benchmark="split-cifar100")
    named = build_config(["paper-split-cifar100"], [])
    assert named.benchmark == "split-cifar100" and named.to_dict() == auto.to_dict()
    assert (auto.epochs, auto.batch_size, auto.lr, auto.momentum, auto.nesterov, auto.weight_decay,
            auto.milestones, auto.beta, auto.pool_size, auto.arch) == \
        (100, 32, 0.01, 0.9, True, 4e-5, [50, 80], 0.5, 512, "resnet18")
    over = build_config(["paper-split-cifar100"], ["epochs=3", "benchmark_options.variant=10x10"])
    assert over.epochs == 3 and over.benchmark_options["variant"] == "10x10"


# -- bad data -----------------------------------------------------------------------------------------
def test_missing_data_names_path_layout_and_source(tmp_path, capsys):
    with pytest.raises(DataError) as e:
        bench(tmp_path / "nowhere")
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "cifar-100-python" in msg and "cifar-100-python.tar.gz" in msg
    assert "train/<superclass>/<class>/<image>" in msg
    with pytest.raises(DataError, match="--data-root"):
        build_benchmark(RunConfig(benchmark="split-cifar100"))
    assert cli(["data", "check", "--benchmark", "split-cifar100", "--data-root", str(tmp_path / "nowhere")]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err


def test_misspelt_option_is_an_error(roots):
    from nws_avalanche.common.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown benchmark_options.*skip_unreadble.*known:.*skip_unreadable"):
        bench(roots["pickles"], skip_unreadble=True)


def test_corrupt_pickle_is_named(roots, tmp_path):
    d = tmp_path / "cifar-100-python"
    shutil.copytree(roots["pickle_dir"], d)
    (d / "test").write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match=r"cifar-100-python/test.*not a readable CIFAR-100"):
        bench(tmp_path)


def _folders(roots, tmp_path) -> Path:
    root = tmp_path / "folders"
    shutil.copytree(roots["folders"], root)
    return root


def test_folder_class_mismatch_and_empty_class(roots, tmp_path):
    root = _folders(roots, tmp_path)
    shutil.rmtree(root / "test" / "fish" / "shark")
    with pytest.raises(DataError, match=r"class folders differ.*only in .*train/fish: shark"):
        bench(root)
    root = _folders(roots, tmp_path / "b")
    for f in (root / "train" / "trees" / "oak_tree").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"empty class folder.*train/trees/oak_tree"):
        bench(root)


def test_folder_unreadable_image_error_or_opt_in_skip(roots, tmp_path, capsys):
    root = _folders(roots, tmp_path)
    bad = sorted((root / "train" / "people" / "baby").iterdir())[0]
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=rf"unreadable image.*{bad.name}.*skip_unreadable"):
        bench(root)
    b = bench(root, skip_unreadable=True)
    assert b.info["skipped_unreadable"] == 1
    people = b.tasks[COARSE_LABEL_NAMES.index("people")]
    assert len(people.train) == 5 * TRAIN - 1
    assert "skipped 1 unreadable" in capsys.readouterr().err
    assert cli(["data", "check", "--benchmark", "split-cifar100", "--data-root", str(root)]) == 2
    assert bad.name in capsys.readouterr().err


def test_data_check_prints_counts(roots, capsys):
    assert cli(["data", "check", "--benchmark", "split-cifar100", "--data-root", str(roots["folders"])]) == 0
    out = capsys.readouterr().out
    assert "20 task(s)" in out and "aquatic_mammals" in out and "beaver, dolphin, otter, seal, whale" in out
    row = next(line for line in out.splitlines() if " vehicles_2 " in line)
    assert row.split()[2:5] == ["5", str(5 * TRAIN), str(5 * TEST)]


# -- end to end ---------------------------------------------------------------------------------------
TINY = ["--set", "arch=resnet-tiny", "--set", "pretrained=random", "--set", "pool_size=8", "--set", "epochs=1",
        "--set", "num_workers=0", "--set", "benchmark_options.max_tasks=2", "--no-report"]


@pytest.mark.parametrize("layout", ["pickles", "folders"])
def test_run_end_to_end(roots, tmp_path, layout):
    import json

    out = tmp_path / "out"
    assert cli(["run", "--benchmark", "split-cifar100", "--data-root", str(roots[layout]), "--methods", "nws",
                "--out", str(out), *TINY]) == 0
    res = json.loads((out / "split-cifar100" / "nws" / "seed0" / "results.json").read_text())
    assert res["tasks"] == COARSE_LABEL_NAMES[:2]
    assert len(res["final_accuracy"]) == 2 and all(0 <= a <= 100 for a in res["final_accuracy"])
    assert res["config"]["data_root"] == str(roots[layout])


def test_run_on_missing_data_writes_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier result")
    assert cli(["run", "--benchmark", "split-cifar100", "--data-root", str(tmp_path / "none"), "--methods", "nws",
                "--out", str(out), *TINY]) == 2
    assert sorted(p.name for p in out.rglob("*")) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "earlier result"


def test_download_is_opt_in_and_failures_are_data_errors(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeCIFAR100:  # stands in for torchvision's downloader: no network in tests
        def __init__(self, root, train=True, download=False):
            calls.append(root)
            write_cifar100_pickles(Path(root), 1, 1)

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCIFAR100)
    with pytest.raises(DataError):
        bench(tmp_path / "a")  # no download unless asked
    assert calls == []
    assert len(bench(tmp_path / "a", download=True).tasks) == 20 and calls == [str(tmp_path / "a")]
    assert len(bench(tmp_path / "a", download=True).tasks) == 20 and len(calls) == 1  # files there: no download

    class Offline:
        def __init__(self, *a, **k):
            raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", Offline)
    with pytest.raises(DataError, match=r"download into .*b failed .*network is unreachable.*cifar-100-python.tar.gz"):
        bench(tmp_path / "b", download=True)
