"""The paper's memory accounting (issue 16): each helper equals the authors' file written their way,
and every run records it beside the bytes on disk."""
from __future__ import annotations

import lzma

import numpy as np
import pytest
import torch
import torch.nn as nn

from nws_avalanche.nets.models import build_arch
from nws_avalanche.storage import paper_memory as paper


def test_codes_as_int16_lzma_equal_the_authors_file(tmp_path):
    gen = np.random.default_rng(0)
    codes = [gen.integers(0, 512, size=n) for n in (144, 2304, 10)]
    flat = np.concatenate(codes).astype(np.int16)
    with lzma.open(tmp_path / "0task_codes.lzma", "wb") as f:  # the authors' save_model_codes
        f.write(lzma.compress(flat.tobytes()))
    assert paper.lzma_int16_bytes(codes) == (tmp_path / "0task_codes.lzma").stat().st_size


def test_batchnorm_as_pickled_modules(tmp_path):
    model = build_arch("resnet-tiny", 3, 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_()
                m.weight.uniform_()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    # the authors' main.py saves task<t>_bns.pt; torch names the zip records after the file's stem, so the
    # stem in memory ("archive") is used here for a byte-exact comparison (the name costs bytes per record)
    torch.save(bns, tmp_path / "archive.pt")
    state = model.state_dict()
    bn, rest = paper.split_batchnorm(state)
    assert len(bn) == 5 * len(bns) and "fc.weight" in rest and not any("bn" in k for k in rest)
    assert paper.pickled_batchnorm_bytes(bn) == (tmp_path / "archive.pt").stat().st_size


def test_pools_with_ema_buffers_about_three_times_the_pools():
    tables = {"conv1": torch.randn(512, 9), "layer1.0.conv1": torch.randn(512, 9), "fc": torch.randn(512, 1)}
    raw = sum(t.numel() * 4 for t in tables.values())
    size = paper.pools_with_ema_bytes(tables)
    ema = sum(3 * t.numel() * 4 + 2 * t.shape[0] * 4 for t in tables.values())  # 3 d x K + 2 K floats
    assert ema <= size < ema + 20_000  # plus pickling overhead
    assert 2.5 * raw < size


def test_uint8_masks_one_byte_per_element(tmp_path):
    masks = {"conv1": np.ones((8, 3), dtype=np.uint8), "layer1.0.conv1": np.zeros((16, 8), dtype=np.uint8)}
    torch.save({k: torch.from_numpy(v) for k, v in masks.items()}, tmp_path / "archive.pt")
    assert paper.uint8_masks_bytes(masks) == (tmp_path / "archive.pt").stat().st_size


def test_report_shows_both_memory_columns(tmp_path):
    from nws_avalanche.common.atomic import atomic_write_json
    from reports.report import write_report
    from tests.test_reports import MIB, fake_result

    with_paper = fake_result("nws", 0, [70.0, 60.0], [100, 120], 50)
    with_paper["memory_mib"]["paper"] = {"per_task": [300 / MIB, 500 / MIB], "assist": 150 / MIB,
                                         "total": 950 / MIB, "bytes": {"per_task": [300, 500], "assist": 150}}
    without = fake_result("finetune", 0, [90.0, 80.0], [1000, 1000], 0)  # written before the column existed
    for r in (with_paper, without):
        atomic_write_json(tmp_path / "runs" / r["method"] / "seed0" / "results.json", r)
    out = tmp_path / "report"
    write_report([tmp_path / "runs"], out)
    md, csv, tex = ((out / f"memory.{ext}").read_text() for ext in ("md", "csv", "tex"))
    header = md.splitlines()[0]
    assert "paper total (MiB)" in header and "paper per task (MiB)" in header
    nws = next(line for line in md.splitlines() if "| nws" in line)
    assert f"{950 / MIB:.4f}" in nws and f"{400 / MIB:.4f}" in nws
    ft = next(line for line in md.splitlines() if "| finetune" in line)
    assert ft.rstrip(" |").split("|")[-2].strip() == "-"
    assert "paper_total_mib" in csv.splitlines()[0] and "paper total" in tex
