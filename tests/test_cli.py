"""CLI: bad input gives a clear message and a non-zero exit; nothing already written is lost."""
import subprocess
import sys
from pathlib import Path

import pytest

from nws_avalanche.cli import main
from nws_avalanche.nets.models import build_arch
from nws_avalanche.pools.pool_set import build_pools_kmeans

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "arch=resnet-tiny", "--set", "epochs=1", "--set", "pretrain_epochs=1", "--set", "pool_size=8",
        "--set", "benchmark_options.tasks=2"]


def run_cli(args, capsys):
    code = main(args)
    return code, capsys.readouterr()


@pytest.mark.parametrize("args, message", [
    (["--methods", "nope"], "unknown method 'nope'"),
    (["--benchmark", "nope"], "unknown benchmark 'nope'"),
    (["--set", "pool_size=1"], "pool_size must be >= 2"),
    (["--set", "beta=-0.1"], "beta must be >= 0"),
    (["--set", "nonsense=3"], "unknown config key"),
    (["--set", "nws.bogus=3"], "unknown nws option(s) nws.bogus; known: codec, include_head, init, search"),
    (["--set", "epochs=many"], "epochs"),
])
def test_bad_input_is_a_clear_error(tmp_path, capsys, args, message):
    code, out = run_cli(["run", "--out", str(tmp_path / "o"), "--methods", "nws", *TINY, *args], capsys)
    assert code == 2
    assert message in out.err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("results.json"))


def test_pool_file_for_another_architecture(tmp_path, capsys):
    pools = build_pools_kmeans(build_arch("resnet18-narrow", 10, in_channels=1), "resnet18-narrow", K=8, iters=1)
    pf = pools.save(tmp_path / "other.nwsp")
    code, out = run_cli(["run", "--out", str(tmp_path / "o"), "--methods", "nws", *TINY,
                         "--set", f"pool_file={pf}", "--no-report"], capsys)
    assert code == 2 and "does not fit layer" in out.err and "conv1" in out.err


def test_corrupted_pool_file(tmp_path, capsys):
    pf = tmp_path / "bad.nwsp"
    pf.write_bytes(b"NWSAVL\x00\x01garbage" * 10)
    code, out = run_cli(["run", "--out", str(tmp_path / "o"), "--methods", "nws", *TINY,
                         "--set", f"pool_file={pf}", "--no-report"], capsys)
    assert code == 2 and str(pf) in out.err


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nws_avalanche", "run", "--methods", "bogus", "--out",
                           str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "unknown method" in proc.stderr and "Traceback" not in proc.stderr


def test_report_from_results(tiny_runs, tmp_path, capsys):
    out, _ = tiny_runs
    code, printed = run_cli(["report", str(out), "--out", str(tmp_path / "rep")], capsys)
    assert code == 0
    rep = tmp_path / "rep"
    acc = (rep / "accuracy.csv").read_text()
    assert "nws" in acc and "finetune" in acc
    assert (rep / "memory.md").is_file() and (rep / "report.md").is_file()
    figs = sorted(rep.glob("selection_split-digits_nws_seed0_task*.png"))
    assert len(figs) == 2 and all(f.stat().st_size > 1000 for f in figs)
    assert (rep / "selection_split-digits_nws_seed0.csv").is_file()


def test_summary_table_lists_every_finished_run(capsys):
    from nws_avalanche.cli.run import print_summary
    from nws_avalanche.runner.launch import Outcome

    print_summary([Outcome("split-digits/nws/seed0", True, {"run": "split-digits/nws/seed0", "average_accuracy": 99.333,
                                                           "mib_per_task": 0.12321, "total_mib": 1.0043}),
                   Outcome("split-digits/finetune/seed0", True, {"run": "split-digits/finetune/seed0",
                                                                "average_accuracy": 99.55, "mib_per_task": 2.6942,
                                                                "total_mib": 13.4708})])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["run", "avg", "acc", "%", "MiB/task", "total", "MiB"]
    assert lines[1].split() == ["split-digits/nws/seed0", "99.33", "0.1232", "1.0043"]
    assert lines[2].split() == ["split-digits/finetune/seed0", "99.55", "2.6942", "13.4708"]
