"""What tells one run from another, in words.

A checkpoint records the run that wrote it: its preset (full, quick), the settings its model
trains with, its seed and its data, with the model's recipe and the training code's version; a
report records the same of its run but the recipes and the code. A run refuses the checkpoints
and report of another run rather than write over them, and says how the two differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .data import DATA_OPTIONS
from .settings import training_fields

# The settings that decide which images the training and validation splits hold.
CUTS = ("train_limit", "val_size")


class OtherRun(RuntimeError):
    """A folder holds another run's files, kept rather than written over.

    Parameters
    ----------
    message : str
        Which file, and how its run differs from this one.
    preset : str or None
        The other run's preset where it is all that differs: that run resumes with that preset's
        flag (``--quick``, or none for the full run). None otherwise.
    """

    def __init__(self, message: str, preset: str | None = None) -> None:
        super().__init__(message)
        self.preset = preset


def require_same_report(path: Path, meta: dict[str, Any], seeds: bool = False) -> None:
    """Raise :class:`OtherRun` where the report ``path`` was written by another run than the one
    of ``meta`` (this run's report meta): another preset, seed, settings or data.

    With ``seeds`` the report is the spread of several seeds, whose seeds are not compared: a
    run may add seeds to its folder. A missing or unreadable report passes, and so does the data
    of a report from before it was recorded.
    """
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))["meta"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    new = _report_run(json.loads(json.dumps(meta)))  # as read back: tuples become lists
    old = _report_run(recorded, like=new) if isinstance(recorded, dict) else None
    if seeds:
        for run in (old, new):
            if run is not None:
                run["seed"] = None
    if not same(old, new):
        raise OtherRun(f"{path} was written by a run with {differences(old, new)}", held_preset(old, new))


def _report_run(meta: dict[str, Any], like: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a report's ``meta`` records of its run, as a checkpoint's fingerprint has it; ``like``
    (this run's) gives the settings compared, and the data where ``meta`` does not record it."""
    settings = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
    fields = like["settings"] if like is not None else training_fields(settings)
    run = {"preset": settings.get("name"), "seed": meta.get("seed"),
           "settings": {field: settings.get(field) for field in fields},
           "data": meta.get("data_digest"), "data_name": meta.get("data_name")}
    if like is not None and run["data"] is None:  # a report from before the data was recorded
        run["data"], run["data_name"] = like["data"], like["data_name"]
    return run


def same(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether ``old`` (what a file records of its run) is this run's ``new``; the data's name is
    left out, being words: the data is matched by its digest."""
    return old is not None and _without_name(old) == _without_name(new)


def _without_name(run: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in run.items() if key != "data_name"}


def held_preset(old: dict[str, Any] | None, new: dict[str, Any]) -> str | None:
    """The preset of the run that recorded ``old`` where nothing else tells it from this run: the
    settings, recipes and data cuts follow from the preset, so only the seed, the training code
    and the data's name are compared. None where the presets are the same, or more differs."""
    if old is None or old.get("preset", new["preset"]) == new["preset"]:
        return None
    if any(old.get(key) != new.get(key) for key in ("seed", "training_version")):
        return None
    return old["preset"] if old.get("data_name", new["data_name"]) == new["data_name"] else None


def differences(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """How the run that recorded ``old`` differs from this one (``new``), in words.

    Each holds ``preset``, ``seed``, ``settings`` (:meth:`~.settings.Settings.training_fields`),
    ``data`` (the digest) and ``data_name`` (None where not recorded), and a checkpoint's also
    ``recipe`` and ``training_version``. Under another preset the settings, recipes and data
    cuts differ as that preset has them, and are not listed.
    """
    if old is None:
        return "other settings"
    found = []
    if "training_version" in new and old.get("training_version") != new["training_version"]:
        found.append(f"other training code (version {old.get('training_version')}, this run {new['training_version']})")
    other_preset = old.get("preset", new["preset"]) != new["preset"]
    if other_preset:
        found.append(f"another preset ({old['preset']}, this run {new['preset']})")
    if old.get("seed") != new["seed"]:
        found.append(f"another seed ({old.get('seed')}, this run {new['seed']})")
    theirs = old.get("settings") if isinstance(old.get("settings"), dict) else {}
    cut_otherwise = any(theirs.get(key) != new["settings"].get(key) for key in CUTS)
    old_name = old.get("data_name")
    # Of the same data cut otherwise, the settings that cut it say why its digest differs.
    if old.get("data") != new["data"] and (old_name != new["data_name"] or not cut_otherwise):
        found.append(f"other data ({_other_data(old_name, new['data_name'])})")
    for key, words in (("settings", "other settings"), ("recipe", "another recipe")):
        if other_preset or key not in new:
            continue
        recorded = old.get(key) if isinstance(old.get(key), dict) else {}
        fields = [f"{field} {recorded.get(field)}, this run {value}" for field, value in new[key].items()
                  if recorded.get(field) != value]
        if fields:
            found.append(f"{words} ({'; '.join(fields[:3])}{'; ...' if len(fields) > 3 else ''})")
    return " and ".join(found) or "other settings"


def _other_data(old: str | None, new: str) -> str:
    """The recorded run's data and this run's, and the ``--data`` value that selects the recorded one."""
    if old is None:
        return f"not named in the checkpoint; this run: {new}"
    if old == new:
        return f"{new} too, but other images"
    option = DATA_OPTIONS.get(old)
    fix = (f"--data {option} selects that data" if option
           else "--data auto selects those files while they are on disk")
    return f"that run: {old}, this run: {new}; {fix}"


def refusal(out: Path, folder: Path, error: OtherRun, preset: str) -> str:
    """Why this run (of ``preset``) does not go on in ``folder`` (``out``, or a seed's folder in it),
    and what does: the flag that resumes the run there, or another ``--out``."""
    where = f"--out {out}" if folder == out else f"--out {out}: {folder}"
    if error.preset is not None:
        return (f"{where} holds a {error.preset} run: {_resume_flag(error.preset, preset)} to resume it, "
                "or give another --out")
    return (f"--out {out} holds another run: {error}; give another --out, or delete {folder} first to replace "
            "that run with this one")


def _resume_flag(held: str, this: str) -> str:
    """What turns this run's command (preset ``this``) into one that resumes a ``held`` run."""
    if this == "full":
        return f"add --{held}"
    if held == "full":
        return f"drop --{this}"
    return f"give --{held} instead of --{this}"
