"""What is on disk is checked before it is trusted: checkpoints run no code, cached files and
finished runs' artifacts are verified against checksums, and the advice in each message works."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)

TINY = ["arch=resnet-tiny", "epochs=1", "pretrain_epochs=1", "pool_size=8", "benchmark_options.tasks=2",
        "batch_size=64"]


def cfg_for(method, *sets):
    from nws_avalanche.config.run_config import build_config

    return build_config([], [*TINY, *sets], method=method)


def cli_run(out, method, capsys, *extra):
    from nws_avalanche.cli import main

    args = ["run", "--methods", method, "--out", str(out), "--no-report", *extra]
    for item in TINY:
        args += ["--set", item]
    code = main(args)
    return code, capsys.readouterr().err


def snapshot(rdir):
    return {p.relative_to(rdir).as_posix(): p.read_bytes() for p in sorted(rdir.rglob("*"))
            if p.is_file() and p.name != "status.json"}


class Stop(Exception):
    pass


def stop_after_first(t, acc, strategy):
    if t == 0:
        raise Stop("simulated loss of the node")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished NWS run and an NWS run stopped after its first task, sharing one _assist cache."""
    from nws_avalanche.runner.run import run_dir, run_single

    out = tmp_path_factory.mktemp("trust")
    full = run_single(cfg_for("nws"), out / "full", progress=False)
    shutil.copytree(out / "full" / "split-digits" / "_assist", out / "cut" / "split-digits" / "_assist")
    with pytest.raises(Stop):
        run_single(cfg_for("nws"), out / "cut", progress=False, callbacks=[stop_after_first])
    return out, full, run_dir(out / "full", cfg_for("nws")), run_dir(out / "cut", cfg_for("nws"))


def copy_out(src, tmp_path):
    dst = tmp_path / "out"
    shutil.copytree(src, dst)
    return dst


def test_crafted_checkpoint_runs_no_code(finished, tmp_path, capsys):
    from nws_avalanche.runner.run import run_dir

    out = copy_out(finished[0] / "cut", tmp_path)
    rdir = run_dir(out, cfg_for("nws"))
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": 2, "strategy": Payload()}, rdir / "checkpoint.pt")
    before = snapshot(rdir)
    code, err = cli_run(out, "nws", capsys)
    assert code == 2 and not marker.exists()
    assert "checkpoint.pt" in err and "--overwrite" in err and "Traceback" not in err
    assert snapshot(rdir) == before  # the finished task's files and the checkpoint are untouched


def test_checkpoint_without_strategy_then_deleted_as_advised(finished, tmp_path, capsys):
    from nws_avalanche.runner.run import run_dir, run_single

    out = copy_out(finished[0] / "cut", tmp_path)
    rdir = run_dir(out, cfg_for("nws"))
    payload = torch.load(rdir / "checkpoint.pt", weights_only=True)
    del payload["strategy"]
    torch.save(payload, rdir / "checkpoint.pt")
    before = snapshot(rdir)
    code, err = cli_run(out, "nws", capsys)
    assert code == 2 and f"{rdir / 'checkpoint.pt'}" in err and "lacks 'strategy'" in err
    assert "delete checkpoint.pt to restart the run from its last finished task" in err and "--overwrite" in err
    assert snapshot(rdir) == before
    # the advice works: without the checkpoint the run continues from task 0's files, exactly
    (rdir / "checkpoint.pt").unlink()
    seen = []
    r = run_single(cfg_for("nws"), out, progress=False, callbacks=[lambda t, acc, s: seen.append(t)])
    assert seen == [1]
    assert r["accuracy_matrix"] == finished[1]["accuracy_matrix"]
    assert r["artifact_sha256"] == finished[1]["artifact_sha256"]


def test_results_record_every_artifact_digest(finished):
    _, full, rdir, _ = finished
    on_disk = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (rdir / "artifacts").iterdir()}
    assert full["artifact_sha256"] == on_disk and set(on_disk) == {"task000.nwst", "task001.nwst", "pools.nwsp"}


@pytest.mark.parametrize("prefix", ["pretrained-", "pools-"])
def test_flipped_byte_in_a_cached_file_stops_the_next_run(finished, tmp_path, capsys, prefix):
    out = tmp_path / "out"
    shutil.copytree(finished[0] / "full" / "split-digits" / "_assist", out / "split-digits" / "_assist")
    cached = next((out / "split-digits" / "_assist").glob(prefix + "*"))
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0x40  # a byte in the tensors, e.g. an exponent
    cached.write_bytes(bytes(data))
    code, err = cli_run(out, "nws", capsys)
    assert code == 2 and str(cached) in err and "checksum mismatch" in err and "delete" in err
    assert not (out / "split-digits" / "nws").exists()  # refused before the run folder was made


@pytest.mark.parametrize("name, damage", [("task001.nwst", "truncate"), ("pools.nwsp", "flip")])
def test_damaged_artifact_of_a_finished_run(finished, tmp_path, capsys, name, damage):
    from nws_avalanche.cli import main
    from nws_avalanche.runner.run import run_dir

    out = copy_out(finished[0] / "full", tmp_path)
    rdir = run_dir(out, cfg_for("nws"))
    path = rdir / "artifacts" / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40] if damage == "truncate" else
                     data[:100] + bytes([data[100] ^ 1]) + data[101:])
    before = snapshot(rdir)
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "sha256 differs" in err and "delete it and rerun" in err
    assert not (tmp_path / "rep").exists()
    code, err = cli_run(out, "nws", capsys)
    assert code == 2 and str(path) in err
    assert snapshot(rdir) == before
    assert main(["report", str(out), "--out", str(tmp_path / "rep"), "--no-verify"]) == 0
    assert cli_run(out, "nws", capsys, "--no-verify")[0] == 0  # skipped unchecked, as asked
    assert snapshot(rdir) == before
    # the advice works: delete it and rerun -> the same results and files as before the damage
    path.unlink()
    code, _ = cli_run(out, "nws", capsys)
    assert code == 0
    assert path.read_bytes() == data
    r = json.loads((rdir / "results.json").read_text())
    assert r["accuracy_matrix"] == finished[1]["accuracy_matrix"]
    assert r["artifact_sha256"] == finished[1]["artifact_sha256"]


def test_evaluation_reads_the_pool_file_in_artifacts(finished, tmp_path):
    """The run folder's pools.nwsp is what rebuilds a task, not the _assist cache it was copied from."""
    from benchmarks import build_benchmark
    from nws_avalanche.common.errors import ArtifactError
    from nws_avalanche.pools.pool_set import PoolSet
    from nws_avalanche.pools.pretrained import prepare_assets
    from nws_avalanche.runner.factory import build_strategy
    from nws_avalanche.strategies.methods import load_all

    out = copy_out(finished[0] / "full", tmp_path)
    art = finished[2].relative_to(finished[0] / "full")
    art = out / art / "artifacts"
    cfg = cfg_for("nws")
    load_all()
    bench = build_benchmark(cfg)
    assets = prepare_assets(cfg, bench, out / "split-digits" / "_assist", need_pools=True)
    nws = build_strategy(cfg, assets, [t.num_classes for t in bench.tasks])
    nws.rebuild_task(1, art)
    other = PoolSet.load(art / "pools.nwsp")
    first = next(iter(other.tables))
    other.tables[first] = other.tables[first] + 1.0
    other.save(art / "pools.nwsp")  # a valid pool file, but not the one the tasks were stored against
    with pytest.raises(ArtifactError, match="other pools"):
        nws.rebuild_task(1, art)


def test_shared_pretrained_file_is_checked_against_its_sidecar(tmp_path):
    """``pretrain-pools`` writes ``pretrained.pt.sha256`` beside its torchvision-format output."""
    from nws_avalanche.common.errors import ArtifactError
    from nws_avalanche.nets.models import build_arch
    from nws_avalanche.pools.pretrained import load_torchvision_state, write_sha256_sidecar

    path = tmp_path / "pretrained.pt"
    torch.save(build_arch("resnet-tiny", 3, in_channels=1).state_dict(), path)
    write_sha256_sidecar(path)
    state, classes = load_torchvision_state(str(path), build_arch("resnet-tiny", 1, in_channels=1))
    assert classes == 3
    data = bytearray(path.read_bytes())
    data[-200] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"pretrained\.pt: its sha256 differs from .*pretrained\.pt\.sha256"):
        load_torchvision_state(str(path), build_arch("resnet-tiny", 1, in_channels=1))


def test_middle_task_deleted_retrains_from_there(finished, tmp_path):
    """5 tasks, PackNet (state carried across tasks in the shared backbone): task 2's file deleted
    from the finished run -> tasks 2..4 retrained from task 1's state, same results and bytes."""
    from nws_avalanche.runner.run import run_dir, run_single

    out = tmp_path / "out"
    shutil.copytree(finished[0] / "full" / "split-digits" / "_assist", out / "split-digits" / "_assist")
    cfg = cfg_for("packnet", "benchmark_options.tasks=5")
    full = run_single(cfg, out, progress=False)
    rdir = run_dir(out, cfg)
    before = snapshot(rdir / "artifacts")
    (rdir / "artifacts" / "task002.packnet").unlink()
    seen = []
    again = run_single(cfg, out, progress=False, callbacks=[lambda t, acc, s: seen.append(t)])
    assert seen == [2, 3, 4]
    assert again["accuracy_matrix"] == full["accuracy_matrix"] and again["per_task"] == full["per_task"]
    assert snapshot(rdir / "artifacts") == before


def test_unreadable_results_json_is_rebuilt_as_advised(finished, tmp_path, capsys):
    from nws_avalanche.runner.run import run_dir

    out = copy_out(finished[0] / "full", tmp_path)
    rdir = run_dir(out, cfg_for("nws"))
    text = (rdir / "results.json").read_text()
    (rdir / "results.json").write_text(text[: len(text) // 2])
    code, err = cli_run(out, "nws", capsys)
    assert code == 2 and str(rdir / "results.json") in err and "delete it and rerun" in err
    (rdir / "results.json").unlink()
    code, _ = cli_run(out, "nws", capsys)
    assert code == 0
    r = json.loads((rdir / "results.json").read_text())
    assert {k: v for k, v in r.items() if k != "train_seconds"} == \
        {k: v for k, v in finished[1].items() if k != "train_seconds"}
