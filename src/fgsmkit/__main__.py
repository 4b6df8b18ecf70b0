"""The ``fgsmkit`` command: ``fgsmkit reproduce`` and ``fgsmkit bench``.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args)``;
it is imported only when called, so ``import fgsmkit`` stays light.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS = {
    "reproduce": ("fgsmkit.reproduction.cli", "train the paper's models and compare with its results"),
    "bench": ("fgsmkit.benchmarking.cli", "time the attacks against plain PyTorch and the peer libraries"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="fgsmkit", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    for name, (module_name, summary) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        if name == chosen:
            importlib.import_module(module_name).add_arguments(sub)
    args = parser.parse_args(argv)
    return int(importlib.import_module(SUBCOMMANDS[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
