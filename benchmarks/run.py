"""Run the fgsmkit benchmark: ``python benchmarks/run.py --device cpu`` (same as ``fgsmkit bench``).

Run from a checkout, it times the fgsmkit of that checkout (``src/``), not an installed copy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fgsmkit.benchmarking import cli  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=cli.__doc__.splitlines()[0])
    cli.add_arguments(parser)
    return cli.run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
