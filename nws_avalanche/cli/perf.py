"""``nws-bench perf``: NWS training/eval/task-switch time against plain training, and stored bits
per index against the order-0 entropy; prints a summary and writes the figures as JSON."""
from __future__ import annotations

from . import command
from ..common.errors import ConfigError


_HELP = {"arch": "architecture (the paper's resnet18)", "search": "search to measure",
         "codec": "index codec to measure", "steps": "timed training steps after warm-up",
         "check_steps": "training steps checked against brute force",
         "check_lr": "LR of the checked steps (high: indices change)", "threads": "torch CPU threads (0: torch's)"}


def add_arguments(p):
    from ..config.tool_settings import PerfConfig, add_settings_arguments

    add_settings_arguments(p, PerfConfig, _HELP)
    p.add_argument("--large", action="store_true", help="also time training at 224x224 (slow)")
    p.add_argument("--large-batch", type=int, default=8)
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU even when one is present")
    p.add_argument("--out", default="perf.json", help="JSON output file (default: perf.json)")


def _line(r: dict) -> str:
    s = (f"[{r['device']} {r['image_size']}px b{r['batch_size']} threads={r['threads']} search={r['search']}] "
         f"step plain {r['plain_step_s']['wall'] * 1e3:.1f} ms, NWS {r['nws_step_s']['wall'] * 1e3:.1f} ms "
         f"-> x{r['step_ratio']['wall']:.2f} wall (median of paired steps x{r['step_ratio']['wall_paired']:.2f}), "
         f"x{r['step_ratio']['cpu']:.2f} CPU time; "
         f"search share {100 * r['search_share']:.1f}%; per step {r['vectors_per_step']} vectors, "
         f"{r['rescored_per_step']:.0f} re-scored, {r['searched_per_step']:.0f} searched in full")
    return s


def _breakdown_lines(b: dict) -> list[str]:
    from ..speed.breakdown import PARTS

    p, n = b["plain"], b["nws"]
    lines = [f"  CPU time per step by part (ms, mean of {b['steps']} timed steps; plain | NWS | NWS - plain):"]
    for k in PARTS + ("total",):
        lines.append(f"    {k:<17} {p[k] * 1e3:9.1f} {n[k] * 1e3:9.1f} {(n[k] - p[k]) * 1e3:+9.1f}")
    return lines


def _report(r: dict) -> list[str]:
    lines = [_line(r)]
    if "breakdown_cpu_s" in r:
        lines += _breakdown_lines(r["breakdown_cpu_s"])
    if "exactness" in r:
        e = r["exactness"]
        lines.append(f"  exactness: {e['steps']} steps at lr={e['lr']}, {e['kernels_checked_per_step']} kernels/step, "
                     f"{e['index_changes']} index changes, mismatches vs brute force = {e['mismatches']}")
        ev = r["eval_images_per_s"]
        lines.append(f"  eval: rebuilt {ev['rebuilt']:.0f} img/s, plain {ev['plain']:.0f} img/s, ratio {ev['ratio']:.3f}")
        ts = r["task_switch_s"]
        lines.append(f"  task switch, cold (load artifact -> new model): median {ts['median'] * 1e3:.1f} ms, "
                     f"min {ts['min'] * 1e3:.1f} ms, bit-identical {ts['bit_identical']}")
        tr = r["task_switch_resident_s"]
        lines.append(f"  task switch into the resident network (indices + BN, no new skeleton): median "
                     f"{tr['median'] * 1e3:.1f} ms, min {tr['min'] * 1e3:.1f} ms, bit-identical {tr['bit_identical']}")
        st = r["storage"]
        lines.append(f"  codes ({st['codec']}): layer  n  K  bits/idx  H0 bits/idx  overhead")
        for row in st["layers"]:
            ov = "-" if row["overhead_vs_entropy"] is None else f"{100 * row['overhead_vs_entropy']:+.2f}%"
            lines.append(f"    {row['layer']:<24} {row['n']:>7} {row['K']:>4} {row['bits_per_index']:8.3f} "
                         f"{row['entropy_bits_per_index']:8.3f}  {ov}")
        t = st["total"]
        ov = "-" if t["overhead_vs_entropy"] is None else f"{100 * t['overhead_vs_entropy']:+.2f}%"
        lines.append(f"    {'TOTAL':<24} {t['n']:>7} {'':>4} {t['bits_per_index']:8.3f} "
                     f"{t['entropy_bits_per_index']:8.3f}  {ov}")
        lines.append("  artifact bytes: " + ", ".join(f"{k} {v}" for k, v in r["artifact_bytes"].items()))
    return lines


def main(args):
    from ..config.tool_settings import PerfConfig, settings_from_args

    cfg = settings_from_args(PerfConfig, args, "perf")
    if args.large_batch < 1:
        raise ConfigError(f"--large-batch must be >= 1, got {args.large_batch}")
    import torch

    from ..common.atomic import atomic_write_json
    from ..speed.perf_measure import config_dict, measure

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.no_gpu else [])
    results = []
    for dev in devices:
        r = measure(cfg, dev)
        results.append(r)
        print("\n".join(_report(r)), flush=True)
        if args.large:
            big = PerfConfig(**{**config_dict(cfg), "image_size": 224, "batch_size": args.large_batch})
            r = measure(big, dev, large=True)
            results.append(r)
            print("\n".join(_report(r)), flush=True)
    atomic_write_json(args.out, {"config": config_dict(cfg), "torch": torch.__version__, "results": results})
    print(f"perf: {args.out}")
    return 0


command("perf", "time NWS training/eval/task switch against plain training; bits per index vs entropy")(
    (add_arguments, main))
