"""Find and read ``results.json`` files."""
from __future__ import annotations

import json
from pathlib import Path

from nws_avalanche.common.errors import NWSError


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
        try:
            r = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise NWSError(f"{p}: not valid JSON ({e}); rerun that run or delete the file") from None
        r["_path"] = str(p)
        out.append(r)
    if not out:
        raise NWSError(f"no results.json under {', '.join(map(str, roots))}; run `nws-bench run` first")
    return out
