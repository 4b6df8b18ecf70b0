"""The benchmark's results: ratios of medians, a Markdown table and a JSON document."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .timing import Timing
from .workloads import Workload

CLOCKS = ("wall", "cpu")
# "paired": the median over rounds of the ratio within each round. Contenders of a group run in
# the same rounds, so a slow round (another job on the machine) slows both sides of the ratio.
PAIRED = ("paired_wall", "paired_cpu")
FLOOR = "floor/fwd+bwd to input"
OURS, HAND = "fgsmkit", "hand-written"


@dataclass
class WorkloadResult:
    """Everything measured on one workload. Timings are keyed ``"attack/contender"``."""

    workload: Workload
    timings: dict[str, Timing]
    agreement: dict[str, dict[str, float | None]] = field(default_factory=dict)
    adversarial_loss_bit_identical: bool | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def median(self, key: str, clock: str) -> float | None:
        timing = self.timings.get(key)
        return None if timing is None else timing.median(clock)

    def ratios(self) -> dict[str, dict[str, float]]:
        """``{description: {clock: ratio of medians}}`` for every ratio the targets name."""
        pairs: list[tuple[str, str, str, float]] = [
            ("fgsm: fgsmkit / hand-written", f"fgsm/{OURS}", f"fgsm/{HAND}", 1.0),
            ("pgd: fgsmkit / hand-written", f"pgd/{OURS}", f"pgd/{HAND}", 1.0),
            (f"pgd: fgsmkit / ({self.workload.steps} x floor)", f"pgd/{OURS}", FLOOR, self.workload.steps),
        ]
        for key in self.timings:
            attack, _, contender = key.partition("/")
            if attack not in ("fgsm", "pgd") or contender in (OURS, HAND):
                continue
            pairs.append((f"{attack}: {contender} / hand-written", key, f"{attack}/{HAND}", 1.0))
            if attack == "pgd" and contender.startswith(OURS):  # another backend of ours
                pairs.append((f"pgd: {contender} / ({self.workload.steps} x floor)", key, FLOOR,
                              self.workload.steps))
        pairs += [
            ("AdversarialLoss step / clean step", "train/AdversarialLoss step", "train/clean step", 1.0),
            ("3-forward adversarial step / clean step", "train/3-forward adversarial step", "train/clean step", 1.0),
            ("AdversarialLoss step / 3-forward adversarial step", "train/AdversarialLoss step",
             "train/3-forward adversarial step", 1.0),
        ]
        ratios: dict[str, dict[str, float]] = {}
        for description, top, bottom, times in pairs:
            values = {}
            for clock in CLOCKS:
                a, b = self.median(top, clock), self.median(bottom, clock)
                if a is not None and b:
                    values[clock] = a / (times * b)
                paired = self.paired_ratio(top, bottom, clock)
                if paired is not None:
                    values[f"paired_{clock}"] = paired / times
            if values:
                ratios[description] = values
        return ratios

    def paired_ratio(self, top: str, bottom: str, clock: str) -> float | None:
        """Median over rounds of ``top / bottom``, when both ran in the same rounds."""
        a, b = self.timings.get(top), self.timings.get(bottom)
        if a is None or b is None or not a.group or a.group != b.group:
            return None
        xs, ys = a.samples(clock), b.samples(clock)
        if len(xs) != len(ys) or not all(ys):
            return None
        return statistics.median(x / y for x, y in zip(xs, ys))

    def to_json(self) -> dict[str, Any]:
        w = self.workload
        return {
            "name": w.name, "description": w.description, "batch": w.batch,
            "input_shape": list(w.input_shape), "eps": w.eps, "step_size": w.step_size, "steps": w.steps,
            "timings": {
                key: {"wall_median_s": t.median("wall"), "cpu_median_s": t.median("cpu"),
                      "wall_s": t.wall, "cpu_s": t.cpu, "peak_memory_bytes": t.peak_memory, "group": t.group}
                for key, t in self.timings.items()
            },
            "agreement_max_abs_diff": self.agreement,
            "adversarial_loss_bit_identical": self.adversarial_loss_bit_identical,
            "ratios": self.ratios(),
            "notes": self.notes,
        }


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.1f}"


def _diff(value: float | None | str) -> str:
    if value is None or isinstance(value, str):
        return "-" if value is None else value
    return f"{value:.1e}" if value else "0"


def table(result: WorkloadResult) -> str:
    """A Markdown table of one workload: median times, peak memory, agreement, then the ratios."""
    w = result.workload
    lines = [f"### {w.name}: {w.description}", "",
             f"eps {w.eps:g}, PGD {w.steps} steps of {w.step_size:g} from the clean input.", "",
             "| attack | contender | median wall ms | median CPU ms | peak memory MiB | max abs diff vs fgsmkit |",
             "|---|---|---:|---:|---:|---:|"]
    for key, timing in result.timings.items():
        attack, _, contender = key.partition("/")
        diff = result.agreement.get(attack, {}).get(contender)
        lines.append(f"| {attack} | {contender} | {_ms(timing.median('wall'))} | {_ms(timing.median('cpu'))} "
                     f"| {_mib(timing.peak_memory)} | {_diff(diff)} |")
    lines += ["", "| ratio | wall, of medians | CPU, of medians | wall, median of per-round ratios "
              "| CPU, median of per-round ratios |", "|---|---:|---:|---:|---:|"]
    for description, values in result.ratios().items():
        cells = (values.get(k) for k in ("wall", "cpu", "paired_wall", "paired_cpu"))
        lines.append(f"| {description} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
    if result.adversarial_loss_bit_identical is not None:
        verdict = "yes" if result.adversarial_loss_bit_identical else "NO"
        lines += ["", f"AdversarialLoss parameters after one SGD step bit-identical to the 3-forward step: {verdict}."]
    for name, note in result.notes.items():
        lines.append(f"- {name}: {note}")
    return "\n".join(lines) + "\n"


def write_json(path: Path, meta: dict[str, Any], results: list[WorkloadResult], skipped: dict[str, str]) -> None:
    document = {"meta": meta, "skipped_peers": skipped, "workloads": [r.to_json() for r in results]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
