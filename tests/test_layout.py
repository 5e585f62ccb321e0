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
    for sub in ("run", "pretrain-pools", "build-pools", "perf", "perf-report", "data", "pools", "report", "status",
                "selftest"):
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
    assert "nws_avalanche.common.errors" in g["nws_avalanche.config.run_config"]  # from ..common.errors import
    assert "nws_avalanche.method.layers" in g["nws_avalanche.method.plugin"]      # from .layers import
    assert "nws_avalanche.pools.pretrain" in g["nws_avalanche.cli.pretrain_pools"]  # inside main()


def test_no_import_cycle_between_modules():
    assert cycles(import_graph()) == []


def test_one_default_for_the_index_codec():
    import inspect

    from nws_avalanche.config.tool_settings import PerfConfig
    from nws_avalanche.method.task_artifact import save_nws_task
    from nws_avalanche.storage.codecs import DEFAULT_CODEC
    from nws_avalanche.strategies.nws import NWSOptions

    assert inspect.signature(save_nws_task).parameters["codec"].default == DEFAULT_CODEC
    assert PerfConfig().codec == DEFAULT_CODEC == NWSOptions().codec


def test_public_nwsify_is_the_function_whatever_loaded_first():
    code = ("import sys\nimport nws_avalanche.method.plugin\nfrom nws_avalanche import nwsify\n"
            "assert callable(nwsify) and nwsify is sys.modules['nws_avalanche.method.nwsify'].nwsify, nwsify\n")
    _loaded_after(code)


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for w in graph.get(stack.pop(), ()):
            if w not in seen:
                seen.add(w)
                stack.append(w)
    return seen


# -- packages -----------------------------------------------------------------------------------
# the library a user's own Avalanche script (and every baseline) builds on, and the application on top
LIBRARY = ("common", "nets", "storage", "method", "pools", "strategies")
APPLICATION = ("config", "runner", "speed", "cli")


def package_of(module: str) -> str:
    """``nws_avalanche.method.layers`` -> ``nws_avalanche.method``; ``benchmarks.cub`` -> ``benchmarks``;
    the root package's own modules (``__init__``, ``__main__``) -> ``nws_avalanche``."""
    parts = module.split(".")
    if parts[0] == "nws_avalanche" and len(parts) > 1 and (ROOT / "nws_avalanche" / parts[1]).is_dir():
        return ".".join(parts[:2])
    return parts[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        out.setdefault(package_of(m), set()).update(package_of(d) for d in deps)
    return {k: v - {k} for k, v in out.items()}


def test_every_module_of_nws_avalanche_sits_in_a_sub_package():
    loose = sorted(p.name for p in (ROOT / "nws_avalanche").glob("*.py"))
    assert loose == ["__init__.py", "__main__.py"]
    subs = sorted(p.name for p in (ROOT / "nws_avalanche").iterdir() if (p / "__init__.py").is_file())
    assert subs == sorted(LIBRARY + APPLICATION)


def test_package_graph_folds_modules_into_their_package():
    pg = package_graph({"nws_avalanche.method.plugin": {"nws_avalanche.method.layers", "nws_avalanche.common.errors"},
                        "benchmarks.cub": {"benchmarks.base"}, "nws_avalanche.__main__": {"nws_avalanche.cli"}})
    assert pg == {"nws_avalanche.method": {"nws_avalanche.common"}, "benchmarks": set(),
                  "nws_avalanche": {"nws_avalanche.cli"}}
    assert cycles(package_graph({"a.x": {"b.y"}, "b.y": set(), "b.z": {"a.w"}})) == [["a", "b"]]


def test_no_import_cycle_between_packages():
    pg = package_graph(import_graph())
    assert "benchmarks" in pg["nws_avalanche.runner"] and "nws_avalanche.common" in pg["benchmarks"]  # seen
    assert cycles(pg) == []


def _lib(*names: str) -> tuple[str, ...]:
    return tuple(f"nws_avalanche.{n}" for n in names)


def test_method_core_never_imports_the_application():
    """The method, its pools and storage, and the strategies never reach the config, the runner,
    the CLI, the speed benchmarks, or the benchmarks/reports packages (pool *building* from the
    command line, ``pools.pretrain``/``pools.from_checkpoint``, takes the tool settings)."""
    g = import_graph()
    core = [m for m in g if package_of(m) in _lib("common", "nets", "storage", "method", "strategies")]
    core += ["nws_avalanche.pools.pool_set", "nws_avalanche.pools.kmeans", "nws_avalanche.pools.vq_ema"]
    assert "nws_avalanche.method.layers" in core and "nws_avalanche.strategies.nws" in core
    for name in core:
        bad = sorted(m for m in _closure(g, name)
                     if package_of(m) in _lib(*APPLICATION) + ("benchmarks", "reports"))
        assert bad == [], (name, bad)


def test_benchmarks_baselines_and_reports_use_the_library_only():
    pg = package_graph(import_graph())
    for pkg in ("benchmarks", "baselines", "reports"):
        into = {p for p in pg[pkg] if p.startswith("nws_avalanche")}
        assert into and into <= set(_lib(*LIBRARY)), (pkg, sorted(into))


def test_only_the_runner_and_the_cli_reach_out_to_benchmarks_reports_and_baselines():
    pg = package_graph(import_graph())
    out = {p for p, deps in pg.items()
           if p.startswith("nws_avalanche") and deps & {"benchmarks", "reports", "baselines"}}
    assert out == set(_lib("runner", "cli")), sorted(out)


def test_readme_folder_map_lists_every_module_of_every_package():
    import re

    rows = [r for r in (ROOT / "README.md").read_text().splitlines() if r.startswith("| `nws_avalanche/")]
    mapped = {}
    for r in rows:
        folder, what = re.match(r"\| `(nws_avalanche/[a-z_/]*)` \| (.*) \|$", r).groups()
        mapped[folder.rstrip("/")] = set(re.findall(r"`([a-z_]+\.py)`", what))
    for folder in mapped:
        if folder != "nws_avalanche":
            mapped[folder].discard("__init__.py")
    tree = {str(d.relative_to(ROOT)): {p.name for p in d.glob("*.py")} - {"__init__.py"}
            for d in [ROOT / "nws_avalanche", *(p.parent for p in (ROOT / "nws_avalanche").glob("*/__init__.py"))]}
    tree["nws_avalanche"] |= {"__init__.py"}
    assert mapped == tree
