"""The run's folders: ``--out``, each seed's folder in it, and the mark a run leaves in them.

A run writes ``report.md``, ``report.json``, the figures and ``checkpoints/`` into its folder,
replacing files of those names, so it refuses a folder where such files were made by something
else; other files (a log, a ``.gitignore``) are left alone, and an earlier run's folder is resumed.
A folder holds the run of one seed or the runs of several (``seed-N`` and ``spread.md``), never
both: a run of the other kind is refused, with the ``--out`` or the move that resumes the run
already there. A run marks its folders with :data:`MARKER` before it trains anything; folders of
runs made before the mark existed are known by what they hold.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from . import experiments, report
from .settings import PRESETS

MARKER = ".fgsmkit-reproduce"
MARKER_TEXT = "This folder holds a run of `fgsmkit reproduce`; the same command, run again, resumes it.\n"


def seed_folders(out: Path, seeds: list[int]) -> dict[int, Path]:
    """Each seed's run folder: ``out`` itself for one seed, ``out/seed-N`` for several (where a run
    of seed N alone with ``--out out/seed-N`` left its models to be picked up)."""
    if len(seeds) == 1:
        return {seeds[0]: out}
    return {seed: out / f"seed-{seed}" for seed in seeds}


def prepare(out: Path, seeds: list[int]) -> str | None:
    """Check, then make, every folder the run writes into, before it trains anything.

    Returns what stands in the way, as a message naming ``--out``, or None once ``out``, each
    seed's folder and each checkpoints folder exists and can be written.
    """
    by_seed = seed_folders(out, seeds)
    report_folders = list(dict.fromkeys([out, *by_seed.values()]))  # out first; once with one seed
    needed = report_folders + [folder / "checkpoints" for folder in by_seed.values()]
    for path in needed:
        if path.exists() and not path.is_dir():
            return f"{_where(out, path)} is a file, where the run needs a folder; move it away, or give another --out"
    for folder in report_folders:
        problem = _foreign(out, folder)
        if problem:
            return problem
    problem = _other_layout(out, seeds)  # after _foreign: a report.md of the user's own is not a run's
    if problem:
        return problem
    for path in needed:
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as error:
            return (f"{_where(out, path)} cannot be used for the report, figures and checkpoints ({error}); "
                    "give a folder that can be created and written")
    return None


def _other_layout(out: Path, seeds: list[int]) -> str | None:
    """Why ``out`` holds a run laid out for another number of seeds, or None.

    One seed writes into ``out`` itself, several each into ``out/seed-N``: mixed in one folder,
    a run of one seed retrained the models that ``out/seed-N`` held and left its report beside
    the other run's ``spread.md``, and a run of several left the one seed's report behind.
    """
    if not out.is_dir():
        return None
    if len(seeds) == 1:
        held = sorted(sub.name for sub in out.glob("seed-*") if sub.is_dir() and is_run_folder(sub))
        held += [name for name in report.SPREAD_FILES if (out / name).is_file()]
        if held:
            listed = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
            return (f"--out {out} holds a run of several seeds ({listed}); give --out {out / f'seed-{seeds[0]}'} "
                    f"to run or resume seed {seeds[0]} as one of them, or another --out")
        return None
    held = [name for name in report.REPORT_FILES if (out / name).is_file()]
    held += ["checkpoints"] if _holds_model_checkpoints(out / "checkpoints") else []
    if not held:
        return None
    seed = _recorded_seed(out)
    into = out / f"seed-{seed if seed is not None else 'N'}"
    return (f"--out {out} holds the run of one seed ({', '.join(held)}), where a run of several seeds keeps each "
            f"in {out / 'seed-N'}; move that run's files into {into}{'' if seed is not None else ' (N its seed)'} "
            "to resume it as one of them, or give another --out")


def _recorded_seed(folder: Path) -> int | None:
    """The seed in ``folder/report.json``, or None."""
    try:
        seed = json.loads((folder / report.REPORT_FILES[1]).read_text(encoding="utf-8"))["meta"]["seed"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return seed if isinstance(seed, int) else None


def _where(out: Path, path: Path) -> str:
    return f"--out {out}" if path == out else f"--out {out}: {path}"


def _foreign(out: Path, folder: Path) -> str | None:
    """Why ``folder`` (``out``, or a seed's folder in it) cannot take the run; None if it can.

    Only files the run would write over stand in its way: a log redirected into the folder, a
    ``.gitignore``, or the empty ``checkpoints`` of a run stopped before it marked the folder do not.
    """
    if not folder.is_dir() or is_run_folder(folder):
        return None
    names = sorted(p.name for p in folder.iterdir() if _written_by_runs(p))
    if not names:
        return None
    listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return (f"{_where(out, folder)} holds files a run would write over ({listed}), and no run of fgsmkit "
            "reproduce made them; give a new folder, or one without them")


def _written_by_runs(path: Path) -> bool:
    """Whether a run writes ``path`` (a file of its folder, or a non-empty ``checkpoints``)."""
    if path.name == "checkpoints":
        return not path.is_dir() or any(path.iterdir())
    if path.name in report.REPORT_FILES + report.SPREAD_FILES:
        return True
    return path.name.startswith("figure") and path.suffix == ".png"


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` was made by a run: marked, or holding what a run from before the mark
    left (a report or checkpoints of one, or seed folders of one)."""
    if (folder / MARKER).is_file():
        return True
    if any(_written_by_a_run(folder / name) for name in (report.REPORT_FILES[1], report.SPREAD_FILES[1])):
        return True
    if _holds_model_checkpoints(folder / "checkpoints"):
        return True
    return any(is_run_folder(sub) for sub in folder.glob("seed-*") if sub.is_dir())


def _written_by_a_run(report: Path) -> bool:
    try:
        return str(json.loads(report.read_text(encoding="utf-8"))["meta"]["command"]).startswith("fgsmkit reproduce")
    except (OSError, ValueError, KeyError, TypeError):  # missing, not JSON, or another program's
        return False


def _holds_model_checkpoints(folder: Path) -> bool:
    names = {name for settings in PRESETS.values() for name in experiments.recipes(settings)}
    return folder.is_dir() and any(path.stem in names for path in folder.glob("*.pt"))


def mark(folder: Path) -> None:
    """Leave :data:`MARKER` in ``folder`` (made if missing), so that later runs know it as a run's."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    if not marker.is_file():
        marker.write_text(MARKER_TEXT, encoding="utf-8")
