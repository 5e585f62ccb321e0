"""``nws-bench``: the command line. Subcommands are the other modules of this package, one each,
registered by name in ``COMMANDS``; each module defines ``add_arguments(parser)`` and ``main(args)``.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ..common.errors import NWSError
from ..common.interrupt import Interrupted, interrupted_message, set_command, stop_on_signals
from ..common.registry import Registry

COMMANDS: Registry = Registry("command")


def command(name: str, help: str):
    def deco(mod_main):
        COMMANDS.register(name)((help, mod_main))
        return mod_main
    return deco


def _load_commands() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    _load_commands()
    parser = argparse.ArgumentParser(prog="nws-bench", description="NWS and baselines on task-incremental streams")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in sorted(COMMANDS.names()):
        help_text, (add_arguments, _) = COMMANDS.get(name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _, (_, run) = COMMANDS.get(args.command)
    set_command(list(sys.argv[1:] if argv is None else argv))
    try:
        with stop_on_signals():
            return int(run(args) or 0)
    except NWSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # SIGINT or SIGTERM (common.interrupt)
        print(interrupted_message(e), file=sys.stderr)
        return e.exit_code if isinstance(e, Interrupted) else 130


if __name__ == "__main__":
    sys.exit(main())
