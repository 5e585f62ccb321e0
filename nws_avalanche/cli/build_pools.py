"""``nws-bench build-pools``: k-means pools from a torchvision-format checkpoint."""
from __future__ import annotations

import sys
import time

from . import command


_HELP = {"pool_size": "K, vectors per layer", "iters": "Lloyd iterations on the fit sample",
         "init_sample": "rows for the k-means++ start", "fit_sample": "rows per layer for the Lloyd iterations",
         "final_iters": "Lloyd iterations on all rows at the end", "group_size": "gs for 1x1 convs",
         "beta": "(not used by k-means)"}


def add_arguments(p):
    from ..config.tool_settings import KMeansSettings, add_settings_arguments

    p.add_argument("--from-checkpoint", required=True, metavar="FILE",
                   help="torchvision-format state_dict, or 'imagenet': torchvision's ImageNet weights for --arch "
                        "(from torch's hub cache, downloaded when missing)")
    p.add_argument("--arch", required=True, help="architecture name (nws_avalanche.nets.models.ARCHS)")
    p.add_argument("--out", required=True, metavar="FILE", help="pool file to write (.nwsp)")
    p.add_argument("--in-channels", type=int, default=3, help="input channels of the checkpoint's stem")
    add_settings_arguments(p, KMeansSettings, _HELP)


def main(args):
    from ..config.tool_settings import KMeansSettings, settings_from_args

    s = settings_from_args(KMeansSettings, args, "build-pools")  # refused settings: nothing loaded or written
    from ..pools.from_checkpoint import build_from_checkpoint, format_rows, inspect_rows, model_from_checkpoint

    start = time.perf_counter()
    pools = build_from_checkpoint(args.from_checkpoint, args.arch, s, args.in_channels,
                                  progress=lambda name: print(f"  k-means {name}", file=sys.stderr, flush=True))
    secs = time.perf_counter() - start
    path = pools.save(args.out)
    model = model_from_checkpoint(args.from_checkpoint, args.arch, args.in_channels)
    print(format_rows(inspect_rows(pools, model)))
    print(f"\n{len(pools.specs)} layers, K={pools.K}, built in {secs:.1f} s -> {path} "
          f"({path.stat().st_size} bytes)")
    return 0


command("build-pools", "build kernel pools by k-means over a torchvision-format checkpoint")((add_arguments, main))
