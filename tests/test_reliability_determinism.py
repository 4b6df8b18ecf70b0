"""Determinism on CPU: the same seed gives bit-identical attacks and training steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import fgsmkit as fk


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(16, 3, 4, 4, generator=g), torch.randint(0, 5, (16,), generator=g)


def seeded_pgd(model, x, y, seed: int, **options) -> torch.Tensor:
    settings = dict(eps=0.1, step_size=0.03, steps=5, restarts=3)
    settings.update(options)
    return fk.pgd(model, x, y, generator=torch.Generator().manual_seed(seed), **settings)


@pytest.mark.parametrize("options", [{}, {"norm": 2, "eps": 0.5, "step_size": 0.2}, {"targeted": True}])
def test_pgd_with_the_same_generator_seed_is_bit_identical(options):
    model, (x, y) = net(), batch()
    first = seeded_pgd(model, x, y, 7, **options)
    second = seeded_pgd(model, x, y, 7, **options)
    assert torch.equal(first, second)
    assert not torch.equal(first, seeded_pgd(model, x, y, 8, **options))  # the seed matters


def test_pgd_without_a_generator_follows_the_global_seed():
    model, (x, y) = net(), batch()
    torch.manual_seed(3)
    first = fk.pgd(model, x, y, eps=0.1, step_size=0.03, steps=3, restarts=2)
    torch.manual_seed(3)
    assert torch.equal(first, fk.pgd(model, x, y, eps=0.1, step_size=0.03, steps=3, restarts=2))


def test_pgd_with_a_generator_leaves_the_global_random_state_alone():
    model, (x, y) = net(), batch()
    state = torch.get_rng_state()
    seeded_pgd(model, x, y, 7)
    assert torch.equal(torch.get_rng_state(), state)


def test_adversarial_training_from_the_same_seed_is_bit_identical():
    def train() -> list[torch.Tensor]:
        model, (x, y) = net(), batch()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        criterion = fk.AdversarialLoss(alpha=0.5, eps=0.1)
        for _ in range(3):
            criterion(model, x, y).backward()
            optimizer.step()
            optimizer.zero_grad()
        return [p.detach().clone() for p in model.parameters()]

    for got, expected in zip(train(), train()):
        assert torch.equal(got, expected)


def test_deterministic_algorithms_mode_runs_and_changes_nothing():
    model, (x, y) = net(), batch()
    expected_attack = seeded_pgd(model, x, y, 7)
    expected_loss = fk.AdversarialLoss()(model, x, y)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.equal(seeded_pgd(model, x, y, 7), expected_attack)
        loss = fk.AdversarialLoss()(model, x, y)
        loss.backward()
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(loss, expected_loss)


CHILD = """
import sys, torch
sys.path.insert(0, {tests!r})
import test_reliability_determinism as t
model, (x, y) = t.net(), t.batch()
torch.save(t.seeded_pgd(model, x, y, 7), {out!r})
"""


def test_a_fresh_process_gives_the_same_bits(tmp_path):
    out = tmp_path / "x_adv.pt"
    package_root = str(Path(fk.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # same thread count: same CPU reduction order
    code = CHILD.format(tests=str(Path(__file__).parent), out=str(out))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    model, (x, y) = net(), batch()
    assert torch.equal(torch.load(out, weights_only=True), seeded_pgd(model, x, y, 7))
