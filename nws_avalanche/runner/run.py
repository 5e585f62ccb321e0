"""Runs one (benchmark, method, seed[, sweep point]) and writes its folder.

Folder: ``<out>/<benchmark>/<method>/[<key=value,...>/]seed<seed>/`` with ``config.yaml``
(resolved), ``status.json``, ``progress.json`` (the record of finished tasks and the sha256 of
every artifact), ``results.json`` and ``artifacts/`` (one file per task + the assist files);
``checkpoint.pt`` while the run is unfinished. Every accuracy is Avalanche's own
(``accuracy_metrics`` through the strategy's evaluator), measured with each task's model rebuilt
from the files in ``artifacts/`` standing in (``task_state.PerTaskEval.use_artifacts``); memory is
their size on disk.

A rerun checks a finished run's artifacts against their digests and skips it, and resumes an
unfinished one at its next task (``checkpoint.py``); files deleted as an error message advised are
rebuilt from the last intact task (``recovery.py``). A folder holding another resolved config is
refused unless ``overwrite``. Before any work the config is resolved once (``resolve_run``:
names, ranges, the method's typed options), the device checked (``check_device``), ``out``
probed for writing, and the run folder locked (``runlock``): a second run into the same folder
stops with exit code 2.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path


from benchmarks import build_benchmark, to_avalanche
from ..common.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, check_writable
from ..common.errors import ArtifactError, ConfigError
from ..common.interrupt import interrupted_message
from ..common.schema import Map
from ..common.untrusted import read_json, read_yaml
from ..common.feedback import on_terminal, say
from ..config.loggers import make_loggers
from ..config.run_config import RunConfig, apply_cudnn, check_device
from ..pools.pretrained import prepare_assets
from ..strategies.methods import METHODS, load_all
from ..strategies.task_incremental import accuracy_evaluator
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, seed_all, task_seed
from .factory import build_strategy
from .recovery import PROGRESS_NAME, artifact_digests, needs_rebuild, resume_point, write_progress
from .results import RESULTS_SCHEMA, check_results_shape, build_results, memory_mib, paper_memory
from .runlock import run_folder_lock
from .threads import environment, run_threads
from .status_file import error_tail, read_status, write_status


# keys that change how a run is launched or logged, never its results: a rerun may change them
LAUNCH_KEYS = ("wandb", "slurm", "loggers")


def sweep_label(sweep: dict | None) -> str:
    """``{"lr": 0.1, "nws.init": "random"}`` -> ``lr=0.1,nws.init=random`` (a folder name)."""
    return ",".join(f"{k}={v}" for k, v in (sweep or {}).items()).replace("/", "_").replace(" ", "")


def run_dir(out: Path, cfg: RunConfig, sweep: dict | None = None) -> Path:
    base = Path(out) / cfg.benchmark / cfg.method
    return (base / sweep_label(sweep) if sweep else base) / f"seed{cfg.seed}"


def check_names(cfg: RunConfig) -> dict:
    """Every name and option of ``cfg`` (method, benchmark, architecture, their options), before
    any work; returns the typed options of every method given options, and of the run's method."""
    from benchmarks.base import check_benchmark_options

    from ..config.run_config import method_options
    from ..nets.models import ARCHS
    from .wandb_log import wandb_mode

    load_all()
    cls = METHODS.get(cfg.method)
    built = {}
    check_benchmark_options(cfg)
    ARCHS.get(cfg.arch)
    wandb_mode(cfg)
    for name, opts in cfg.method_options.items():
        if name not in METHODS:
            raise ConfigError(f"method options given for unknown method {name!r} (--set {name}.KEY=...); "
                              f"methods: {', '.join(METHODS.names())}")
        if not isinstance(opts, dict):
            raise ConfigError(f"method_options.{name} must be a mapping of option: value")
        options_cls = getattr(METHODS.get(name), "Options", None)
        if options_cls is not None:  # every method's given options, not only this run's method's
            built[name] = method_options(cfg, name, options_cls)
        elif opts:
            raise ConfigError(f"method {name!r} takes no options (got {', '.join(f'{name}.{k}' for k in opts)})")
    if getattr(cls, "Options", None) is not None and cfg.method not in built:
        built[cfg.method] = method_options(cfg, cfg.method, cls.Options)
    return built


def _identity(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in LAUNCH_KEYS}


def _check_folder(rdir: Path, cfg: RunConfig) -> None:
    """Refuse a folder that holds another resolved config (the caller handles --overwrite)."""
    path = rdir / "config.yaml"
    if not path.is_file():
        return
    # a key added since that run was written counts as its default
    saved = read_yaml(path, "the run's saved config", "rerun with --overwrite to start that run again "
                      "(or choose another --out)", Map(lambda v, w: v))
    old = {**RunConfig().to_dict(), **(saved or {})}
    new = _identity(cfg.to_dict())
    if _identity(old) != new:
        diff = sorted(k for k in set(old) | set(new) if k not in LAUNCH_KEYS and old.get(k) != new.get(k))
        raise ConfigError(f"{rdir} holds a run with a different config (differs in: {', '.join(diff)}); "
                          f"use another --out, or pass --overwrite to delete that run and start again")


def _notify(callbacks, t, acc, strategy, memory) -> None:
    for cb in callbacks:
        on_task = getattr(cb, "on_task", None)
        if on_task is not None:  # richer callbacks (e.g. the wandb logger) also get the memory so far
            on_task(t, acc, strategy, memory)
        else:
            cb(t, acc, strategy)


def resolve_run(cfg: RunConfig) -> tuple[RunConfig, object]:
    """The one place a run's settings are resolved: ``cfg`` validated, every name and option
    checked, and the run's method options built once, as the typed ``Options`` the strategy takes
    and written back in full into the config, so that config.yaml and results.json say exactly
    what ran (codec, search, init, prune ratio, ...) and rerunning from config.yaml reproduces it."""
    from dataclasses import asdict

    cfg.validate()
    options = check_names(cfg).get(cfg.method)
    if options is not None:
        cfg = replace(cfg, method_options={**cfg.method_options, cfg.method: asdict(options)})
    return cfg, options


_UNRESOLVED = object()


def run_single(cfg: RunConfig, out: Path, overwrite: bool = False, progress: bool | None = None,
               callbacks=(), sweep: dict | None = None, verify: bool = True, *, options=_UNRESOLVED) -> dict:
    """Run (or resume, or skip when finished) one (benchmark, method, seed[, sweep point]).
    ``verify``: check a finished run's artifacts against their recorded digests before skipping it.
    ``options``: the typed method options when ``cfg`` already comes from ``resolve_run`` (the
    command line's ``RunSpec``); otherwise ``cfg`` is resolved here."""
    load_all()  # a job process starts with an empty method registry
    if options is _UNRESOLVED:
        cfg, options = resolve_run(cfg)
    check_device(cfg.device)  # here, on the machine that runs it
    apply_cudnn(cfg.cudnn)
    rdir = run_dir(out, cfg, sweep)
    check_writable(out)  # an unwritable or full --out stops before any work
    # the thread counts are the run's, not the shell's (OMP_NUM_THREADS): they change the bytes
    with run_folder_lock(rdir), run_threads(cfg.threads):  # a second run into the same folder stops here (exit 2)
        return _run_locked(cfg, options, out, rdir, overwrite, progress, callbacks, sweep, verify)


def _run_locked(cfg, options, out, rdir, overwrite, progress, callbacks, sweep, verify) -> dict:
    results_path = rdir / "results.json"
    if not overwrite:
        _check_folder(rdir, cfg)
        if results_path.is_file():
            done = _read_results(results_path)
            if not verify or not needs_rebuild(results_path, done):
                return done
            if not (rdir / PROGRESS_NAME).is_file():
                raise ArtifactError(f"{rdir}: files of this finished run are missing and it has no {PROGRESS_NAME} "
                                    f"to rebuild them from; rerun with --overwrite to redo the run")
    # Data, pretrained network and pools are all checked before the run folder is touched,
    # so a bad input never costs an earlier run (not even with --overwrite).
    seed_all(cfg.seed)
    bench = build_benchmark(cfg)
    strategy_cls = METHODS.get(cfg.method)
    needs_pools = strategy_cls.needs_pools
    assets = prepare_assets(cfg, bench, Path(out) / cfg.benchmark / "_assist", need_pools=needs_pools,
                            progress=progress)
    if overwrite and rdir.exists():
        _check_is_run_folder(rdir)
        shutil.rmtree(rdir)
    art = rdir / "artifacts"
    art.mkdir(parents=True, exist_ok=True)
    # a finished run with deleted files is unfinished again until they are rebuilt (progress.json keeps the rest)
    results_path.unlink(missing_ok=True)
    config_yaml = cfg.to_yaml()
    atomic_write_text(rdir / "config.yaml", config_yaml)
    T = len(bench.tasks)
    resumed_at = (read_status(rdir) or {}).get("next_task", 0) if (rdir / CHECKPOINT_NAME).is_file() else 0
    write_status(rdir, "running", resumed_at, T)
    try:
        results = _train(cfg, options, bench, strategy_cls, assets, rdir, art, config_yaml, progress, callbacks,
                         sweep)
    except BaseException as e:
        state = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        text = interrupted_message(e) if state == "interrupted" else error_tail(e)
        try:
            write_status(rdir, state, (read_status(rdir) or {}).get("next_task", 0), T, text)
        except Exception:  # noqa: BLE001 - e.g. a full disk: the original error is the one to report
            pass
        raise
    atomic_write_json(results_path, results)
    write_status(rdir, "finished", T, T)
    (rdir / CHECKPOINT_NAME).unlink(missing_ok=True)  # results.json and artifacts/ now hold everything
    return results


def _read_results(path: Path) -> dict:
    fix = (f"delete it and rerun the same command: it is rebuilt from {PROGRESS_NAME}"
           if (path.parent / PROGRESS_NAME).is_file() else "rerun with --overwrite to redo the run")
    return check_results_shape(read_json(path, "results file", fix, RESULTS_SCHEMA, error=ArtifactError), str(path),
                               fix, ArtifactError)


def _train(cfg, options, bench, strategy_cls, assets, rdir, art, config_yaml, progress, callbacks, sweep) -> dict:
    if assets.pools is not None and not (art / "pools.nwsp").is_file():
        atomic_write_bytes(art / "pools.nwsp", Path(assets.pool_path).read_bytes())  # never half a copy; evaluation reads this copy
    seed_all(cfg.seed)
    task_classes = [t.num_classes for t in bench.tasks]
    evaluator = accuracy_evaluator(make_loggers(cfg.loggers, rdir, _wandb_run(callbacks))) if cfg.loggers else None
    strategy = build_strategy(cfg, assets, task_classes, options=options, progress=progress, evaluator=evaluator)
    scenario = to_avalanche(bench)
    T = len(bench.tasks)
    # Avalanche evaluates each task on the model rebuilt from the files the task wrote
    strategy.task_eval.use_artifacts(lambda j: strategy.rebuild_task(j, art), range(T))
    state = resume_point(rdir, art, strategy, T, load_checkpoint(rdir), rdir / CHECKPOINT_NAME)
    acc = state.acc
    for t, exp in enumerate(scenario.train_stream):
        if t < state.next_task:
            continue
        seed_all(task_seed(cfg.seed, t))  # same batches for task t whether or not the run resumed
        start = time.perf_counter()
        # worker processes decode images in parallel; persistent so they are forked once per task
        strategy.train(exp, num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
        state.train_seconds.append(time.perf_counter() - start)
        state.task_files.append([p.name for p in strategy.export_task(t, art)])
        state.summaries.append(strategy.task_summary(t))
        acc[t][: t + 1] = avalanche_accuracies(strategy, scenario.test_stream, t + 1, cfg.num_workers)
        if progress is None and not on_terminal():  # a log file: one line per task
            say(f"{cfg.method} seed {cfg.seed} after task {t} ({t + 1}/{T}): accuracy on tasks 0..{t}: "
                + " ".join(f"{acc[t][j]:.2f}" for j in range(t + 1)))
        state.next_task = t + 1
        # earlier tasks' digests stay as recorded when they were written (never re-read from disk)
        state.digests.update(artifact_digests(art, state.task_files[-1:], strategy.assist_files(art)))
        save_checkpoint(rdir, strategy, state, config_yaml)
        write_progress(rdir, state)
        write_status(rdir, "running", t + 1, T)
        memory = memory_mib([[art / n for n in f] for f in state.task_files], strategy.assist_files(art))
        _notify(callbacks, t, acc, strategy, memory)
    memory = memory_mib([[art / n for n in f] for f in state.task_files], strategy.assist_files(art))
    paper = paper_memory([strategy.paper_bytes(t, art) for t in range(T)], strategy.paper_assist_bytes(art))
    if paper is not None:  # the same files counted as the NWS paper counted them
        memory["paper"] = paper
    results = build_results(cfg, bench.task_names, acc, memory, state.summaries, state.train_seconds)
    results["artifact_sha256"] = dict(state.digests)
    results["environment"] = environment(cfg.threads)  # what else the bytes depend on (versions, CPU)
    if sweep:
        results["sweep"] = dict(sweep)
    return results


def _wandb_run(callbacks):
    """The run's wandb run, started on demand, from its wandb callback (if any)."""
    from .wandb_log import WandbRun

    runs = [cb for cb in callbacks if isinstance(cb, WandbRun)]
    return (lambda: runs[0]._start()) if runs else None


def avalanche_accuracies(strategy, test_stream, n: int, num_workers: int = 0) -> list[float]:
    """Avalanche's accuracy (%) on the first ``n`` test experiences, from the strategy's evaluator.

    Avalanche averages per-minibatch accuracies weighted by their sizes; the count of correct
    predictions is recovered from it (exact: the error is far below 1/2 pattern) so that the
    figure is exactly ``100 * correct / total``."""
    exps = list(test_stream)[:n]
    strategy.eval(exps, num_workers=num_workers)
    metrics = strategy.evaluator.get_last_metrics()
    out = []
    for j, exp in enumerate(exps):
        keys = [k for k in metrics if k.startswith("Top1_Acc_Exp/eval_phase/")
                and k.endswith(f"/Task{j:03d}/Exp{exp.current_experience:03d}")]
        if len(keys) != 1:
            raise RuntimeError(f"the strategy's evaluator reported no accuracy for test experience {j} "
                               f"(it needs accuracy_metrics(experience=True)); got {sorted(metrics)[:5]}")
        total = len(exp.dataset)
        out.append(100.0 * round(metrics[keys[0]] * total) / max(total, 1))
    return out


def _check_is_run_folder(rdir: Path) -> None:
    # --overwrite deletes a folder: only ever one that this runner wrote
    if not (rdir / "config.yaml").is_file() and any(rdir.iterdir()):
        raise ConfigError(f"--overwrite would delete {rdir}, which is not a run folder (no config.yaml); "
                          f"remove it by hand or choose another --out")

