"""Run every script of ``examples/`` with its quick flag and check that it shows what it claims.

The scripts train small models on the embedded MNIST sample. They are started together, two at a
time, when the first test needs them, and each test then reads its script's output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

import fgsmkit

from _support import run_ranks

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT_S = 300


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    # The scripts import the same fgsmkit as these tests, installed or not.
    package_root = str(Path(fgsmkit.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    env["MPLBACKEND"] = "Agg"
    return env


def _run(args: list[str], cwd: Path) -> str:
    """The script's standard output, once it has succeeded."""
    runs: list[subprocess.CompletedProcess] = []

    def launch() -> tuple[int, str]:
        runs.append(subprocess.run(
            [sys.executable, *args], cwd=cwd, env=_environment(), capture_output=True, text=True, timeout=TIMEOUT_S
        ))
        return runs[-1].returncode, runs[-1].stdout + runs[-1].stderr

    # The distributed example's ranks share gloo's rare abort with the DDP tests.
    returncode, output = run_ranks(launch)
    assert returncode == 0, f"{' '.join(args)} failed with code {returncode}:\n{output}"
    return runs[-1].stdout


def _chain(commands: list[list[str]], cwd: Path) -> list[str]:
    """Run commands one after the other (a later one may read what an earlier one wrote)."""
    return [_run(args, cwd) for args in commands]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future[list[str]]]:
    work = tmp_path_factory.mktemp("examples")
    script = lambda name: str(EXAMPLES / name)  # noqa: E731
    jobs = {
        "attack": [[script("attack_trained_model.py"), "--small", "--out", str(work / "attack.png")]],
        "training": [
            [script("adversarial_training_loop.py"), "--small", "--epochs", "1", "--checkpoint", str(work / "a.pt")],
            [script("adversarial_training_loop.py"), "--small", "--epochs", "2", "--checkpoint", str(work / "a.pt")],
            [script("adversarial_training_loop.py"), "--small", "--epochs", "2", "--checkpoint", str(work / "b.pt")],
        ],
        "curve": [[script("robustness_curve.py"), "--small", "--out", str(work / "curve.png")]],
        "targeted": [[script("targeted_attack.py"), "--small"]],
        "distributed": [[
            "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            script("distributed_training.py"), "--small", "--checkpoint", str(work / "ddp.pt"),
        ]],
    }
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {name: pool.submit(_chain, commands, work) for name, commands in jobs.items()}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def _percent(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"no match for {pattern!r} in:\n{text}"
    return float(match.group(1)) / 100


def test_attack_trained_model_fools_the_model(outputs) -> None:
    (out,) = outputs["attack"].result(timeout=TIMEOUT_S)
    clean = _percent(r"clean error: ([\d.]+)%", out)
    adversarial = _percent(r"adversarial error \(FGSM, eps=0.25\): ([\d.]+)%", out)
    assert adversarial > clean + 0.3
    largest_change = float(re.search(r"largest pixel change: ([\d.]+)", out).group(1))
    assert 0 < largest_change <= 0.25 + 1e-3
    # The picture when matplotlib is there, the digits as text otherwise.
    assert re.search(r"^saved .*attack\.png$", out, re.M) or "install matplotlib" in out


def test_adversarial_training_loop_resumes_where_it_stopped(outputs) -> None:
    first, resumed, uninterrupted = outputs["training"].result(timeout=TIMEOUT_S)
    assert "epoch 1/1:" in first and "saved checkpoint" in first
    assert "resumed from" in resumed and "after epoch 1" in resumed
    assert "epoch 1/2" not in resumed, "the resumed run trained the first epoch again"
    last = lambda text: re.search(r"^epoch 2/2: .*$", text, re.M).group(0)  # noqa: E731
    # Stopping after epoch 1 and resuming gives exactly the run that never stopped.
    assert last(resumed) == last(uninterrupted)
    assert _percent(r"train accuracy clean ([\d.]+)%", last(uninterrupted)) > 0.2
    # The evaluation reports the stronger, iterative attack beside FGSM.
    fgsm = _percent(r"FGSM ([\d.]+)%, iterative", last(uninterrupted))
    iterative = _percent(r"iterative FGSM ([\d.]+)%$", last(uninterrupted))
    assert iterative >= fgsm


def test_adversarial_training_loop_refuses_a_checkpoint_of_other_settings(tmp_path: Path) -> None:
    script = str(EXAMPLES / "adversarial_training_loop.py")
    _run([script, "--small", "--epochs", "1"], tmp_path)
    # The quick check has a checkpoint of its own: it never resumes (or spoils) the full run's.
    checkpoint = tmp_path / "adversarial_training-small.pt"
    assert checkpoint.exists() and not (tmp_path / "adversarial_training.pt").exists()
    saved = checkpoint.read_bytes()
    refused = subprocess.run(
        [sys.executable, script, "--small", "--epochs", "2", "--eps", "0.1", "--alpha", "0.9"],
        cwd=tmp_path, env=_environment(), capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert refused.returncode != 0, f"resumed a run of other settings:\n{refused.stdout}{refused.stderr}"
    assert "epoch 2/2" not in refused.stdout
    message = refused.stderr
    assert "adversarial_training-small.pt" in message
    assert "eps" in message and "alpha" in message and "seed" not in message, message
    assert "--checkpoint" in message and "delete" in message, message
    assert checkpoint.read_bytes() == saved, "the refused run changed the checkpoint"


def test_robustness_curve_adversarial_training_lowers_fgsm_error(outputs) -> None:
    (out,) = outputs["curve"].result(timeout=TIMEOUT_S)
    rows = re.findall(r"^\s*([\d.]+)" + r"\s+([\d.]+)%" * 4 + "$", out, re.M)
    assert [float(eps) for eps, *_ in rows] == [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    columns = [[float(row[i]) / 100 for row in rows] for i in range(1, 5)]
    plain, plain_iterative, adversarial, adversarial_iterative = columns
    assert plain[-1] > plain[0] + 0.5, "FGSM should fool the plainly trained network"
    at = 5  # eps = 0.25, the budget it was trained with
    assert adversarial[at] < plain[at] - 0.1
    # At eps = 0 no attack moves the input: both columns are the clean error.
    assert plain_iterative[0] == plain[0] and adversarial_iterative[0] == adversarial[0]
    # The iterative attack is the stronger one at the largest budget, for both models...
    assert plain_iterative[-1] >= plain[-1] and adversarial_iterative[-1] >= adversarial[-1]
    # ... and FGSM alone overstates how robust the FGSM-trained model is.
    assert adversarial_iterative[at] > adversarial[at] + 0.1
    assert "FGSM alone overstates" in out


def test_targeted_attack_reaches_the_targets(outputs) -> None:
    (out,) = outputs["targeted"].result(timeout=TIMEOUT_S)
    before = _percent(r"read as the target before any attack: ([\d.]+)%", out)
    one_step = _percent(r"targeted FGSM: read as the target ([\d.]+)%", out)
    iterative = _percent(r"targeted iterative FGSM \(\d+ steps\): read as the target ([\d.]+)%", out)
    assert before < 0.1 < one_step <= iterative
    assert iterative > 0.5


def test_distributed_training_keeps_replicas_identical(outputs) -> None:
    (out,) = outputs["distributed"].result(timeout=TIMEOUT_S)
    assert "2 process(es), backend gloo" in out or "2 process(es), backend nccl" in out
    assert "replicas identical after training: True" in out
    assert re.search(r"^epoch 2/2: .*FGSM [\d.]+%$", out, re.M)
