"""Time this checkout's fgsm and AdversarialLoss against another commit's, in one process.

Between full benchmark runs this machine drifts by several percent, more than most code changes
cost. This script imports the other commit's package beside this one (extracted with
``git archive`` and renamed), runs both on the same model weights and batch, interleaved in a
random order per round, and prints the median over rounds of the per-round ratio of CPU times
(this checkout / the other commit). The model is the paper's maxout MLP at batch 128.

    OMP_NUM_THREADS=1 python benchmarks/compare_commits.py d536e77
"""

from __future__ import annotations

import argparse
import importlib
import io
import random
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# This checkout's package, not an installed copy, is the "this" side of every ratio (as in run.py).
sys.path.insert(0, str(ROOT / "src"))


def module_name(rev: str) -> str:
    """The name commit ``rev``'s package is imported as: ``fgsmkit_`` and ``rev``, each character
    that cannot be in an identifier (``origin/HEAD``, ``HEAD~1``, ``v0.1``) replaced by ``_``."""
    return "fgsmkit_" + re.sub(r"[^0-9A-Za-z_]", "_", rev)


def import_commit(rev: str, folder: Path):
    """The package of commit ``rev``, imported as :func:`module_name` ``(rev)``."""
    done = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src/fgsmkit"], capture_output=True)
    if done.returncode:
        # git's own reason (an unknown revision, not a git checkout) is what the user needs.
        sys.exit(f"error: git archive {rev} failed: {done.stderr.decode(errors='replace').strip()}")
    archive = done.stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 (and backports)
            tar.extractall(folder, filter="data")
        else:
            tar.extractall(folder)
    name = module_name(rev)
    (folder / "src" / "fgsmkit").rename(folder / name)
    sys.path.insert(0, str(folder))
    return importlib.import_module(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the commit to compare against (anything git understands)")
    parser.add_argument("--rounds", type=int, default=300, help="rounds per contender pair (default: 300)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1; got {args.rounds}")
    import fgsmkit

    with tempfile.TemporaryDirectory() as scratch:
        other = import_commit(args.rev, Path(scratch))
        packages = {"this": fgsmkit, "other": other}
        x, y = torch.rand(128, 784, generator=torch.Generator().manual_seed(0)), torch.arange(128) % 10
        models = {}
        for key, package in packages.items():
            torch.manual_seed(0)  # the same weights for both
            models[key] = package.models.MaxoutMLP()
        criteria = {key: package.AdversarialLoss(0.5, 0.25) for key, package in packages.items()}

        def training_step(key: str) -> None:
            models[key].zero_grad(set_to_none=True)
            criteria[key](models[key], x, y).backward()

        def attack(key: str) -> None:
            packages[key].fgsm(models[key], x, y, eps=0.25)

        order = random.Random(0)
        for name, call in (("AdversarialLoss step", training_step), ("fgsm", attack)):
            for key in packages:  # warm-up
                call(key)
            ratios = []
            for _ in range(args.rounds):
                keys = list(packages)
                order.shuffle(keys)
                seconds = {}
                for key in keys:
                    start = time.process_time()
                    call(key)
                    seconds[key] = time.process_time() - start
                ratios.append(seconds["this"] / seconds["other"])
            print(f"{name}: this / {args.rev} = {statistics.median(ratios):.4f} "
                  f"(median of {args.rounds} per-round CPU-time ratios)")


if __name__ == "__main__":
    main()
