"""Helpers the tests share: small deterministic models and a snapshot of a model's state."""

from __future__ import annotations

import torch
from torch import nn

import fgsmkit as fk


def small_mlp(in_features: int = 12, classes: int = 4, seed: int = 0, dtype: torch.dtype = torch.float64,
              device: str = "cpu") -> nn.Module:
    """A maxout network small enough for property tests, deterministic in ``seed``."""
    torch.manual_seed(seed)
    model = fk.models.MaxoutMLP(in_features, hidden=(8,), pieces=3, num_classes=classes)
    return model.to(device=device, dtype=dtype)


def state_of(model: nn.Module) -> dict:
    """Everything an attack must leave untouched, cloned."""
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "buffers": [b.clone() for b in model.buffers()],
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert all(torch.equal(a, b) for a, b in zip(before["params"], after["params"]))
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
    assert before["requires_grad"] == after["requires_grad"]
    assert before["training"] == after["training"]
    assert all(torch.equal(a, b) for a, b in zip(before["buffers"], after["buffers"]))
