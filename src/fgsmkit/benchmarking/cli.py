"""``fgsmkit bench``: time fgsmkit against hand-written PyTorch, the cost floor and the peers.

For each workload it checks every contender against fgsmkit (see :class:`report.Agreement`:
FGSM within ``report.TOLERANCE``; PGD inside the eps-ball and the box and off on at most
``report.PGD_SHARE`` of the elements) and that the hand-written adversarial training steps
train to bit-identical parameters to AdversarialLoss; a contender that fails is left out of the
ratios. Then it times every contender round-robin, reports medians, ratios and peak memory as a
table, and writes them to a JSON file. A failed check, or a peer that fails to run, makes the
exit status 1, after the results are written.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import __version__, pgd
from ..attacks import _backends as attack_backends
from . import contenders, peers, report, timing
from .workloads import WORKLOADS, Workload

Run = Callable[[], object]
QUICK_BATCH, QUICK_STEPS = 16, 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated workloads (default: all of {', '.join(WORKLOADS)})")
    # None: the run's size decides (--quick or not), unless given.
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds of the PGD contenders; the median is reported (default: 5, 2 with --quick)")
    parser.add_argument("--fast-repeats", type=int, default=None,
                        help="timed rounds of the one-pass contenders (FGSM, floor, training steps), "
                             "which are cheaper and noisier (default: 30, 2 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default: 1)")
    parser.add_argument("--backends", default=None,
                        help="fgsmkit PGD backends to time, comma-separated, among eager, compile, cuda_graph; "
                             "eager is always timed (default: eager,compile on CPU, all three on CUDA, compile "
                             "left out with a line saying why where torch.compile fails; eager with --quick)")
    parser.add_argument("--no-peers", action="store_true", help="leave the peer libraries out")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: batch {QUICK_BATCH}, {QUICK_STEPS} PGD steps (each larger, so that "
                             "they still reach the eps-ball's edge), 2 repeats unless --repeats/--fast-repeats say")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"),
                        help="where to write the results (default: bench-results.json)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark: 0 if every check passed, 1 if one failed (after writing the results),
    2 for a bad option (before running anything, or for a --json file that could not be written
    at the end)."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return _refuse("--device cuda but no CUDA device is available")
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or not names:
        found = f"unknown workloads {unknown}" if unknown else "no workload named"
        return _refuse(f"--workloads {args.workloads!r}: {found}; choose among {list(WORKLOADS)}")
    defaults = (2, 2, 1) if args.quick else (5, 30, 1)
    repeats, fast_repeats, warmup = (default if given is None else given for given, default in
                                     zip((args.repeats, args.fast_repeats, args.warmup), defaults))
    if min(repeats, fast_repeats) < 1 or warmup < 0:
        return _refuse("--repeats and --fast-repeats must be >= 1, --warmup >= 0")
    try:
        backends = _backends(args.backends, device, args.quick)
    except ValueError as error:
        return _refuse(str(error))
    unwritable = _unwritable(args.json)
    if unwritable:
        return _refuse(unwritable)
    try:
        backends = _with_working_compile(backends, device, asked=args.backends is not None)
    except ValueError as error:
        return _refuse(str(error))

    usable: list[peers.Peer] = []
    skipped: dict[str, str] = {}
    if not args.no_peers:
        usable, skipped = peers.available()
        for name, reason in skipped.items():
            print(f"skipping {name}: not importable ({reason})")

    meta = _meta(device, repeats, fast_repeats, warmup, backends, usable)
    meta["quick"] = args.quick  # batch and PGD steps shrunk: a smoke run, not numbers to record
    results = []
    for name in names:
        workload = WORKLOADS[name]
        if args.quick:
            workload = workload.shrunk(QUICK_BATCH, QUICK_STEPS)
        result = measure(workload, device, (fast_repeats, repeats), warmup, backends, usable)
        print(report.table(result))
        for peer, reason in result.skipped.items():
            skipped.setdefault(peer, f"failed on {name}: {reason}")
        results.append(result)
    meta["load_average_after"] = _load_average()
    problems = [problem for result in results for problem in result.problems()]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    try:
        report.write_json(args.json, meta, results, skipped)
    except OSError as error:  # past the check before the run: /proc as root, a full disk
        return _refuse(f"--json {args.json} could not be written ({error}); the tables above hold the results")
    print(f"wrote {args.json}")
    return 1 if problems else 0


def measure(w: Workload, device: torch.device, repeats: tuple[int, int], warmup: int, backends: Sequence[str],
            usable: Sequence[peers.Peer]) -> report.WorkloadResult:
    """Check agreement on ``w``, then time every contender on it.

    The one-pass contenders (FGSM, the floor, the training steps) and the PGD contenders (with
    the floor called once per PGD step) are timed as two round-robin groups,
    ``repeats = (one-pass rounds, PGD rounds)``. A peer that fails to build or on its first call
    is left out and listed in the result's ``skipped`` (which fails the run at its end), unless
    CUDA itself failed, which leaves the device unusable for the rest. Nothing compiled for an
    earlier workload is kept: each compiles as if it ran alone.
    """
    attack_backends.reset_compiled()
    model, x, y = w.make(device)
    groups: dict[str, dict[str, Run]] = contenders.attacks(model, x, y, w)
    for backend in backends:
        if backend != "eager":
            groups["pgd"][f"fgsmkit[{backend}]"] = _pgd_with(model, x, y, w, backend)
    print(f"== {w.name}: checking that the contenders agree with fgsmkit")
    timing.settle(lambda: contenders.input_gradient_floor(model, x, y), device)
    first = {attack: {name: timing.first_call(run, device) for name, run in group.items()}
             for attack, group in groups.items()}
    notes: dict[str, str] = {}
    skipped: dict[str, str] = {}
    uncompared: dict[str, set[str]] = {attack: set() for attack in groups}
    for peer in usable:
        try:
            built = _peer_runs(peer, model, x, y, w, device)
        except Exception as error:  # a peer's bug must not cost the rest of the run
            if "CUDA error" in str(error):  # a device-side assert poisons the CUDA context
                raise
            skipped[peer.name] = peers.reason(error)
            print(f"skipping {peer.name} on {w.name}: it failed ({skipped[peer.name]})")
            continue
        for attack, (run, call) in built.items():
            groups[attack][peer.name], first[attack][peer.name] = run, call
        if peer.note:
            notes[peer.name] = peer.note
        for attack in peer.uncompared:
            uncompared[attack].add(peer.name)
    agreement = {attack: _agreement(attack, {name: output for name, (output, _) in by_name.items()}, x, w.eps,
                                    uncompared[attack])
                 for attack, by_name in first.items()}
    bit_identical = contenders.adversarial_loss_matches(model, x, y, w.eps)
    for name, identical in bit_identical.items():
        print(f"AdversarialLoss bit-identical to the {name}: {identical}" + ("" if identical else "  <-- FAILED"))

    one_pass = {f"fgsm/{name}": run for name, run in groups["fgsm"].items()}
    one_pass[report.FLOOR] = lambda: contenders.input_gradient_floor(model, x, y)
    one_pass.update({f"train/{name}": run for name, run in contenders.training_steps(model, x, y, w).items()})
    iterative = {f"pgd/{name}": run for name, run in groups["pgd"].items()}
    iterative[report.floor_loop(w.steps)] = contenders.input_gradient_floor_loop(model, x, y, w.steps)
    timings = {}
    for group, runs, rounds in (("one-pass", one_pass, repeats[0]), ("pgd", iterative, repeats[1])):
        print(f"== {w.name}: timing {len(runs)} contenders, {rounds} rounds after {warmup} warm-up")
        timings.update(timing.interleaved(runs, device, rounds, warmup, group))
        for key, run in runs.items():
            timings[key].peak_memory = timing.peak_memory(run, device)
    for attack, by_name in first.items():
        for name, (_, reserved) in by_name.items():
            timings[f"{attack}/{name}"].first_call_reserved = reserved
    return report.WorkloadResult(w, timings, agreement, bit_identical, notes, skipped, device.type)


def _peer_runs(peer: peers.Peer, model: torch.nn.Module, x: Tensor, y: Tensor, w: Workload,
               device: torch.device) -> dict[str, tuple[Run, tuple[object, int | None]]]:
    """``{attack: (run, what its first call returned)}`` for the attacks ``peer`` has."""
    runs = {attack: run for attack, run in peer.build(model, x, y, w).items() if run is not None}
    return {attack: (run, timing.first_call(run, device)) for attack, run in runs.items()}


def _pgd_with(model: torch.nn.Module, x: Tensor, y: Tensor, w: Workload, backend: str) -> Callable[[], Tensor]:
    return lambda: pgd(model, x, y, eps=w.eps, step_size=w.step_size, steps=w.steps, random_start=False,
                       backend=backend)


def _agreement(attack: str, outputs: dict[str, object], x: Tensor, eps: float,
               uncompared: set[str]) -> dict[str, report.Agreement]:
    """How far each contender's output is from fgsmkit's, printed (see :class:`report.Agreement`);
    the ``uncompared`` contenders compute another output by design and are not checked."""
    reference = outputs[report.OURS]
    assert isinstance(reference, Tensor)
    agreement = {}
    for name, output in outputs.items():
        if name == report.OURS:
            continue
        if name in uncompared:
            agreement[name] = report.Agreement(attack, None, None, None, compared=False)
            print(f"  {attack:4s} {name:24s} not compared: it computes another output by design (see its note)")
            continue
        agreement[name] = found = report.Agreement.of(attack, output, reference, x, eps)
        verdict = "agrees" if found.agrees else "<-- DISAGREES with fgsmkit: left out of the ratios"
        print(f"  {attack:4s} {name:24s} {found.describe()} {verdict}")
    return agreement


def _backends(option: str | None, device: torch.device, quick: bool) -> list[str]:
    if option is None:
        if quick:
            return ["eager"]
        return ["eager", "compile", "cuda_graph"] if device.type == "cuda" else ["eager", "compile"]
    chosen = [b.strip() for b in option.split(",") if b.strip()]
    bad = [b for b in chosen if b not in ("eager", "compile", "cuda_graph")]
    if bad or not chosen or (device.type != "cuda" and "cuda_graph" in chosen):
        raise ValueError(f"--backends takes eager, compile (and cuda_graph on CUDA); got {option!r}")
    # Eager is always timed: it is the fgsmkit row of every ratio (and the JSON says so).
    return ["eager", *dict.fromkeys(b for b in chosen if b != "eager")]


def _with_working_compile(backends: list[str], device: torch.device, asked: bool) -> list[str]:
    """``backends``, without ``"compile"`` where torch.compile fails on ``device``.

    Tried once before the run, so that a machine without a working C++ compiler does not end the
    run in its first compiled call with nothing written. Where compile came from the defaults
    (``asked=False``) it is left out with one line saying why; asked for, it is a ValueError.
    """
    if "compile" not in backends:
        return backends
    failure = _compile_failure(device)
    if failure is None:
        return backends
    if asked:
        raise ValueError(f"--backends compile: torch.compile fails on this machine ({failure}); "
                         "leave compile out of --backends")
    print(f"skipping compile backend: {failure}")
    return [b for b in backends if b != "compile"]


def _compile_failure(device: torch.device) -> str | None:
    """Why torch.compile cannot run a small function on ``device`` (None: it can)."""
    try:
        torch.compile(_compile_probe)(torch.zeros(4, device=device))
    except Exception as error:  # inductor raises its own errors, from a missing compiler to a failed build
        return peers.reason(error)
    return None


def _compile_probe(t: Tensor) -> Tensor:
    return (t + 1.0).clamp(0.0, 1.0)


def _unwritable(path: Path) -> str | None:
    """Why the results cannot be written to ``path`` (None: they can), found before the run
    without creating, opening or deleting anything."""
    if path.is_dir():
        return f"--json {path} cannot be written: it is a folder; give a file name, e.g. {path / 'bench-results.json'}"
    if path.exists():
        return None if os.access(path, os.W_OK) else f"--json {path} cannot be written: permission denied"
    folder = path.parent
    while not folder.exists():  # the missing folders are made when the results are written
        folder = folder.parent
    if not folder.is_dir():
        return f"--json {path} cannot be written: {folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"--json {path} cannot be written: no permission to write in {folder}"
    return None


def _refuse(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


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


def _checkout(package: Path | None = None) -> tuple[str | None, bool | None]:
    """The commit of the git checkout that holds ``package``, and whether its tracked files differ
    from that commit.

    Parameters
    ----------
    package : Path, optional
        The package's folder; by default that of the fgsmkit this module was imported from.

    Returns
    -------
    tuple of (str or None, bool or None)
        ``git rev-parse HEAD`` and whether ``git status`` shows changes to tracked files (untracked
        ones, such as results, do not count); ``(None, None)`` where the package's ``__init__.py``
        is tracked by no checkout (an installed copy, even one inside a checkout's ignored
        folders) or git is missing.
    """
    folder = Path(__file__).resolve().parents[1] if package is None else package

    def git(*args: str) -> str | None:
        try:  # --no-optional-locks: status must not rewrite the checkout's index
            done = subprocess.run(["git", "--no-optional-locks", "-C", str(folder), *args],
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):  # no git, or it hung
            return None
        return done.stdout if done.returncode == 0 else None

    if git("ls-files", "--error-unmatch", "--", "__init__.py") is None:
        return None, None
    head, status = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    if head is None or status is None:
        return None, None
    return head.strip(), bool(status.strip())


def _meta(device: torch.device, repeats: int, fast_repeats: int, warmup: int,
          backends: Sequence[str], usable: Sequence[peers.Peer]) -> dict[str, Any]:
    commit, dirty = _checkout()
    meta: dict[str, Any] = {
        "command": shlex.join(sys.argv),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fgsmkit": __version__, "fgsmkit_commit": commit, "fgsmkit_dirty": dirty,
        "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "processor": _processor(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "device": str(device), "repeats": repeats, "fast_repeats": fast_repeats, "warmup": warmup,
        "backends": list(backends), "peer_versions": peers.versions(tuple(usable)),
        "load_average_before": _load_average(),
    }
    if device.type == "cuda":
        meta["device_name"] = torch.cuda.get_device_name(device)
    return meta
