"""``fgsmkit reproduce``: train the paper's models, print its numbers beside ours, write the report.

Examples
--------
A check in under a minute that everything runs, then the full run (about half an hour on two CPU
cores with the embedded MNIST sample), then three seeds and the spread of every number::

    fgsmkit reproduce --quick
    fgsmkit reproduce --out runs/full --seed 0
    fgsmkit reproduce --out runs/seeds --seed 0,1,2

An interrupted run, started again with the same arguments, resumes from its checkpoints.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import experiments, figures, folders, report
from .data import DataUnavailable, load_splits
from .runs import OtherRun, refusal, require_same_report
from .settings import PRESETS, Settings

# One folder per run size: a --quick run after a full one must not meet the full run's models.
DEFAULT_OUT = {"full": os.path.join("fgsmkit-runs", "reproduce"),
               "quick": os.path.join("fgsmkit-runs", "reproduce-quick"),
               "smoke": os.path.join("fgsmkit-runs", "reproduce-smoke")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``fgsmkit reproduce`` to ``parser``."""
    # argparse takes "-1" or "-1.5" for a value, but "-1,2" for an unknown flag, so "--seed -1,2"
    # was --seed without its value: take anything that starts with "-" and a digit for a value
    # (no option here starts so).
    parser._negative_number_matcher = re.compile(r"-\.?\d")
    parser.add_argument("--out", type=folder_name, metavar="DIR",
                        help=f"folder for checkpoints, report.md, report.json and figures (default: "
                             f"{DEFAULT_OUT['full']}, with --quick {DEFAULT_OUT['quick']}); a run there with other "
                             "settings or another seed is refused, not overwritten")
    parser.add_argument("--seed", type=seed_list, default=[0], metavar="SEED[,SEED...]",
                        help="seed of every random choice (default: 0); several, separated by commas, run "
                             "once each into DIR/seed-N, and spread.md gives every number's range over them")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="small data and few epochs: checks in under a minute that everything runs")
    size.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # the tests' tiny run
    parser.add_argument("--data", choices=("auto", "full", "sample"), default="auto", action=_DataChoice,
                        help="auto (default): the MNIST files found on disk (full MNIST, or a subset, named in "
                             "the report as what they are), else the embedded sample; full: full MNIST only; "
                             "sample: the embedded sample")
    parser.add_argument("--download", nargs=0, default=False, action=_DataChoice,
                        help="run on full MNIST, downloading it if no MNIST files are on disk; MNIST files on disk "
                             "that are not full MNIST, or a failed download, stop the run")
    parser.add_argument("--threads", type=positive_int, default=1, metavar="N",
                        help="torch CPU threads (default: 1; the paper's small networks gain little from more, "
                             "and on a busy machine extra threads mostly wait on each other)")


class _DataChoice(argparse.Action):
    """``--data`` and ``--download``: refuses ``--download`` with ``--data sample``, in either order,
    rather than ignoring one of them."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, True if self.nargs == 0 else values)
        if namespace.download and namespace.data == "sample":
            parser.error("--download fetches full MNIST, which --data sample does not use; drop one of them")


def folder_name(text: str) -> str:
    """``--out``: not empty, which would mean the current folder."""
    if not text:
        raise argparse.ArgumentTypeError("must name a folder; an empty name would be the current folder")
    return text


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text}")
    return value


def seed_list(text: str) -> list[int]:
    """``--seed``: one seed, or several separated by commas."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be integers separated by commas; got {text!r}") from None
    if len(set(seeds)) < len(seeds):
        raise argparse.ArgumentTypeError(f"names a seed twice: {text!r}")
    return seeds


def settings_for(args: argparse.Namespace) -> Settings:
    if args.smoke:
        return PRESETS["smoke"]
    return PRESETS["quick" if args.quick else "full"]


def output_folder(args: argparse.Namespace) -> Path:
    """``--out``, or the default folder of the run's size."""
    return Path(args.out if args.out is not None else DEFAULT_OUT[settings_for(args).name])


def command_line(args: argparse.Namespace, data: str | None = None) -> str:
    """The command that runs ``args`` again, for the report; ``data`` is the ``--data`` value that
    selects the data the run used (:attr:`~fgsmkit.reproduction.data.Splits.option`), recorded
    in place of ``auto``, whose choice depends on what is on disk."""
    # --seed=..., which earlier versions read back too: they took --seed -1,2 for --seed without its
    # value.
    parts = ["fgsmkit reproduce", f"--out {shlex.quote(str(output_folder(args)))}",
             f"--seed={','.join(map(str, args.seed))}"]
    parts += [flag for flag, on in (("--quick", args.quick), ("--smoke", args.smoke),
                                    ("--download", args.download)) if on]
    data = args.data if data is None or args.data != "auto" else data
    if data != "auto":
        parts.append(f"--data {data}")
    if args.threads != 1:
        parts.append(f"--threads {args.threads}")
    return " ".join(parts)


def machine() -> str:
    return (f"{os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()}), "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {platform.python_version()}")


def run(args: argparse.Namespace) -> int:
    """Run every experiment, printing each result as it comes, and write the report.

    Returns 0, 2 where the run cannot start (the reason printed), or 130 on Ctrl-C.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    except KeyboardInterrupt:
        # The folder is consistent (whole checkpoints, a report marked incomplete): a traceback
        # would only hide that the run resumes.
        checkpoints = Path("seed-N", "checkpoints") if len(args.seed) > 1 else Path("checkpoints")
        print(f"interrupted; run the same command again to resume from {output_folder(args) / checkpoints}",
              file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    settings = settings_for(args)
    out = output_folder(args)
    problem = folders.prepare(out, args.seed)  # found now, not after the first model has trained
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    seed_folders = folders.seed_folders(out, args.seed)
    log = _printer()
    if settings.name != "full":
        log(f"{settings.name.upper()} RUN: small data and few epochs; the numbers are not a reproduction")
    try:
        splits = load_splits(settings, args.data, args.download, log)
    except DataUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    labs = {seed: experiments.Lab(settings, splits, seed, folder / "checkpoints", log)
            for seed, folder in seed_folders.items()}
    # data_name and data_digest are for later runs to compare, as a checkpoint's fingerprint.
    meta = {"command": command_line(args, splits.option), "seed": args.seed[0], "data": splits.describe(),
            "data_name": splits.label, "data_digest": splits.digest,
            "machine": machine(), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "wall_time": "", "settings": settings.as_dict()}
    problem = _other_run(out, labs, seed_folders, meta)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    for folder in {out, *seed_folders.values()}:
        folders.mark(folder)
    if len(args.seed) == 1:
        _run_seed(labs[args.seed[0]], meta, out, started, "this invocation", log)
        return 0
    runs = {}
    for seed, lab in labs.items():
        log(f"\n==== seed {seed}: {seed_folders[seed]}")
        runs[seed] = _run_seed(lab, dict(meta, seed=seed), seed_folders[seed], time.perf_counter(), "this seed's run",
                               log)
    wall_time = f"{(time.perf_counter() - started) / 60:.1f} min for this invocation, all seeds"
    markdown, data = report.write_spread(out, dict(meta, seed=args.seed, wall_time=wall_time), runs)
    log(f"\nspread over seeds {', '.join(map(str, args.seed))}: {markdown} and {data}")
    return 0


def _other_run(out: Path, labs: dict[int, experiments.Lab], seed_folders: dict[int, Path], meta: dict) -> str | None:
    """Why the folders hold another run (checkpoints, a report or the spread of one), or None.

    The report is compared too: it is all that is left of a run whose checkpoints were deleted.
    """
    for seed, lab in labs.items():
        folder = seed_folders[seed]
        try:
            lab.check_checkpoints()
            require_same_report(folder / report.REPORT_FILES[1], dict(meta, seed=seed))
        except OtherRun as error:
            return refusal(out, folder, error, lab.settings.name)
    if len(labs) > 1:
        try:
            require_same_report(out / report.SPREAD_FILES[1], meta, seeds=True)
        except OtherRun as error:
            return refusal(out, out, error, meta["settings"]["name"])
    return None


def _run_seed(lab: experiments.Lab, meta: dict, out: Path, started: float, timed: str,
              log: Callable[[str], None]) -> list[experiments.Row]:
    """Every experiment with one seed, each result printed as it comes; writes the report into ``out``."""
    settings = lab.settings
    rows: list[experiments.Row] = []
    for done, experiment in enumerate(experiments.EXPERIMENTS, start=1):
        title = (experiment.__doc__ or experiment.__name__).splitlines()[0]
        log(f"\n== {title}")
        new = experiment(lab)
        for r in new:
            log(report.format_row(r))
        rows = sorted(rows + new, key=experiment_number)
        meta["wall_time"] = _wall_time(started, timed, lab)
        report.write_report(out, meta, settings.notes, rows, None, progress=(done, len(experiments.EXPERIMENTS)))
    names = None
    if figures.matplotlib_available():
        names = figures.write_figures(lab.figures, out)
    else:
        log(report.FIGURES_HINT)
    meta["wall_time"] = _wall_time(started, timed, lab)
    markdown, data = report.write_report(out, meta, settings.notes, rows, names)
    log(f"\nreport: {markdown} and {data} ({meta['wall_time']})")
    return rows


def experiment_number(r: experiments.Row) -> int:
    """The paper's experiment number, so that rows run out of order (the large network) sort back."""
    return int(r["experiment"].split(".")[0])


def _wall_time(started: float, timed: str, lab: experiments.Lab) -> str:
    elapsed = time.perf_counter() - started
    training = sum(t.seconds for t in lab.trained.values())
    return (f"{elapsed / 60:.1f} min for {timed}; training {training / 60:.1f} min in all, "
            "including epochs run before a resume")


def _printer():
    def log(line: str) -> None:
        print(line, flush=True)

    return log


if __name__ == "__main__":  # python -m fgsmkit.reproduction.cli
    parser = argparse.ArgumentParser(prog="fgsmkit reproduce")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
