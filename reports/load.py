"""Find and read ``results.json`` files."""
from __future__ import annotations

from pathlib import Path

from nws_avalanche.common.errors import NWSError
from nws_avalanche.common.untrusted import read_json
from nws_avalanche.storage.run_files import RESULTS_SCHEMA, check_results_shape


def find_results(roots) -> list[Path]:
    paths = []
    for root in roots:
        root = Path(root)
        if root.is_file() and root.name == "results.json":
            paths.append(root)
        elif root.is_dir():
            paths += sorted(p for p in root.rglob("results.json"))
        else:
            raise NWSError(f"{root}: no such folder or results.json file")
    return paths


def load_results(roots) -> list[dict]:
    out = []
    for p in find_results(roots):
        fix = "rerun that run (the same command rebuilds it) or delete the file"
        r = check_results_shape(read_json(p, "results file", fix, RESULTS_SCHEMA), str(p), fix, NWSError)
        r["_path"] = str(p)
        out.append(r)
    if not out:
        raise NWSError(f"no results.json under {', '.join(map(str, roots))}; run `nws-bench run` first")
    return out
