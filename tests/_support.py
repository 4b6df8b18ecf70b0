"""Helpers the tests share: small deterministic models, a snapshot of a model's state, and a
launcher for multi-process runs."""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

import fgsmkit as fk


def small_mlp(in_features: int = 12, classes: int = 4, seed: int = 0, dtype: torch.dtype = torch.float64,
              device: str = "cpu") -> nn.Module:
    """A maxout network small enough for property tests, deterministic in ``seed``."""
    torch.manual_seed(seed)
    model = fk.models.MaxoutMLP(in_features, hidden=(8,), pieces=3, num_classes=classes)
    return model.to(device=device, dtype=dtype)


HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_state_dict_hooks", "_load_state_dict_pre_hooks")


def state_of(model: nn.Module) -> dict:
    """Everything an attack must leave untouched, cloned; and which tensor objects the model
    holds (an optimizer keeps references to its parameters)."""
    params = list(model.parameters())
    return {
        "params": [p.detach().clone() for p in params],
        "grads": [None if p.grad is None else p.grad.clone() for p in params],
        "requires_grad": [p.requires_grad for p in params],
        "training": [m.training for m in model.modules()],
        "buffers": [b.clone() for b in model.buffers()],
        "identities": [id(t) for t in (*params, *model.buffers())],
        "hooks": [[list(getattr(m, name, {})) for name in HOOK_DICTS] for m in model.modules()]
        + [[list(p._backward_hooks or {}), list(getattr(p, "_post_accumulate_grad_hooks", None) or {})]
           for p in params],
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert all(torch.equal(a, b) for a, b in zip(before["params"], after["params"]))
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
    assert before["requires_grad"] == after["requires_grad"]
    assert before["training"] == after["training"]
    assert all(torch.equal(a, b) for a, b in zip(before["buffers"], after["buffers"]))
    assert before["identities"] == after["identities"]
    assert before["hooks"] == after["hooks"]


# What a CPU rank prints when it aborts inside gloo's C++ (SIGABRT).
GLOO_ABORT = "terminate called without an active exception"


def run_ranks(launch: Callable[[], tuple[int, str]]) -> tuple[int, str]:
    """``launch()`` (a multi-process run: its exit code and output), once more if a rank aborted in gloo.

    Under load a CPU rank has now and then aborted inside gloo (``GLOO_ABORT``) where the same
    code passed 100 runs in a row here, also with both ranks pinned to one core. An abort is a
    crash, not a wrong number: one relaunch, with a warning, keeps every check, and an abort our
    own code caused would recur and still fail.
    """
    returncode, output = launch()
    if returncode != 0 and GLOO_ABORT in output:
        warnings.warn(f"a rank aborted inside gloo; relaunched once. Its output:\n{output[-5000:]}",
                      RuntimeWarning, stacklevel=2)
        returncode, output = launch()
    return returncode, output
