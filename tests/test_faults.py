"""Fault injection: every fault ends in a clear message and exit code 2, and every file written
before the fault is byte-identical afterwards (tiny network, embedded stream)."""
from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)

TINY = ["arch=resnet-tiny", "epochs=1", "pretrain_epochs=1", "pool_size=8", "benchmark_options.tasks=2",
        "batch_size=64"]
ROOT = Path(__file__).resolve().parent.parent


def tiny(**fixed):
    from nws_avalanche.config.run_config import build_config

    return build_config([], TINY, **fixed)


def cli_args(out, *extra, methods="finetune"):
    args = ["run", "--methods", methods, "--out", str(out), "--no-report"]
    for item in TINY:
        args += ["--set", item]
    return args + list(extra)


def run_cli(args, capsys):
    from nws_avalanche.cli import main

    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


def snapshot(root: Path) -> dict[str, bytes]:
    root = Path(root)
    # lock files come and go with the runs that hold them
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def without_timing(r):
    return {k: v for k, v in r.items() if k != "train_seconds"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished finetune run with its cached pretrained network (the reference, and the seed of
    every output folder below)."""
    from nws_avalanche.runner.run import run_single

    out = tmp_path_factory.mktemp("base")
    ref = run_single(tiny(method="finetune"), out, progress=False)
    return out, ref


def fresh_out(base, tmp_path, finished=False) -> Path:
    """An output folder holding the cached assets (and the finished runs if asked)."""
    src, _ = base
    out = tmp_path / "out"
    if finished:
        shutil.copytree(src, out)
    else:
        shutil.copytree(src / "split-digits" / "_assist", out / "split-digits" / "_assist")
    return out


# -- 14.5 / 12.3: every setting checked before any work ---------------------------------------------
BAD_SETTINGS = [
    ("finetune", "eval_batch_size=0", r"eval_batch_size must be >= 1"),
    ("finetune", "momentum=-5", r"momentum must be in \[0, 1\)"),
    ("finetune", "lr=inf", r"'lr': expects a finite number"),
    ("finetune", "lr=.nan", r"'lr': expects a finite number"),
    ("finetune", "nesterov=maybe", r"'nesterov': expects true or false, got 'maybe'"),
    ("finetune", "epochs=2.5", r"'epochs': expects an integer"),
    ("finetune", "allow_nonfinite=sometimes", r"'allow_nonfinite': expects true or false"),
    ("finetune", "milestones=", r"'milestones': expects a value \(list\[int\]\), got nothing"),
    ("packnet", "packnet.retrain_epochs=3.5", r"'packnet.retrain_epochs': expects an integer, got 3.5"),
    ("packnet", "packnet.prune_ratio=inf", r"'packnet.prune_ratio': expects a finite number"),
    ("nws", "nws.codec=foo", r"nws.codec must be one of .*rans16.* \(got 'foo'\)"),
    ("nws", "nws.init=foo", r"nws.init must be one of previous, pretrained, random \(got 'foo'\)"),
    ("nws", "nws.include_head=maybe", r"'nws.include_head': expects true or false"),
    ("finetune", "benchmark_options.taks=2", r"split-digits: unknown benchmark_options option\(s\) "
                                             r"benchmark_options.taks; known: image_size, tasks"),
    ("finetune", "benchmark_options.tasks=3", r"benchmark_options.tasks must divide 10"),
    ("finetune", "arch=resnet-tiniest", r"unknown architecture 'resnet-tiniest'"),
    ("finetune", "slurm.time_min=soon", r"'slurm.time_min': expects an integer"),
]


@pytest.mark.parametrize("method,setting,message", BAD_SETTINGS, ids=[s for _, s, _ in BAD_SETTINGS])
def test_bad_setting_stops_before_anything_is_written(base, tmp_path, capsys, method, setting, message):
    out = tmp_path / "new"
    rc, text = run_cli(cli_args(out, "--set", setting, methods=method), capsys)
    assert rc == 2 and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1
    assert re.search(message, text), text
    assert not out.exists()  # nothing written, so the corrected rerun is not blocked


def test_bad_setting_leaves_a_finished_output_byte_identical(base, tmp_path, capsys):
    out = fresh_out(base, tmp_path, finished=True)
    before = snapshot(out)
    for setting in ("momentum=-5", "nws.codec=foo", "lr=inf"):
        rc, text = run_cli(cli_args(out, "--set", setting, methods="finetune,nws"), capsys)
        assert rc == 2
    assert snapshot(out) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_on_a_machine_without_gpu(tmp_path, capsys):
    out = tmp_path / "new"
    rc, text = run_cli(cli_args(out, "--set", "device=cuda"), capsys)
    assert rc == 2 and "'device': 'cuda' but this machine has no usable CUDA GPU; use --set device=cpu" in text
    assert not out.exists()


def test_strict_types_accept_the_plain_spellings():
    cfg = tiny(method="packnet", lr="1e-3", nesterov="false", epochs=3.0)
    assert cfg.lr == 1e-3 and cfg.nesterov is False and cfg.epochs == 3 and type(cfg.epochs) is int
    from nws_avalanche.config.run_config import build_config

    c = build_config([], TINY + ["packnet.retrain_epochs=2", "milestones=1,2"])
    assert c.milestones == [1, 2] and c.method_options["packnet"]["retrain_epochs"] == 2


# -- 12.1: unwritable or full output ------------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_out_under_proc(tmp_path, capsys):
    rc, text = run_cli(cli_args("/proc/x"), capsys)
    assert rc == 2 and "cannot write to output folder /proc/x" in text and "Traceback" not in text


def test_out_below_a_file(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("keep")
    rc, text = run_cli(cli_args(f / "out"), capsys)
    assert rc == 2 and f"cannot write to output folder {f / 'out'}" in text and "not a folder" in text
    assert f.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize("err,cause", [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied"),
                                       (errno.ENOSPC, "no space left on device")])
def test_unwritable_out_stops_before_training(base, tmp_path, capsys, monkeypatch, err, cause):
    """A read-only, forbidden or full folder (simulated: tests may run as root, who may write anywhere)."""
    import nws_avalanche.common.atomic as atomic

    out = fresh_out(base, tmp_path, finished=True)
    before = snapshot(out)
    real = atomic.tempfile.mkstemp

    def refuse(*a, dir=None, **kw):
        if Path(dir).resolve().is_relative_to(out.resolve()):
            raise OSError(err, os.strerror(err))
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    trained = []
    monkeypatch.setattr("nws_avalanche.runner.run._train", lambda *a, **k: trained.append(1))
    rc, text = run_cli(cli_args(out, "--seeds", "1"), capsys)  # seed 1: not finished yet
    assert rc == 2 and f"cannot write to output folder {out}: {cause}" in text
    assert trained == [] and snapshot(out) == before


def test_disk_full_mid_run_keeps_everything_and_the_rerun_resumes(base, tmp_path, capsys, monkeypatch):
    """The disk fills while task 1's artifact is written: exit 2 naming it; task 0's files and the
    checkpoint stay as they were; once space is back, the rerun resumes at task 1 with the
    uninterrupted run's results."""
    import nws_avalanche.common.atomic as atomic
    from nws_avalanche.runner.run import run_dir, run_single

    _, ref = base
    out = fresh_out(base, tmp_path)
    cfg = tiny(method="finetune")
    rdir = run_dir(out, cfg)
    disk = {"full": False, "at_fault": None}
    real_fsync = atomic.os.fsync

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if disk["full"] or ".task001.dense." in name:
            if not disk["full"]:
                disk["full"], disk["at_fault"] = True, {k: v for k, v in snapshot(out).items()
                                                        if not Path(k).name.startswith(".task001")}
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    rc, text = run_cli(cli_args(out), capsys)
    assert rc == 2 and f"cannot write {rdir / 'artifacts' / 'task001.dense'}: no space left on device" in text
    assert "Traceback" not in text
    assert {"split-digits/finetune/seed0/checkpoint.pt",
            "split-digits/finetune/seed0/artifacts/task000.dense"} <= set(disk["at_fault"])
    assert snapshot(out) == disk["at_fault"]  # no temp file left, nothing changed
    monkeypatch.setattr(atomic.os, "fsync", real_fsync)  # space freed
    seen = []
    resumed = run_single(cfg, out, progress=False, callbacks=[lambda t, acc, s: seen.append(t)])
    assert seen == [1]
    assert without_timing(resumed) == without_timing(ref)


def test_a_writer_that_wraps_enospc_is_still_named(tmp_path, monkeypatch):
    """torch.save reports a full disk as a RuntimeError: the disk itself is asked."""
    import nws_avalanche.common.atomic as atomic
    from nws_avalanche.common.errors import OutputError

    target = tmp_path / "pretrained.pt"
    target.write_bytes(b"old")

    def wrapped(fh):
        fh.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")

    with pytest.raises(RuntimeError):  # a disk with room: a real bug, not hidden
        atomic.atomic_write(target, wrapped)

    class Full:
        f_bavail, f_frsize = 0, 4096
    monkeypatch.setattr(atomic.os, "statvfs", lambda folder: Full)
    with pytest.raises(OutputError, match=f"cannot write {target}: no space left on device"):
        atomic.atomic_write(target, wrapped)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["pretrained.pt"]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1.2 MB file system (root with mount rights only): room for the cached network and one
    task artifact, not for the checkpoint after it."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_real_full_disk_then_rerun_after_freeing_space(base, small_tmpfs, capsys):
    src, ref = base
    out = small_tmpfs / "out"
    shutil.copytree(src / "split-digits" / "_assist", out / "split-digits" / "_assist")
    rc, text = run_cli(cli_args(out), capsys)
    assert rc == 2 and "no space left on device" in text and "Traceback" not in text
    rdir = out / "split-digits" / "finetune" / "seed0"
    st = json.loads((rdir / "status.json").read_text())
    assert st["state"] in ("failed", "running")  # failed, unless the disk had no room for that either
    assert not [p for p in out.rglob(".*.tmp")]  # no half-written file left
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)], check=True)  # space freed
    rc, text = run_cli(cli_args(out), capsys)
    assert rc == 0, text
    assert without_timing(json.loads((rdir / "results.json").read_text())) == without_timing(ref)


def test_real_read_only_folder(base, tmp_path, capsys):
    """A read-only file system, mounted for real where the tests may (chmod does not stop root)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root and mount rights)")
    try:
        rc, text = run_cli(cli_args(mnt / "out"), capsys)
        assert rc == 2 and f"cannot write to output folder {mnt / 'out'} ({mnt}): read-only file system" in text
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# -- 12.4: non-finite loss or weights ----------------------------------------------------------------
def _poison_after_task(k):
    def cb(t, acc, strategy):
        if t == k:  # from the next task on, every loss is NaN
            real = strategy._criterion
            strategy._criterion = lambda out, y: real(out, y) * float("nan")
            cb.snapshot = snapshot(cb.out)
    return cb


def test_nan_loss_stops_the_task_and_keeps_the_earlier_ones(base, tmp_path, capsys):
    from nws_avalanche.cli.status import main as status_main
    from nws_avalanche.common.errors import DivergedError, NWSError
    from nws_avalanche.runner.run import run_dir, run_single

    out = fresh_out(base, tmp_path)
    cfg = tiny(method="finetune")
    cb = _poison_after_task(0)
    cb.out = out
    with pytest.raises(DivergedError, match=r"task 1, epoch 1 of 1, iteration 1: the loss is nan") as e:
        run_single(cfg, out, progress=False, callbacks=[cb])
    assert isinstance(e.value, NWSError)  # the CLI's exit 2
    after = snapshot(out)
    status = "split-digits/finetune/seed0/status.json"
    assert {k: v for k, v in after.items() if k != status} == {k: v for k, v in cb.snapshot.items() if k != status}
    st = json.loads(after[status])
    assert st["state"] == "failed" and st["next_task"] == 1 and "iteration 1: the loss is nan" in st["error"]
    assert (run_dir(out, cfg) / "checkpoint.pt").is_file()

    class Args:
        dir, lines = str(out), 8
    assert status_main(Args()) == 1
    shown = capsys.readouterr().out
    assert "failed" in shown and "task 1, epoch 1 of 1, iteration 1: the loss is nan" in shown


def test_diverging_lr_exits_2_and_status_says_why(base, tmp_path, capsys):
    out = fresh_out(base, tmp_path)
    before = snapshot(out)
    rc, text = run_cli(cli_args(out, "--set", "lr=1e6"), capsys)
    assert rc == 2 and "task 0, epoch 1 of 1, iteration" in text and "training diverged (lr=1e+06)" in text
    assert "allow_nonfinite=true" in text and "Traceback" not in text
    after = snapshot(out)
    assert {k: after[k] for k in before} == before  # the cached assets are untouched
    from nws_avalanche.cli import main

    assert main(["status", str(out)]) == 1
    assert "training diverged" in capsys.readouterr().out


def test_allow_nonfinite_goes_on_regardless(base, tmp_path, capsys):
    out = fresh_out(base, tmp_path)
    rc, text = run_cli(cli_args(out, "--set", "lr=1e6", "--set", "allow_nonfinite=true"), capsys)
    assert rc == 0 and "continuing because allow_nonfinite=true" in text
    res = json.loads((out / "split-digits" / "finetune" / "seed0" / "results.json").read_text())
    assert res["config"]["allow_nonfinite"] is True


def test_nonfinite_weights_are_named():
    from nws_avalanche.nets.models import build_arch
    from nws_avalanche.strategies.guard import first_nonfinite

    m = build_arch("resnet-tiny", 3, 1)
    assert first_nonfinite(m) is None
    name, buf = next((n, b) for n, b in m.named_buffers() if b.is_floating_point())
    buf.view(-1)[0] = float("inf")
    assert first_nonfinite(m) == name


# -- 12.5: no code from data files --------------------------------------------------------------------
class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # what a crafted file does: call a function of its choice on load
        return (os.mkdir, (self.path,))


def test_crafted_cifar_pickle_runs_no_code(tmp_path, capsys):
    from benchmarks.synthetic import write_cifar100_pickles

    d = write_cifar100_pickles(tmp_path / "data", 1, 1)
    marker = tmp_path / "pwned"
    with open(d / "train", "rb") as fh:
        blob = pickle.load(fh)  # our own generated file
    blob["batch_label"] = _Marker(str(marker))
    with open(d / "train", "wb") as fh:
        pickle.dump(blob, fh, protocol=2)
    out = tmp_path / "out"
    rc, text = run_cli(["run", "--methods", "finetune", "--out", str(out), "--benchmark", "split-cifar100",
                        "--data-root", str(tmp_path / "data"), "--set", "pretrained=random"], capsys)
    assert rc == 2 and not marker.exists() and not out.exists()
    assert f"{d / 'train'}: refused, not a genuine CIFAR-100 file: it asks for {os.mkdir.__module__}.mkdir" in text
    assert "re-extract" in text


def test_plain_unpickler_reads_what_cifar_files_hold():
    import io

    import numpy as np

    from nws_avalanche.common.safepickle import ForbiddenPickle, load_plain

    obj = {b"data": np.arange(24, dtype=np.uint8).reshape(2, 12), b"fine_labels": [3, 7],
           b"filenames": [b"a.png", b"b.png"], "names": ["apple"], "n": np.int64(5), "s": {1, 2}}
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        got = load_plain(io.BytesIO(pickle.dumps(obj, protocol=proto)), encoding="latin1")
        assert got.keys() == obj.keys() and np.array_equal(got[b"data"], obj[b"data"])
        assert got[b"filenames"] == obj[b"filenames"] and got["n"] == 5 and got["s"] == {1, 2}
    # the real files were written by Python 2's numpy: module numpy.core.multiarray
    py2 = pickle.dumps(obj, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert np.array_equal(load_plain(io.BytesIO(py2), encoding="latin1")[b"data"], obj[b"data"])
    for evil in (os.system, eval, getattr, subprocess.Popen):
        class E:
            def __reduce__(self, f=evil):
                return (f, ("true",))
        with pytest.raises(ForbiddenPickle, match=f"asks for .*{evil.__name__}"):
            load_plain(io.BytesIO(pickle.dumps([E()], protocol=2)))


# -- 12.6: one run per folder -------------------------------------------------------------------------
HOLDER = """
import sys, time
from pathlib import Path
from nws_avalanche.runner.runlock import run_folder_lock
with run_folder_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_second_run_into_a_folder_stops_and_a_killed_holder_is_taken_over(base, tmp_path, capsys):
    from nws_avalanche.runner.run import run_dir
    from nws_avalanche.runner.runlock import lock_path

    out = fresh_out(base, tmp_path)
    rdir = run_dir(out, tiny(method="finetune"))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(rdir)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(out)
        rc, text = run_cli(cli_args(out), capsys)
        assert rc == 2 and f"{rdir} is in use by process {holder.pid} on " in text and "Traceback" not in text
        assert snapshot(out) == before
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: its lock file stays behind
        holder.wait()
    assert lock_path(rdir).is_file()
    rc, text = run_cli(cli_args(out), capsys)
    assert rc == 0, text
    assert (rdir / "results.json").is_file() and not lock_path(rdir).exists()


def test_lock_in_process(tmp_path):
    from nws_avalanche.common.errors import ConfigError
    from nws_avalanche.runner.runlock import run_folder_lock

    rdir = tmp_path / "a" / "b" / "seed0"
    with run_folder_lock(rdir):
        with pytest.raises(ConfigError, match=f"in use by process {os.getpid()} "):
            with run_folder_lock(rdir):
                pass
    assert not (tmp_path / "a").exists()  # folders made only for the lock are gone again
    with run_folder_lock(rdir):  # and it can be taken again
        pass


# -- 14.8: files honour the umask ---------------------------------------------------------------------
def test_atomic_files_honour_the_umask(tmp_path):
    from nws_avalanche.common.atomic import atomic_write_json, atomic_write_text

    old = os.umask(0o022)
    try:
        p = atomic_write_json(tmp_path / "results.json", {"a": 1})
        assert p.stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        q = atomic_write_text(tmp_path / "private.txt", "x")
        assert q.stat().st_mode & 0o777 == 0o600
        os.chmod(p, 0o640)  # an existing file keeps its mode, as with open(path, "w")
        atomic_write_json(p, {"a": 2})
        assert p.stat().st_mode & 0o777 == 0o640 and json.loads(p.read_text()) == {"a": 2}
    finally:
        os.umask(old)


def test_run_files_are_readable_by_the_group_under_umask_022(base, tmp_path):
    from nws_avalanche.runner.run import run_dir, run_single

    old = os.umask(0o022)
    try:
        out = fresh_out(base, tmp_path)
        cfg = tiny(method="finetune", seed=3)
        run_single(cfg, out, progress=False)
    finally:
        os.umask(old)
    rdir = run_dir(out, cfg)
    for name in ("results.json", "config.yaml", "status.json", "artifacts/task000.dense"):
        assert (rdir / name).stat().st_mode & 0o777 == 0o644, name
