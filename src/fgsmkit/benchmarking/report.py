"""The benchmark's results: ratios of medians, a Markdown table and a JSON document."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from .timing import Timing
from .workloads import Workload

CLOCKS = ("wall", "cpu")
# "paired": the median over rounds of the ratio within each round. Contenders of a group run in
# the same rounds, so a slow round (another job on the machine) slows both sides of the ratio.
PAIRED = ("paired_wall", "paired_cpu")
FLOOR = "floor/fwd+bwd to input"
OURS, HAND = "fgsmkit", "hand-written"

# FGSM is one sign step: a flipped sign moves a coordinate by up to 2 eps, rounding by about an ulp.
TOLERANCE = 1e-6
# After 40 float32 steps correct PGD loops differ on up to 0.25% of the elements (measured on the
# three CPU workloads); one that returns x, or steps the wrong way, differs on far more.
PGD_SHARE = 0.01


def floor_loop(steps: int) -> str:
    """The key of the floor called ``steps`` times, timed beside PGD."""
    return f"{FLOOR} x{steps}"


@dataclass(frozen=True)
class Agreement:
    """How far a contender's output is from fgsmkit's, and whether that is close enough.

    ``max_abs_diff`` is the largest absolute difference, ``fraction_off`` the fraction of
    elements that differ by more than :data:`TOLERANCE`, ``inside`` whether the output lies in
    the eps-ball around ``x`` and in the box [0, 1]; all are None when the outputs cannot be
    compared (another shape, not a tensor). NaN where fgsmkit's output has NaN too counts as equal;
    NaN against a number is off, and makes ``max_abs_diff`` NaN (null in the JSON).
    ``compared=False`` marks a contender that computes another output by design: it is timed,
    not checked.

    FGSM, one sign step, must equal fgsmkit's within :data:`TOLERANCE`. Over many float32 steps
    correct PGD loops drift apart by rounding (a step that flips one sign moves a coordinate by
    the step size), so PGD must lie inside the ball and the box and be off on at most
    :data:`PGD_SHARE` of the elements.
    """

    attack: str
    max_abs_diff: float | None
    fraction_off: float | None
    inside: bool | None = None
    compared: bool = True

    @classmethod
    def of(cls, attack: str, output: object, reference: Tensor, x: Tensor, eps: float) -> Agreement:
        if not isinstance(output, Tensor) or output.shape != reference.shape:
            return cls(attack, None, None, None)
        output = output.detach().to(reference)
        diff = (output - reference).abs().masked_fill(output.isnan() & reference.isnan(), 0.0)
        off = (diff > TOLERANCE) | diff.isnan()  # NaN compares False with the tolerance, yet is off
        # NaN compares False, so a NaN output is never inside.
        inside = bool(((output - x).abs() <= eps + TOLERANCE).all() and ((output >= 0) & (output <= 1)).all())
        return cls(attack, float(diff.max()), float(off.double().mean()), inside)

    def describe(self) -> str:
        if not self.compared:
            return "not compared (another output by design)"
        where = "" if self.inside is None or self.inside else ", OUTSIDE the eps-ball or the box"
        return (f"max abs diff {_diff(self.max_abs_diff)}, {_percent(self.fraction_off)} of elements off by "
                f"> {TOLERANCE:g}{where}")

    @property
    def agrees(self) -> bool:
        if not self.compared:
            return True  # nothing to check against
        if self.max_abs_diff is None or self.fraction_off is None:
            return False
        if self.attack == "fgsm":
            return self.max_abs_diff <= TOLERANCE  # NaN fails the comparison too
        return bool(self.inside) and self.fraction_off <= PGD_SHARE


@dataclass
class WorkloadResult:
    """Everything measured on one workload. Timings are keyed ``"attack/contender"``.

    ``agreement`` holds each contender's :class:`Agreement` with fgsmkit per attack;
    ``bit_identical`` says, for each hand-written adversarial training loss, whether one SGD
    step with it gives the same parameters as one with AdversarialLoss. A contender that fails
    either check is left out of the ratios.
    """

    workload: Workload
    timings: dict[str, Timing]
    agreement: dict[str, dict[str, Agreement]] = field(default_factory=dict)
    bit_identical: dict[str, bool] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # peers that failed on this workload
    device: str = "cpu"

    def median(self, key: str, clock: str) -> float | None:
        timing = self.timings.get(key)
        return None if timing is None else timing.median(clock)

    def agrees(self) -> dict[str, dict[str, bool | None]]:
        """``{attack: {contender: whether its output agrees with fgsmkit's}}`` (None: not compared)."""
        return {attack: {name: a.agrees if a.compared else None for name, a in by_name.items()}
                for attack, by_name in self.agreement.items()}

    def untrusted(self) -> set[str]:
        """The timing keys left out of the ratios: disagreeing attacks, and training steps that do
        not train like AdversarialLoss."""
        keys = {f"{attack}/{name}" for attack, by_name in self.agrees().items()
                for name, agrees in by_name.items() if agrees is False}
        return keys | {f"train/{name}" for name, identical in self.bit_identical.items() if not identical}

    def problems(self) -> list[str]:
        """What makes this workload's results untrustworthy: disagreeing contenders, hand-written
        training steps that do not train like AdversarialLoss, and peers that failed."""
        name = self.workload.name
        found = [f"{name}: {contender}'s {attack.upper()} disagrees with fgsmkit's ({agreement.describe()})"
                 for attack, by_name in self.agreement.items() for contender, agreement in by_name.items()
                 if not agreement.agrees]
        found += [f"{name}: AdversarialLoss is not bit-identical to the {step}"
                  for step, identical in self.bit_identical.items() if not identical]
        found += [f"{name}: {peer} failed ({why})" for peer, why in self.skipped.items()]
        return found

    def ratios(self) -> dict[str, dict[str, float]]:
        """``{description: {clock: ratio}}`` for every ratio the targets name, leaving out the
        :meth:`untrusted` contenders."""
        floor_steps = floor_loop(self.workload.steps)
        pairs: list[tuple[str, str, str]] = [
            ("fgsm: fgsmkit / hand-written", f"fgsm/{OURS}", f"fgsm/{HAND}"),
            ("fgsm: fgsmkit / floor", f"fgsm/{OURS}", FLOOR),
            ("pgd: fgsmkit / hand-written", f"pgd/{OURS}", f"pgd/{HAND}"),
            (f"pgd: fgsmkit / ({self.workload.steps} x floor)", f"pgd/{OURS}", floor_steps),
        ]
        for key in self.timings:
            attack, _, contender = key.partition("/")
            if attack not in ("fgsm", "pgd") or contender in (OURS, HAND):
                continue
            pairs.append((f"{attack}: {contender} / hand-written", key, f"{attack}/{HAND}"))
            if attack == "pgd" and contender.startswith(OURS):  # another backend of ours
                pairs.append((f"pgd: {contender} / ({self.workload.steps} x floor)", key, floor_steps))
        pairs += [
            ("AdversarialLoss step / clean step", "train/AdversarialLoss step", "train/clean step"),
            ("3-forward adversarial step / clean step", "train/3-forward adversarial step", "train/clean step"),
            ("AdversarialLoss step / 3-forward adversarial step", "train/AdversarialLoss step",
             "train/3-forward adversarial step"),
            ("AdversarialLoss step / 2-forward adversarial step", "train/AdversarialLoss step",
             "train/2-forward adversarial step"),
        ]
        untrusted = self.untrusted()
        ratios: dict[str, dict[str, float]] = {}
        for description, top, bottom in pairs:
            if {top, bottom} & untrusted:
                continue
            values = {}
            for clock in CLOCKS:
                a, b = self.median(top, clock), self.median(bottom, clock)
                if a is not None and b:
                    values[clock] = a / b
                paired = self.paired_ratio(top, bottom, clock)
                if paired is not None:
                    values[f"paired_{clock}"] = paired
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
                      "wall_s": t.wall, "cpu_s": t.cpu, "peak_memory_bytes": t.peak_memory,
                      "first_call_reserved_bytes": t.first_call_reserved, "group": t.group}
                for key, t in self.timings.items()
            },
            "agreement_tolerance": TOLERANCE, "agreement_pgd_share": PGD_SHARE,
            "agreement_inside": {attack: {name: a.inside for name, a in by_name.items()}
                                 for attack, by_name in self.agreement.items()},
            "agreement_max_abs_diff": {attack: {name: a.max_abs_diff for name, a in by_name.items()}
                                       for attack, by_name in self.agreement.items()},
            "agreement_fraction_off": {attack: {name: a.fraction_off for name, a in by_name.items()}
                                       for attack, by_name in self.agreement.items()},
            "agrees": self.agrees(),
            "adversarial_loss_bit_identical": self.bit_identical,
            "ratios": self.ratios(),
            "notes": self.notes,
            "skipped_peers": self.skipped,
        }


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.1f}"


def _diff(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1e}" if value else "0"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.3g}%"  # 100%, 12.5%, 0.17%: no exponent


def _agreement_cells(result: WorkloadResult, attack: str, contender: str) -> str:
    agreement = result.agreement.get(attack, {}).get(contender)
    if agreement is None:
        return "- | -"
    flag = "" if agreement.agrees else " DISAGREES"
    return f"{_diff(agreement.max_abs_diff)}{flag} | {_percent(agreement.fraction_off)}"


def table(result: WorkloadResult) -> str:
    """A Markdown table of one workload: median times, peak memory, agreement, then the ratios.

    On CUDA the CPU-time columns are left out (the host's CPU time inside a synchronisation
    depends on how the driver waits, not on the work), and the growth of the reserved memory
    across each attack's first call is shown: a CUDA Graph's private pool, reserved at capture,
    never shows in the max-allocated peak.
    """
    w = result.workload
    cuda = result.device == "cuda"
    clocks = ("wall",) if cuda else CLOCKS
    memory = "| peak allocated MiB | reserved by first call MiB " if cuda else "| peak memory MiB "
    lines = [f"### {w.name}: {w.description}", "",
             f"eps {w.eps:g}, PGD {w.steps} steps of {w.step_size:g} from the clean input. FGSM must agree "
             f"with fgsmkit's within {TOLERANCE:g}; PGD must stay in the eps-ball and the box and be off by "
             f"more than that on at most {PGD_SHARE:.0%} of the elements (over {w.steps} float32 steps "
             "correct loops drift apart by rounding).", "",
             "| attack | contender | median wall ms " + ("" if cuda else "| median CPU ms ") + memory
             + f"| max abs diff vs fgsmkit | elements off by > {TOLERANCE:g} |",
             "|---|---|" + "---:|" * (len(clocks) + (2 if cuda else 1) + 2)]
    for key, timing in result.timings.items():
        attack, _, contender = key.partition("/")
        cells = [_ms(timing.median(clock)) for clock in clocks] + [_mib(timing.peak_memory)]
        if cuda:
            cells.append(_mib(timing.first_call_reserved))
        lines.append(f"| {attack} | {contender} | " + " | ".join(cells)
                     + f" | {_agreement_cells(result, attack, contender)} |")
    columns = [("wall", "wall, of medians"), ("paired_wall", "wall, median of per-round ratios")]
    if not cuda:
        columns = [columns[0], ("cpu", "CPU, of medians"), columns[1], ("paired_cpu", "CPU, median of per-round ratios")]
    lines += ["", "| ratio | " + " | ".join(title for _, title in columns) + " |",
              "|---|" + "---:|" * len(columns)]
    for description, values in result.ratios().items():
        cells = (values.get(key) for key, _ in columns)
        lines.append(f"| {description} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
    lines.append("")
    for name, identical in result.bit_identical.items():
        verdict = "yes" if identical else "**NO**"
        lines.append(f"AdversarialLoss parameters after one SGD step bit-identical to the {name}: {verdict}.")
    for attack, by_name in result.agrees().items():
        for name, agrees in by_name.items():
            if agrees is False:
                lines.append(f"**{name}'s {attack.upper()} DISAGREES with fgsmkit's: left out of the ratios.**")
    for name, note in result.notes.items():
        lines.append(f"- {name}: {note}")
    for name, why in result.skipped.items():
        lines.append(f"- {name}: skipped, it failed ({why})")
    return "\n".join(lines) + "\n"


def write_json(path: Path, meta: dict[str, Any], results: list[WorkloadResult], skipped: dict[str, str]) -> None:
    """The results as a JSON document at ``path``; NaN and infinities (a NaN output's difference)
    are written as null."""
    document = {"meta": meta, "skipped_peers": skipped, "workloads": [r.to_json() for r in results]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite_or_none(document), indent=2, allow_nan=False) + "\n")


def _finite_or_none(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None: JSON has no such numbers
    (``json.dumps`` would write the literals ``NaN`` and ``Infinity``, which parsers reject)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value
