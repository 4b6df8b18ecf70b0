"""``fgsmkit bench``: time fgsmkit against hand-written PyTorch, the cost floor and the peers.

For each workload it checks that every contender's FGSM and PGD output agree with fgsmkit's
(printing the largest absolute difference) and that AdversarialLoss trains to bit-identical
parameters, then times every contender round-robin, reports medians, ratios and peak memory
as a table, and writes them to a JSON file.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import __version__, pgd
from . import contenders, peers, report, timing
from .workloads import WORKLOADS, Workload

QUICK_BATCH, QUICK_STEPS = 16, 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated workloads (default: all of {', '.join(WORKLOADS)})")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds of the PGD contenders; the median is reported (default: 5)")
    parser.add_argument("--fast-repeats", type=int, default=30,
                        help="timed rounds of the one-pass contenders (FGSM, floor, training steps), "
                             "which are cheaper and noisier (default: 30)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    parser.add_argument("--backends", default=None,
                        help="fgsmkit PGD backends to time, comma-separated, among eager, compile, cuda_graph "
                             "(default: eager,compile on CPU, all three on CUDA; eager with --quick)")
    parser.add_argument("--no-peers", action="store_true", help="leave the peer libraries out")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: batch {QUICK_BATCH}, {QUICK_STEPS} PGD steps, 2 repeats")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"),
                        help="where to write the results (default: bench-results.json)")


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or not names:
        print(f"error: unknown workloads {unknown or args.workloads!r}; choose among {list(WORKLOADS)}",
              file=sys.stderr)
        return 2
    if args.json.is_dir():  # found now, not after the run
        print(f"error: --json {args.json} is a folder; give a file name, e.g. {args.json / 'bench-results.json'}",
              file=sys.stderr)
        return 2
    repeats, fast_repeats, warmup = args.repeats, args.fast_repeats, args.warmup
    if args.quick:
        repeats, fast_repeats, warmup = min(repeats, 2), min(fast_repeats, 2), min(warmup, 1)
    if min(repeats, fast_repeats) < 1 or warmup < 0:
        print("error: --repeats and --fast-repeats must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    backends = _backends(args.backends, device, args.quick)

    usable: list[peers.Peer] = []
    skipped: dict[str, str] = {}
    if not args.no_peers:
        usable, skipped = peers.available()
        for name, reason in skipped.items():
            print(f"skipping {name}: not importable ({reason})")

    meta = _meta(device, repeats, fast_repeats, warmup, backends)
    results = []
    for name in names:
        workload = WORKLOADS[name]
        if args.quick:
            workload = workload.shrunk(QUICK_BATCH, QUICK_STEPS)
        result = measure(workload, device, (fast_repeats, repeats), warmup, backends, usable)
        print(report.table(result))
        results.append(result)
    meta["load_average_after"] = _load_average()
    report.write_json(args.json, meta, results, skipped)
    print(f"wrote {args.json}")
    return 0


def measure(w: Workload, device: torch.device, repeats: tuple[int, int], warmup: int, backends: Sequence[str],
            usable: Sequence[peers.Peer]) -> report.WorkloadResult:
    """Check agreement on ``w``, then time every contender on it.

    The one-pass contenders (FGSM, the floor, the training steps) and the PGD contenders are
    timed as two round-robin groups, ``repeats = (one-pass rounds, PGD rounds)``.
    """
    model, x, y = w.make(device)
    groups: dict[str, dict[str, Callable[[], object]]] = contenders.attacks(model, x, y, w)
    for backend in backends:
        if backend != "eager":
            groups["pgd"][f"fgsmkit[{backend}]"] = _pgd_with(model, x, y, w, backend)
    notes = {}
    for peer in usable:
        for attack, run in peer.build(model, x, y, w).items():
            if run is not None:
                groups[attack][peer.name] = run
        if peer.note:
            notes[peer.name] = peer.note

    print(f"== {w.name}: checking that the contenders agree with fgsmkit")
    agreement = {attack: _agreement(attack, groups[attack], notes) for attack in ("fgsm", "pgd")}
    identical = contenders.adversarial_loss_matches(model, x, y, w.eps)
    print(f"AdversarialLoss bit-identical to the 3-forward step: {identical}")

    one_pass = {f"{attack}/{name}": run for attack in ("fgsm", "floor") for name, run in groups[attack].items()}
    one_pass.update({f"train/{name}": run for name, run in contenders.training_steps(model, x, y, w).items()})
    iterative = {f"pgd/{name}": run for name, run in groups["pgd"].items()}
    timings = {}
    for group, runs, rounds in (("one-pass", one_pass, repeats[0]), ("pgd", iterative, repeats[1])):
        print(f"== {w.name}: timing {len(runs)} contenders, {rounds} rounds after {warmup} warm-up")
        timings.update(timing.interleaved(runs, device, rounds, warmup, group))
        for key, run in runs.items():
            timings[key].peak_memory = timing.peak_memory(run, device)
    return report.WorkloadResult(w, timings, agreement, identical, notes)


def _pgd_with(model: torch.nn.Module, x: Tensor, y: Tensor, w: Workload, backend: str) -> Callable[[], Tensor]:
    return lambda: pgd(model, x, y, eps=w.eps, step_size=w.step_size, steps=w.steps, random_start=False,
                       backend=backend)


def _agreement(attack: str, group: dict[str, Callable[[], object]],
               notes: dict[str, str]) -> dict[str, float | None]:
    """Largest absolute difference of each contender's output from fgsmkit's (None: not compared)."""
    reference = group["fgsmkit"]()
    assert isinstance(reference, Tensor)
    diffs: dict[str, float | None] = {}
    for name, run in group.items():
        out = run()
        if name in notes or not isinstance(out, Tensor):
            diffs[name] = None
            continue
        diffs[name] = float((out.detach().to(reference) - reference).abs().max())
        print(f"  {attack:4s} {name:24s} max abs diff from fgsmkit: {diffs[name]:.3g}")
    return diffs


def _backends(option: str | None, device: torch.device, quick: bool) -> list[str]:
    if option is None:
        if quick:
            return ["eager"]
        return ["eager", "compile", "cuda_graph"] if device.type == "cuda" else ["eager", "compile"]
    chosen = [b.strip() for b in option.split(",") if b.strip()]
    bad = [b for b in chosen if b not in ("eager", "compile", "cuda_graph")]
    if bad or (device.type != "cuda" and "cuda_graph" in chosen):
        raise SystemExit(f"error: --backends takes eager, compile (and cuda_graph on CUDA); got {option!r}")
    return chosen


def _processor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except (OSError, AttributeError):
        return None


def _meta(device: torch.device, repeats: int, fast_repeats: int, warmup: int,
          backends: Sequence[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "command": shlex.join(sys.argv),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fgsmkit": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "processor": _processor(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "device": str(device), "repeats": repeats, "fast_repeats": fast_repeats, "warmup": warmup,
        "backends": list(backends),
        "load_average_before": _load_average(),
    }
    if device.type == "cuda":
        meta["device_name"] = torch.cuda.get_device_name(device)
    return meta
