"""Feedback off a terminal (issue 14, item 7): a run and a report whose stdout is a log file print
one line per pretraining epoch, pool layer, training epoch, task and figure group; on a terminal
they print none of those lines (bars go to stderr)."""
from __future__ import annotations

import io
import re

from nws_avalanche.common.feedback import Steps

SETS = ["arch=resnet-tiny", "epochs=2", "pretrain_epochs=2", "pool_size=8", "benchmark_options.tasks=2",
        "benchmark_options.image_size=8", "batch_size=128"]


def test_run_and_report_print_lines_when_stdout_is_not_a_terminal(tmp_path, capsys, one_thread):
    from nws_avalanche.cli import main

    args = ["run", "--methods", "nws", "--out", str(tmp_path), "--no-report"]
    for s in SETS:
        args += ["--set", s]
    assert main(args) == 0
    out = capsys.readouterr().out
    for pattern in [r"pretraining resnet-tiny on split-digits: epoch 1/2: loss [\d.]+ \(",
                    r"pretraining resnet-tiny on split-digits: epoch 2/2: loss",
                    r"k-means pools \(K=8\): layer 1/\d+: conv1",
                    r"nws task 0 epoch 1/2: loss [\d.]+ \(", r"nws task 0 epoch 2/2: loss",
                    r"nws task 1 epoch 2/2: loss", r"nws task 1: trained 2 epochs in [\d.]+ s",
                    r"nws seed 0 after task 0 \(1/2\): accuracy on tasks 0..0: [\d.]+\n",
                    r"nws seed 0 after task 1 \(2/2\): accuracy on tasks 0..1: [\d.]+ [\d.]+\n"]:
        assert re.search(pattern, out), f"no line matching {pattern!r} in:\n{out}"
    assert "\r" not in out  # no bar redraws in a log file
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    for pattern in [r"report: tables \(", r"report: split-digits nws: accuracy matrix \(",
                    r"report: split-digits nws: selection rates, 2 tasks \("]:
        assert re.search(pattern, out), f"no line matching {pattern!r} in:\n{out}"


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_steps_print_lines_only_off_a_terminal(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr("sys.stdout", log)
    steps = Steps("epoch", 3)
    for i in range(3):
        steps.step(f"loss {i}")
    assert re.findall(r"epoch (\d)/3: loss (\d)", log.getvalue()) == [("1", "0"), ("2", "1"), ("3", "2")]
    tty = FakeTerminal()
    monkeypatch.setattr("sys.stdout", tty)
    steps = Steps("epoch", 3)
    steps.step("loss 0")
    steps.close()
    assert tty.getvalue() == ""  # a bar (on stderr), no lines
    quiet = Steps("epoch", 3, enabled=False)
    quiet.step()
    assert quiet.bar is None and tty.getvalue() == ""
