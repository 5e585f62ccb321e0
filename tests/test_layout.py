"""The package's shape: light imports for the command line, no import cycles."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nws_avalanche", "baselines", "benchmarks", "reports")
HEAVY = ("torch", "numba", "avalanche", "torchvision", "wandb", "submitit", "pandas", "matplotlib", "tabulate")


def _loaded_after(code: str) -> list[str]:
    """Top-level packages from HEAVY that ``code`` leaves in ``sys.modules`` (a fresh interpreter)."""
    probe = code + ("\nimport sys, json\n"
                    f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(HEAVY)!r}))))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_loads_no_heavy_library():
    assert _loaded_after("import nws_avalanche") == []


def test_public_names_still_load_on_use():
    assert "torch" in _loaded_after("from nws_avalanche import NWSConv2d, PoolSet, nwsify")


def _cli(args: list[str]) -> str:
    return f"""
import contextlib, io
from nws_avalanche.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        main({args!r})
    except SystemExit:
        pass
"""


def test_help_of_every_subcommand_imports_no_torch():
    assert _loaded_after(_cli(["--help"])) == []
    for sub in ("run", "pretrain-pools", "build-pools", "perf", "perf-report", "data", "pools", "report", "status"):
        assert _loaded_after(_cli([sub, "--help"])) == [], sub


def test_status_imports_no_torch(tmp_path):
    run = tmp_path / "split-digits" / "nws" / "seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("method: nws\n")
    assert _loaded_after(_cli(["status", str(tmp_path)])) == []


# -- import cycles ------------------------------------------------------------------------------
def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body (lazy imports included: a
    function-level import is still a dependency)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module
                targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_relative_and_lazy_imports():
    g = import_graph()
    assert "nws_avalanche.errors" in g["nws_avalanche.config"]          # from .errors import ...
    assert "nws_avalanche.pretrain" in g["nws_avalanche.commands.pretrain_pools"]  # inside main()


def test_no_import_cycle_between_modules():
    assert cycles(import_graph()) == []


def test_one_default_for_the_index_codec():
    import inspect

    from nws_avalanche.artifact import save_nws_task
    from nws_avalanche.codecs import DEFAULT_CODEC
    from nws_avalanche.settings import PerfConfig
    from nws_avalanche.strategy import NWSOptions

    assert inspect.signature(save_nws_task).parameters["codec"].default == DEFAULT_CODEC
    assert PerfConfig().codec == DEFAULT_CODEC == NWSOptions().codec


def test_public_nwsify_is_the_function_whatever_loaded_first():
    code = ("import sys\nimport nws_avalanche.plugin\nfrom nws_avalanche import nwsify\n"
            "assert callable(nwsify) and nwsify is sys.modules['nws_avalanche.nwsify'].nwsify, nwsify\n")
    _loaded_after(code)


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for w in graph.get(stack.pop(), ()):
            if w not in seen:
                seen.add(w)
                stack.append(w)
    return seen


# the method core: what a user's own Avalanche script imports
CORE = ("layers", "search", "kernels", "nwsify", "pools", "plugin", "strategy", "avalanche_nws", "artifact",
        "codecs", "container", "ans", "kmeans", "vq_ema", "grouping", "models", "archs", "resnet", "template",
        "task_state", "training", "guard", "fastbuild")
RUN_MACHINERY = ("config", "settings", "runner", "sweep", "launch", "cli", "commands", "factory", "checkpoint",
                 "recovery", "runstatus", "runlock", "results", "wandb_log", "assets", "loggers")


def test_method_core_never_imports_the_run_machinery_the_cli_or_the_config():
    g = import_graph()
    for name in CORE:
        reached = _closure(g, f"nws_avalanche.{name}")
        bad = sorted(m for m in reached if m.split(".")[0] in ("benchmarks", "reports")
                     or (m.startswith("nws_avalanche.") and m.split(".")[1] in RUN_MACHINERY))
        assert bad == [], (name, bad)


def test_only_the_runner_and_the_cli_reach_out_to_benchmarks_and_reports():
    """The package-level edges nws_avalanche -> benchmarks/reports (the reverse edges make the
    remaining package-level cycle) come from the run machinery and the CLI only."""
    g = import_graph()
    out = {m for m, deps in g.items() if m.startswith("nws_avalanche.")
           and any(d.split(".")[0] in ("benchmarks", "reports", "baselines") for d in deps)}
    assert out and all(m.split(".")[1] in RUN_MACHINERY for m in out), sorted(out)
