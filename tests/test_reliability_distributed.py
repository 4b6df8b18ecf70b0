"""DistributedDataParallel: two CPU ranks (gloo) against one process on the combined batch.

The scenarios run in a child process group with a hard timeout, so a hang fails the test
instead of stalling the suite.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import fgsmkit as fk

import reliability_ddp_worker as worker
from _support import run_ranks

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="this torch build has no gloo backend")

WORKER = Path(worker.__file__)
TIMEOUT_S = 240  # the ranks' own collectives time out after 90 s; a busy machine starts slowly


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out_dir: Path) -> tuple[int, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # The ranks import the same fgsmkit as this test.
    package_root = str(Path(fk.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")])
    process = subprocess.Popen(
        [sys.executable, str(WORKER), str(free_port()), str(out_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the ranks did not finish in {TIMEOUT_S} s (a hang)\n{output.decode()[-3000:]}")
    return process.returncode, output.decode()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict[str, list[dict]]:
    """Every scenario's results, per rank."""
    out_dir = tmp_path_factory.mktemp("ddp")
    returncode, output = run_ranks(lambda: launch(out_dir))
    if returncode != 0 and "address already in use" in output.lower():
        returncode, output = run_ranks(lambda: launch(out_dir))  # another process took the free port first
    assert returncode == 0, f"the ranks failed:\n{output[-5000:]}"
    return {
        scenario: [torch.load(out_dir / f"{scenario}.rank{rank}.pt", weights_only=True) for rank in range(worker.WORLD)]
        for scenario in worker.SCENARIOS
    }


@pytest.fixture(scope="module")
def single_process_params() -> list[torch.Tensor]:
    model = worker.adversarial_training(worker.make_model(), worker.make_batches())
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("scenario", ["train", "train_unused", "train_static"])
def test_ddp_adversarial_training_equals_one_process_on_the_combined_batch(scenario, ranks,
                                                                          single_process_params):
    """Three steps, each with fgsm, pgd and AdversarialLoss: no reduction error, same weights."""
    initial = list(worker.make_model().parameters())
    for result in ranks[scenario]:
        for got, expected, start in zip(result["params"], single_process_params, initial):
            assert not torch.equal(expected, start.detach())  # training really moved the weights
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_ddp_adversarial_training_under_autocast(ranks):
    """bfloat16 autocast takes AdversarialLoss's low-precision path: a third pass, one backward."""
    rank0, rank1 = ranks["train_bfloat16_autocast"]
    for a, b in zip(rank0["params"], rank1["params"]):
        assert torch.equal(a, b)  # the ranks stay in step
    model = worker.adversarial_training(worker.make_model(), worker.make_batches(), autocast=torch.bfloat16)
    initial = list(worker.make_model().parameters())
    for got, expected, start in zip(rank0["params"], model.parameters(), initial):
        # bfloat16 products summed over 4 rows instead of 8 round differently: a loose tolerance,
        # still far below the size of one training step.
        assert float((expected - start).detach().abs().max()) > 0.01  # ten times the tolerance below
        torch.testing.assert_close(got, expected.detach(), rtol=0, atol=1e-3)


def test_an_attack_on_one_rank_issues_no_collective(ranks):
    """DDP's forward broadcasts BatchNorm buffers; an attack on rank 0 alone must not go through it."""
    rank0, rank1 = ranks["attack_on_rank_zero_only"]
    assert rank0["sum"].item() == rank1["sum"].item() == 3.0
    torch.testing.assert_close(rank0["x_adv"], rank0["expected"], rtol=0, atol=0)


def test_a_parameter_only_the_clean_pass_uses_is_named_under_find_unused_parameters(ranks):
    # DDP sees only the adversarial forward and marks that parameter unused; the clean gradient
    # arriving for it failed in backward with "Expected to mark a variable ready only once".
    for result in ranks["clean_only_parameter"]:
        assert "clean_branch.weight" in result["error"] and "find_unused_parameters=True" in result["error"]


def test_local_model_unwraps_ddp_only():
    from fgsmkit._model import local_model

    class FakeDDP(torch.nn.parallel.DistributedDataParallel):
        def __init__(self, module):  # no process group needed to test the unwrapping
            torch.nn.Module.__init__(self)
            self.module = module

    net = worker.make_model()
    assert local_model(net) is net
    assert local_model(FakeDDP(net)) is net
    compiled = torch.compile(FakeDDP(net), backend="eager")
    assert local_model(compiled) is net
    plain_compiled = torch.compile(net, backend="eager")
    assert local_model(plain_compiled) is plain_compiled


def test_run_ranks_relaunches_once_and_only_after_a_gloo_abort():
    from _support import GLOO_ABORT

    launches = iter([(1, f"[rank1] {GLOO_ABORT}"), (0, "done")])
    with pytest.warns(RuntimeWarning, match="aborted inside gloo"):
        assert run_ranks(lambda: next(launches)) == (0, "done")
    launches = iter([(1, GLOO_ABORT), (1, GLOO_ABORT), (0, "a third launch")])
    with pytest.warns(RuntimeWarning):
        assert run_ranks(lambda: next(launches)) == (1, GLOO_ABORT)  # an abort that recurs fails
    launches = iter([(1, "AssertionError: the weights differ"), (0, "a second launch")])
    assert run_ranks(lambda: next(launches)) == (1, "AssertionError: the weights differ")
