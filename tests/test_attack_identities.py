"""Exact identities between the attacks, and behaviour that follows from the definitions."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fgsmkit as fk
from _support import small_mlp


def batch(seed: int = 0, n: int = 24, features: int = 12, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, features, generator=g, dtype=dtype), torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize("norm", [math.inf, 2.0])
@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_pgd_step_of_size_eps_from_x_is_fgsm_exactly(norm: float, targeted: bool, dtype: torch.dtype) -> None:
    model, (x, y) = small_mlp(dtype=dtype), batch(dtype=dtype)
    expected = fk.fgsm(model, x, y, eps=0.3, norm=norm, targeted=targeted)
    actual = fk.pgd(model, x, y, eps=0.3, step_size=0.3, steps=1, random_start=False, norm=norm, targeted=targeted)
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_without_random_start_is_iterative_fgsm_exactly(targeted: bool) -> None:
    model, (x, y) = small_mlp(), batch()
    kwargs = dict(eps=0.2, step_size=0.03, steps=9, targeted=targeted)
    assert torch.equal(fk.pgd(model, x, y, random_start=False, **kwargs), fk.iterative_fgsm(model, x, y, **kwargs))


def test_fgsm_is_the_paper_formula_x_plus_eps_sign_gradient() -> None:
    model, (x, y) = small_mlp(), batch()
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_req), y), x_req)
    assert torch.equal(fk.fgsm(model, x, y, eps=0.07, clip=None), x + 0.07 * grad.sign())


def test_the_step_does_not_depend_on_the_loss_reduction() -> None:
    model, (x, y) = small_mlp(), batch()
    mean_loss = lambda logits, labels: F.cross_entropy(logits, labels)  # noqa: E731
    sum_loss = lambda logits, labels: F.cross_entropy(logits, labels, reduction="sum")  # noqa: E731
    per_sample = fk.fgsm(model, x, y, eps=0.1)
    assert torch.equal(fk.fgsm(model, x, y, eps=0.1, loss_fn=mean_loss), per_sample)
    assert torch.equal(fk.fgsm(model, x, y, eps=0.1, loss_fn=sum_loss), per_sample)
    l2 = fk.fgsm(model, x, y, eps=0.5, norm=2, clip=None)
    l2_mean = fk.fgsm(model, x, y, eps=0.5, norm=2, clip=None, loss_fn=mean_loss)
    torch.testing.assert_close(l2_mean, l2, rtol=0, atol=1e-15)
    # The L2 step has length eps, not eps / batch.
    torch.testing.assert_close((l2_mean - x).norm(dim=1), torch.full((24,), 0.5, dtype=torch.float64))


def test_a_mean_loss_fn_moves_a_confident_sample_as_its_per_sample_twin() -> None:
    # A margin of 100 in float32: the other class's probability, e^-100 (about 4e-44), is
    # subnormal; the mean's gradient, divided by a batch of 256, would flush to zero unless the
    # reduction is undone before the gradient goes back through the model.
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[50.0, 50.0, 0.0, 0.0], [-50.0, -50.0, 0.0, 0.0]]))
        model.bias.zero_()
    x, y = torch.full((256, 4), 0.5), torch.zeros(256, dtype=torch.long)
    per_sample = fk.fgsm(model, x, y, eps=0.1, loss_fn=lambda z, t: F.cross_entropy(z, t, reduction="none"))
    mean = fk.fgsm(model, x, y, eps=0.1, loss_fn=lambda z, t: F.cross_entropy(z, t))
    assert (per_sample != x).any(dim=1).all()
    assert torch.equal(mean, per_sample)


@pytest.mark.parametrize("norm", [math.inf, 2.0])
@pytest.mark.parametrize("steps", [1, 2, 5])
@pytest.mark.parametrize("per_sample", [False, True])
def test_a_walk_on_logistic_regression_is_its_closed_form(norm: float, steps: int, per_sample: bool) -> None:
    # The input gradient of the logistic loss is (sigmoid(w.x + b) - y) w: its direction never
    # changes along the walk, so `steps` steps of `step_size` move exactly steps * step_size along
    # it. This pins the step count and the L2 step's length, which the ball alone does not.
    torch.manual_seed(4)
    model = fk.models.LogisticRegression(20).double()
    x = torch.rand(8, 20, dtype=torch.float64) * 0.5 + 0.25
    y = torch.tensor([0, 1] * 4)
    w = model.linear.weight.detach()[0]
    away = -(2 * y - 1).double()[:, None]  # untargeted: against the label
    unit = w.sign() if norm == math.inf else w / w.norm()
    step = torch.linspace(0.001, 0.004, 8, dtype=torch.float64) if per_sample else 0.003
    expected = x + steps * (step[:, None] if per_sample else step) * away * unit
    walked = fk.pgd(model, x, y, eps=1.0, step_size=step, steps=steps, norm=norm, random_start=False, clip=None)
    torch.testing.assert_close(walked, expected, rtol=0, atol=1e-12)


def test_a_loss_fn_that_edits_the_logits_in_place_gets_their_gradient() -> None:
    # A margin loss (CosFace-style) subtracts from the true class's logit in place, which plain
    # autograd accepts on a model's output.
    model, (x, y) = small_mlp(), batch()

    def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits[torch.arange(len(labels)), labels] -= 0.3
        return F.cross_entropy(logits, labels)

    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(margin_loss(model(x_req), y), x_req)
    assert torch.equal(fk.fgsm(model, x, y, eps=0.07, clip=None, loss_fn=margin_loss), x + 0.07 * grad.sign())


def test_restarts_with_a_loss_fn_that_edits_the_logits_in_place_pick_as_its_out_of_place_twin() -> None:
    # The fooled test read the predictions from the logits after loss_fn had edited them, so a
    # margin counted samples the model still got right as fooled, and restarts kept the wrong ones.
    model, (x, _) = small_mlp(), batch(n=100)
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # every sample right at x: only the attack can fool the model

    def in_place(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits[torch.arange(len(labels)), labels] -= 2.0
        return F.cross_entropy(logits, labels, reduction="none")

    def out_of_place(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits - 2.0 * F.one_hot(labels, logits.shape[1]), labels, reduction="none")

    kwargs = dict(eps=0.05, step_size=0.02, steps=2, restarts=3)
    expected = fk.pgd(model, x, y, loss_fn=out_of_place, generator=torch.Generator().manual_seed(1), **kwargs)
    actual = fk.pgd(model, x, y, loss_fn=in_place, generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(actual, expected)


def test_without_labels_the_model_predictions_are_attacked() -> None:
    model, (x, _) = small_mlp(), batch()
    predicted = model(x).argmax(1)
    assert torch.equal(fk.fgsm(model, x, eps=0.1), fk.fgsm(model, x, predicted, eps=0.1))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(fk.pgd(model, x, eps=0.1, step_size=0.02, steps=3, generator=g()),
                       fk.pgd(model, x, predicted, eps=0.1, step_size=0.02, steps=3, generator=g()))


def test_pgd_with_the_same_generator_seed_is_bit_identical() -> None:
    model, (x, y) = small_mlp(dtype=torch.float32), batch(dtype=torch.float32)
    runs = [fk.pgd(model, x, y, eps=0.1, step_size=0.02, steps=5, restarts=2, generator=torch.Generator().manual_seed(9))
            for _ in range(2)]
    assert torch.equal(*runs)
    other = fk.pgd(model, x, y, eps=0.1, step_size=0.02, steps=5, restarts=2, generator=torch.Generator().manual_seed(10))
    assert not torch.equal(runs[0], other)


def test_l2_fgsm_with_a_zero_gradient_takes_a_zero_step_and_warns() -> None:
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bias.expand(x.shape[0], 3) + 0 * x.sum(1, keepdim=True)

    x, y = torch.rand(4, 5), torch.tensor([0, 1, 2, 0])
    for norm in (math.inf, 2.0):
        with pytest.warns(RuntimeWarning, match="zero for 4 of 4 samples"):
            assert torch.equal(fk.fgsm(Constant(), x, y, eps=0.3, norm=norm), x)


def test_a_model_that_ignores_its_input_is_reported() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(5, 3))
    detached = lambda x: model(x.detach())  # noqa: E731
    with pytest.warns(RuntimeWarning, match="input gradient is zero"):
        fk.fgsm(detached, torch.rand(2, 5), torch.tensor([0, 1]), eps=0.1)


def test_no_warning_for_an_ordinary_model() -> None:
    model, (x, y) = small_mlp(), batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fk.pgd(model, x, y, eps=0.1, step_size=0.02, steps=3)


def test_per_sample_eps_gives_each_sample_its_own_budget() -> None:
    model, (x, y) = small_mlp(), batch(n=3)
    eps = torch.tensor([0.0, 0.1, 0.2], dtype=torch.float64)
    delta = (fk.fgsm(model, x, y, eps=eps, clip=None) - x).abs().amax(1)
    torch.testing.assert_close(delta, eps)


def test_per_sample_step_size_is_accepted() -> None:
    model, (x, y) = small_mlp(), batch(n=3)
    steps = torch.tensor([0.01, 0.02, 0.04], dtype=torch.float64)
    one_step = fk.iterative_fgsm(model, x, y, eps=1.0, step_size=steps, steps=1, clip=None)
    torch.testing.assert_close((one_step - x).abs().amax(1), steps)


@pytest.mark.parametrize("norm", [math.inf, 2.0])
def test_a_per_sample_step_may_be_zero_where_that_samples_eps_is(norm: float) -> None:
    # The guide's per-sample budgets, torch.linspace(0, 0.3, n), with its rule of thumb
    # step_size = 2.5 * eps / steps were refused: the first sample's step is 0.
    model, (x, y) = small_mlp(), batch(n=16)
    eps = torch.linspace(0.0, 0.3, 16, dtype=torch.float64)
    x_adv = fk.pgd(model, x, y, eps=eps, step_size=2.5 * eps / 10, steps=10, norm=norm)
    moved = (x_adv != x).any(dim=1)
    assert not moved[0] and bool(moved[1:].all())
    with pytest.raises(ValueError, match=r"step_size must be > 0 \(or 0 where eps is 0\)"):
        fk.pgd(model, x, y, eps=eps.flip(0), step_size=2.5 * eps / 10, steps=10, norm=norm)
    with pytest.raises(ValueError, match=r"step_size must be > 0"):  # one step for all: never 0
        fk.pgd(model, x, y, eps=eps, step_size=torch.tensor(0.0), steps=10, norm=norm)


def test_attacks_work_inside_no_grad() -> None:
    model, (x, y) = small_mlp(), batch()
    expected = fk.fgsm(model, x, y, eps=0.1)
    with torch.no_grad():
        assert torch.equal(fk.fgsm(model, x, y, eps=0.1), expected)


def test_an_image_model_is_attacked_on_image_shaped_input() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 5, (6,))
    x_adv = fk.pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=5)
    assert x_adv.shape == x.shape
    assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)


def test_pgd_fools_a_trained_linear_model_more_than_fgsm_or_at_least_as_much() -> None:
    torch.manual_seed(0)
    x = torch.rand(200, 10)
    y = (x[:, :5].sum(1) > x[:, 5:].sum(1)).long()
    model = fk.models.SoftmaxRegression(10, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(200):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    error = lambda inputs: (model(inputs).argmax(1) != y).float().mean().item()  # noqa: E731
    clean = error(x)
    fgsm_error = error(fk.fgsm(model, x, y, eps=0.1))
    pgd_error = error(fk.pgd(model, x, y, eps=0.1, step_size=0.01, steps=20, restarts=2,
                             generator=torch.Generator().manual_seed(0)))
    assert clean < 0.1 < fgsm_error <= pgd_error
