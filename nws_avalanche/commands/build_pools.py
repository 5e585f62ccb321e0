"""``nws-bench build-pools``: k-means pools from a torchvision-format checkpoint."""
from __future__ import annotations

import sys
import time

from ..cli import command


def add_arguments(p):
    p.add_argument("--from-checkpoint", required=True, metavar="FILE",
                   help="torchvision-format state_dict, or 'imagenet': torchvision's ImageNet weights for --arch "
                        "(from torch's hub cache, downloaded when missing)")
    p.add_argument("--arch", required=True, help="architecture name (nws_avalanche.models.ARCHS)")
    p.add_argument("--out", required=True, metavar="FILE", help="pool file to write (.nwsp)")
    p.add_argument("--pool-size", type=int, default=512, help="K, vectors per layer (default 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iters", type=int, default=25, help="Lloyd iterations on the fit sample")
    p.add_argument("--init-sample", type=int, default=4096, help="rows for the k-means++ start")
    p.add_argument("--fit-sample", type=int, default=16384, help="rows per layer for the Lloyd iterations")
    p.add_argument("--final-iters", type=int, default=2, help="Lloyd iterations on all rows at the end")
    p.add_argument("--group-size", type=int, default=1, help="gs for 1x1 convs (default 1)")
    p.add_argument("--in-channels", type=int, default=3, help="input channels of the checkpoint's stem")


def main(args):
    from ..pool_tools import KMeansSettings, build_from_checkpoint, format_rows, inspect_rows, model_from_checkpoint

    s = KMeansSettings(args.pool_size, args.seed, args.iters, args.init_sample, args.fit_sample,
                       args.final_iters, args.group_size)
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
