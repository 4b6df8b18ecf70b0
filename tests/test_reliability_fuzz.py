"""Fuzzing the public functions over shapes, dtypes, budgets and options.

Every call either returns a result that satisfies the attack invariants, or raises a ValueError
or TypeError (the documented exception types for bad arguments). Any other exception fails.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

import fgsmkit as fk

# Budgets up to 2 on boxes of width 1 or less are drawn on purpose: the attack must still hold.
pytestmark = pytest.mark.filterwarnings("ignore:eps=.* is wider than clip:UserWarning")

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Net(nn.Module):
    """A small nonlinear classifier for any input shape."""

    def __init__(self, features: int, classes: int, dtype: torch.dtype, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(features, 6), nn.Tanh(), nn.Linear(6, classes))
        self.to(dtype)

    def forward(self, x):
        return self.body(x)


@st.composite
def problems(draw):
    batch = draw(st.integers(0, 5))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    dtype = draw(st.sampled_from(DTYPES))
    classes = draw(st.integers(1, 4))  # 1: a single logit (binary logistic regression)
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, *shape), generator=g).to(dtype)
    y = torch.randint(0, max(classes, 2), (batch,), generator=g)
    model = Net(math.prod(shape), classes, dtype, seed)
    return model, x, y


budgets = st.one_of(
    st.floats(min_value=0.0, max_value=2.0, allow_nan=False),
    st.sampled_from([float("nan"), float("inf"), -0.1, 0]),
)


def per_sample_or_scalar(draw, value: float, batch: int):
    if draw(st.booleans()) and math.isfinite(value):
        scale = torch.rand(batch, generator=torch.Generator().manual_seed(batch))
        return torch.full((batch,), value) * scale
    return value


def check_attack(x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, eps, norm: float, clip,
                 x_before: torch.Tensor, y_before: torch.Tensor) -> None:
    assert torch.equal(x, x_before) and torch.equal(y, y_before)  # inputs untouched
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert bool(torch.isfinite(x_adv).all())
    if x.shape[0] == 0:
        return
    delta = (x_adv.double() - x.double()).flatten(1)
    size = delta.norm(dim=1) if norm == 2 else delta.abs().amax(dim=1)
    radius = eps.double() if isinstance(eps, torch.Tensor) else torch.full((x.shape[0],), float(eps), dtype=torch.float64)
    # x + delta is rounded once in x's dtype, and so is eps: allow a few units in the last place.
    magnitude = x.double().abs().flatten(1).amax(dim=1) + radius
    slack = 2 * torch.finfo(x.dtype).eps * magnitude * (math.sqrt(delta.shape[1]) if norm == 2 else 1.0)
    assert bool((size <= radius + slack).all())
    if clip is not None:
        assert bool(((x_adv >= clip[0]) & (x_adv <= clip[1])).all())
    if isinstance(eps, (int, float)) and eps == 0:
        assert torch.equal(x_adv, x)


@FUZZ
@given(problem=problems(), data=st.data(), eps=budgets, norm=st.sampled_from([math.inf, 2]),
       targeted=st.booleans(), with_labels=st.booleans(), clip=st.sampled_from([(0.0, 1.0), None, (0.25, 0.75)]))
def test_fgsm_fuzz(problem, data, eps, norm, targeted, with_labels, clip):
    model, x, y = problem
    eps = per_sample_or_scalar(data.draw, eps, x.shape[0])
    x_before, y_before = x.clone(), y.clone()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # zero gradients are reported, not errors
            x_adv = fk.fgsm(model, x, y if with_labels else None, eps=eps, norm=norm, targeted=targeted, clip=clip)
    except (ValueError, TypeError) as error:
        if not (targeted and not with_labels and "targeted=True needs y" in str(error)):
            assert_expected_refusal(error, x, eps, clip)
        event("refused")
        return
    assert with_labels or not targeted, "a targeted attack without targets must be refused"
    event("attacked")
    check_attack(x, y, x_adv, eps, norm, clip, x_before, y_before)


@FUZZ
@given(problem=problems(), data=st.data(), eps=budgets, norm=st.sampled_from([math.inf, 2]),
       step_size=st.sampled_from([0.0, 0.01, 0.1, 1.0]), steps=st.integers(0, 3), restarts=st.integers(1, 2),
       random_start=st.booleans(), clip=st.sampled_from([(0.0, 1.0), None]))
def test_pgd_fuzz(problem, data, eps, norm, step_size, steps, restarts, random_start, clip):
    model, x, y = problem
    eps = per_sample_or_scalar(data.draw, eps, x.shape[0])
    x_before, y_before = x.clone(), y.clone()
    # A step of 0 is allowed where the ball is x alone (every sample's eps is 0 in x's dtype:
    # 1e-82 is 0 in float32, not in float64).
    no_room = not bool(torch.as_tensor(eps, dtype=torch.float64).to(x.dtype).ne(0).any())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            x_adv = fk.pgd(model, x, y, eps=eps, step_size=step_size, steps=steps, norm=norm,
                           restarts=restarts, random_start=random_start, clip=clip,
                           generator=torch.Generator().manual_seed(0))
    except (ValueError, TypeError) as error:
        # A bad walk must be refused for what is wrong with it, by name; any other refusal must
        # be one that eps or x calls for.
        named = [name for name, bad in (("step_size", step_size <= 0 and not no_room), ("steps", steps < 1),
                                        ("needs random_start", restarts > 1 and not random_start)) if bad]
        if not any(name in str(error) for name in named):
            assert_expected_refusal(error, x, eps, clip)
        event("refused")
        return
    event("attacked")
    assert (step_size > 0 or no_room) and steps >= 1
    check_attack(x, y, x_adv, eps, norm, clip, x_before, y_before)


@FUZZ
@given(problem=problems(), alpha=st.sampled_from([0.0, 0.5, 1.0]), eps=budgets,
       norm=st.sampled_from([math.inf, 2]))
def test_adversarial_loss_fuzz(problem, alpha, eps, norm):
    model, x, y = problem
    x_before = x.clone()
    try:
        criterion = fk.AdversarialLoss(alpha=alpha, eps=eps, norm=norm)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            loss = criterion(model, x, y)
    except (ValueError, TypeError) as error:
        assert x.shape[0] == 0 or not (math.isfinite(eps) and eps >= 0), error
        event("refused")
        return
    event("trained")
    assert torch.equal(x, x_before)
    assert loss.ndim == 0 and bool(torch.isfinite(loss))
    loss.backward()
    for p in model.parameters():
        assert p.grad is not None and p.grad.dtype == p.dtype and bool(torch.isfinite(p.grad).all())


def assert_expected_refusal(error: Exception, x: torch.Tensor, eps, clip) -> None:
    """The refusal must be one the arguments call for, not an accident."""
    eps_values = eps if isinstance(eps, torch.Tensor) else torch.tensor(float(eps))
    bad_eps = not bool(torch.isfinite(eps_values).all()) or bool((eps_values < 0).any())
    outside = clip is not None and x.numel() > 0 and bool(((x < clip[0]) | (x > clip[1])).any())
    assert bad_eps or outside, f"unexpected refusal: {error!r}"


@FUZZ
@given(batch=st.integers(0, 5), features=st.integers(1, 6), dtype=st.sampled_from([torch.float32, torch.float64]),
       eps=budgets, seed=st.integers(0, 2**16))
def test_adversarial_logistic_loss_fuzz(batch, features, dtype, eps, seed):
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(features, generator=g).to(dtype), float(torch.randn(1, generator=g))
    x = torch.rand(batch, features, generator=g).to(dtype)
    y = (torch.randint(0, 2, (batch,), generator=g) * 2 - 1).to(dtype)
    try:
        loss = fk.adversarial_logistic_loss(w, b, x, y, eps)
    except (ValueError, TypeError):
        event("refused")
        assert not (math.isfinite(eps) and eps >= 0)
        return
    event("computed")
    assert loss.shape == (batch,) and bool(torch.isfinite(loss).all())
    # the loss at the FGSM example of logistic regression, x - eps * y * sign(w)
    x_adv = x - eps * y[:, None] * w.sign()
    expected = torch.nn.functional.softplus(-y * (x_adv @ w + b))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    clean = torch.nn.functional.softplus(-y * (x @ w + b))
    assert bool((loss >= clean - 1e-6).all())
