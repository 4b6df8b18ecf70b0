"""The benchmark: its command end to end, its timing and ratios, and that what it times agrees."""

from __future__ import annotations

import inspect
import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

import fgsmkit as fk
from fgsmkit.__main__ import main
from fgsmkit.benchmarking import contenders, peers, report, timing
from fgsmkit.benchmarking.workloads import WORKLOADS

SMALL = {name: w.shrunk(8, 3) for name, w in WORKLOADS.items()}
TRAIN = ("clean step", "AdversarialLoss step", "3-forward adversarial step", "2-forward adversarial step")
MEASURES_RESIDENT_PEAK = timing._reset_resident_peak()  # False where /proc/self/clear_refs is not writable


def test_quick_keeps_the_repeats_given_explicitly(tmp_path):
    out = tmp_path / "q.json"
    assert main(["bench", "--quick", "--no-peers", "--workloads", "maxout-128", "--repeats", "3",
                 "--fast-repeats", "4", "--json", str(out)]) == 0
    meta = json.loads(out.read_text())["meta"]
    assert (meta["repeats"], meta["fast_repeats"], meta["warmup"]) == (3, 4, 1)


def test_quick_run_writes_the_table_and_json(tmp_path, capsys):
    out = tmp_path / "results.json"
    code = main(["bench", "--quick", "--workloads", "maxout-128", "--repeats", "2", "--fast-repeats", "2", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert ("| ratio | wall, of medians | CPU, of medians | wall, median of per-round ratios "
            "| CPU, median of per-round ratios |") in printed
    assert f"wrote {out}" in printed

    document = json.loads(out.read_text())
    meta = document["meta"]
    assert meta["device"] == "cpu" and meta["torch"] == torch.__version__ and meta["repeats"] == 2
    assert meta["quick"] is True
    from fgsmkit.benchmarking import cli

    assert (meta["fgsmkit_commit"], meta["fgsmkit_dirty"]) == cli._checkout()
    assert set(meta["peer_versions"]) == {p.name for p in AVAILABLE}  # the peers that ran
    assert all(meta["peer_versions"].values())
    assert isinstance(document["skipped_peers"], dict)
    (result,) = document["workloads"]
    assert result["name"] == "maxout-128" and result["batch"] == 16 and result["steps"] == 3
    assert result["description"] == "maxout MLP 784-(240x5)-(240x5)-10, MNIST-shaped, batch 16"

    timings = result["timings"]
    expected = {"fgsm/fgsmkit", "fgsm/hand-written", "pgd/fgsmkit", "pgd/hand-written",
                "floor/fwd+bwd to input", "floor/fwd+bwd to input x3", *(f"train/{name}" for name in TRAIN)}
    assert expected <= set(timings)
    assert timings["floor/fwd+bwd to input x3"]["group"] == timings["pgd/fgsmkit"]["group"]
    for entry in timings.values():
        assert len(entry["wall_s"]) == len(entry["cpu_s"]) == 2
        assert entry["wall_median_s"] == pytest.approx(sorted(entry["wall_s"])[0] / 2 + sorted(entry["wall_s"])[1] / 2)
        assert entry["wall_median_s"] > 0
        assert entry["first_call_reserved_bytes"] is None  # measured on CUDA only
        if MEASURES_RESIDENT_PEAK:  # every contender allocates at least its output or gradients
            assert isinstance(entry["peak_memory_bytes"], int) and entry["peak_memory_bytes"] > 0

    ratios = result["ratios"]
    wall = {key: entry["wall_median_s"] for key, entry in timings.items()}
    assert ratios["pgd: fgsmkit / hand-written"]["wall"] == pytest.approx(wall["pgd/fgsmkit"] / wall["pgd/hand-written"])
    ours, hand = timings["pgd/fgsmkit"]["cpu_s"], timings["pgd/hand-written"]["cpu_s"]
    assert ratios["pgd: fgsmkit / hand-written"]["paired_cpu"] == pytest.approx(
        (ours[0] / hand[0] + ours[1] / hand[1]) / 2)
    # The floor called once per PGD step ran in the same rounds as PGD, so the ratio is paired.
    floor3 = timings["floor/fwd+bwd to input x3"]["cpu_s"]
    assert ratios["pgd: fgsmkit / (3 x floor)"]["paired_cpu"] == pytest.approx(
        (ours[0] / floor3[0] + ours[1] / floor3[1]) / 2)
    assert "paired_cpu" in ratios["fgsm: fgsmkit / floor"]
    assert ratios["AdversarialLoss step / clean step"]["wall"] == pytest.approx(
        wall["train/AdversarialLoss step"] / wall["train/clean step"])
    assert "paired_cpu" in ratios["AdversarialLoss step / 2-forward adversarial step"]
    assert result["agreement_max_abs_diff"]["fgsm"]["hand-written"] == 0.0
    assert result["agreement_max_abs_diff"]["pgd"]["hand-written"] == 0.0
    assert result["agrees"]["fgsm"] == {"hand-written": True, **{p.name: True for p in AVAILABLE if p.name != "adv-lib"}}
    assert all(result["agrees"]["pgd"].values()) and all(result["agreement_inside"]["pgd"].values())
    assert result["adversarial_loss_bit_identical"] == {"3-forward adversarial step": True,
                                                        "2-forward adversarial step": True}


def test_bad_options_are_refused(capsys, tmp_path):
    assert main(["bench", "--quick", "--workloads", "no-such-model"]) == 2
    assert "--workloads 'no-such-model': unknown workloads ['no-such-model']" in capsys.readouterr().err
    assert main(["bench", "--quick", "--workloads", ","]) == 2  # nothing to run is not a success
    assert "--workloads ',': no workload named" in capsys.readouterr().err
    # A JSON file that cannot be written is refused before the run, not after it.
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    for unwritable in (tmp_path, not_a_folder / "results.json"):
        assert main(["bench", "--quick", "--no-peers", "--json", str(unwritable)]) == 2
        out, err = capsys.readouterr()
        assert f"--json {unwritable} cannot be written" in err and "max abs diff" not in out
    assert main(["bench", "--quick", "--backends", "cuda_graph", "--workloads", "maxout-128"]) == 2
    assert "cuda_graph" in capsys.readouterr().err


def test_a_failing_torch_compile_is_skipped_by_default_and_refused_when_asked_for(tmp_path, capsys, monkeypatch):
    # Where no C++ compiler works, the default run died in its first compiled call, writing nothing.
    from fgsmkit.benchmarking import cli

    monkeypatch.setattr(cli, "_compile_failure", lambda device: "InductorError: no working C++ compiler",
                        raising=False)
    out = tmp_path / "results.json"
    options = ["--no-peers", "--workloads", "maxout-128", "--fast-repeats", "1", "--repeats", "1", "--warmup", "0",
               "--json", str(out)]
    assert main(["bench", "--quick", "--backends", "eager,compile", *options]) == 2
    printed, err = capsys.readouterr()
    assert "--backends compile" in err and "InductorError: no working C++ compiler" in err
    assert "max abs diff" not in printed and not out.exists()  # refused before anything ran
    # From the defaults, compile is left out with a line saying why.
    assert cli._with_working_compile(["eager", "compile"], torch.device("cpu"), asked=False) == ["eager"]
    assert "skipping compile backend: InductorError: no working C++ compiler" in capsys.readouterr().out


def test_checking_the_json_path_creates_opens_and_deletes_nothing(tmp_path):
    from fgsmkit.benchmarking import cli

    path = tmp_path / "new" / "sub" / "results.json"
    assert cli._unwritable(path) is None
    assert not (tmp_path / "new").exists()  # made when the results are written
    dangling = tmp_path / "link.json"
    dangling.symlink_to(tmp_path / "target.json")
    assert cli._unwritable(dangling) is None
    assert dangling.is_symlink() and not (tmp_path / "target.json").exists()
    existing = tmp_path / "old.json"
    existing.write_text("keep")
    assert cli._unwritable(existing) is None and existing.read_text() == "keep"
    # A run refused for another option leaves no folder behind either.
    assert main(["bench", "--quick", "--repeats", "0", "--json", str(path)]) == 2
    assert not (tmp_path / "new").exists()


def _wrong_peer(model, x, y, w):
    # FGSM with twice the budget, and a PGD that returns the clean input.
    return {"fgsm": lambda: fk.fgsm(model, x, y, eps=2 * w.eps), "pgd": lambda: x.clone()}


def _failing_build(model, x, y, w):
    raise RuntimeError("cannot build")


def _failing_call(model, x, y, w):
    def fail():
        raise ValueError("cannot attack")
    return {"fgsm": fail, "pgd": lambda: x.clone()}


def test_a_disagreeing_peer_is_flagged_and_fails_the_run_and_a_failing_peer_is_skipped(tmp_path, capsys, monkeypatch):
    fakes = [peers.Peer("wrong", "wrong", (), _wrong_peer), peers.Peer("no-build", "no-build", (), _failing_build),
             peers.Peer("no-call", "no-call", (), _failing_call)]
    monkeypatch.setattr(peers, "available", lambda: (fakes, {}))
    out = tmp_path / "results.json"
    code = main(["bench", "--quick", "--workloads", "maxout-128", "--fast-repeats", "1", "--repeats", "1",
                 "--warmup", "0", "--json", str(out)])
    printed, err = capsys.readouterr()
    assert code == 1  # after the results are written
    assert "wrong" in printed and "DISAGREES" in printed and "wrong's FGSM disagrees" in err
    (result,) = json.loads(out.read_text())["workloads"]
    assert result["agrees"]["fgsm"] == {"hand-written": True, "wrong": False}
    assert result["agrees"]["pgd"] == {"hand-written": True, "wrong": False}  # it returned x
    assert result["agreement_max_abs_diff"]["fgsm"]["wrong"] == pytest.approx(0.25)
    assert result["agreement_fraction_off"]["pgd"]["wrong"] > 0.5
    assert "fgsm/wrong" in result["timings"]  # timed, but in no ratio
    assert not [description for description in result["ratios"] if "wrong" in description]
    assert "RuntimeError: cannot build" in result["skipped_peers"]["no-build"]
    assert "ValueError: cannot attack" in result["skipped_peers"]["no-call"]
    assert not [key for key in result["timings"] if "no-" in key]
    assert "no-build failed" in err and "no-call failed" in err  # a failing peer fails the run too


def test_problems_name_disagreeing_contenders_and_training_steps_that_are_not_bit_identical():
    w = SMALL["maxout-128"]
    fgsm, pgd = (lambda *args: report.Agreement(attack, *args) for attack in ("fgsm", "pgd"))
    result = report.WorkloadResult(
        w, {}, {"fgsm": {"good": fgsm(0.0, 0.0, True), "bad": fgsm(0.5, 1.0, True), "other shape": fgsm(None, None),
                         "nan": fgsm(math.nan, 0.0, False)},
                "pgd": {"drifted": pgd(0.06, 0.003, True), "unmoved": pgd(0.3, 0.9, True),
                        "outside": pgd(0.06, 0.003, False)}},
        {"3-forward adversarial step": True, "2-forward adversarial step": False}, skipped={"peer": "ValueError: x"})
    assert result.agrees() == {"fgsm": {"good": True, "bad": False, "other shape": False, "nan": False},
                               "pgd": {"drifted": True, "unmoved": False, "outside": False}}
    assert result.untrusted() == {"fgsm/bad", "fgsm/other shape", "fgsm/nan", "pgd/unmoved", "pgd/outside",
                                  "train/2-forward adversarial step"}
    problems = result.problems()
    assert len(problems) == 7 and "2-forward adversarial step" in problems[-2] and "peer failed" in problems[-1]


def test_agreement_compares_values_the_ball_and_the_box():
    x = torch.full((4,), 0.5)
    assert report.Agreement.of("fgsm", torch.zeros(3), x, x, 0.1) == report.Agreement("fgsm", None, None, None)
    close = report.Agreement.of("fgsm", torch.tensor([0.5, 0.5, 0.6, 0.4 + 1e-7]), torch.tensor([0.5, 0.5, 0.6, 0.4]),
                                x, 0.1)
    assert close.max_abs_diff == pytest.approx(1e-7, rel=0.5) and close.fraction_off == 0 and close.inside
    assert close.agrees
    assert not report.Agreement.of("pgd", x + 0.2, x + 0.2, x, 0.1).inside  # outside the eps-ball
    assert not report.Agreement.of("pgd", x * 3, x * 3, x, 2.0).inside  # outside the box [0, 1]
    nan = torch.tensor([math.nan, 0.5, 0.5, 0.5])
    assert report.Agreement.of("fgsm", nan, nan, x, 0.1).max_abs_diff == 0.0  # NaN where fgsmkit has NaN too


def test_nan_against_a_number_is_off_and_the_json_stays_valid(tmp_path):
    # NaN compares False with the tolerance: it counted as agreeing ("0% off" next to DISAGREES),
    # and json.dumps wrote the literal NaN, which is not JSON.
    x = torch.full((4,), 0.5)
    found = report.Agreement.of("fgsm", torch.tensor([math.nan, 0.5, 0.5, 0.5]), x, x, 0.1)
    assert found.fraction_off == 0.25 and not found.agrees
    path = tmp_path / "results.json"
    report.write_json(path, {}, [report.WorkloadResult(SMALL["maxout-128"], {}, {"fgsm": {"nan": found}})], {})
    document = json.loads(path.read_text(), parse_constant=lambda literal: pytest.fail(f"{literal} in the JSON"))
    assert document["workloads"][0]["agreement_max_abs_diff"]["fgsm"] == {"nan": None}


def test_an_attack_that_differs_by_design_is_timed_but_not_checked():
    from fgsmkit.benchmarking import cli

    x = torch.full((2, 3), 0.5)
    found = cli._agreement("pgd", {"fgsmkit": x + 0.1, "different": x, "same": x + 0.1}, x, 0.1, {"different"})
    assert not found["different"].compared and found["different"].agrees and found["same"].agrees
    result = report.WorkloadResult(SMALL["maxout-128"], {}, {"pgd": found})
    assert result.agrees() == {"pgd": {"different": None, "same": True}}
    assert not result.untrusted() and not result.problems()
    (adv_lib,) = (p for p in peers.PEERS if p.name == "adv-lib")
    assert adv_lib.uncompared == ("pgd",)  # it returns the last iterate that fooled the model


def test_a_wrong_hand_written_step_or_attack_fails_the_run_and_leaves_the_ratios(tmp_path, capsys, monkeypatch):
    # A 2-forward step at half the budget trains differently; a PGD that returns x is no attack.
    wrong_step = contenders.two_forward_adversarial_loss
    monkeypatch.setattr(contenders, "two_forward_adversarial_loss", lambda m, x, y, eps: wrong_step(m, x, y, eps / 2))
    monkeypatch.setattr(contenders, "hand_pgd", lambda model, x, y, eps, step_size, steps: x.clone())
    out = tmp_path / "results.json"
    code = main(["bench", "--quick", "--no-peers", "--workloads", "maxout-128", "--fast-repeats", "1",
                 "--repeats", "1", "--warmup", "0", "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "not bit-identical to the 2-forward adversarial step" in err and "hand-written's PGD disagrees" in err
    (result,) = json.loads(out.read_text())["workloads"]
    ratios = result["ratios"]
    assert "AdversarialLoss step / 2-forward adversarial step" not in ratios
    assert "pgd: fgsmkit / hand-written" not in ratios
    assert "AdversarialLoss step / 3-forward adversarial step" in ratios and "fgsm: fgsmkit / hand-written" in ratios


def test_a_shrunk_workload_describes_its_own_batch():
    # --quick ran batch 16 under the heading "..., batch 128".
    assert WORKLOADS["cnn-128"].description == "small CNN (2 conv + 2 linear), CIFAR-shaped 3x32x32, batch 128"
    assert WORKLOADS["cnn-128"].shrunk(16, 3).description == (
        "small CNN (2 conv + 2 linear), CIFAR-shaped 3x32x32, batch 16")


@pytest.mark.parametrize("name", list(SMALL))
def test_the_shrunk_pgd_check_catches_a_missing_or_wrong_projection(name):
    # 3 steps of the full workloads' step size stayed inside the ball (3 x 0.01 against eps 0.25),
    # so a PGD that never projected, or projected onto a ball 10x too wide, agreed with fgsmkit.
    w = SMALL[name]
    model, x, y = w.make("cpu")
    ours = fk.pgd(model, x, y, eps=w.eps, step_size=w.step_size, steps=w.steps, random_start=False)
    correct = contenders.hand_pgd(model, x, y, w.eps, w.step_size, w.steps)
    assert report.Agreement.of("pgd", correct, ours, x, w.eps).agrees
    for eps in (10 * w.eps, math.inf):  # a ball 10x too wide, and no ball at all (the box clip only)
        wrong = contenders.hand_pgd(model, x, y, eps, w.step_size, w.steps)
        assert not report.Agreement.of("pgd", wrong, ours, x, w.eps).agrees


def test_a_shrunk_workload_keeps_a_step_that_already_leaves_the_ball():
    w = WORKLOADS["maxout-128"]
    assert w.shrunk(8, 3).step_size == pytest.approx(2.5 * 0.25 / 3)
    assert w.shrunk(8, 30).step_size == w.step_size  # 30 x 0.01 > 0.25 already
    assert w.shrunk(8, 1).step_size == w.eps  # one step cannot leave the ball: no wider than eps


def test_each_workload_starts_with_nothing_compiled(monkeypatch):
    # The compiled step of an earlier workload was reused, recompiled for dynamic shapes: compile
    # timings depended on which workloads ran before.
    from fgsmkit.attacks import _backends
    from fgsmkit.benchmarking import cli

    resets = []
    monkeypatch.setattr(_backends, "reset_compiled", lambda: resets.append(1), raising=False)
    monkeypatch.setattr(timing, "peak_memory", lambda run, device: None)  # slow, and not what is tested
    cli.measure(SMALL["maxout-128"], torch.device("cpu"), (1, 1), 0, ["eager"], [])
    assert resets == [1]


def test_resetting_forgets_the_compiled_functions():
    from fgsmkit.attacks import _backends

    compiled = _backends.compiled(_backends.linf_take_step)
    assert _backends.compiled(_backends.linf_take_step) is compiled  # once per process...
    _backends.reset_compiled()
    assert _backends.compiled(_backends.linf_take_step) is not compiled  # ... until reset


def test_contenders_are_interleaved_in_a_fresh_random_order_each_round():
    calls: list[str] = []
    runs = {name: (lambda name=name: calls.append(name)) for name in "abcd"}
    timings = timing.interleaved(runs, torch.device("cpu"), repeats=60, warmup=1)
    assert calls[:4] == ["a", "b", "c", "d"]  # the warm-up round
    rounds = [calls[i:i + 4] for i in range(4, len(calls), 4)]
    assert len(rounds) == 60 and all(sorted(r) == ["a", "b", "c", "d"] for r in rounds)
    assert all(len(t.wall) == len(t.cpu) == 60 for t in timings.values())
    # No contender always runs right after the same one (whose caches it would inherit): over the
    # rounds each is preceded by each other one about equally often, within and across rounds.
    timed = calls[4:]
    followed = Counter(zip(timed, timed[1:]))
    for before in "abcd":
        for after in "abcd":
            if before != after:
                assert 5 <= followed[before, after] <= 35, followed  # about 19 each, sd 4
    # The orders come from a seed: the same seed repeats the run exactly.
    again: list[str] = []
    timing.interleaved({name: (lambda name=name: again.append(name)) for name in "abcd"},
                       torch.device("cpu"), repeats=60, warmup=1)
    assert again == calls


def test_peak_memory_is_the_median_of_several_calls(monkeypatch):
    readings = iter([3, 100, 5, 4, 1])  # one outlier call
    monkeypatch.setattr(timing, "_peak_of_one_call", lambda run, device: next(readings))
    assert timing.peak_memory(lambda: None, torch.device("cpu")) == 4


def test_ratios_are_ratios_of_medians_and_medians_of_paired_ratios():
    w = SMALL["maxout-128"]
    timings = {key: timing.Timing(wall=[v, 3 * v, 2 * v], cpu=[v, v, v], group=group) for key, v, group in
               [("fgsm/fgsmkit", 1.0, "a"), ("fgsm/hand-written", 2.0, "a"), ("pgd/fgsmkit", 6.0, "b"),
                ("pgd/hand-written", 3.0, "b"), ("floor/fwd+bwd to input", 0.5, "a"),
                ("floor/fwd+bwd to input x3", 2.0, "b")]}
    # A drifting machine: round 2 of fgsmkit's FGSM was slow, but so was hand-written's.
    timings["fgsm/fgsmkit"].cpu = [1.0, 4.0, 1.2]
    timings["fgsm/hand-written"].cpu = [2.0, 8.0, 2.0]
    ratios = report.WorkloadResult(w, timings).ratios()
    assert ratios["fgsm: fgsmkit / hand-written"]["wall"] == 0.5
    assert ratios["fgsm: fgsmkit / hand-written"]["cpu"] == pytest.approx(1.2 / 2.0)
    assert ratios["fgsm: fgsmkit / hand-written"]["paired_cpu"] == pytest.approx(0.5)  # 0.5, 0.5, 0.6
    assert ratios["pgd: fgsmkit / hand-written"] == {"wall": 2.0, "cpu": 2.0, "paired_wall": 2.0, "paired_cpu": 2.0}
    assert ratios["pgd: fgsmkit / (3 x floor)"] == {"wall": 3.0, "cpu": 3.0, "paired_wall": 3.0, "paired_cpu": 3.0}
    assert ratios["fgsm: fgsmkit / floor"]["paired_cpu"] == pytest.approx(2.4)  # 2, 8, 2.4
    assert "AdversarialLoss step / clean step" not in ratios  # not measured, not invented


@pytest.mark.skipif(not MEASURES_RESIDENT_PEAK, reason="the resident peak is read from Linux /proc")
def test_peak_memory_sees_a_large_allocation():
    size = 64 * 2**20
    peak = timing.peak_memory(lambda: torch.ones(size // 4), torch.device("cpu"))
    assert peak is not None and size * 0.9 <= peak <= size * 4
    assert timing.peak_memory(lambda: None, torch.device("cpu")) < size * 0.1


@pytest.mark.parametrize("name", list(SMALL))
def test_hand_written_loops_compute_what_fgsmkit_computes(name):
    # float64, so that the comparison is of the algorithm, not of rounding inside the loss.
    w = SMALL[name]
    model, x, y = w.make("cpu")
    model, x = model.double(), x.double()
    assert torch.equal(contenders.hand_fgsm(model, x, y, w.eps), fk.fgsm(model, x, y, eps=w.eps))
    assert torch.equal(
        contenders.hand_pgd(model, x, y, w.eps, w.step_size, w.steps),
        fk.pgd(model, x, y, eps=w.eps, step_size=w.step_size, steps=w.steps, random_start=False))
    # The floor is the input gradient itself: FGSM is one sign step along it.
    floor = contenders.input_gradient_floor(model, x, y)
    assert torch.equal((x + w.eps * floor.sign()).clamp(0, 1), fk.fgsm(model, x, y, eps=w.eps))


@pytest.mark.parametrize("name", list(SMALL))
def test_hand_written_pgd_projects_in_one_clamp_per_step(name):
    # As a careful user writes it: the ball's bounds folded with the box once, before the loop.
    # Rebuilding x - eps and x + eps and clamping in three operations every step made the
    # hand-written loop slower than it needs to be.
    from torch.utils._python_dispatch import TorchDispatchMode

    projections = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in ("clamp", "clamp_", "clamp_min", "clamp_max", "maximum", "minimum",
                                                "sub", "rsub"):
                projections.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    w = SMALL[name]
    model, x, y = w.make("cpu")
    with Record():
        contenders.hand_pgd(model, x, y, w.eps, w.step_size, w.steps)
    assert Counter(projections) == {"sub": 1, "clamp": 2 + w.steps}, projections


@pytest.mark.parametrize("name", list(SMALL))
def test_adversarial_loss_trains_bit_identically_to_the_3_forward_step(name):
    w = SMALL[name]
    model, x, y = w.make("cpu")
    assert contenders.adversarial_loss_matches(model, x, y, w.eps) == {
        "3-forward adversarial step": True, "2-forward adversarial step": True}
    # ...and the comparison can fail: a different eps gives different parameters.
    criterion = fk.AdversarialLoss(alpha=contenders.ALPHA, eps=w.eps)
    a, b = (w.make("cpu")[0] for _ in range(2))
    contenders.training_step(a, lambda m: criterion(m, x, y))()
    contenders.training_step(b, lambda m: contenders.straightforward_adversarial_loss(m, x, y, w.eps / 2))()
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_the_fgsmkit_rows_run_the_eager_backend(monkeypatch):
    # Eager is the reference row of every ratio: "auto" would follow whatever it comes to pick.
    backends = []

    def recording(attack):
        return lambda *args, **kwargs: backends.append(kwargs.get("backend")) or attack(*args, **kwargs)

    monkeypatch.setattr(contenders, "fgsm", recording(fk.fgsm))
    monkeypatch.setattr(contenders, "pgd", recording(fk.pgd))
    w = SMALL["maxout-128"]
    model, x, y = w.make("cpu")
    for runs in contenders.attacks(model, x, y, w).values():
        runs[report.OURS]()
    assert backends == ["eager", "eager"]


def test_adversarial_training_steps_back_propagate_to_the_input_once():
    # The final backward needs the parameters' gradients only: the 2-forward step's formed the
    # first layer's input gradient a second time (its input was still a leaf that required grad).
    calls = []

    class CountInputGradients(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            calls.append(1)
            return grad

    class Counted(torch.nn.Module):
        def forward(self, x):
            return CountInputGradients.apply(x)

    w = SMALL["maxout-128"]
    model, x, y = w.make("cpu")
    for name, step in contenders.training_steps(torch.nn.Sequential(Counted(), model), x, y, w).items():
        calls.clear()
        step()
        assert len(calls) == (0 if name == "clean step" else 1), name


def test_the_clean_step_uses_pytorchs_cross_entropy(monkeypatch):
    # The baseline is an unchanged training loop, which calls F.cross_entropy; fgsmkit's own
    # cross-entropy, a Python autograd.Function, is slower and flattered AdversarialLoss / clean step.
    calls = []
    cross_entropy = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: calls.append(1) or cross_entropy(*a, **k))
    w = SMALL["maxout-128"]
    model, x, y = w.make("cpu")
    contenders.training_steps(model, x, y, w)["clean step"]()
    assert len(calls) == 1


def test_training_steps_change_only_their_own_copy():
    w = SMALL["maxout-128"]
    model, x, y = w.make("cpu")
    before = [p.clone() for p in model.parameters()]
    for step in contenders.training_steps(model, x, y, w).values():
        step()
        copied = inspect.getclosurevars(step).nonlocals["model"]
        assert copied is not model
        assert not any(torch.equal(p, q) for p, q in zip(before, copied.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))


AVAILABLE, SKIPPED = peers.available()


def test_unimportable_peers_are_reported_with_a_reason():
    names = {p.name for p in AVAILABLE} | set(SKIPPED)
    assert names == {p.name for p in peers.PEERS}
    assert all(reason for reason in SKIPPED.values())


@pytest.mark.parametrize("peer", AVAILABLE, ids=[p.name for p in AVAILABLE])
def test_peers_fgsm_agrees_with_fgsmkit(peer):
    w = SMALL["maxout-128"]
    model, x, y = w.make("cpu")
    runs = peer.build(model, x, y, w)
    ours = fk.fgsm(model, x, y, eps=w.eps)
    if runs["fgsm"] is None:
        assert peer.note  # a peer without FGSM says why
        return
    theirs = runs["fgsm"]().detach()
    assert theirs.shape == ours.shape
    # A flipped sign would move a coordinate by up to 2 eps; only rounding is allowed.
    assert float((theirs - ours).abs().max()) <= 1e-6
    assert math.isfinite(float(theirs.sum()))


@pytest.mark.parametrize("peer", AVAILABLE, ids=[p.name for p in AVAILABLE])
def test_peers_leave_no_weight_gradients_on_the_shared_model(peer):
    # foolbox, cleverhans and ART take the input gradient by loss.backward(), which also fills the
    # weights' .grad: left on the model every contender shares, later calls added into them in
    # place (or freed them) instead of forming them, so a call's time and memory depended on what
    # ran before it.
    w = SMALL["maxout-128"]
    model, x, y = w.make("cpu")
    for attack, run in peer.build(model, x, y, w).items():
        if run is not None:
            run()
            assert all(p.grad is None for p in model.parameters()), attack
    if peer.name in ("foolbox", "cleverhans", "ART"):
        assert peers.WEIGHT_GRADIENTS in peer.note


@pytest.mark.skipif("foolbox" not in {p.name for p in AVAILABLE}, reason="foolbox is not importable")
def test_foolbox_leaves_the_model_where_the_inputs_are(monkeypatch):
    # Without device=, foolbox moves the model to cuda:0 whenever CUDA is available.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    w = SMALL["maxout-128"]
    model, x, y = w.make("cpu")
    (foolbox,) = (p for p in AVAILABLE if p.name == "foolbox")
    runs = foolbox.build(model, x, y, w)
    assert torch.equal(runs["fgsm"](), fk.fgsm(model, x, y, eps=w.eps))
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.skipif("cleverhans" not in {p.name for p in AVAILABLE}, reason="cleverhans is not importable")
def test_cleverhans_pgd_runs_where_numpy_cannot_read_its_sanity_checks(monkeypatch):
    # Its PGD ends, by default, with np.all() over 0-d tensors, which NumPy cannot read on CUDA
    # (cleverhans issue #1248): a --device cuda run lost the peer and exited 1. A CPU stand-in:
    # an np.all that fails as it does on CUDA tensors.
    import types

    import numpy as np
    from cleverhans.torch.attacks import projected_gradient_descent as module

    def all_of_cuda_tensors(values):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                        "to host memory first.")

    monkeypatch.setattr(module, "np", types.SimpleNamespace(inf=np.inf, all=all_of_cuda_tensors))
    w = SMALL["maxout-128"]
    model, x, y = w.make("cpu")
    (cleverhans,) = (p for p in AVAILABLE if p.name == "cleverhans")
    theirs = cleverhans.build(model, x, y, w)["pgd"]()
    ours = fk.pgd(model, x, y, eps=w.eps, step_size=w.step_size, steps=w.steps, random_start=False)
    assert report.Agreement.of("pgd", theirs, ours, x, w.eps).agrees
    assert "sanity_checks=False" in cleverhans.note


def test_on_cuda_the_table_drops_cpu_time_and_shows_the_memory_reserved_by_the_first_call():
    w = SMALL["maxout-128"]
    timings = {"pgd/fgsmkit[cuda_graph]": timing.Timing(wall=[1.0], cpu=[1.0], peak_memory=2**20,
                                                         first_call_reserved=3 * 2**20, group="b")}
    cuda = report.table(report.WorkloadResult(w, timings, device="cuda"))
    assert "CPU" not in cuda and "reserved by first call MiB" in cuda and "| 1.0 | 3.0 |" in cuda
    assert "CPU" in report.table(report.WorkloadResult(w, timings))
    assert timing.first_call(lambda: 7, torch.device("cpu")) == (7, None)


def test_on_cuda_each_first_call_reserves_its_own_working_set(monkeypatch):
    # Only the first contender's first call reserved the working set; every later one reused what
    # it left in the allocator's cache and read as reserving nothing, so fgsmkit, checked first,
    # was always the one charged. A stand-in for CUDA's caching allocator: a call grows the
    # reserved memory to its working set, which stays reserved, free, until empty_cache().
    reserved = [0]

    def needs(size):
        return lambda: reserved.__setitem__(0, max(reserved[0], size))

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: reserved.__setitem__(0, 0))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: reserved[0])
    cuda = torch.device("cuda")
    timing.settle(needs(50), cuda)
    assert [timing.first_call(needs(size), cuda)[1] for size in (100, 100, 60, 100)] == [100, 100, 60, 100]


def test_a_json_write_that_fails_after_the_run_is_one_line_and_status_2(tmp_path, capsys, monkeypatch):
    # Paths that pass the check before the run can still fail at the end (/proc as root, a full
    # disk): the traceback lost the line saying so, and status 1 is for failed checks.
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_json", full_disk)
    path = tmp_path / "results.json"
    assert main(["bench", "--quick", "--no-peers", "--workloads", "maxout-128", "--json", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "fgsm: fgsmkit / hand-written" in out  # the tables were printed
    assert err.strip().splitlines()[-1] == (f"error: --json {path} could not be written ([Errno 28] No space left "
                                            "on device); the tables above hold the results")


def test_percentages_print_without_an_exponent():
    from fgsmkit.benchmarking.report import _percent

    assert [_percent(v) for v in (1.0, 0.125, 0.0017, 0.0, None)] == ["100%", "12.5%", "0.17%", "0%", "-"]


def test_the_backends_recorded_are_the_backends_timed():
    # --backends compile still timed the eager fgsmkit row (the ratios' reference), while the
    # JSON's meta.backends said ["compile"] only.
    from fgsmkit.benchmarking import cli

    cpu = torch.device("cpu")
    assert cli._backends("compile", cpu, quick=False) == ["eager", "compile"]
    assert cli._backends("compile,eager,compile", cpu, quick=False) == ["eager", "compile"]
    assert cli._backends(None, cpu, quick=True) == ["eager"]


def test_the_meta_names_the_commit_of_the_checkout_the_package_comes_from(tmp_path, monkeypatch):
    # meta.fgsmkit gave the version only: every commit between two releases read the same.
    import shutil
    import subprocess

    from fgsmkit.benchmarking import cli

    if shutil.which("git") is None:
        pytest.skip("needs git")

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com",
                               "-c", "commit.gpgsign=false", "-C", str(tmp_path), *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    package = tmp_path / "src" / "fgsmkit"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (tmp_path / ".gitignore").write_text("venv/\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    assert cli._checkout(package) == (git("rev-parse", "HEAD"), False)
    (tmp_path / "results.json").write_text("{}")  # untracked: not a change to the code
    assert cli._checkout(package) == (git("rev-parse", "HEAD"), False)
    (package / "__init__.py").write_text("changed = True\n")
    assert cli._checkout(package) == (git("rev-parse", "HEAD"), True)
    # A copy installed in the checkout's ignored folders is not the checkout's code.
    installed = tmp_path / "venv" / "site-packages" / "fgsmkit"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    assert cli._checkout(installed) == (None, None)
    outside = tmp_path.parent / f"{tmp_path.name}-installed" / "fgsmkit"
    outside.mkdir(parents=True)
    assert cli._checkout(outside) == (None, None)
    monkeypatch.setenv("PATH", "")  # no git at all
    assert cli._checkout(package) == (None, None)


def _needs_a_git_checkout() -> Path:
    import shutil

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("needs a git checkout of the repository")
    return root


def test_compare_commits_times_this_checkout_against_another_commit_in_one_process(tmp_path) -> None:
    import os
    import re
    import subprocess
    import sys

    root = _needs_a_git_checkout()
    # An installed fgsmkit ahead of the checkout on the path: the script timed it as "this".
    installed = tmp_path / "site-packages" / "fgsmkit"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("raise ImportError('the installed fgsmkit, not the checkout')\n")
    path = os.pathsep.join(filter(None, [str(installed.parent), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "compare_commits.py"), "HEAD", "--rounds", "3"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr
    ratios = re.findall(r"^(AdversarialLoss step|fgsm): this / HEAD = ([\d.]+) \(median of 3", done.stdout, re.M)
    assert [name for name, _ in ratios] == ["AdversarialLoss step", "fgsm"], done.stdout
    assert all(0.2 < float(ratio) < 5 for _, ratio in ratios)  # the same code against itself


def test_compare_commits_imports_a_revision_whose_name_is_no_identifier(tmp_path, monkeypatch) -> None:
    # origin/HEAD became the module name "fgsmkit_origin/HEAD": the renamed folder's path and the
    # import both failed.
    import importlib.util
    import sys

    root = _needs_a_git_checkout()
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts its checkout's src/ first
    spec = importlib.util.spec_from_file_location("compare_commits", root / "benchmarks" / "compare_commits.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    imported = set(sys.modules)
    try:
        # HEAD, named with a slash and braces: the youngest commit whose message matches ".".
        package = script.import_commit("HEAD^{/.}", tmp_path)
        assert package.__name__.isidentifier() and callable(package.fgsm)
        assert Path(package.__file__).is_relative_to(tmp_path)
    finally:
        for name in set(sys.modules) - imported:
            if name.startswith("fgsmkit_"):
                del sys.modules[name]
    assert script.module_name("origin/HEAD") == "fgsmkit_origin_HEAD"
    assert script.module_name("HEAD~1").isidentifier() and script.module_name("v0.1-rc").isidentifier()
