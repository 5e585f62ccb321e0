"""``nws-bench pools inspect FILE``: layers, shapes, K and usage statistics of a pool file.
``nws-bench pools import FILE --arch A --out P.nwsp [--pretrained-out NET.pt]``: the NWS authors'
released pools / pool-pretraining checkpoint as our pool file (and network; ``authors.py``)."""
from __future__ import annotations

from . import command
from ..common.errors import ConfigError


def add_arguments(p):
    p.add_argument("action", choices=["inspect", "import"],
                   help="inspect: print the pool file's layers; import: convert the authors' released file")
    p.add_argument("file", help="inspect: pool file (.nwsp); import: the authors' pretraining checkpoint "
                                "({'model': state_dict}) or their shared_kernel_pools.pt")
    p.add_argument("--checkpoint", metavar="FILE", default=None,
                   help="inspect: torchvision-format state_dict: report entries its kernels use and the "
                        "quantisation error")
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--arch", default=None, help="import: our architecture the file is for (resnet18, resnet34)")
    p.add_argument("--out", metavar="FILE", default=None, help="import: pool file to write (.nwsp)")
    p.add_argument("--pretrained-out", metavar="FILE", default=None,
                   help="import (checkpoint only): write their network as a state_dict for --set pretrained=FILE")
    p.add_argument("--quantised", action="store_true",
                   help="import: the network's NWS layers take their nearest pool vectors "
                        "(default: continuous weights)")


def main(args):
    if args.action == "import":
        return _import(args)
    from ..pools.from_checkpoint import format_rows, inspect_rows, load_pools, model_from_checkpoint

    pools = load_pools(args.file)
    model = None
    if args.checkpoint:
        model = model_from_checkpoint(args.checkpoint, pools.arch, args.in_channels)
        pools.check_model(model, source=args.file, group_sizes=pools.group_sizes)
    print(f"{args.file}: arch {pools.arch}, {len(pools.specs)} layers, K={pools.K}, "
          f"fingerprint {pools.fingerprint}, digest {pools.digest[:16]}")
    print(format_rows(inspect_rows(pools, model)))
    return 0


def _import(args):
    from ..pools.authors import import_authors, save_state
    from ..pools.from_checkpoint import format_rows, inspect_rows

    if not args.arch or not args.out:
        raise ConfigError("pools import needs --arch (e.g. resnet18) and --out FILE.nwsp")
    pools, state, classes = import_authors(args.file, args.arch, args.in_channels, quantised=args.quantised)
    if args.pretrained_out and state is None:
        raise ConfigError(f"{args.file} holds pools only (no network weights); --pretrained-out needs their "
                          f"pretraining checkpoint ({{'model': state_dict}})")
    path = pools.save(args.out)  # everything is checked above: nothing is written for a bad file
    print(format_rows(inspect_rows(pools)))
    print(f"\n{len(pools.specs)} layers, K={pools.K} -> {path} ({path.stat().st_size} bytes); "
          f"use with --set pool_file={path}")
    if args.pretrained_out:
        net = save_state(args.pretrained_out, state)
        kind = "quantised" if args.quantised else "continuous"
        print(f"their {kind} network ({classes}-way head) -> {net}; use with --set pretrained={net}")
    return 0


command("pools", "inspect a pool file, or import the NWS authors' released pools")((add_arguments, main))
