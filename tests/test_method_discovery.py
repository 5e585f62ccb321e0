"""Adding a method is adding one file: every module in ``baselines/`` is imported by
``load_all``, so a new file that registers itself shows up by name in ``METHODS``."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NEW_METHOD = '''
from nws_avalanche.strategies.methods import METHODS
from baselines.finetune import Finetune


@METHODS.register("finetune-copy")
class FinetuneCopy(Finetune):
    name = "finetune-copy"
'''


def test_a_new_file_in_baselines_registers_its_method(tmp_path):
    shutil.copytree(ROOT / "baselines", tmp_path / "baselines", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "baselines" / "finetune_copy.py").write_text(NEW_METHOD)
    code = ("import baselines, sys; from nws_avalanche.strategies.methods import METHODS, load_all; load_all(); "
            "assert baselines.__file__.startswith(sys.argv[1]), baselines.__file__; print(sorted(METHODS.names()))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    names = eval(out.stdout.strip().splitlines()[-1])
    assert "finetune-copy" in names and {"nws", "finetune", "packnet", "ksm", "aqd", "frozen"} <= set(names)
