"""The run's report: a Markdown table of the paper's numbers beside ours, and the same as JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fgsmkit._atomic import replaced_atomically

from .experiments import Row

# What a run writes into its folder besides the figures and checkpoints (reproduction.folders
# reads these names to tell a run's folder from the user's own).
REPORT_FILES = ("report.md", "report.json")
SPREAD_FILES = ("spread.md", "spread.json")
FIGURES_HINT = ('Figures need matplotlib: pip install matplotlib (or, in the checkout, pip install -e ".[figures]"), '
                'then run the same command again.')


def format_value(value: float | str | None, paper: bool = False) -> str:
    """A percentage as printed in the table: the paper's as it printed it, ours to two decimals.

    The paper's numbers are written in :mod:`~fgsmkit.reproduction.experiments` with the digits
    the paper printed (an int where it printed none: ``99``, ``16.0``, ``0.782``), and printed
    as written. Text is kept as it is; a missing value is a dash.
    """
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    # str, not :g, which drops a printed trailing zero (the paper's 16.0% became 16%).
    return f"{value}%" if paper else f"{value:.2f}%"


def format_row(r: Row) -> str:
    """One progress line: ``experiment | metric: paper X, ours Y``."""
    line = f"  {r['metric']}: paper {format_value(r['paper'], paper=True)}, ours {format_value(r['ours'])}"
    return line + (f"  ({r['notes']})" if r["notes"] else "")


def write_report(out: str | os.PathLike[str], meta: dict[str, Any], notes: Sequence[str], rows: Sequence[Row],
                 figures: Sequence[str] | None, progress: tuple[int, int] | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.json`` into ``out``; returns their paths.

    Parameters
    ----------
    out : path-like
        The run's folder.
    meta : dict
        Command, seed, data, machine, date, wall time, settings: printed above the table; and the
        data's name and digest, which only ``report.json`` holds, for later runs to compare.
    notes : sequence of str
        Every hyperparameter choice and deviation from the paper, one per item.
    rows : sequence of dict
        The results, as returned by the experiments.
    figures : sequence of str or None
        File names of the figures written beside the report, or None without matplotlib.
    progress : (int, int) or None
        While the run goes on, the experiments run so far and in all: the report says it is
        incomplete, and that the figures come at the end. None once every experiment has run.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = _heading(meta, seeds=None) + _unfinished(progress) + [
        "Paper: MNIST (60,000 training images, official 10,000-image test set), eps = .25 on pixels in "
        "[0, 1]. Ours: the data above, same eps. Percentages throughout.",
        "",
        "| experiment | metric | paper | ours | notes |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    lines += [f"| {r['experiment']} | {r['metric']} | {format_value(r['paper'], paper=True)} | {format_value(r['ours'])} | "
              f"{r['notes']} |" for r in rows]
    lines += ["", "## Choices and deviations from the paper", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Figures", ""]
    if progress is not None:
        lines.append("Drawn when every experiment has run.")
    elif figures is None:
        lines.append(FIGURES_HINT)
    else:
        lines += [f"![{name}]({name})" for name in figures]
    if meta.get("discussion"):
        lines += ["", "## Where ours differs from the paper", ""] + [f"- {d}" for d in meta["discussion"]]
    markdown, data = (out / name for name in REPORT_FILES)
    _write_text(markdown, "\n".join(lines) + "\n")
    _write_text(data, json.dumps({"meta": meta, "complete": progress is None, "notes": list(notes),
                                  "rows": list(rows), "figures": None if figures is None else list(figures)},
                                 indent=2) + "\n")
    return markdown, data


def _unfinished(progress: tuple[int, int] | None) -> list[str]:
    """The warning at the top of the report of a run that has not run every experiment."""
    if progress is None:
        return []
    done, total = progress
    so_far = (f"all {total} experiments run, the figures not drawn yet" if done == total
              else f"{done} of {total} experiments run so far")
    return [f"**Incomplete: {so_far}. The run is still going, or was stopped; "
            "the same command, run again, resumes it and completes this report.**", ""]


def write_spread(out: str | os.PathLike[str], meta: dict[str, Any], runs: Mapping[int, Sequence[Row]]) -> tuple[Path, Path]:
    """Write ``spread.md`` and ``spread.json``: every row's number for each seed, their mean and range.

    Parameters
    ----------
    out : path-like
        The folder that holds the seeds' own runs (``seed-N``).
    meta : dict
        As for :func:`write_report`, with ``seed`` the list of seeds.
    runs : mapping
        Each seed's rows, as :func:`write_report` got them; every seed has the same rows.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(runs)
    listed = {tuple((r["experiment"], r["metric"]) for r in rows) for rows in runs.values()}
    if len(listed) > 1:
        raise ValueError(f"the seeds' reports list different rows: {sorted(map(len, listed))} rows")
    spread = []
    for rows in zip(*runs.values()):
        first = rows[0]
        values = [r["ours"] for r in rows]
        known = [v for v in values if v is not None]
        shared_notes = first["notes"] if all(r["notes"] == first["notes"] for r in rows) else ""  # not "kept epoch N"
        spread.append({"experiment": first["experiment"], "metric": first["metric"], "paper": first["paper"],
                       "ours": values, "mean": round(sum(known) / len(known), 4) if known else None,
                       "min": min(known, default=None), "max": max(known, default=None), "notes": shared_notes})
    lines = _heading(meta, seeds) + [
             "Each seed's full report, notes and figures: `seed-N/report.md`. The seed sets every random "
             "draw (initialisation, batch order, dropout, noise, the rubbish inputs); the data and its "
             "splits are the same for every seed. Percentages throughout.",
             "",
             "| experiment | metric | paper | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | min-max | notes |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in seeds) + " | ---: | ---: | --- |"]
    for r in spread:
        spread_of = "-" if r["min"] is None else f"{r['min']:.2f}-{r['max']:.2f}%"
        lines.append(f"| {r['experiment']} | {r['metric']} | {format_value(r['paper'], paper=True)} | "
                     + " | ".join(format_value(v) for v in r["ours"])
                     + f" | {format_value(r['mean'])} | {spread_of} | {r['notes']} |")
    markdown, data = (out / name for name in SPREAD_FILES)
    _write_text(markdown, "\n".join(lines) + "\n")
    _write_text(data, json.dumps({"meta": meta, "seeds": seeds, "rows": spread}, indent=2) + "\n")
    return markdown, data


def _heading(meta: dict[str, Any], seeds: list[int] | None) -> list[str]:
    """Title, the warning for a quick or smoke run, and the table of how the run was made: of one
    seed's run (``seeds=None``) or of several."""
    name = meta["settings"]["name"]
    lines = [f"# Reproduction of Goodfellow, Shlens & Szegedy (2015), {name} run"
             + (f", {len(seeds)} seeds" if seeds else ""), ""]
    if name != "full":
        lines += [f"**These are {name} runs: small data and few epochs, to check that everything runs. Their "
                  "numbers are not a reproduction.**" if seeds else
                  f"**This is the {name} run: small data and few epochs, to check that everything runs. Its "
                  f"numbers are not a reproduction; run without `--{name}` for that.**", ""]
    made = [("command", f"`{meta['command']}`"), ("data", meta["data"]),
            *([] if seeds else [("seed", meta["seed"])]),
            ("machine", meta["machine"]), ("date", meta["date"]), ("wall time", meta["wall_time"])]
    return lines + ["| | |", "| --- | --- |", *(f"| {key} | {value} |" for key, value in made), ""]


def _write_text(path: Path, text: str) -> None:
    with replaced_atomically(path) as (handle, _):
        handle.write(text.encode("utf-8"))
