"""``nws-bench pools inspect FILE``: layers, shapes, K and usage statistics of a pool file."""
from __future__ import annotations

from ..cli import command


def add_arguments(p):
    p.add_argument("action", choices=["inspect"], help="inspect: print the pool file's layers")
    p.add_argument("file", help="pool file (.nwsp)")
    p.add_argument("--checkpoint", metavar="FILE", default=None,
                   help="torchvision-format state_dict: report entries its kernels use and the quantisation error")
    p.add_argument("--in-channels", type=int, default=3)


def main(args):
    from ..pool_tools import format_rows, inspect_rows, load_pools, model_from_checkpoint

    pools = load_pools(args.file)
    model = None
    if args.checkpoint:
        model = model_from_checkpoint(args.checkpoint, pools.arch, args.in_channels)
        pools.check_model(model, source=args.file, group_sizes=pools.group_sizes)
    print(f"{args.file}: arch {pools.arch}, {len(pools.specs)} layers, K={pools.K}, "
          f"fingerprint {pools.fingerprint}, digest {pools.digest[:16]}")
    print(format_rows(inspect_rows(pools, model)))
    return 0


command("pools", "inspect a pool file (layers, shapes, K, usage)")((add_arguments, main))
