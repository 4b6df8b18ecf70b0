"""``fgsmkit reproduce``: the command parses, a tiny run reports every experiment, the same seed gives
the same numbers, and a run killed midway resumes to the result of an uninterrupted one.

The tiny run (the hidden ``--smoke`` preset) trains small networks on a few hundred images of the
embedded MNIST sample, so these tests need neither full MNIST nor a network connection.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fgsmkit as fk
from fgsmkit.__main__ import main
from fgsmkit.reproduction import cli, experiments, training
from fgsmkit.reproduction.data import load_splits
from fgsmkit.reproduction.settings import PRESETS
from fgsmkit.reproduction.training import CheckpointConflict, Recipe, train

SMOKE = ["reproduce", "--smoke", "--data", "sample"]
PACKAGE_ROOT = Path(fk.__file__).resolve().parents[1]


def train_softmax(splits, settings, folder: Path, seed: int = 0) -> tuple[object, list[str]]:
    """Softmax regression trained (or resumed) for one epoch into ``folder``, and what it logged."""
    said: list[str] = []
    trained = train("softmax", lambda: fk.models.SoftmaxRegression(784, 10), splits, Recipe("plain", 1), settings,
                    seed, folder, log=said.append)
    return trained, said


def run_in_process(out: Path, seed: int = 0) -> dict:
    assert main([*SMOKE, "--out", str(out), "--seed", str(seed)]) == 0
    return json.loads((out / "report.json").read_text())


def numbers(report: dict) -> list[tuple]:
    return [(r["experiment"], r["metric"], r["ours"]) for r in report["rows"]]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("smoke")
    return out, run_in_process(out)


def test_cli_parses_its_options() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--quick", "--seed", "3", "--out", "somewhere", "--data", "sample"])
    assert (args.quick, args.seed, args.out, args.data, args.smoke) == (True, [3], "somewhere", "sample", False)
    defaults = parser.parse_args([])
    assert (defaults.quick, defaults.seed, defaults.data, defaults.threads) == (False, [0], "auto", 1)
    assert cli.output_folder(defaults) == Path("fgsmkit-runs", "reproduce")
    assert parser.parse_args(["--seed", "0,1,2"]).seed == [0, 1, 2]
    for bad in ("1,1", "one", "0,", ""):
        with pytest.raises(SystemExit):
            parser.parse_args(["--seed", bad])
    with pytest.raises(SystemExit):  # the current folder: a run there overwrote the user's report.md
        parser.parse_args(["--out", ""])
    assert parser.parse_args(["--threads", "2"]).threads == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["--threads", "0"])
    assert cli.settings_for(args).name == "quick" and cli.settings_for(defaults).name == "full"
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "elsewhere"])
    assert "--smoke" not in parser.format_help()


def test_a_seed_list_that_starts_with_a_negative_seed_follows_seed_after_a_space(capsys) -> None:
    # argparse read "-1,2" as an unknown flag: "--seed: expected one argument"; only --seed=-1,2 worked.
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert parser.parse_args(["--seed", "-1,2", "--out", "-3,4"]).seed == [-1, 2]
    assert parser.parse_args(["--seed", "-1"]).seed == [-1]
    with pytest.raises(SystemExit):  # a flag that does not exist is still one
        parser.parse_args(["--seed", "1", "-q"])
    with pytest.raises(SystemExit):  # stopped by --data, after reading --seed
        main(["reproduce", "--seed", "-1,2", "--data", "elsewhere"])
    err = capsys.readouterr().err
    assert "argument --data: invalid choice" in err and "--seed" not in err.splitlines()[-1]


def test_an_output_path_that_is_a_file_is_refused_before_any_training(tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    taken = tmp_path / "a file"
    taken.write_text("not a folder")
    assert cli.run(parser.parse_args(["--smoke", "--out", str(taken)])) == 2
    out, err = capsys.readouterr()
    assert "is a file" in err and "epoch" not in out
    # The command recorded in the report can be pasted back into a shell.
    assert f"--out '{taken}'" in cli.command_line(parser.parse_args(["--out", str(taken)]))
    # A list that starts with a negative seed is written so that argparse reads it back.
    recorded = cli.command_line(parser.parse_args(["--seed=-1,2"]))
    assert parser.parse_args(shlex.split(recorded)[2:]).seed == [-1, 2]


@pytest.mark.parametrize("contradiction", [["--quick", "--smoke"], ["--download", "--data", "sample"],
                                           ["--data", "sample", "--download"]])
def test_contradictory_options_are_usage_errors(contradiction: list[str], capsys) -> None:
    # Each ran, quietly ignoring one of the two: --smoke won over --quick, --data sample over --download.
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    with pytest.raises(SystemExit) as stopped:
        parser.parse_args(contradiction)
    assert stopped.value.code == 2
    assert "--download" in capsys.readouterr().err or "--quick" in contradiction
    assert parser.parse_args(["--download", "--data", "full"]).download


def test_a_failed_download_is_an_error_not_the_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    # --download with --data auto fell back to the embedded sample when the download failed.
    import fgsmkit.datasets
    from fgsmkit.reproduction.data import DataUnavailable

    def offline(root=None, split="train", download=True):
        raise OSError("every mirror failed: no network")

    monkeypatch.setattr(fgsmkit.datasets, "load_mnist", offline)
    with pytest.raises(DataUnavailable, match="could not be downloaded .*no network"):
        load_splits(PRESETS["smoke"], "auto", download=True, log=lambda line: None)
    assert "embedded MNIST sample" in load_splits(PRESETS["smoke"], "auto", log=lambda line: None).source


def test_a_run_with_other_settings_refuses_the_folder_of_another_and_keeps_it(smoke_run: tuple[Path, dict],
                                                                                tmp_path: Path, capsys) -> None:
    # A run with another seed in the same --out (or --quick after a full run, which shared its
    # default folder) trained every model again over the earlier run's checkpoints.
    out = tmp_path / "run"
    shutil.copytree(smoke_run[0], out)
    before = {p.name: p.read_bytes() for p in sorted((out / "checkpoints").iterdir())}
    report = (out / "report.json").read_bytes()
    assert main([*SMOKE, "--out", str(out), "--seed", "1"]) == 2
    printed, err = capsys.readouterr()
    assert err.startswith(f"error: --out {out} holds another run") and "another seed (0, this run 1)" in err
    assert "give another --out" in err and "] epoch " not in printed
    assert {p.name: p.read_bytes() for p in sorted((out / "checkpoints").iterdir())} == before
    assert (out / "report.json").read_bytes() == report


def test_a_run_with_other_settings_refuses_an_earlier_runs_report_without_its_checkpoints(
        smoke_run: tuple[Path, dict], tmp_path: Path, capsys) -> None:
    # With checkpoints/ deleted (a full run's take ~650 MB), a run with another seed replaced the
    # earlier run's report and figures: only the checkpoints were compared with this run.
    out = tmp_path / "run"
    shutil.copytree(smoke_run[0], out)
    shutil.rmtree(out / "checkpoints")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "report.md" in before
    assert main([*SMOKE, "--out", str(out), "--seed", "1"]) == 2
    printed, err = capsys.readouterr()
    assert err == (f"error: --out {out} holds another run: {out / 'report.json'} was written by a run with another "
                   f"seed (0, this run 1); give another --out, or delete {out} first to replace that run with this one\n")
    assert "] epoch " not in printed and {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # Other data (here, other images under the same name) is refused too.
    report = json.loads((out / "report.json").read_text())
    (out / "report.json").write_text(json.dumps(dict(report, meta=dict(report["meta"], data_digest="0" * 64))))
    assert main([*SMOKE, "--out", str(out)]) == 2
    assert "other data (the embedded MNIST sample too, but other images)" in capsys.readouterr().err
    # A report from before the data was recorded is compared by the rest; the same run is
    # accepted, and trains its models again.
    meta = {key: value for key, value in report["meta"].items() if key not in ("data_digest", "data_name")}
    (out / "report.json").write_text(json.dumps(dict(report, meta=meta)))
    assert main([*SMOKE, "--out", str(out)]) == 0
    assert numbers(json.loads((out / "report.json").read_text())) == numbers(smoke_run[1])


def test_a_run_of_several_seeds_refuses_the_spread_of_another(tmp_path: Path, capsys) -> None:
    # Its seeds are not compared: a run may add seeds to the folder.
    assert main([*SMOKE, "--out", str(tmp_path), "--seed", "0,1"]) == 0
    capsys.readouterr()
    spread = json.loads((tmp_path / "spread.json").read_text())
    settings = dict(spread["meta"]["settings"], lr=0.05)
    (tmp_path / "spread.json").write_text(json.dumps(dict(spread, meta=dict(spread["meta"], settings=settings))))
    before = (tmp_path / "spread.json").read_bytes()
    assert main([*SMOKE, "--out", str(tmp_path), "--seed", "2,3"]) == 2
    printed, err = capsys.readouterr()
    assert err.startswith(f"error: --out {tmp_path} holds another run: {tmp_path / 'spread.json'} was written by a "
                          "run with other settings (lr 0.05, this run 0.1)")
    assert "] epoch " not in printed and (tmp_path / "spread.json").read_bytes() == before
    (tmp_path / "spread.json").write_text(json.dumps(spread))
    assert main([*SMOKE, "--out", str(tmp_path), "--seed", "0,1,2"]) == 0
    assert json.loads((tmp_path / "spread.json").read_text())["seeds"] == [0, 1, 2]


def test_a_folder_not_made_by_a_run_is_refused_and_an_earlier_runs_folder_resumed(
        smoke_run: tuple[Path, dict], tmp_path: Path, capsys) -> None:
    # --out naming a folder of the user's own files wrote report.md, report.json and the
    # figures over theirs.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my own notes")
    assert main([*SMOKE, "--out", str(mine)]) == 2
    printed, err = capsys.readouterr()
    assert err.startswith(f"error: --out {mine} holds files a run would write over (report.md)") and "] epoch " not in printed
    assert [p.name for p in mine.iterdir()] == ["report.md"] and (mine / "report.md").read_text() == "my own notes"
    # A run marks its folder; a folder of a run made before the mark was written is resumed too.
    assert (smoke_run[0] / cli.folders.MARKER).is_file()
    earlier = tmp_path / "earlier"
    shutil.copytree(smoke_run[0], earlier)
    (earlier / cli.folders.MARKER).unlink()
    assert main([*SMOKE, "--out", str(earlier)]) == 0
    assert "already trained" in capsys.readouterr().out and (earlier / cli.folders.MARKER).is_file()


def test_a_folder_with_files_a_run_does_not_write_is_used(tmp_path: Path) -> None:
    # Only what a run would write over stands in its way: a log redirected into the folder, a
    # .gitignore, or the empty checkpoints folder of a run stopped before it marked its folder.
    out = tmp_path / "logs"
    (out / "checkpoints").mkdir(parents=True)
    (out / "run.log").write_text("started\n")
    (out / ".gitignore").write_text("*\n")
    assert cli.folders.prepare(out, [0]) is None
    several = tmp_path / "several"
    (several / "seed-2" / "checkpoints").mkdir(parents=True)
    assert cli.folders.prepare(several, [0, 2]) is None
    (several / "seed-2" / "figure2.png").write_bytes(b"mine")
    assert "holds files a run would write over (figure2.png)" in cli.folders.prepare(several, [0, 2])


@pytest.mark.parametrize("in_the_way", ["seed-1", "seed-0/checkpoints"])
def test_a_file_where_the_run_needs_a_folder_is_refused_before_any_training(smoke_run: tuple[Path, dict],
                                                                           tmp_path: Path, capsys,
                                                                           in_the_way: str) -> None:
    # Only --out itself was checked: the run died on the file after training (here, seed 0).
    out = tmp_path / "seeds"
    shutil.copytree(smoke_run[0], out / "seed-0")
    shutil.rmtree(out / "seed-0" / "checkpoints")
    (out / in_the_way).write_text("not a folder")
    assert main([*SMOKE, "--out", str(out), "--seed", "0,1"]) == 2
    printed, err = capsys.readouterr()
    assert err.startswith(f"error: --out {out}: {out / in_the_way} is a file") and "] epoch " not in printed


def test_the_documented_runs_each_have_a_folder_of_their_own() -> None:
    # docs/reproduction.md listed `fgsmkit reproduce` and then `fgsmkit reproduce --seed 0,1,2` as
    # steps; they shared the default folder, and the second was refused.
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    for text in ((PACKAGE_ROOT.parent / "docs" / "reproduction.md").read_text(), cli.__doc__):
        lines = re.findall(r"^\s*\$? ?(?:python -m )?fgsmkit reproduce\b([^#\n]*)", text, re.MULTILINE)
        runs = [parser.parse_args(shlex.split(line)) for line in lines if "--help" not in line]
        assert len(runs) >= 3
        assert len({cli.output_folder(args) for args in runs}) == len(runs), lines


def test_quick_and_smoke_runs_have_default_folders_of_their_own() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    folders = [cli.output_folder(parser.parse_args(flags)) for flags in ([], ["--quick"], ["--smoke"])]
    assert len(set(folders)) == 3
    assert cli.output_folder(parser.parse_args(["--quick", "--out", "mine"])) == Path("mine")


def test_tiny_run_reports_every_experiment(smoke_run: tuple[Path, dict]) -> None:
    out, report = smoke_run
    numbers_seen = {int(r["experiment"].split(".")[0]) for r in report["rows"]}
    assert numbers_seen == set(range(1, 12))
    for r in report["rows"]:
        assert set(r) == {"experiment", "metric", "paper", "ours", "notes"}
        assert r["paper"] is not None or "clean test error" in r["metric"]
        if r["ours"] is not None:
            assert 0.0 <= r["ours"] <= 100.0, r
    error_rows = [r for r in report["rows"] if "error" in r["metric"]]
    assert error_rows and all(r["ours"] is not None for r in error_rows)
    # Section 6 reports FGSM error, confidence and transfer for its 1600-unit network only, and
    # 89.4% for the 240-unit one: a row that sets a number beside another network says so (here,
    # a smoke run, every such row: its networks are smaller than the paper's).
    large_size = report["meta"]["settings"]["large_hidden"][0]
    for r in report["rows"]:
        large = f"maxout {large_size}x" in r["experiment"]
        if r["paper"] in (17.9, 81.4, 19.6, 40.9) or (large and r["paper"] in (1.14, 0.782)):
            assert r["notes"].endswith("the paper's number is for its 1600x5 network"), r
        if r["paper"] in (89.4, 0.94, 0.84) and r["experiment"].startswith("4."):
            assert r["notes"].endswith("the paper's number is for its 240x5 network"), r
    markdown = (out / "report.md").read_text()
    assert "smoke run" in markdown and "embedded MNIST sample" in markdown
    for r in report["rows"]:
        assert r["metric"] in markdown
    assert report["meta"]["seed"] == 0 and report["meta"]["settings"]["name"] == "smoke" and report["complete"]
    # Every trained model left a plain state-dict checkpoint that loads with weights_only=True.
    trained = set(experiments.recipes(PRESETS["smoke"]))
    saved = {p.stem for p in (out / "checkpoints").glob("*.pt")}
    assert saved == trained
    state = fk.load_checkpoint(out / "checkpoints" / "maxout.pt")
    assert state["done"] and isinstance(state["model"], dict)
    if report["figures"] is None:
        assert "pip install matplotlib" in markdown
    else:
        assert sorted(report["figures"]) == ["figure2.png", "figure3.png", "figure4.png"]
        for name in report["figures"]:
            assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_same_seed_gives_the_same_numbers(smoke_run: tuple[Path, dict], tmp_path: Path) -> None:
    _, first = smoke_run
    again = run_in_process(tmp_path / "again")
    assert numbers(again) == numbers(first)


def test_several_seeds_give_each_its_own_run_and_a_table_of_the_spread(smoke_run: tuple[Path, dict],
                                                                        tmp_path: Path, capsys) -> None:
    _, seed_zero = smoke_run
    # The seeds may be run separately, each into DIR/seed-N, and then together into DIR: the
    # several-seed run picks up each seed's models.
    assert main([*SMOKE, "--out", str(tmp_path / "seed-1"), "--seed", "1"]) == 0
    capsys.readouterr()
    assert main([*SMOKE, "--out", str(tmp_path), "--seed", "0,1"]) == 0
    seed_one = capsys.readouterr().out.partition("==== seed 1")[2]
    assert "already trained" in seed_one and "] epoch " not in seed_one
    runs = [json.loads((tmp_path / f"seed-{seed}" / "report.json").read_text()) for seed in (0, 1)]
    assert numbers(runs[0]) == numbers(seed_zero)  # the same as that seed's run alone
    assert numbers(runs[1]) != numbers(seed_zero)
    assert not (tmp_path / "report.json").exists()
    spread = json.loads((tmp_path / "spread.json").read_text())
    assert spread["seeds"] == [0, 1] and len(spread["rows"]) == len(seed_zero["rows"])
    for row, first, second in zip(spread["rows"], *(run["rows"] for run in runs)):
        assert (row["experiment"], row["metric"], row["paper"]) == (first["experiment"], first["metric"], first["paper"])
        assert row["ours"] == [first["ours"], second["ours"]]
        known = [value for value in row["ours"] if value is not None]
        if known:
            assert (row["min"], row["max"]) == (min(known), max(known))
            assert row["mean"] == pytest.approx(sum(known) / len(known), abs=1e-4)
    markdown = (tmp_path / "spread.md").read_text()
    assert "| seed 0 | seed 1 | mean | min-max | notes |" in markdown and "--seed=0,1" in markdown
    assert "smoke runs: small data and few epochs" in markdown
    borrowed = [row for row in spread["rows"] if row["paper"] == 17.9]
    assert borrowed and all(row["notes"] == first["notes"] for row, first in zip(
        borrowed, [r for r in seed_zero["rows"] if r["paper"] == 17.9]))
    assert all(row["metric"] in markdown for row in spread["rows"])


def test_one_seed_and_several_seeds_do_not_mix_in_one_folder(smoke_run: tuple[Path, dict], tmp_path: Path,
                                                              capsys) -> None:
    # One seed into the folder of a several-seed run ignored DIR/seed-N, trained every model again
    # into DIR and left report.md beside spread.md; several seeds into the folder of one seed's
    # run left that run's report behind.
    several = tmp_path / "several"
    shutil.copytree(smoke_run[0], several / "seed-0")
    assert main([*SMOKE, "--out", str(several), "--seed", "0"]) == 2
    printed, err = capsys.readouterr()
    assert err.startswith(f"error: --out {several} holds a run of several seeds (seed-0); give --out "
                          f"{several / 'seed-0'} to run or resume seed 0 as one of them")
    assert "] epoch " not in printed and sorted(p.name for p in several.iterdir()) == ["seed-0"]
    assert main([*SMOKE, "--out", str(several / "seed-0"), "--seed", "0"]) == 0  # as advised: resumed
    assert "already trained" in capsys.readouterr().out

    one = tmp_path / "one"
    shutil.copytree(smoke_run[0], one)
    before = sorted(p.name for p in one.iterdir())
    assert main([*SMOKE, "--out", str(one), "--seed", "0,1"]) == 2
    printed, err = capsys.readouterr()
    assert err.startswith(f"error: --out {one} holds the run of one seed (report.md, report.json, checkpoints)")
    assert f"move that run's files into {one / 'seed-0'} to resume it" in err
    assert "] epoch " not in printed and sorted(p.name for p in one.iterdir()) == before


def test_the_seed_changes_the_training(tmp_path: Path) -> None:
    settings = PRESETS["smoke"]
    splits = load_splits(settings, "sample", log=lambda line: None)

    def weights(seed: int, folder: Path) -> torch.Tensor:
        return train_softmax(splits, settings, folder, seed)[0].model.linear.weight.detach()

    a, b, a_again = weights(0, tmp_path / "a"), weights(1, tmp_path / "b"), weights(0, tmp_path / "c")
    assert torch.equal(a, a_again)
    assert not torch.equal(a, b)


def test_an_output_folder_that_cannot_be_made_or_missing_data_is_a_one_line_error(tmp_path: Path, capsys,
                                                                                   monkeypatch) -> None:
    # Both ended in a traceback: the folder after the first model's first epoch (from mkdir), the
    # missing data with exit status 1.
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    (tmp_path / "a file").write_text("not a folder")
    assert cli.run(parser.parse_args(["--smoke", "--out", str(tmp_path / "a file" / "sub")])) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: --out") and "cannot be used" in err and "epoch" not in out
    import fgsmkit.datasets

    def missing(root=None, split="train", download=True):
        raise FileNotFoundError("MNIST is not in any of the searched folders")

    monkeypatch.setattr(fgsmkit.datasets, "load_mnist", missing)
    assert cli.run(parser.parse_args(["--smoke", "--data", "full", "--out", str(tmp_path / "run")])) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: full MNIST is not available") and len(err.splitlines()) == 1


def test_resuming_depends_on_the_data_not_on_how_it_was_described(tmp_path: Path) -> None:
    # The fingerprint held the text saying why full MNIST was not found: a rerun that found the
    # train files but not the test ones discarded every checkpoint of the same sample data.
    settings = PRESETS["smoke"]
    splits = load_splits(settings, "sample", log=lambda line: None)

    def run(data) -> list[str]:
        return train_softmax(data, settings, tmp_path)[1]

    run(splits)
    assert any("already trained" in line for line in run(dataclasses.replace(splits, source="said otherwise")))
    # Other data or other settings: the checkpoint is another run's, kept rather than overwritten.
    kept = (tmp_path / "softmax.pt").read_bytes()
    changed = splits.train_x.clone()
    changed[0, 0, 0, 0] += 0.5
    with pytest.raises(CheckpointConflict, match="softmax.pt was written by a run with other data"):
        run(dataclasses.replace(splits, train_x=changed))
    with pytest.raises(CheckpointConflict, match=r"other settings \(lr 0.1, this run 0.05\)"):
        train_softmax(splits, dataclasses.replace(settings, lr=0.05), tmp_path)
    assert (tmp_path / "softmax.pt").read_bytes() == kept


def test_another_test_limit_keeps_the_trained_models(tmp_path: Path) -> None:
    # test_limit is left out of the training fingerprint, but the data digest hashed the test
    # split too: a run with another test_limit refused every checkpoint.
    settings = PRESETS["smoke"]

    def run(settings) -> list[str]:
        return train_softmax(load_splits(settings, "sample", log=lambda line: None), settings, tmp_path)[1]

    run(settings)
    assert any("already trained" in line for line in run(dataclasses.replace(settings, test_limit=150)))


def test_checkpoints_whose_data_digest_covers_the_test_split_still_resume(tmp_path: Path) -> None:
    # Checkpoints written before the digest left out the test split (the recorded run's) hold a
    # SHA-256 of all six tensors: the same training data, so they resume.
    import hashlib

    settings = PRESETS["smoke"]
    splits = load_splits(settings, "sample", log=lambda line: None)

    def run() -> list[str]:
        return train_softmax(splits, settings, tmp_path)[1]

    run()
    hashed = hashlib.sha256()
    for t in (splits.train_x, splits.train_y, splits.val_x, splits.val_y, splits.test_x, splits.test_y):
        hashed.update(f"{tuple(t.shape)} {t.dtype};".encode())
        hashed.update(t.contiguous().numpy())
    path = tmp_path / "softmax.pt"
    state = fk.load_checkpoint(path)
    fingerprint = json.loads(state["fingerprint"])
    assert fingerprint["data"] != hashed.hexdigest()
    fk.save_checkpoint(dict(state, fingerprint=json.dumps(dict(fingerprint, data=hashed.hexdigest()))), path)
    assert any("already trained" in line for line in run())
    # Another test split does not pass for the same data under the old digest.
    fewer = dataclasses.replace(splits, test_x=splits.test_x[:50], test_y=splits.test_y[:50])
    with pytest.raises(CheckpointConflict, match="other data"):
        train_softmax(fewer, settings, tmp_path)


def test_a_refusal_for_other_data_names_both_and_the_data_option_that_resumes(
        smoke_run: tuple[Path, dict], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    # With --data auto, MNIST files that appeared after the first run changed the data, and the
    # refusal said only "other data": neither which data the checkpoints hold nor --data sample.
    import fgsmkit.datasets

    out = tmp_path / "run"
    shutil.copytree(smoke_run[0], out)  # trained on the embedded sample
    (x, y), (x_test, y_test) = fk.datasets.mnist_sample("train"), fk.datasets.mnist_sample("test")

    def other_files(root=None, split="train", download=True):
        return (x.flip(0), y.flip(0)) if split == "train" else (x_test, y_test)

    monkeypatch.setattr(fgsmkit.datasets, "load_mnist", other_files)
    assert main(["reproduce", "--smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert ("was written by a run with other data (that run: the embedded MNIST sample, this run: MNIST files on "
            "disk (8,000 train / 2,000 test); --data sample selects that data)") in err

    def missing(root=None, split="train", download=True):
        raise FileNotFoundError("MNIST is not in any of the searched folders")

    # The same command once the files are gone runs on the sample again, and resumes; the
    # report records the --data value that selects the data it ran on.
    monkeypatch.setattr(fgsmkit.datasets, "load_mnist", missing)
    assert main(["reproduce", "--smoke", "--out", str(out)]) == 0
    assert "] epoch " not in capsys.readouterr().out
    command = json.loads((out / "report.json").read_text())["meta"]["command"]
    assert command.endswith("--smoke --data sample")
    # A checkpoint from before the data was named says so.
    path = out / "checkpoints" / "softmax.pt"
    state = fk.load_checkpoint(path)
    unnamed = {key: value for key, value in json.loads(state["fingerprint"]).items() if key != "data_name"}
    fk.save_checkpoint(dict(state, fingerprint=json.dumps(dict(unnamed, data="0" * 64))), path)
    assert main(["reproduce", "--smoke", "--out", str(out)]) == 2
    assert "other data (not named in the checkpoint; this run: the embedded MNIST sample)" in capsys.readouterr().err


@pytest.mark.parametrize("held, flags, advice", [("full", ["--quick"], "drop --quick"), ("quick", [], "add --quick")])
def test_a_quick_run_and_a_full_run_in_one_folder_are_told_apart_by_name(
        smoke_run: tuple[Path, dict], tmp_path: Path, capsys, held: str, flags: list[str], advice: str) -> None:
    # --quick into the folder of a full run stopped after its first checkpoint (and the reverse)
    # blamed "other images" (the same sample, cut otherwise), never named --quick, and advised
    # deleting the full run.
    settings = PRESETS[held]
    splits = load_splits(settings, "sample", log=lambda line: None)
    out = tmp_path / "f1"
    (out / "checkpoints").mkdir(parents=True)
    state = fk.load_checkpoint(smoke_run[0] / "checkpoints" / "softmax.pt")
    recipe = experiments.recipes(settings)["softmax"][1]
    fk.save_checkpoint(dict(state, fingerprint=training.fingerprint(splits, recipe, settings, 0)),
                       out / "checkpoints" / "softmax.pt")
    assert main(["reproduce", *flags, "--data", "sample", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: --out {out} holds a {held} run: {advice} to resume it, or give another --out\n"
    # With another seed too, neither flag resumes it: both differences are named.
    assert main(["reproduce", *flags, "--data", "sample", "--out", str(out), "--seed", "1"]) == 2
    err = capsys.readouterr().err
    this = "quick" if held == "full" else "full"
    assert f"another preset ({held}, this run {this}) and another seed (0, this run 1)" in err
    assert "other images" not in err and "other settings" not in err


def test_checkpoints_from_before_the_preset_was_recorded_are_compared_by_the_rest(tmp_path: Path) -> None:
    settings = PRESETS["smoke"]
    splits = load_splits(settings, "sample", log=lambda line: None)
    train_softmax(splits, settings, tmp_path)
    path = tmp_path / "softmax.pt"
    state = fk.load_checkpoint(path)
    unnamed = json.loads(state["fingerprint"])
    del unnamed["preset"]
    fk.save_checkpoint(dict(state, fingerprint=json.dumps(unnamed, sort_keys=True)), path)
    assert any("already trained" in line for line in train_softmax(splits, settings, tmp_path)[1])
    # Settings that cut the data otherwise are named as such, not as other images.
    fewer = dataclasses.replace(settings, train_limit=250)
    with pytest.raises(CheckpointConflict, match=r"other settings \(train_limit 300, this run 250\)") as refused:
        train_softmax(load_splits(fewer, "sample", log=lambda line: None), fewer, tmp_path)
    assert "other data" not in str(refused.value)


def test_checkpoints_of_other_training_code_are_not_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The fingerprint held the recipe, settings, seed and data but not the code: a change to the
    # training that changes the weights resumed the old models beside newly trained ones.
    from fgsmkit.reproduction import training

    settings = PRESETS["smoke"]
    splits = load_splits(settings, "sample", log=lambda line: None)

    def run() -> list[str]:
        return train_softmax(splits, settings, tmp_path)[1]

    run()
    # A checkpoint from before the version was recorded counts as version 1, and resumes.
    path = tmp_path / "softmax.pt"
    state = fk.load_checkpoint(path)
    unversioned = json.loads(state["fingerprint"])
    del unversioned["training_version"]
    fk.save_checkpoint(dict(state, fingerprint=json.dumps(unversioned, sort_keys=True)), path)
    assert any("already trained" in line for line in run())
    monkeypatch.setattr(training, "TRAINING_VERSION", training.TRAINING_VERSION + 1)
    with pytest.raises(CheckpointConflict, match=r"other training code \(version 1, this run 2\)"):
        run()


@pytest.mark.parametrize("damage", [b"", b"not a checkpoint", bytes(range(256)) * 4])
def test_a_damaged_checkpoint_is_named_and_retrained_not_a_traceback(tmp_path: Path, damage: bytes) -> None:
    path = tmp_path / "softmax.pt"
    path.write_bytes(damage)
    with pytest.raises(ValueError, match=rf"{path.name} cannot be read as a checkpoint"):
        fk.load_checkpoint(path)
    settings = PRESETS["smoke"]
    splits = load_splits(settings, "sample", log=lambda line: None)
    said = train_softmax(splits, settings, tmp_path)[1]
    assert any("cannot be read as a checkpoint" in line and "training from scratch" in line for line in said)
    assert fk.load_checkpoint(path)["done"]


def test_a_checkpoint_of_a_model_laid_out_otherwise_is_retrained_from_scratch(tmp_path: Path) -> None:
    """Parameter names from another version of a model (say, before they stopped depending on
    dropout): retrained, not half loaded by load_state_dict and then a traceback."""
    settings = PRESETS["smoke"]
    splits = load_splits(settings, "sample", log=lambda line: None)

    def run(build) -> list[str]:
        said: list[str] = []
        train("softmax", build, splits, Recipe("plain", 1), settings, 0, tmp_path, log=said.append)
        return said

    run(lambda: fk.models.SoftmaxRegression(784, 10))
    renamed = torch.nn.Sequential(fk.models.SoftmaxRegression(784, 10))  # names prefixed with "0."
    said = run(lambda: renamed)
    assert any("other parameter names or shapes; training from scratch" in line for line in said)
    assert any("already trained" in line for line in run(lambda: torch.nn.Sequential(fk.models.SoftmaxRegression(784, 10))))


def test_a_killed_run_resumes_to_the_uninterrupted_result(smoke_run: tuple[Path, dict], tmp_path: Path) -> None:
    _, uninterrupted = smoke_run
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "fgsmkit", *SMOKE, "--out", str(out), "--seed", "0"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list((out / "checkpoints").glob("*.pt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGTERM, stderr.decode()
    if (out / "report.json").exists():
        unfinished = json.loads((out / "report.json").read_text())
        assert len(unfinished["rows"]) < len(uninterrupted["rows"]) and unfinished["complete"] is False

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout or "already trained" in resumed.stdout
    assert numbers(json.loads((out / "report.json").read_text())) == numbers(uninterrupted)


@pytest.mark.parametrize("seeds, resume_from", [("0", "checkpoints"), ("0,1", "seed-N/checkpoints")])
def test_ctrl_c_says_how_to_resume_instead_of_a_traceback(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch,
                                                          seeds: str, resume_from: str) -> None:
    # Ctrl-C printed KeyboardInterrupt's traceback, and nothing said the run could be resumed.
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "train", interrupted)
    out = tmp_path / "run"
    try:
        code = main([*SMOKE, "--out", str(out), "--seed", seeds])
    except KeyboardInterrupt:
        pytest.fail("the interrupt ended the run with a traceback")
    assert code == 130
    assert capsys.readouterr().err == ("interrupted; run the same command again to resume from "
                                       f"{out / resume_from}\n")


def test_download_with_the_embedded_sample_is_refused_by_name() -> None:
    # The sample is embedded: nothing to download, and nothing said so.
    with pytest.raises(ValueError, match=r"download=True needs data='auto' or 'full'"):
        load_splits(PRESETS["smoke"], "sample", download=True)


def test_without_full_mnist_the_sample_is_used_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import fgsmkit.datasets

    def missing(root=None, split="train", download=True):
        raise FileNotFoundError("MNIST is not in any of the searched folders")

    monkeypatch.setattr(fgsmkit.datasets, "load_mnist", missing)
    said: list[str] = []
    splits = load_splits(PRESETS["smoke"], "auto", log=said.append)
    assert "embedded MNIST sample" in splits.source and "not in any of the searched folders" in splits.source
    assert said and splits.source in said[0]
    assert (len(splits.train_y), len(splits.val_y), len(splits.test_y)) == (300, 100, 200)
    with pytest.raises(RuntimeError, match="full MNIST is not available"):
        load_splits(PRESETS["smoke"], "full", log=said.append)


@pytest.mark.parametrize("train, test, name", [(60_000, 10_000, "full MNIST (60,000 train / 10,000 test)"),
                                               (1_000, 500, "MNIST files on disk (1,000 train / 500 test;")])
def test_mnist_on_disk_is_described_by_what_was_found(monkeypatch: pytest.MonkeyPatch, train: int, test: int,
                                                      name: str) -> None:
    import fgsmkit.datasets

    def found(root=None, split="train", download=True):
        count = train if split == "train" else test
        return torch.zeros(count, 1, 28, 28), torch.arange(count) % 10

    monkeypatch.setattr(fgsmkit.datasets, "load_mnist", found)
    splits = load_splits(PRESETS["smoke"], "auto", log=lambda line: None)
    assert splits.source.startswith(name)


def copy_embedded_sample(folder: Path) -> None:
    """The shipped sample's gzip files, byte for byte, as MNIST files on disk."""
    from importlib import resources

    folder.mkdir(parents=True)
    shipped = resources.files("fgsmkit.datasets") / "data" / "mnist_sample"
    for prefix in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{prefix}-{kind}-ubyte.gz"
            (folder / name).write_bytes((shipped / name).read_bytes())


def test_the_embedded_samples_files_on_disk_are_named_as_the_sample(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Copies of the sample's files, found by load_mnist (which warns), were described in the
    # report as "MNIST files on disk (8,000 train / 2,000 test ...)", and --download, which asks
    # for full MNIST, ran on them without a word.
    import warnings

    from fgsmkit.reproduction.data import DataUnavailable

    folder = tmp_path / "data"
    copy_embedded_sample(folder)
    monkeypatch.setenv("FGSMKIT_DATA", str(folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the description says it; the warning is not repeated
        splits = load_splits(PRESETS["smoke"], "auto", log=lambda line: None)
    assert splits.source.startswith("the embedded MNIST sample (8,000 train / 2,000 test; its files, "
                                    f"found in {folder})")
    sample = load_splits(PRESETS["smoke"], "sample", log=lambda line: None)
    assert splits.digest == sample.digest
    for data, download, refusal in (("auto", True, "--download asks for full MNIST"), ("full", False, "--data full")):
        with pytest.raises(DataUnavailable, match=f"{refusal}.*the MNIST files in {folder} are the embedded sample's"):
            load_splits(PRESETS["smoke"], data, download=download, log=lambda line: None)


def test_download_refuses_mnist_files_on_disk_that_are_not_full_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    # --download downloads only missing files: with 1,000 / 500 images on disk it ran on those.
    import fgsmkit.datasets
    from fgsmkit.reproduction.data import DataUnavailable

    def subset(root=None, split="train", download=True):
        count = 1_000 if split == "train" else 500
        return torch.zeros(count, 1, 28, 28), torch.arange(count) % 10

    monkeypatch.setattr(fgsmkit.datasets, "load_mnist", subset)
    with pytest.raises(DataUnavailable, match=r"--download asks for full MNIST .* hold 1,000 training / 500 test images"
                                              r".*drop --download to run on them"):
        load_splits(PRESETS["smoke"], "auto", download=True, log=lambda line: None)
    assert load_splits(PRESETS["smoke"], "auto", log=lambda line: None).source.startswith("MNIST files on disk")


def test_data_full_refuses_a_subset_of_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    # A folder holding the first 1,000 / 500 images of MNIST ran as "--data full".
    import fgsmkit.datasets
    from fgsmkit.reproduction.data import DataUnavailable

    def subset(root=None, split="train", download=True):
        count = 1_000 if split == "train" else 500
        return torch.zeros(count, 1, 28, 28), torch.zeros(count, dtype=torch.long)

    monkeypatch.setattr(fgsmkit.datasets, "load_mnist", subset)
    with pytest.raises(DataUnavailable, match=r"60,000 training / 10,000 test.*1,000 training / 500 test"):
        load_splits(PRESETS["smoke"], "full", log=lambda line: None)


@pytest.mark.parametrize("train, labels, message", [
    (80, None, "no training images"),  # all 80 held out for validation (smoke: 100)
    (1_000, lambda count: torch.arange(count) % 3, "no 3s or 7s"),  # digits 0, 1 and 2 only
])
def test_data_that_leaves_a_split_empty_is_refused_before_any_training(monkeypatch: pytest.MonkeyPatch, train: int,
                                                                        labels, message: str) -> None:
    # Both trained on nothing (or the 3-vs-7 model on nothing) and crashed experiments later.
    import fgsmkit.datasets
    from fgsmkit.reproduction.data import DataUnavailable

    def found(root=None, split="train", download=True):
        count = train if split == "train" else 500
        return torch.zeros(count, 1, 28, 28), (labels or (lambda n: torch.arange(n) % 10))(count)

    monkeypatch.setattr(fgsmkit.datasets, "load_mnist", found)
    with pytest.raises(DataUnavailable, match=message):
        load_splits(PRESETS["smoke"], "auto", log=lambda line: None)


def test_report_without_matplotlib_says_how_to_get_figures(tmp_path: Path) -> None:
    from fgsmkit.reproduction import report

    meta = {"command": "fgsmkit reproduce --quick", "seed": 0, "data": "d", "machine": "m", "date": "t",
            "wall_time": "w", "settings": PRESETS["quick"].as_dict()}
    rows = [experiments.row("1. softmax regression", "FGSM error", 99.9, 98.76543)]
    markdown, data = report.write_report(tmp_path, meta, PRESETS["quick"].notes, rows, None)
    text = markdown.read_text()
    assert "pip install matplotlib" in text and "quick run" in text
    assert "| 1. softmax regression | FGSM error | 99.9% | 98.77% |" in text
    assert json.loads(data.read_text())["rows"][0]["ours"] == 98.7654


def test_the_papers_numbers_are_printed_as_the_paper_printed_them(smoke_run: tuple[Path, dict]) -> None:
    # :g printed the paper's 16.0% (RBF agreeing with maxout's mistakes) as 16%.
    from fgsmkit.reproduction.report import format_value

    assert [format_value(v, paper=True) for v in (16.0, 99, 0.782, 98.35, 0)] == ["16.0%", "99%", "0.782%",
                                                                                 "98.35%", "0%"]
    markdown = (smoke_run[0] / "report.md").read_text()
    assert "| RBF predicts maxout's class, over maxout's mistakes | 16.0% |" in markdown
    assert "| 3. logistic regression, 3 vs 7 | FGSM error | 99% |" in markdown


def test_the_notes_and_labels_say_what_was_measured(smoke_run: tuple[Path, dict]) -> None:
    # The 3-vs-7 note gave the step as eps * sign(w), though the clip to [0, 1] is why its FGSM
    # error stays below the paper's 99%; Figure 4's row said eps < 0 and eps > 0 for fits over
    # eps <= 0 and eps >= 0.
    rows = {(r["experiment"], r["metric"]): r for r in smoke_run[1]["rows"]}
    logistic = rows[("3. logistic regression, 3 vs 7", "FGSM error")]
    assert "clipped to [0, 1]" in logistic["notes"]
    assert ("11. logits along the FGSM direction (Figure 4)",
            "R^2 of two lines per logit (eps <= 0, eps >= 0), mean") in rows
    # The L1 row said "after N epochs" beside the training error of the epoch early stopping kept.
    l1 = next(r for key, r in rows.items() if key[1].startswith("training error with L1 weight decay"))
    kept = fk.load_checkpoint(smoke_run[0] / "checkpoints" / "maxout-l1.pt")
    assert l1["notes"].startswith(f"kept epoch {kept['best_epoch']} of {kept['epoch']} ")


def test_the_report_of_an_unfinished_run_says_so_and_does_not_blame_matplotlib(tmp_path: Path) -> None:
    # The report rewritten after each experiment looked finished, and said that figures need
    # matplotlib even with matplotlib installed.
    from fgsmkit.reproduction import report

    meta = {"command": "fgsmkit reproduce", "seed": 0, "data": "d", "machine": "m", "date": "t",
            "wall_time": "w", "settings": PRESETS["full"].as_dict()}
    rows = [experiments.row("1. softmax regression", "FGSM error", 99.9, 98.76543)]
    markdown, data = report.write_report(tmp_path, meta, PRESETS["full"].notes, rows, None, progress=(3, 12))
    text = markdown.read_text()
    assert "**Incomplete: 3 of 12 experiments" in text and "pip install" not in text
    assert json.loads(data.read_text())["complete"] is False
    markdown, _ = report.write_report(tmp_path, meta, PRESETS["full"].notes, rows, None, progress=(12, 12))
    assert "**Incomplete: all 12 experiments run, the figures not drawn yet." in markdown.read_text()
    markdown, data = report.write_report(tmp_path, meta, PRESETS["full"].notes, rows, ["figure2.png"])
    assert "Incomplete" not in markdown.read_text() and json.loads(data.read_text())["complete"] is True


def test_a_figure_that_fails_to_save_leaves_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    from fgsmkit.reproduction import figures

    import matplotlib.pyplot as plt

    def half_written(data: dict):
        def savefig(target, **options) -> None:
            if isinstance(target, (str, os.PathLike)):
                Path(target).write_bytes(b"\x89PNG half")
            else:
                target.write(b"\x89PNG half")
            raise OSError("No space left on device")

        fig = plt.figure()
        fig.savefig = savefig
        return fig

    monkeypatch.setattr(figures, "_figure2", half_written)
    (tmp_path / "figure2.png").write_bytes(b"the previous figure")
    with pytest.raises(OSError, match="No space left"):
        figures.write_figures({"figure2": {}}, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["figure2.png"]
    assert (tmp_path / "figure2.png").read_bytes() == b"the previous figure"


def test_the_spread_refuses_seeds_whose_reports_list_different_rows(tmp_path: Path) -> None:
    from fgsmkit.reproduction import report

    meta = {"command": "c", "data": "d", "machine": "m", "date": "t", "wall_time": "w", "settings": {"name": "full"}}
    one, two = (experiments.row("1. softmax regression", metric, 99.9, 50.0) for metric in ("FGSM error", "other"))
    with pytest.raises(ValueError, match="list different rows"):
        report.write_spread(tmp_path, meta, {0: [one, two], 1: [one]})  # zip alone would drop "other"
    with pytest.raises(ValueError, match="list different rows"):
        report.write_spread(tmp_path, meta, {0: [one], 1: [two]})


def test_a_row_says_when_its_network_is_not_the_one_the_paper_number_is_for() -> None:
    # A substring test took "40x5 network" for "240x5 network" and "600x5" for "1600x5".
    assert experiments._borrowed(experiments.FROM_ORIGINAL, 40, 5) == experiments.FROM_ORIGINAL
    assert experiments._borrowed(experiments.FROM_LARGE, 600, 5) == experiments.FROM_LARGE
    assert experiments._borrowed(experiments.FROM_LARGE, 1600, 3) == experiments.FROM_LARGE
    assert experiments._borrowed(experiments.FROM_LARGE, 1600, 5) == ""
    assert experiments._borrowed(experiments.FROM_ORIGINAL, 240, 5) == ""


def test_each_experiment_names_the_part_of_the_paper_its_numbers_come_from() -> None:
    # Section 4 (linear perturbation of non-linear models) gives the softmax and maxout FGSM
    # numbers, section 5 logistic regression and the L1 weight decay, section 6 adversarial
    # training and the noise controls, Appendix A the rubbish inputs; there is no section 11.
    where = {experiment.__name__: (experiment.__doc__ or "").splitlines()[0] for experiment in experiments.EXPERIMENTS}
    assert where["softmax_regression"].endswith("(section 4).")
    assert where["maxout_fgsm"].endswith("(section 4).")
    assert where["logistic_3v7"].endswith("(section 5).")
    assert "section 5" in where["controls"] and "section 6" in where["controls"]
    assert where["rubbish"].endswith("(Appendix A).")
