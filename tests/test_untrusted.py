"""Issue 20's cases, one regression test each: every byte the harness reads is checked (no bombs, no
silent conversions, no tracebacks), nothing is written through a link, and signals stop a run cleanly.
Each bad input must give the project's error (exit 2 through the CLI) with one line naming the file
or key; the bound on every allocation is checked before it is made."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nws_avalanche.cli import main as cli
from nws_avalanche.common.errors import ArtifactError, ConfigError, DataError, NWSError, OutputError

from .untrusted_helpers import repack, skeleton_for, split_container, write_valid_files

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    return write_valid_files(tmp_path_factory.mktemp("valid"))


def rewrite(src: Path, dst: Path, mutate) -> Path:
    """``src``'s container with ``mutate(header)`` applied (and a valid checksum)."""
    header, blobs = split_container(src.read_bytes())
    header = mutate(header)
    dst.write_bytes(repack(header, blobs))
    return dst


# -- 1. writes through links --------------------------------------------------------------------------
def test_symlinked_lock_is_refused_and_its_target_untouched(tmp_path):
    from nws_avalanche.runner.runlock import lock_path, run_folder_lock

    victim = tmp_path / "precious.txt"
    victim.write_text("someone else's data\n")
    rdir = tmp_path / "out" / "seed0"
    rdir.mkdir(parents=True)
    lock_path(rdir).symlink_to(victim)
    with pytest.raises(ConfigError, match="symbolic link") as e:
        with run_folder_lock(rdir):
            pass
    assert str(lock_path(rdir)) in str(e.value)
    assert victim.read_text() == "someone else's data\n" and lock_path(rdir).is_symlink()


def test_symlinked_lock_stops_a_cli_run_with_exit_2(tmp_path, capsys):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep\n")
    out = tmp_path / "out"
    (out / "split-digits" / "nws").mkdir(parents=True)
    (out / "split-digits" / "nws" / ".seed0.lock").symlink_to(victim)
    code = cli(["run", "--methods", "nws", "--out", str(out), "--no-report", "--set", "arch=resnet-tiny"])
    one_line_error(capsys, code, ".seed0.lock", "symbolic link")
    assert victim.read_text() == "keep\n"


@pytest.mark.parametrize("name", ["status.json", "progress.json", "results.json"])
def test_atomic_writer_refuses_a_link_in_place_of_a_run_file(tmp_path, name):
    from nws_avalanche.common.atomic import atomic_write_json

    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / name).symlink_to(victim)
    with pytest.raises(OutputError, match="symbolic link"):
        atomic_write_json(tmp_path / name, {"state": "running"})
    assert victim.read_text() == "keep" and (tmp_path / name).is_symlink()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# -- 2. containers and records --------------------------------------------------------------------------
@pytest.mark.parametrize("case, mutate, needle", [
    ("dtype load", lambda h: {**h, "state": {k: {**v, "dtype": "load"} for k, v in h["state"].items()}}, "dtype"),
    ("dtype unknown", lambda h: {**h, "state": {k: {**v, "dtype": "float8"} for k, v in h["state"].items()}},
     "dtype"),
    ("header list", lambda h: [h], "must be a mapping"),
    ("header string", lambda h: "x", "must be a mapping"),
    ("blobs dict", lambda h: {**h, "blobs": dict(h["blobs"])}, "blobs"),
    ("shape string", lambda h: {**h, "state": {k: {**v, "shape": "3"} for k, v in h["state"].items()}}, "shape"),
    ("shape too big", lambda h: {**h, "state": {k: {**v, "shape": [10 ** 12]} for k, v in h["state"].items()}},
     "bytes"),
    ("layer without n", lambda h: {**h, "layers": [{k: v for k, v in h["layers"][0].items() if k != "n"}]
                                   + h["layers"][1:]}, "layers[0].n"),
    ("n = 1e10", lambda h: {**h, "layers": [{**h["layers"][0], "n": 10 ** 10}] + h["layers"][1:]}, "layers[0].n"),
    ("classes 1e12", lambda h: {**h, "num_classes": 10 ** 12}, "num_classes"),
])
def test_damaged_task_artifact_with_a_valid_checksum(valid, tmp_path, case, mutate, needle):
    from nws_avalanche.method.task_artifact import load_nws_task

    bad = rewrite(valid["task"], tmp_path / "t.nwst", mutate)
    pools = valid["_pools"]
    with pytest.raises(ArtifactError) as e:
        load_nws_task(bad, skeleton_for(pools), pools.fingerprint, pools.digest)
    assert str(bad) in str(e.value) and needle in str(e.value) and "\n" not in str(e.value)


def test_declared_index_count_is_bounded_before_decoding(valid, tmp_path):
    """Without a model to compare with, a header's n is bounded by record.MAX_INTS (2**25 values)."""
    from nws_avalanche.method.task_artifact import read_nws_task
    from nws_avalanche.storage.record import MAX_INTS

    bad = rewrite(valid["task"], tmp_path / "t.nwst",
                  lambda h: {**h, "layers": [{**h["layers"][0], "n": MAX_INTS + 1}] + h["layers"][1:]})
    with pytest.raises(ArtifactError, match=r"outside \[0, 33554432\]"):
        read_nws_task(bad)


def test_index_beyond_the_pool_is_named_as_such(tmp_path):
    """An index >= K (bit-packed: 3 bits hold 7 in a pool of 6) says so, not "has 8 indices, model needs 8"."""
    from nws_avalanche.method.task_artifact import load_nws_task, save_nws_task
    from nws_avalanche.storage.codecs import BitPack

    from .untrusted_helpers import tiny_model_and_pools

    _, model, pools = tiny_model_and_pools(K=6)
    path = save_nws_task(tmp_path / "t.nwst", model, task=0, arch="resnet-tiny", num_classes=3,
                         pool_fingerprint=pools.fingerprint, pool_digest=pools.digest, codec="bitpack")
    header, blobs = split_container(path.read_bytes())
    first = f"idx/{header['layers'][0]['name']}"
    n0 = header["layers"][0]["n"]
    assert header["blobs"][0][0] == first
    seven = BitPack.encode(np.full(n0, 7), 8)
    assert len(seven) == header["blobs"][0][1]
    path.write_bytes(repack(header, seven + blobs[len(seven):]))
    with pytest.raises(ArtifactError, match=r"one of them 7, expected \d+ values in \[0, 6\)"):
        load_nws_task(path, skeleton_for(pools), pools.fingerprint, pools.digest)


def test_bfloat16_state_round_trips(tmp_path):
    from nws_avalanche.storage.record import State, read_record, write_record

    t = torch.randn(3, 5).to(torch.bfloat16)
    write_record(tmp_path / "r", "x", State({"w": t}))
    assert torch.equal(read_record(tmp_path / "r", "x").state["w"], t)


@pytest.mark.parametrize("classes", [10 ** 12, -3, None])
def test_cached_pretrained_with_bad_classes(valid, tmp_path, classes):
    from nws_avalanche.pools.pretrained import load_cached_pretrained

    def mutate(h):
        h = dict(h)
        if classes is None:
            del h["classes"]
        else:
            h["classes"] = classes
        return h
    bad = rewrite(valid["pretrained"], tmp_path / "p.nwsw", mutate)
    with pytest.raises(ArtifactError, match="classes") as e:
        load_cached_pretrained(bad)
    assert str(bad) in str(e.value) and f"delete {bad}" in str(e.value)


@pytest.mark.parametrize("case", ["missing table", "shape mismatch"])
def test_pools_inspect_of_a_damaged_pool_file(valid, tmp_path, capsys, case):
    def mutate(h):
        h = json.loads(json.dumps(h))
        name = h["layers"][0]["name"]
        if case == "missing table":
            del h["tables"][name]
        else:
            h["tables"][name]["shape"] = h["tables"][name]["shape"][::-1]
        return h
    bad = rewrite(valid["pools"], tmp_path / "p.nwsp", mutate)
    one_line_error(capsys, cli(["pools", "inspect", str(bad)]), str(bad))


# -- foreign or garbage files where a torch checkpoint belongs ------------------------------------------
@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    d = tmp_path_factory.mktemp("foreign")
    files = {"garbage": d / "garbage.pt", "pickle": d / "plain.pkl", "text": d / "notes.pt", "list": d / "list.pt",
             "int keys": d / "intkeys.pt", "huge view": d / "view.pt", "complex": d / "complex.pt"}
    files["garbage"].write_bytes(os.urandom(3000))
    files["pickle"].write_bytes(pickle.dumps({"a": 1}))
    files["text"].write_text("hello")
    torch.save([torch.zeros(2)], files["list"])
    torch.save({0: torch.zeros(2)}, files["int keys"])
    torch.save({"w": torch.zeros(1).expand(9, 1 << 31)}, files["huge view"])
    torch.save({"w": torch.zeros(2, dtype=torch.complex64)}, files["complex"])
    return files


@pytest.mark.parametrize("kind", ["garbage", "pickle", "text", "list", "int keys", "huge view", "complex"])
def test_foreign_file_as_pretrained_checkpoint(foreign, valid, tmp_path, capsys, kind):
    f = str(foreign[kind])
    one_line_error(capsys, cli(["pools", "inspect", str(valid["pools"]), "--checkpoint", f]), f)
    one_line_error(capsys, cli(["build-pools", "--from-checkpoint", f, "--arch", "resnet-tiny",
                                "--out", str(tmp_path / "x.nwsp")]), f)
    from nws_avalanche.nets.models import build_arch
    from nws_avalanche.pools.pretrained import load_torchvision_state

    with pytest.raises(ConfigError, match=str(foreign[kind])):  # what --set pretrained=F reads
        load_torchvision_state(f, build_arch("resnet-tiny", 1, 1))
    assert not (tmp_path / "x.nwsp").exists()


def test_view_larger_than_its_file_is_refused_before_any_copy(foreign):
    from nws_avalanche.storage.torch_file import load_torch

    with pytest.raises(ArtifactError, match=r"view of \[9, 2147483648\] over 4 bytes"):
        load_torch(foreign["huge view"], "test file", "fix")


# -- pools import -----------------------------------------------------------------------------------------
def _their_ckpt(tmp_path, monkeypatch, change):
    from .test_authors_import import write_theirs

    ckpt, _, state = write_theirs(tmp_path, blocks=(1, 1, 1, 1), widths=(8, 16, 32, 64), stem_k=3, in_ch=1, K=8,
                                  monkeypatch=monkeypatch)
    state = dict(state)
    change(state)
    bad = tmp_path / "bad.pt"
    torch.save({"model": state}, bad)
    return bad


@pytest.mark.parametrize("case, change, needle", [
    ("stride-0 huge embed", lambda s: s.update({"conv1.0.qtz.embed": torch.zeros(9, 1).expand(9, 1 << 31)}),
     "view of"),
    ("0-d embed", lambda s: s.update({"conv1.0.qtz.embed": torch.tensor(1.0)}), "conv1"),
    ("[0, 16] head embed", lambda s: s.update({"last_layer.qtz.embed": torch.zeros(0, 16)}), "fc"),
    ("integer keys", lambda s: s.update({3: torch.zeros(1)}), "not a string"),
    ("K = 0", lambda s: [s.update({k: v[:, :0].contiguous()}) for k, v in list(s.items()) if k.endswith("qtz.embed")],
     "K >= 2"),
    ("K = 1", lambda s: [s.update({k: v[:, :1].contiguous()}) for k, v in list(s.items()) if k.endswith("qtz.embed")],
     "K >= 2"),
    ("NaN", lambda s: s["conv1.0.qtz.embed"].__setitem__((0, 0), float("nan")), "NaN"),
    ("Inf", lambda s: s["conv1.0.qtz.embed"].__setitem__((0, 0), float("inf")), "NaN or Inf"),
    ("complex", lambda s: s.update({"conv1.0.qtz.embed": torch.zeros(9, 8, dtype=torch.complex64)}), "complex"),
    ("K per layer", lambda s: s.update({"conv1.0.qtz.embed": torch.zeros(9, 4)}), "different sizes"),
])
def test_pools_import_refuses(tmp_path, monkeypatch, capsys, case, change, needle):
    bad = _their_ckpt(tmp_path, monkeypatch, change)
    out = tmp_path / "p.nwsp"
    one_line_error(capsys, cli(["pools", "import", str(bad), "--arch", "resnet-tiny", "--in-channels", "1",
                                "--out", str(out)]), str(bad), needle)
    assert not out.exists()


def test_pools_import_out_under_a_file(tmp_path, monkeypatch, capsys):
    good = _their_ckpt(tmp_path, monkeypatch, lambda s: None)
    (tmp_path / "f").write_text("x")
    one_line_error(capsys, cli(["pools", "import", str(good), "--arch", "resnet-tiny", "--in-channels", "1",
                                "--out", str(tmp_path / "f" / "p.nwsp")]), "cannot write")


# -- run-folder files ---------------------------------------------------------------------------------------
def test_results_json_that_is_not_a_run_record(tmp_path):
    from nws_avalanche.runner.run import _read_results

    for text in ("[]", "{}", '{"tasks": "x"}'):
        (tmp_path / "results.json").write_text(text)
        with pytest.raises(ArtifactError, match="results.json") as e:
            _read_results(tmp_path / "results.json")
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"- a\n- b\n", b"a: [1, 2\n", b"a: &x 1\nb: *x\n"])
def test_saved_config_yaml_that_does_not_parse(tmp_path, content):
    from nws_avalanche.config.run_config import RunConfig
    from nws_avalanche.runner.run import _check_folder

    (tmp_path / "config.yaml").write_bytes(content)
    with pytest.raises(ConfigError, match="config.yaml"):
        _check_folder(tmp_path, RunConfig())


@pytest.mark.parametrize("content", [b"\xff\xfe", b'{"num_tasks": 2, "next_task": 1, "acc": [], "task_files": [], '
                                              b'"summaries": [], "train_seconds": [], "digests": "x"}',
                                     b'{"num_tasks": 2, "next_task": 1, "acc": [], "task_files": [["../x"]], '
                                     b'"summaries": [], "train_seconds": []}'])
def test_progress_json_damaged(tmp_path, content):
    from nws_avalanche.runner.recovery import read_progress

    (tmp_path / "progress.json").write_bytes(content)
    with pytest.raises(ArtifactError, match="progress.json"):
        read_progress(tmp_path, 2)


def test_status_json_not_utf8_in_nws_bench_status(tmp_path, capsys):
    rdir = tmp_path / "b" / "m" / "seed0"
    rdir.mkdir(parents=True)
    (rdir / "config.yaml").write_text("seed: 0\n")
    (rdir / "status.json").write_bytes(b"\xff\xfe{")
    assert cli(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "b/m/seed0" in out and "pending" in out


# -- 3. settings and YAML --------------------------------------------------------------------------------------
@pytest.mark.parametrize("setting, needle", [
    ("seed=" + "9" * 5000, "5000 digits"),
    ("lr=" + "9" * 400, "400 digits"),
    ("pool_size=" + "1" + "0" * 30, "pool_size"),
    ("wandb.tags=[&a [1], *a]", "alias"),
    ("pool_size=70000", "pool_size must be >= 2 (got 70000) and at most 65536"),
])
def test_extreme_settings_are_refused(tmp_path, capsys, setting, needle):
    code = cli(["run", "--methods", "nws", "--out", str(tmp_path / "o"), "--set", setting, "--dry-run"])
    one_line_error(capsys, code, needle)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content, needle", [
    (b"seed: 1\nname: \xff\n", "not UTF-8"),
    (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested more than"),
    (b"- seed: 1\n", "expected a mapping"),
])
def test_config_file_limits(tmp_path, capsys, content, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(content)
    code = cli(["run", "--methods", "nws", "--out", str(tmp_path / "o"), "--config", str(cfg), "--dry-run"])
    one_line_error(capsys, code, str(cfg), needle)


def test_billion_laughs_is_refused_at_the_first_alias(tmp_path, capsys):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}]" for i in range(1, 10)]
    cfg = tmp_path / "lol.yaml"
    cfg.write_text("wandb:\n  tags:\n" + "".join(f"    - {line}\n" for line in lines))
    code = cli(["run", "--methods", "nws", "--out", str(tmp_path / "o"), "--config", str(cfg), "--dry-run"])
    one_line_error(capsys, code, "alias *a0")


# -- 4. data: images and CIFAR ---------------------------------------------------------------------------------
def test_high_bit_depth_images_convert_exactly(tmp_path):
    from PIL import Image

    from benchmarks.imagefolder import open_rgb

    v16 = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)  # 0..65535 in steps of 257
    Image.fromarray(v16).save(tmp_path / "a.png")
    Image.fromarray(v16.astype(np.int32)).save(tmp_path / "b.tif")
    Image.fromarray(v16.astype(np.float32) / 65535).save(tmp_path / "c.tif")
    want = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for name in ("a.png", "b.tif", "c.tif"):
        got = np.asarray(open_rgb(str(tmp_path / name)))
        assert got.shape == (16, 16, 3) and (got == want[..., None]).all(), name
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "d.tif")
    Image.fromarray(np.full((4, 4), 3.5, np.float32)).save(tmp_path / "e.tif")
    for name in ("d.tif", "e.tif"):
        with pytest.raises(DataError, match="outside"):
            open_rgb(str(tmp_path / name))


@pytest.mark.parametrize("side", [12000, 30000])  # PIL itself only warns below 2 x its limit (12000: 144 Mpixel)
def test_decompression_bomb_header_is_refused_unread(tmp_path, side):
    import struct
    import zlib

    from benchmarks.imagefolder import open_rgb

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    (tmp_path / "bomb.png").write_bytes(png)
    with pytest.raises(DataError, match="decompression bomb"):
        open_rgb(str(tmp_path / "bomb.png"))


def test_symlink_loop_in_a_class_folder(tmp_path):
    from benchmarks.imagefolder import scan_split

    (tmp_path / "train" / "cat").mkdir(parents=True)
    os.symlink("loop.png", tmp_path / "train" / "cat" / "loop.png")
    os.symlink("dogs", tmp_path / "train" / "dogs")
    for _ in range(2):
        with pytest.raises(DataError, match="symbolic link loop"):
            scan_split(tmp_path / "train")
        (tmp_path / "train" / "cat" / "loop.png").unlink(missing_ok=True)


def _cifar(tmp_path, **changes):
    from benchmarks.synthetic import write_cifar100_pickles

    root = write_cifar100_pickles(tmp_path / "c", 1, 1)
    d = root / "cifar-100-python" if (root / "cifar-100-python").is_dir() else root
    for split, key, value in changes.get("edits", []):
        with open(d / split, "rb") as fh:
            obj = pickle.load(fh, encoding="latin1")
        obj[key] = value(obj[key])
        with open(d / split, "wb") as fh:
            pickle.dump(obj, fh)
    return d


@pytest.mark.parametrize("split, key, value, needle", [
    ("train", "data", lambda a: a.astype(np.float32), "float32 array"),
    ("train", "data", lambda a: a.astype(np.int32) + 200, "int32 array"),
    ("train", "fine_labels", lambda v: [float(x) for x in v], "expected integer labels"),
    ("meta", "fine_label_names", lambda v: [v[1]] + list(v[1:]), "twice"),
    ("train", "coarse_labels", lambda v: [[v]] * len(v), "expected integer labels"),
])
def test_cifar_pickle_contents_checked(tmp_path, split, key, value, needle):
    from benchmarks.cifar100 import read_pickles

    d = _cifar(tmp_path, edits=[(split, key, value)])
    with pytest.raises(DataError, match=needle):
        read_pickles(d, {})


def test_cifar_pickle_of_nested_shared_lists_is_refused_at_once(tmp_path):
    """279 bytes that expand to 2**40 references when walked: refused at the first item, not walked."""
    from benchmarks.cifar100 import _read_pickle_split

    inner = [0, 0]
    for _ in range(40):
        inner = [inner, inner]
    blob = pickle.dumps({"data": inner, "fine_labels": inner, "coarse_labels": inner}, protocol=2)
    assert len(blob) < 1000
    (tmp_path / "train").write_bytes(blob)
    with pytest.raises(DataError, match="'data' is list"):
        _read_pickle_split(tmp_path / "train")


# -- 5. signals ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_a_run_and_says_how_to_resume(tmp_path, sig, code):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "nws_avalanche", "run", "--methods", "finetune", "--out", str(out), "--no-report",
           "--set", "arch=resnet-tiny", "--set", "epochs=50", "--set", "pretrained=random",
           "--set", "benchmark_options.tasks=2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status = out / "split-digits" / "finetune" / "seed0" / "status.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if status.is_file() and json.loads(status.read_text() or "{}").get("state") == "running":
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    time.sleep(1.0)  # inside training
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"interrupted by {sig.name}" in lines[0] and "rerun nws-bench run --methods finetune" in lines[0]
    st = json.loads(status.read_text())
    assert st["state"] == "interrupted" and "rerun nws-bench run" in st["error"]
    assert not (out / "split-digits" / "finetune" / ".seed0.lock").exists()


# -- 6. small fixes --------------------------------------------------------------------------------------------
def _fake_result(path: Path, seed: int, T: int):
    from nws_avalanche.runner.results import RESULTS_FORMAT

    path.parent.mkdir(parents=True, exist_ok=True)
    acc = [[50.0] * T for _ in range(T)]
    path.write_text(json.dumps({
        "format": RESULTS_FORMAT, "benchmark": "split-digits", "method": "finetune", "seed": seed,
        "tasks": [f"t{i}" for i in range(T)], "accuracy_matrix": acc, "final_accuracy": acc[-1],
        "average_accuracy": 50.0, "train_seconds": [1.0] * T, "config": {}, "per_task": [{}] * T,
        "memory_mib": {"per_task": [1.0] * T, "assist": 0.0, "total": float(T)}}))


def test_report_over_seeds_with_different_task_counts(tmp_path, capsys):
    _fake_result(tmp_path / "r" / "seed0" / "results.json", 0, 2)
    _fake_result(tmp_path / "r" / "seed1" / "results.json", 1, 5)
    one_line_error(capsys, cli(["report", str(tmp_path / "r"), "--no-verify"]), "different tasks")


def test_report_out_an_existing_file(tmp_path, capsys):
    _fake_result(tmp_path / "r" / "seed0" / "results.json", 0, 2)
    (tmp_path / "file").write_text("x")
    one_line_error(capsys, cli(["report", str(tmp_path / "r"), "--no-verify", "--out", str(tmp_path / "file")]),
                   "is a file")
    assert (tmp_path / "file").read_text() == "x"


def test_data_generate_into_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    one_line_error(capsys, cli(["data", "generate", "--benchmark", "split-cifar100", "--data-root",
                                str(tmp_path / "f")]), "is a file")


def test_data_check_split_digits(capsys):
    assert cli(["data", "check", "--benchmark", "split-digits"]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")


def test_png_chunk_longer_than_its_file_is_refused_before_pillow_reads_it(tmp_path):
    # found by the image fuzzer: one flipped byte in a chunk length made Pillow read (allocate) ~4 GiB
    import struct

    from PIL import Image

    from benchmarks.imagefolder import open_rgb

    Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 257).save(tmp_path / "ok.png")
    data = bytearray((tmp_path / "ok.png").read_bytes())
    pos = data.index(b"IDAT") - 4
    data[pos:pos + 4] = struct.pack(">I", 0xFFFFFFF0)
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(DataError, match="IDAT.*more than the file holds") as e:
        open_rgb(str(tmp_path / "bad.png"))
    assert "\n" not in str(e.value)
    assert np.asarray(open_rgb(str(tmp_path / "ok.png"))).shape == (16, 16, 3)
