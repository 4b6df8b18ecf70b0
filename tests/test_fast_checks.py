"""The argument checks' fast paths decide exactly what the plain elementwise checks decide."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import fgsmkit as fk
from fgsmkit import _validation
from fgsmkit.constraints import Box, LinfBall
from fgsmkit._output_checks import check_first_gradient

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", [0, 517, -1])
def test_any_non_finite_input_is_refused(dtype, bad, where):
    x = torch.rand(4, 3, 7, 7).to(dtype)
    x.view(-1)[where] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        _validation.check_inputs(x)


@pytest.mark.parametrize("dtype", FLOATS)
def test_scalar_clip_catches_one_coordinate_outside(dtype):
    x = torch.rand(5, 40).to(dtype) * 0.5 + 0.25
    assert _validation.check_inputs(x, (0.0, 1.0)) is not None
    for value in (-0.01, 1.01):  # representable as outside in every dtype
        y = x.clone()
        y[3, 17] = value
        with pytest.raises(ValueError, match="must lie inside clip"):
            _validation.check_inputs(y, (0.0, 1.0))
    # On the bounds is inside.
    y = x.clone()
    y[0, 0], y[1, 1] = 0.0, 1.0
    _validation.check_inputs(y, (0.0, 1.0))


def test_tensor_clip_is_still_checked_per_coordinate():
    x = torch.full((2, 3), 0.5)
    low, high = torch.tensor([0.0, 0.6, 0.0]), torch.ones(3)
    with pytest.raises(ValueError, match="must lie inside clip"):
        _validation.check_inputs(x, (low, high))  # 0.5 < 0.6 in column 1 only


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("value", [0.1, 0.25, 1 / 3, 8 / 255, 3])
def test_number_budgets_round_once_to_the_input_dtype(dtype, value):
    x = torch.rand(2, 3).to(dtype)
    expected = torch.tensor(float(value), dtype=torch.float64).to(dtype)  # the general path
    got = _validation.check_eps(value, x, math.inf)
    assert got.dtype == dtype and got.shape == () and torch.equal(got, expected)
    assert torch.equal(_validation.check_step_size(value, x, 2.0), expected)


@pytest.mark.parametrize(("name", "check", "value", "message"), [
    ("eps", _validation.check_eps, -0.1, "eps must be >= 0"),
    ("eps", _validation.check_eps, math.nan, "eps must be finite"),
    ("eps", _validation.check_eps, math.inf, "eps must be finite"),
    ("step_size", _validation.check_step_size, 0, "step_size must be > 0"),
])
def test_bad_number_budgets_name_the_argument(name, check, value, message):
    with pytest.raises(ValueError, match=message):
        check(value, torch.rand(2, 3), math.inf)


@pytest.mark.parametrize("per_sample", [False, True])
def test_budgets_too_large_for_the_dtype_or_the_l2_norm_are_refused(per_sample):
    # float16 holds at most 65504: eps=1e5 would round to inf and give 0 * inf = NaN where the
    # gradient is zero. An L2 step of 1e20 has a squared norm beyond float32, which made the
    # projection shrink every step to nothing (x came back unmoved).
    def budget(value, x):
        return torch.full((x.shape[0],), value, dtype=torch.float64) if per_sample else value

    half = torch.rand(2, 3).half()
    with pytest.raises(ValueError, match=r"eps must be at most 6.55e\+04 for torch.float16 inputs .*rounds to inf"):
        _validation.check_eps(budget(1e5, half), half, math.inf)
    assert float(_validation.check_eps(budget(6e4, half), half, math.inf).max()) == 60000.0
    single = torch.rand(2, 3)
    with pytest.raises(ValueError, match="step_size must be at most 9.223e\\+18 .*squared L2 norm"):
        _validation.check_step_size(budget(1e20, single), single, 2.0)
    assert _validation.check_step_size(budget(1e20, single), single, math.inf).max() == 1e20
    x = torch.rand(4, 3)
    for norm in (math.inf, 2.0):
        with pytest.raises(ValueError, match="eps must be at most"):
            fk.fgsm(lambda t: t, x.half(), eps=1e5, norm=norm, clip=None)
    x_adv = fk.fgsm(lambda t: t @ torch.eye(3), x, eps=1e18, norm=2, clip=None)
    assert torch.allclose(torch.linalg.vector_norm(x_adv - x, dim=1), torch.full((4,), 1e18), rtol=1e-6)


@pytest.mark.parametrize("check", [_validation.check_eps, _validation.check_step_size])
def test_budget_tensors_are_compared_with_the_largest_budget_exactly(check):
    # In the tensor's own dtype the limit rounds too: float16's 65504 is 65536 in bfloat16, so a
    # bfloat16 budget of 65536 passed for float16 x, became inf and made the result NaN.
    half = torch.rand(4, 3).half()
    with pytest.raises(ValueError, match=r"must be at most 6.55e\+04 for torch.float16 inputs"):
        check(torch.full((4,), 65536.0, dtype=torch.bfloat16), half, math.inf)
    with pytest.raises(ValueError, match=r"must be at most 9.223e\+18 .*squared L2 norm"):
        check(torch.tensor(2.0**63, dtype=torch.bfloat16), torch.rand(4, 3), 2.0)  # just above
    assert float(check(torch.full((4,), 65280.0, dtype=torch.bfloat16), half, math.inf).max()) == 65280.0


def test_nan_clip_bound_is_refused():
    with pytest.raises(ValueError, match=r"clip\[1\] must not be NaN"):
        _validation.check_inputs(torch.rand(2, 3), (0.0, math.nan))


def test_linf_projection_is_min_of_max():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 30, generator=g)
    eps = torch.rand(8, 1, generator=g) * 0.3
    ball = LinfBall(x, eps, Box(torch.tensor(0.1), torch.tensor(0.9)))
    point = torch.randn(8, 30, generator=g)
    lower, upper = ball.bounds
    assert torch.equal(ball.project(point), torch.minimum(torch.maximum(point, lower), upper))


def test_scaled_backward_scales_the_reused_clean_gradients():
    # The unscaled fast path must not leak into a scaled backward (e.g. a GradScaler's).
    torch.manual_seed(0)
    model = fk.models.SoftmaxRegression(6, 3)
    x, y = torch.rand(5, 6), torch.randint(0, 3, (5,))
    criterion = fk.AdversarialLoss(alpha=0.5, eps=0.1)
    criterion(model, x, y).backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (criterion(model, x, y) * 8.0).backward()
    assert all(torch.equal(p.grad, 8.0 * g) for p, g in zip(model.parameters(), plain))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("box", [None, (0.0, 1.0), (0.1, 0.8)])
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("number_bounds", [False, True])
def test_fast_gradient_step_is_the_projected_step_bit_for_bit(dtype, box, per_sample, number_bounds):
    # FGSM skips the ball's projection (x +- eps rounds to the bounds themselves); it must give
    # exactly what projecting onto ball and box gives, for every dtype, zeros and NaN included.
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(6, 50, generator=g) * 0.7 + 0.1).to(dtype)
    eps = (torch.rand(6, 1, generator=g) * 0.4).to(dtype) if per_sample else torch.tensor(1 / 3).to(dtype)
    direction = torch.randn(6, 50, generator=g).to(dtype)
    direction[0, :5] = 0.0
    direction[1, :5] = math.nan
    bounds = None if box is None else Box(torch.tensor(box[0]).to(dtype), torch.tensor(box[1]).to(dtype))
    if number_bounds:  # as check_inputs builds it from clip=(low, high): clamp's scalar kernel
        bounds = _validation.check_inputs(x, box)
        assert bounds is None or bounds.numbers == (float(bounds.low), float(bounds.high))
    ball = LinfBall(x, eps, bounds)
    projected = ball.project(ball.step(direction, eps).add_(x))
    fast = ball.fast_gradient_step(direction)
    assert fast.dtype == dtype and torch.equal(fast, projected)
    assert torch.equal(fast[1, :5], x[1, :5])  # NaN entries take no step


def test_a_clip_bound_that_would_grow_x_is_refused():
    x = torch.rand(4, 3)
    with pytest.raises(ValueError, match=r"clip\[0\] of shape \(2, 4, 3\) does not broadcast"):
        _validation.check_inputs(x, (torch.zeros(2, 4, 3), 1.0))


@pytest.mark.parametrize("dtype", FLOATS)
def test_first_gradient_check_warns_exactly_for_nan_and_all_zero_samples(dtype):
    # The check reads per-sample sums first; rows whose sum is zero or NaN without being in
    # trouble (exact cancellation, inf - inf, a float16 sum that rounds to zero) must not warn.
    grad = torch.rand(7, 3, 5).to(dtype) + 0.5
    grad[1] = 0.0
    grad[1, 0, 0], grad[1, 0, 1] = 1.0, -1.0  # cancels exactly
    grad[2, 0, 0], grad[2, 0, 1] = math.inf, -math.inf  # sums to NaN
    grad[3] = 0.0
    grad[3, 2, 4] = torch.finfo(dtype).tiny  # the smallest normal number, alone
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_first_gradient(grad, torch.zeros(7, 2))
    grad[4] = 0.0  # all zero
    grad[5, 1, 2] = math.nan
    grad[6, 0, 0], grad[6, 2, 2] = math.nan, 0.0
    with pytest.warns(RuntimeWarning) as record:
        check_first_gradient(grad, torch.zeros(7, 2))
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2
    assert messages[0].startswith("the input gradient has NaN entries for 2 of 7 samples")
    assert messages[1].startswith("the input gradient is zero for 1 of 7 samples")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_first_gradient_check_refuses_non_finite_logits(bad):
    logits = torch.zeros(3, 4)
    logits[2, 1] = bad
    with pytest.raises(ValueError, match="NaN or inf logits"):
        check_first_gradient(torch.ones(3, 5), logits)


@pytest.mark.parametrize("clip", [(torch.tensor(0.2), torch.tensor(0.8)), (0.2, torch.tensor(0.8)),
                                  (torch.full((1, 6), 0.2), 0.8)])
def test_tensor_clip_bounds_are_checked_like_number_bounds(clip):
    x = torch.rand(4, 6) * 0.6 + 0.2
    box = _validation.check_inputs(x, clip)
    assert box is not None and box.numbers is None
    for value in (0.19, 0.81):
        y = x.clone()
        y[2, 3] = value
        with pytest.raises(ValueError, match="must lie inside clip"):
            _validation.check_inputs(y, clip)


@pytest.mark.parametrize("labels", [torch.zeros(6), torch.zeros(6, 1, dtype=torch.long)])
@pytest.mark.parametrize("call", ["fgsm", "adversarial_loss"])
def test_bad_labels_are_refused_before_the_model_runs(labels, call):
    calls = []

    class Counted(torch.nn.Linear):
        def forward(self, x):
            calls.append(1)
            return super().forward(x)

    model, x = Counted(5, 3), torch.rand(6, 5)
    with pytest.raises((TypeError, ValueError), match="class indices"):
        if call == "fgsm":
            fk.fgsm(model, x, labels, eps=0.1)
        else:
            fk.AdversarialLoss(eps=0.1)(model, x, labels)
    assert calls == []


@pytest.mark.parametrize("eval_mode", [False, True])
def test_label_range_read_early_is_checked_against_the_model_classes(eval_mode):
    model, x = torch.nn.Linear(5, 3), torch.rand(6, 5)
    for bad in (3, -1):
        y = torch.tensor([0, 1, 2, 0, 1, bad])
        with pytest.raises(ValueError, match=rf"labels in \[{min(bad, 0)}, {max(bad, 2)}\] but model has 3"):
            fk.fgsm(model, x, y, eps=0.1, eval_mode=eval_mode)
        with pytest.raises(ValueError, match="but model has 3 classes"):
            fk.AdversarialLoss(eps=0.1)(model, x, y)
    fk.fgsm(model, x, torch.tensor([0, 1, 2, 0, 1, 2]), eps=0.1, eval_mode=eval_mode)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("step_size", [None, 0.5, 30000.0])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-65504.0, 60000.0), (-1e5, 1e5)])
def test_the_overflow_check_skips_reading_x_only_where_the_box_settles_it(dtype, step_size, bounds, monkeypatch):
    # A finite number box bounds |x|: the L2 check needs no pass over x when the larger bound plus
    # the reach is far from the largest number, and decides as the per-sample check does otherwise.
    low, high = (torch.tensor(bound).to(dtype).item() for bound in bounds)  # inf where dtype cannot hold it
    span = (max(low, -6e4), min(high, 6e4))
    x = (torch.rand(4, 6) * (span[1] - span[0]) + span[0]).to(dtype).clamp(low, high)
    box = _validation.check_inputs(x, bounds)
    eps = _validation.check_eps(1.0, x, 2.0)
    step = None if step_size is None else _validation.check_step_size(step_size, x, 2.0)
    read: list[bool] = []
    exact = _validation.check_reach

    def spy(*args, **kwargs):
        read.append(True)
        return exact(*args, **kwargs)

    monkeypatch.setattr(_validation, "check_reach", spy)

    def decision(check_box) -> bool:
        try:
            _validation.check_overflow(x, check_box, 2.0, eps, "eps=1.0", step)
            return True
        except ValueError:
            return False

    fast = decision(box)
    if not box.finite:
        return  # infinite in this dtype (1e5 in float16): always read
    roundings = 0 if step_size is None else 2
    settled = max(map(abs, box.numbers)) + 1.0 + (step_size or 0.0) <= _validation._largest_reach(dtype, roundings)
    assert read == ([] if settled else [True])
    read.clear()
    assert fast == decision(None)  # the same answer as the per-sample check without a box


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_an_empty_batch_with_per_sample_budgets_passes_the_overflow_check(norm):
    # The box's shortcut took the largest of no budgets (found by the fuzz tests).
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2))
    x, y = torch.rand(0, 3), torch.zeros(0, dtype=torch.long)
    assert fk.fgsm(model, x, y, eps=torch.empty(0), norm=norm).shape == (0, 3)
    assert fk.pgd(model, x, y, eps=torch.empty(0), step_size=0.1, steps=2, norm=norm).shape == (0, 3)


def test_the_l2_projection_shrinks_onto_the_ball_then_clips_to_the_box() -> None:
    # The order every peer uses (Madry et al.); clipping first gives another feasible point.
    from fgsmkit.constraints import Box, L2Ball
    x = torch.tensor([[0.9, 0.5]], dtype=torch.float64)
    box = Box(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64), (0.0, 1.0))
    ball = L2Ball(x, torch.tensor(0.5, dtype=torch.float64), box)
    point = torch.tensor([[2.1, 2.1]], dtype=torch.float64)  # outside the ball and the box
    delta = point - x
    shrunk = x + delta * (0.5 / delta.norm())
    assert torch.equal(ball.project(point), shrunk.clamp(0.0, 1.0))
    assert not torch.equal(ball.project(point), x + (point.clamp(0, 1) - x) * (0.5 / (point.clamp(0, 1) - x).norm()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_a_point_inside_the_l2_ball_keeps_its_exact_value(dtype) -> None:
    from fgsmkit.constraints import L2Ball
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(16, 30, generator=g) * 0.01).to(dtype)
    point = (0.3 + torch.rand(16, 30, generator=g) * 0.1).to(dtype)  # |point - x| < 2.2: inside eps = 3
    ball = L2Ball(x, torch.tensor(3.0), None)
    assert not torch.equal(x + (point - x), point)  # rebuilt as x + delta, some values would move
    assert torch.equal(ball.project(point), point)
