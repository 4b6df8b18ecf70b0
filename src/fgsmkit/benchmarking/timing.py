"""Interleaved timing and peak memory.

Every repeat runs each contender once, so that drift on a shared machine (other jobs, clock
changes) hits all contenders alike, in a fresh random order each repeat: a contender that always
ran right after the same other one would inherit its caches every time (fgsmkit's FGSM, run right
after a training step on another copy of the model, read about 3% slower against the hand-written
call, which always ran right after it on warm caches). The median over repeats is reported.
Peak memory is the median over a few separate, untimed calls per contender.
"""

from __future__ import annotations

import ctypes
import gc
import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

Run = Callable[[], object]


@dataclass
class Timing:
    """Seconds per call of one contender over the repeats, and its memory in bytes.

    ``wall`` is elapsed time; ``cpu`` is the process's CPU time (all threads), which other jobs
    on a shared machine disturb less; on CUDA it measures the host waiting, not the work.
    ``first_call_reserved`` is, on CUDA, how much the reserved memory grew during the first call
    (None where not measured).
    """

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    peak_memory: int | None = None
    first_call_reserved: int | None = None
    group: str = ""  # contenders of one group ran in the same rounds: sample i of each is paired

    def samples(self, clock: str) -> list[float]:
        return self.wall if clock == "wall" else self.cpu

    def median(self, clock: str = "wall") -> float:
        return statistics.median(self.wall if clock == "wall" else self.cpu)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(runs: Mapping[str, Run], device: torch.device, repeats: int, warmup: int,
                group: str = "", seed: int = 0) -> dict[str, Timing]:
    """Time each run ``repeats`` times after ``warmup`` untimed rounds, each round in a new random
    order (drawn from ``seed``, so that a benchmark run can be repeated exactly).

    Sample ``i`` of every run comes from round ``i``, so that ratios can be taken round by round.
    """
    names = list(runs)
    timings = {name: Timing(group=group) for name in names}
    for _ in range(warmup):
        for name in names:
            runs[name]()
    synchronize(device)
    orders = random.Random(seed)
    for _ in range(repeats):
        for name in orders.sample(names, len(names)):
            synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            runs[name]()
            synchronize(device)
            timings[name].cpu.append(time.process_time() - cpu)
            timings[name].wall.append(time.perf_counter() - wall)
    return timings


def settle(run: Run, device: torch.device) -> None:
    """On CUDA, call ``run`` once, untimed. Nothing elsewhere.

    The first use of CUDA reserves memory that stays reserved (cuBLAS's workspace is held, not
    cached, so ``torch.cuda.empty_cache`` keeps it), which would otherwise count against whichever
    contender's :func:`first_call` came first.
    """
    if device.type != "cuda":
        return
    run()
    torch.cuda.synchronize(device)


def first_call(run: Run, device: torch.device) -> tuple[object, int | None]:
    """The output of ``run()`` and, on CUDA, how much the reserved memory grew during the call.

    Called on a contender's first call, it sees what a CUDA Graph's capture reserves for its
    private pool, which the max-allocated peak of later calls misses. The allocator's cache is
    emptied first, so that each call reserves its own working set: otherwise only the first
    contender's call reserved it, and every later one reused what it left cached.
    """
    if device.type != "cuda":
        return run(), None
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved(device)
    output = run()
    torch.cuda.synchronize(device)
    return output, torch.cuda.memory_reserved(device) - before


def peak_memory(run: Run, device: torch.device, calls: int = 5) -> int | None:
    """Bytes a call of ``run`` adds at its peak, the median over ``calls`` calls: CUDA max
    allocated, or the CPU resident set.

    On CPU the kernel's high-water mark (``VmHWM``) is reset through ``/proc/self/clear_refs``;
    where that is unavailable (not Linux) the result is None. The resident set of identical calls
    varies by a few MiB (the allocator's mmap threshold adapts), hence the median.
    """
    peaks = [_peak_of_one_call(run, device) for _ in range(calls)]
    return None if None in peaks else int(statistics.median(peaks))  # type: ignore[type-var]


def _peak_of_one_call(run: Run, device: torch.device) -> int | None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    _release_free_heap()
    if not _reset_resident_peak():
        return None
    base = _status_kib("VmRSS")
    run()
    peak = _status_kib("VmHWM")
    return None if base is None or peak is None else max(peak - base, 0) * 1024


def _release_free_heap() -> None:
    """Hand freed heap memory back to the system, so that a call's peak shows in the resident set."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _reset_resident_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
