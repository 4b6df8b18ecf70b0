"""Hostile and broken input: each case ends in a correct result, a warning, or a clear error.

The catalogue in docs/reliability.md lists these cases and what the library does with each.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import fgsmkit as fk

ATTACKS = {
    "fgsm": lambda model, x, y, **kw: fk.fgsm(model, x, y, eps=0.1, **kw),
    "iterative_fgsm": lambda model, x, y, **kw: fk.iterative_fgsm(model, x, y, eps=0.1, step_size=0.04,
                                                                 steps=3, **kw),
    "pgd": lambda model, x, y, **kw: fk.pgd(model, x, y, eps=0.1, step_size=0.04, steps=3, restarts=2,
                                           generator=torch.Generator().manual_seed(0), **kw),
    "pgd_l2": lambda model, x, y, **kw: fk.pgd(model, x, y, eps=0.5, step_size=0.2, steps=3, norm=2,
                                              generator=torch.Generator().manual_seed(0), **kw),
}


def linear_net(features: int = 12, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, classes))


def batch(n: int = 4, shape: tuple[int, ...] = (3, 2, 2), classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand((n, *shape), generator=g), torch.randint(0, classes, (n,), generator=g)


def assert_valid_attack(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: float = math.inf) -> None:
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert bool(torch.isfinite(x_adv).all())
    assert bool(((x_adv >= 0) & (x_adv <= 1)).all())
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == math.inf else delta.norm(dim=1)
    assert bool((size <= eps * (1 + 1e-5) + 1e-6).all())


# --- NaN and inf ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_non_finite_inputs_are_refused(name, bad):
    x, y = batch()
    x[1, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        ATTACKS[name](linear_net(), x, y, clip=None)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_refused_by_adversarial_loss(bad):
    x, y = batch()
    x[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        fk.AdversarialLoss(clip=None)(linear_net(), x, y)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_non_finite_logits_are_refused(name, bad):
    net = linear_net()

    def model(x):
        logits = net(x).clone()
        logits[0, 0] = bad
        return logits

    x, y = batch()
    with pytest.raises(ValueError, match="NaN or inf logits"):
        ATTACKS[name](model, x, y)


class LogAtZero(nn.Module):
    """``x log x`` written with torch.where: finite logits, but a NaN input gradient at 0."""

    def __init__(self) -> None:
        super().__init__()
        self.net = linear_net()

    def forward(self, x):
        return self.net(torch.where(x > 0, x * x.log(), torch.zeros_like(x)))


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_nan_input_gradient_warns_and_never_reaches_the_result(name):
    x, y = batch()
    x[:, 0] = 0.0  # x log x has a NaN gradient at 0
    eps, norm = (0.5, 2.0) if name == "pgd_l2" else (0.1, math.inf)
    for clip in [(0.0, 1.0), None]:
        with pytest.warns(RuntimeWarning, match="NaN entries"):
            x_adv = ATTACKS[name](LogAtZero(), x, y, clip=clip)
        assert bool(torch.isfinite(x_adv).all())
        if clip:
            assert_valid_attack(x_adv, x, eps, norm)
        else:
            assert not torch.equal(x_adv, x)  # the finite entries of the gradient were still used
            if name in ("fgsm", "iterative_fgsm"):  # from x, the NaN coordinate never moves
                assert torch.equal(x_adv[:, 0], x[:, 0])


@pytest.mark.parametrize("norm", [math.inf, 2])
def test_nan_input_gradient_does_not_poison_adversarial_training(norm):
    x, y = batch()
    x[:, 0] = 0.0
    model = LogAtZero()
    criterion = fk.AdversarialLoss(eps=0.1, norm=norm)
    with pytest.warns(RuntimeWarning, match="NaN entries"):
        loss = criterion(model, x, y)
    loss.backward()
    assert bool(torch.isfinite(loss))
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())


# --- batch size -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("labels", [True, False])
def test_empty_batch_returns_an_empty_batch(name, labels):
    x, y = batch(0)
    x_adv = ATTACKS[name](linear_net(), x, y if labels else None)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("labels", [True, False])
def test_samples_without_features_are_returned_unchanged(name, labels):
    # Shape (batch, 0): an IndexError from the first gradient's check (a max over no entries).
    x, y = batch(4, shape=(0,))
    x_adv = ATTACKS[name](lambda t: torch.stack([t.sum(1), -t.sum(1), t.sum(1)], 1), x, y if labels else None)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv is not x


def test_empty_batch_is_refused_by_adversarial_loss():
    x, y = batch(0)
    with pytest.raises(ValueError, match="x must hold at least one sample"):
        fk.AdversarialLoss()(linear_net(), x, y)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_batch_of_one_equals_the_same_sample_in_a_batch(name):
    x, y = batch(4)
    model = linear_net()
    whole = ATTACKS[name](model, x, y)
    alone = ATTACKS[name](model, x[2:3], y[2:3])
    assert alone.shape == (1, 3, 2, 2)
    if name.startswith("pgd"):  # random starts draw per batch; check the ball instead
        assert_valid_attack(alone, x[2:3], 0.5 if name == "pgd_l2" else 0.1, 2.0 if name == "pgd_l2" else math.inf)
    else:
        torch.testing.assert_close(alone, whole[2:3], rtol=0, atol=0)


def test_batch_of_one_trains():
    x, y = batch(1)
    model = linear_net()
    loss = fk.AdversarialLoss()(model, x, y)
    loss.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_a_batch_of_scalars_is_attacked_as_one_feature_per_sample(name):
    # x of shape (batch,): the same result as x[:, None] of shape (batch, 1), for a model that
    # reads each sample as one number.
    x, y = torch.rand(6, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(0)
    layer = nn.Linear(1, 3)
    scalars = ATTACKS[name](lambda t: layer(t[:, None]), x, y)
    columns = ATTACKS[name](layer, x[:, None], y)
    assert scalars.shape == x.shape
    assert torch.equal(scalars, columns[:, 0])
    loss = fk.AdversarialLoss()(nn.Sequential(nn.Unflatten(0, (6, 1)), layer), x, y)
    assert torch.equal(loss, fk.AdversarialLoss()(layer, x[:, None], y))


# --- labels -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_float_labels_are_refused_with_the_fix(name):
    x, y = batch()
    with pytest.raises(TypeError, match=r"y must hold integer class indices.*y\.long\(\)"):
        ATTACKS[name](linear_net(), x, y.float())
    with pytest.raises(TypeError, match=r"y\.long\(\)"):
        fk.AdversarialLoss()(linear_net(), x, y.float())


@pytest.mark.parametrize("offset", [3, -4])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_labels_out_of_range_are_refused(name, offset):
    x, y = batch()
    y = y.clone()
    y[0] = offset if offset > 0 else -1
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        ATTACKS[name](linear_net(), x, y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        fk.AdversarialLoss()(linear_net(), x, y)


def test_labels_of_the_wrong_length_are_refused():
    x, y = batch()
    with pytest.raises(ValueError, match="one label per sample"):
        fk.fgsm(linear_net(), x, y[:3], eps=0.1)


# --- devices ----------------------------------------------------------------------------------
# Without a second real device, the meta device (tensors without storage) stands in for one:
# the checks compare devices, which is what a CUDA/CPU mix would trip.

def test_model_on_another_device_is_refused():
    x, y = batch()
    model = linear_net().to("meta")
    with pytest.raises(ValueError, match="model has parameters on meta but x is on cpu"):
        fk.fgsm(model, x, y, eps=0.1)
    with pytest.raises(ValueError, match="model has parameters on meta but x is on cpu"):
        fk.AdversarialLoss()(model, x, y)


def test_inputs_on_another_device_are_refused():
    x, y = batch()
    with pytest.raises(ValueError, match="x is on the meta device"):
        fk.fgsm(linear_net(), x.to("meta"), y, eps=0.1)
    with pytest.raises(ValueError, match="x is on the meta device"):
        fk.AdversarialLoss()(linear_net(), x.to("meta"), y)


def test_labels_on_another_device_are_refused():
    x, y = batch()
    with pytest.raises(ValueError, match=r"y is on meta but x is on cpu.*y\.to\(x\.device\)"):
        fk.pgd(linear_net(), x, y.to("meta"), eps=0.1, step_size=0.05, steps=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device besides the CPU")
def test_cuda_model_with_cpu_inputs_is_refused():
    x, y = batch()
    with pytest.raises(ValueError, match="model has parameters on cuda"):
        fk.fgsm(linear_net().cuda(), x, y, eps=0.1)


# --- memory layout and autograd state of the inputs --------------------------------------------

def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(16, 3))


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_non_contiguous_inputs_give_the_same_values_laid_out_like_x(name):
    x, y = batch(4, (3, 2, 2))
    strided = x.transpose(2, 3)
    assert not strided.is_contiguous()
    model = conv_net()
    expected = ATTACKS[name](model, strided.contiguous(), y)
    got = ATTACKS[name](model, strided, y)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert got.stride() == strided.stride()  # as x + eps * sign(grad) would be, in PyTorch
    assert torch.equal(strided, x.transpose(2, 3))  # not written to


def flatten_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


@pytest.mark.parametrize("make_model", [conv_net, flatten_net])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_channels_last_inputs_keep_their_layout_and_result(name, make_model):
    # A model that flattens first hands back a contiguous gradient: the result followed its layout.
    x, y = batch(4, (3, 2, 2))
    model = make_model()
    expected = ATTACKS[name](model, x, y)
    got = ATTACKS[name](model, x.to(memory_format=torch.channels_last), y)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_inputs_that_require_grad_get_no_gradient_and_no_graph(name):
    x, y = batch()
    x = x.requires_grad_(True)
    x_adv = ATTACKS[name](linear_net(), x, y)
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert x.grad is None and x.requires_grad


def test_adversarial_loss_refuses_inputs_that_would_want_a_gradient():
    # The straightforward objective would fill x.grad; treating x as data would leave it None.
    x, y = batch()
    x = x.requires_grad_(True)
    model = linear_net()
    with pytest.raises(ValueError, match=r"x requires grad.*pass x.detach\(\)"):
        fk.AdversarialLoss()(model, x, y)
    fk.AdversarialLoss()(model, x.detach(), y).backward()
    assert x.grad is None
    assert all(p.grad is not None for p in model.parameters())


# --- models of unexpected shape ------------------------------------------------------------------

class TupleModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = linear_net()

    def forward(self, x):
        return self.net(x), x.mean()


class DictModel(TupleModel):
    def forward(self, x):
        return {"logits": self.net(x)}


@pytest.mark.parametrize("model_type", [TupleModel, DictModel])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_models_returning_tuples_or_dicts_get_an_error_naming_the_fix(name, model_type):
    x, y = batch()
    with pytest.raises(TypeError, match=r"model must return a tensor of logits.*lambda x: model\(x\)"):
        ATTACKS[name](model_type(), x, y)
    with pytest.raises(TypeError, match=r"model must return a tensor of logits"):
        fk.AdversarialLoss()(model_type(), x, y)


def test_the_fix_named_in_the_error_works():
    x, y = batch()
    model = DictModel()
    x_adv = fk.fgsm(lambda t: model(t)["logits"], x, y, eps=0.1)
    torch.testing.assert_close(x_adv, fk.fgsm(model.net, x, y, eps=0.1), rtol=0, atol=0)


class Fixed(nn.Module):
    """A parameter-free classifier: fixed weights held as a buffer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.register_buffer("w", torch.randn(12, 3))

    def forward(self, x):
        return x.flatten(1) @ self.w


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_models_without_parameters_are_attacked(name):
    x, y = batch()
    model = Fixed()
    assert not list(model.parameters())
    x_adv = ATTACKS[name](model, x, y)
    eps, norm = (0.5, 2.0) if name == "pgd_l2" else (0.1, math.inf)
    assert_valid_attack(x_adv, x, eps, norm)
    losses = nn.functional.cross_entropy(model(x_adv), y, reduction="none")
    assert bool((losses >= nn.functional.cross_entropy(model(x), y, reduction="none") - 1e-6).all())


def test_adversarial_loss_of_a_model_without_trainable_parameters_is_the_full_formula():
    x, y = batch()
    model = linear_net().requires_grad_(False)
    criterion = fk.AdversarialLoss(alpha=0.3, eps=0.1)
    loss = criterion(model, x, y)
    x_adv = fk.fgsm(model, x, y, eps=0.1)
    ce = nn.functional.cross_entropy
    torch.testing.assert_close(loss, 0.3 * ce(model(x), y) + 0.7 * ce(model(x_adv), y))


# --- models without a usable input gradient ------------------------------------------------------

class Detaching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = linear_net()

    def forward(self, x):
        return self.net(x.detach())


class NoGradInside(Detaching):
    def forward(self, x):
        with torch.no_grad():
            return self.net(x)


class Quantising(Detaching):
    def forward(self, x):
        return self.net(torch.round(x * 4) / 4)  # piecewise constant: zero gradient everywhere


@pytest.mark.parametrize("model_type", [Detaching, NoGradInside, Quantising])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_non_differentiable_models_are_reported_not_faked(name, model_type):
    x, y = batch()
    with pytest.warns(RuntimeWarning, match="input gradient is zero for 4 of 4 samples"):
        x_adv = ATTACKS[name](model_type(), x, y)
    if not name.startswith("pgd"):  # no random start: nothing moved, nothing claimed
        assert torch.equal(x_adv, x)


DETACHED_LOSSES = {
    "detached": lambda logits, y: nn.functional.cross_entropy(logits, y, reduction="none").detach(),
    "constant": lambda logits, y: torch.zeros(logits.shape[0]),
}


@pytest.mark.parametrize("loss", sorted(DETACHED_LOSSES))
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_a_loss_fn_cut_off_from_the_logits_is_reported_as_a_zero_gradient(name, loss):
    # PyTorch's "element 0 of tensors does not require grad" came out instead, naming nothing.
    x, y = batch()
    with pytest.warns(RuntimeWarning, match="input gradient is zero for 4 of 4 samples"):
        x_adv = ATTACKS[name](linear_net(), x, y, loss_fn=DETACHED_LOSSES[loss])
    if not name.startswith("pgd"):
        assert torch.equal(x_adv, x)


@pytest.mark.parametrize("loss", sorted(DETACHED_LOSSES))
def test_adversarial_loss_with_a_loss_fn_cut_off_from_the_logits_says_what_it_cannot_train(loss):
    x, y = batch()
    with pytest.raises(ValueError, match=r"loss_fn returned a loss that does not depend on the logits"):
        fk.AdversarialLoss(loss_fn=DETACHED_LOSSES[loss])(linear_net(), x, y)


@pytest.mark.parametrize("model_type", [Detaching, NoGradInside, Quantising])
def test_non_differentiable_models_are_reported_by_adversarial_loss(model_type):
    x, y = batch()
    model = model_type()
    criterion = fk.AdversarialLoss(alpha=0.5, eps=0.1)
    with pytest.warns(RuntimeWarning, match="input gradient is zero for 4 of 4 samples"):
        loss = criterion(model, x, y)
    assert torch.equal(criterion.adversarial_logits, criterion.clean_logits)  # unperturbed, and said so
    if model_type is not NoGradInside:
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())


def test_the_zero_gradient_warning_points_at_the_callers_line():
    x, y = batch()
    with pytest.warns(RuntimeWarning) as record:
        fk.fgsm(Detaching(), x, y, eps=0.1)
    assert record[0].filename == __file__
    with pytest.warns(RuntimeWarning) as record:
        fk.AdversarialLoss()(Detaching(), x, y)
    assert record[0].filename == __file__


# --- the caller's autograd mode ------------------------------------------------------------------

@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_inside_no_grad_or_inference_mode_equal_the_ordinary_attack(name, mode):
    x, y = batch()
    model = linear_net()
    expected = ATTACKS[name](model, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no zero-gradient warning: the gradient is really there
        with mode():
            got = ATTACKS[name](model, x, y)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_inference_tensors_can_be_attacked_outside_inference_mode():
    with torch.inference_mode():
        x, y = batch()
    model = linear_net()
    expected = fk.fgsm(model, x.clone(), y.clone(), eps=0.1)
    torch.testing.assert_close(fk.fgsm(model, x, y, eps=0.1), expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_adversarial_loss_inside_no_grad_is_the_same_value_without_a_graph(mode):
    x, y = batch()
    model = linear_net()
    expected = fk.AdversarialLoss(alpha=0.5, eps=0.1)(model, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with mode():
            got = fk.AdversarialLoss(alpha=0.5, eps=0.1)(model, x, y)
    assert got.grad_fn is None and not got.requires_grad
    torch.testing.assert_close(got, expected.detach())
    assert all(p.grad is None for p in model.parameters())


def test_adversarial_loss_of_inference_tensors():
    model = linear_net()
    with torch.inference_mode():
        x, y = batch()
        got = fk.AdversarialLoss(alpha=0.5, eps=0.1)(model, x, y)
    expected = fk.AdversarialLoss(alpha=0.5, eps=0.1)(model, x.clone(), y.clone())
    torch.testing.assert_close(got, expected.detach())


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_labels_of_any_integer_dtype_work(dtype):
    x, y = batch()
    model = linear_net()
    expected = fk.fgsm(model, x, y, eps=0.1)
    torch.testing.assert_close(fk.fgsm(model, x, y.to(dtype), eps=0.1), expected, rtol=0, atol=0)
    torch.testing.assert_close(fk.AdversarialLoss()(model, x, y.to(dtype)), fk.AdversarialLoss()(model, x, y))


# --- models that write into their input -----------------------------------------------------------

class InPlaceFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(inplace=True), linear_net())

    def forward(self, x):
        return self.net(x)


def test_models_writing_into_their_input_get_an_error_naming_the_fix():
    x, y = batch()
    with pytest.raises(ValueError, match=r"writes into its input in place.*model\(x\.clone\(\)\)"):
        fk.fgsm(InPlaceFirst(), x, y, eps=0.1)
    model = InPlaceFirst()  # AdversarialLoss gives the model copies: see test_adversarial_loss.py
    x_adv = fk.fgsm(lambda t: model(t.clone()), x, y, eps=0.1)  # the fix named in the message
    torch.testing.assert_close(x_adv, fk.fgsm(model.net[1], x, y, eps=0.1), rtol=0, atol=0)


@pytest.mark.parametrize("attack", [
    lambda model, x: fk.pgd(model, x, eps=0.1, step_size=0.05, steps=2, clip=None),  # labels: a first forward
    lambda model, x: fk.pgd(model, x, eps=0.1, step_size=0.05, steps=2, restarts=2, clip=None),
    lambda model, x: fk.iterative_fgsm(model, x, eps=0.1, step_size=0.05, steps=2, clip=None),
])
def test_a_model_writing_into_its_input_leaves_x_alone_when_labels_come_from_it(attack):
    # The predictions were taken under no_grad on x's own storage, where autograd lets an in-place
    # ReLU write: x lost its negative entries before the error was raised.
    x = batch()[0] * 2 - 1
    before = x.clone()
    with pytest.raises(ValueError, match="writes into its input in place"):
        attack(InPlaceFirst(), x)
    assert torch.equal(x, before)


class WritesUnderNoGrad(nn.Module):
    """Clamps its input in place inside no_grad, where autograd cannot refuse it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = linear_net()

    def forward(self, x):
        with torch.no_grad():
            x.clamp_(0.0, 0.5)
        return self.net(x)


@pytest.mark.parametrize("attack", [
    lambda model, x, y: fk.fgsm(model, x, y, eps=0.1),
    lambda model, x, y: fk.iterative_fgsm(model, x, y, eps=0.1, step_size=0.05, steps=2),
    lambda model, x, y: fk.pgd(model, x, y, eps=0.1, step_size=0.05, steps=2, random_start=False),
])
def test_a_model_writing_into_x_under_no_grad_is_an_error_not_a_result_outside_the_ball(attack):
    # x, the ball's centre, was moved by the model: the result lay 0.3 from the caller's x.
    x, y = batch()
    with pytest.raises(ValueError, match=r"model wrote into its input in place.*model\(x\.clone\(\)\)"):
        attack(WritesUnderNoGrad(), x, y)
    model = WritesUnderNoGrad()
    with torch.inference_mode():  # inference tensors keep no write count; the model gets copies of them
        x_inference = x.clone()
        assert_valid_attack(attack(model, x_inference, y), x_inference, eps=0.1)
        assert torch.equal(x_inference, x)


# --- loss functions and argument types -------------------------------------------------------------

@pytest.mark.parametrize("bad_loss", [lambda logits, y: 3.0, lambda logits, y: logits.argmax(1),
                                      lambda logits, y: logits.sum(0)])
def test_loss_fn_returning_something_else_gets_a_clear_error(bad_loss):
    x, y = batch()
    with pytest.raises((TypeError, ValueError), match="loss_fn must return"):
        fk.fgsm(linear_net(), x, y, eps=0.1, loss_fn=bad_loss)
    with pytest.raises((TypeError, ValueError), match="loss_fn must return"):
        fk.AdversarialLoss(loss_fn=bad_loss)(linear_net(), x, y)


def test_numpy_scalars_are_accepted_as_numbers():
    np = pytest.importorskip("numpy")
    x, y = batch()
    model = linear_net()
    expected = fk.pgd(model, x, y, eps=0.125, step_size=0.0625, steps=2, random_start=False)
    got = fk.pgd(model, x, y, eps=np.float32(0.125), step_size=np.float16(0.0625), steps=np.int64(2),
                 random_start=False, clip=(np.float32(0), np.float64(1)))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_without_labels_inside_inference_mode(name):
    """y=None: the labels the attack takes from the model are made inside inference_mode too."""
    x, _ = batch()
    model = linear_net()
    expected = ATTACKS[name](model, x, None)
    with torch.inference_mode():
        got = ATTACKS[name](model, x, None)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_zero_gradient_pgd_stays_at_its_random_start_and_says_so():
    x, y = batch()
    runs = []
    for steps in (1, 4):
        with pytest.warns(RuntimeWarning, match="random start"):
            runs.append(fk.pgd(Detaching(), x, y, eps=0.1, step_size=0.05, steps=steps,
                               generator=torch.Generator().manual_seed(0)))
    assert torch.equal(runs[0], runs[1])  # no step moved it
    assert not torch.equal(runs[0], x)  # the random start did


def test_a_parameter_free_model_on_another_device_is_refused():
    x, y = batch()
    with pytest.raises(ValueError, match="model has buffers on meta but x is on cpu"):
        fk.fgsm(Fixed().to("meta"), x, y, eps=0.1)
