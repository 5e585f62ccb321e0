"""Grids of runs: methods x benchmarks x seeds x ``--sweep key=v1,v2,...`` points.

A sweep key is any config key accepted by ``--set`` (``lr``, ``pool_size``, ``optimizer``,
``nws.init``, ``benchmark_options.tasks``, ...). Every grid point becomes its own run folder
``<out>/<benchmark>/<method>/<key=value,...>/seed<seed>/`` and results.json records the point
under ``"sweep"``. A method option of another method (``nws.init`` for ``finetune``) does not
multiply that method's runs.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..common.untrusted import parse_yaml

from ..common.errors import ConfigError
from ..config.run_config import FIELD_NAMES, RunConfig, build_config, parse_set


@dataclass
class RunSpec:
    """One run: its resolved config (``runner.run.resolve_run``: the full tree), its typed method
    options (None: the method takes none) and the sweep point (``{}`` outside a sweep).
    ``resolved``: False for a spec made by hand; the runner then resolves ``cfg`` itself."""
    cfg: RunConfig
    sweep: dict = field(default_factory=dict)
    options: Any = None
    resolved: bool = False

    def run_dir(self, out: Path) -> Path:
        from .run import run_dir

        return run_dir(out, self.cfg, self.sweep)

    @property
    def name(self) -> str:
        from .run import sweep_label

        point = f"/{sweep_label(self.sweep)}" if self.sweep else ""
        return f"{self.cfg.benchmark}/{self.cfg.method}{point}/seed{self.cfg.seed}"


def _split_values(raw: str) -> list[str]:
    """Split on commas outside brackets, so ``milestones=[5,8],[10]`` gives two values."""
    out, depth, cur = [], 0, ""
    for ch in raw:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [v.strip() for v in out if v.strip()]


def parse_sweeps(items: list[str]) -> list[tuple[str, list[str]]]:
    axes, seen = [], set()
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"--sweep expects key=v1,v2,..., got {item!r}")
        key, raw = (s.strip() for s in item.split("=", 1))
        values = _split_values(raw)
        if not key or not values:
            raise ConfigError(f"--sweep {item!r}: give a key and at least one value, e.g. --sweep lr=0.01,0.1")
        if key in seen:
            raise ConfigError(f"--sweep {key} is given twice; put all its values in one --sweep")
        seen.add(key)
        if len(set(values)) != len(values):
            raise ConfigError(f"--sweep {key}: repeated value in {raw!r}")
        axes.append((key, values))
    return axes


def _applies_to(key: str, method: str) -> bool:
    nested = parse_set(f"{key}=0")
    if "method_options" in nested:
        return next(iter(nested["method_options"])) == method
    return True


def expand_grid(configs: list[str], sets: list[str], methods: list[str], benchmarks: list[str],
                seeds: list[int] | None, sweeps: list[str] = (), data_root: str | None = None) -> list[RunSpec]:
    """Every (benchmark, method, sweep point, seed) as a ``RunSpec`` resolved once
    (``runner.run.resolve_run``): config built once per grid point, every name and option checked."""
    from .run import resolve_run

    axes = parse_sweeps(list(sweeps))
    for key, _ in axes:
        if not any(_applies_to(key, m) for m in methods):
            raise ConfigError(f"--sweep {key}: neither a config key nor an option of the methods run "
                              f"({', '.join(methods)}); config keys: {', '.join(sorted(FIELD_NAMES))}")
    specs, seen = [], set()
    for b in benchmarks:
        for m in methods:
            mine = [(k, vs) for k, vs in axes if _applies_to(k, m)]
            for values in itertools.product(*[vs for _, vs in mine]):
                point = {k: parse_yaml(v, f"sweep value {v[:40]!r}", "write the value plainly", text_on_syntax_error=True) for (k, _), v in zip(mine, values)}
                extra = [f"{k}={v}" for (k, _), v in zip(mine, values)]
                base = build_config(configs, list(sets) + extra, data_root=data_root, benchmark=b, method=m)
                for s in seeds or [base.seed]:
                    cfg, options = resolve_run(replace(base, seed=s))
                    spec = RunSpec(cfg, point, options, resolved=True)
                    if spec.name not in seen:
                        seen.add(spec.name)
                        specs.append(spec)
    return specs
