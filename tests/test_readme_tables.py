"""README tables are generated from runs: the block mechanism, and the README's reduced-config
table against a fresh run of the configuration it quotes (bit-identical on the same CPU kind,
thread setting and torch version; elsewhere the comparison is skipped, saying why)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nws_avalanche.common.errors import NWSError
from reports.load import load_results
from nws_avalanche.cli.readme import preset_sets
from reports.readme import block, environment_line, read_block, replace_block

ROOT = Path(__file__).resolve().parents[1]
NAME = "reduced-quickstart"


def test_block_replaced_between_markers_only(tmp_path):
    text = "intro\n<!-- generated:a -->\nold\n<!-- /generated:a -->\nmiddle\n<!-- generated:b -->\nkeep\n<!-- /generated:b -->\n"
    new = replace_block(text, "a", "| new |")
    assert read_block(new, "a") == "| new |" and read_block(new, "b") == "keep"
    assert new.replace("| new |", "old") == text
    assert replace_block(new, "a", "| new |") == new  # idempotent
    with pytest.raises(NWSError, match="no <!-- generated:c -->"):
        replace_block(text, "c", "x")


def test_readme_table_equals_a_fresh_run(tiny_runs, tmp_path):
    out, res = tiny_runs
    results = load_results([out])
    quoted = read_block((ROOT / "README.md").read_text(), NAME)
    assert quoted is not None, f"README.md lost its generated:{NAME} block"
    fresh = block(results, preset_sets)
    here = environment_line(results)
    if here not in quoted:  # another CPU kind / thread setting / torch: bytes are not guaranteed
        pytest.skip(f"README's {NAME} table was generated in another environment than this one ({here})")
    assert fresh == quoted
    for m in ("nws", "finetune"):
        assert f"| `{m}` | {res[m]['average_accuracy']:.2f} |" in fresh
    # the command line way: --check agrees, and a write reproduces the README byte for byte
    copy = tmp_path / "README.md"
    copy.write_text((ROOT / "README.md").read_text())
    for extra in (["--check"], []):
        rc = subprocess.run([sys.executable, "-m", "nws_avalanche", "readme", str(out), "--name", NAME,
                             "--readme", str(copy), *extra], cwd=ROOT, capture_output=True, text=True)
        assert rc.returncode == 0, rc.stderr
    assert copy.read_text() == (ROOT / "README.md").read_text()
