"""Precision: float16, bfloat16, float64 and autocast models and inputs."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fgsmkit as fk
from fgsmkit.gradient import cross_entropy

LOW = [torch.float16, torch.bfloat16]
ALL = LOW + [torch.float32, torch.float64]


def mlp(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)


def batch(n: int = 6, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 10, generator=g).to(dtype), torch.randint(0, 3, (n,), generator=g)


def attacks(dtype_eps: float):
    return {
        "fgsm": lambda m, x, y: fk.fgsm(m, x, y, eps=dtype_eps),
        "fgsm_l2": lambda m, x, y: fk.fgsm(m, x, y, eps=dtype_eps, norm=2),
        "pgd": lambda m, x, y: fk.pgd(m, x, y, eps=dtype_eps, step_size=dtype_eps / 2, steps=3, restarts=2,
                                      generator=torch.Generator().manual_seed(0)),
        "pgd_l2": lambda m, x, y: fk.pgd(m, x, y, eps=dtype_eps, step_size=dtype_eps / 2, steps=3, norm=2,
                                         generator=torch.Generator().manual_seed(0)),
    }


@pytest.mark.parametrize("name", ["fgsm", "fgsm_l2", "pgd", "pgd_l2"])
@pytest.mark.parametrize("dtype", ALL)
def test_attacks_keep_the_dtype_and_stay_in_the_ball(dtype, name):
    eps = 0.125  # exactly representable in every dtype
    x, y = batch(dtype=dtype)
    x_adv = attacks(eps)[name](mlp(dtype), x, y)
    assert x_adv.dtype == dtype and x_adv.shape == x.shape
    assert bool(torch.isfinite(x_adv).all()) and bool(((x_adv >= 0) & (x_adv <= 1)).all())
    delta = (x_adv - x).double().flatten(1)
    size = delta.norm(dim=1) if name.endswith("l2") else delta.abs().amax(dim=1)
    rounding = torch.finfo(dtype).eps  # x + delta is rounded once in x's dtype, and x <= 1
    assert bool((size <= eps + rounding * (math.sqrt(10) if name.endswith("l2") else 1)).all())
    assert bool((size > 0).all())  # every sample was moved


@pytest.mark.parametrize("dtype", LOW)
def test_the_loss_is_computed_in_float32(dtype):
    logits = torch.tensor([[20.0, 0.0, -3.0], [0.5, 0.25, 0.0]]).to(dtype)
    y = torch.tensor([1, 0])
    losses = cross_entropy(logits, y)
    assert losses.dtype == torch.float32
    torch.testing.assert_close(losses, F.cross_entropy(logits.float(), y, reduction="none"))
    x, y = batch(dtype=dtype)
    assert fk.AdversarialLoss()(mlp(dtype), x, y).dtype == torch.float32


def confident_linear(dtype: torch.dtype) -> nn.Linear:
    """Class 0 wins every input by a margin of about 30: p(class 1) ~ 1e-13, below float16's range."""
    model = nn.Linear(10, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
        model.weight[0] += 6.0
        model.weight[1] += torch.linspace(-1, 1, 10) * 0.01
        model.weight[2] -= torch.linspace(-1, 1, 10) * 0.02
    return model.to(dtype)


def test_confident_samples_keep_the_true_class_entry_of_the_logit_gradient():
    """softmax - onehot cancels to 0 at the true class once p_y rounds to 1; ours does not."""
    logits = torch.tensor([[30.0, 0.0, 1.0], [0.0, -25.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 1])
    (ours,) = torch.autograd.grad(cross_entropy(logits, y).sum(), logits)
    exact_logits = logits.detach().double().requires_grad_(True)
    (exact,) = torch.autograd.grad(F.cross_entropy(exact_logits, y, reduction="sum"), exact_logits)
    (usual,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), logits)
    assert usual[0, 0] == 0  # the cancellation this guards against
    torch.testing.assert_close(ours.double(), exact, rtol=1e-5, atol=0)
    binary = torch.tensor([[40.0], [-40.0]], requires_grad=True)
    (ours,) = torch.autograd.grad(cross_entropy(binary, torch.tensor([1, 0])).sum(), binary)
    assert ours[0, 0] < 0 and ours[1, 0] > 0


def test_small_probabilities_in_the_logit_gradient_keep_their_relative_accuracy():
    """softmax keeps a small probability to about an ulp; exp(log_softmax) loses more (median 3.9e-7)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 10, generator=g) * 15
    y = torch.randint(0, 10, (20000,), generator=g)
    ours = fk.gradient.cross_entropy_gradient(logits, y).double()
    exact = torch.softmax(logits.double(), dim=1).scatter_(1, y.unsqueeze(1), 0.0)
    others = exact > 1e-30
    relative = ((ours - exact).abs() / exact)[others]
    assert relative.median() < 2e-7


def test_cross_entropy_equals_pytorch_in_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (7,), generator=g)
    assert torch.autograd.gradcheck(lambda z: cross_entropy(z, y), (logits,))
    torch.testing.assert_close(cross_entropy(logits, y), F.cross_entropy(logits, y, reduction="none"))
    single = torch.randn(7, 1, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 2, (7,), generator=g)
    assert torch.autograd.gradcheck(lambda z: cross_entropy(z, labels), (single,))
    torch.testing.assert_close(cross_entropy(single, labels),
                               F.binary_cross_entropy_with_logits(single[:, 0], labels.double(), reduction="none"))


def reference_gradient(model: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The input gradient of the summed loss in float64, from the same weights."""
    exact = nn.Linear(10, 3).double()
    exact.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    x64 = x.double().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(exact(x64), y, reduction="sum"), x64)
    return grad


@pytest.mark.parametrize("dtype", LOW + [torch.float32])
def test_the_gradient_sign_survives_a_confident_model(dtype):
    model = confident_linear(dtype)
    x, _ = batch(8, dtype)
    y = torch.zeros(8, dtype=torch.long)
    if dtype == torch.float16:  # the naive gradient, taken in the model's dtype, is all zero
        x_leaf = x.clone().requires_grad_(True)
        (naive,) = torch.autograd.grad(F.cross_entropy(model(x_leaf).float(), y, reduction="sum"), x_leaf)
        assert not bool(naive.any())
    expected_sign = reference_gradient(model, x, y).sign()
    assert bool(expected_sign.all())  # a non-zero reference in every coordinate
    eps = 2.0 ** -5
    x_adv = fk.fgsm(model, x, y, eps=eps, clip=None)
    assert x_adv.dtype == dtype
    moved = (x_adv.double() - x.double()).sign()
    assert torch.equal(moved, expected_sign)


@pytest.mark.parametrize("dtype", LOW + [torch.float32])
def test_adversarial_loss_keeps_the_gradient_sign_of_a_confident_model(dtype):
    model = confident_linear(dtype)
    x, _ = batch(8, dtype)
    y = torch.zeros(8, dtype=torch.long)
    eps = 2.0 ** -5
    criterion = fk.AdversarialLoss(alpha=0.5, eps=eps, clip=None)
    loss = criterion(model, x, y)
    x_adv = x + eps * reference_gradient(model, x, y).sign().to(dtype)
    assert torch.equal(criterion.adversarial_logits, model(x_adv).detach())
    loss.backward()
    assert all(p.grad.dtype == dtype and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def test_low_precision_weight_gradients_keep_their_true_scale():
    """The per-sample rescaling is for the input gradient only; the weight gradients are eq. (6)'s."""
    x, y = batch(6, torch.bfloat16)
    model = mlp(torch.bfloat16)
    criterion = fk.AdversarialLoss(alpha=0.5, eps=0.125)
    criterion(model, x, y).backward()
    got = [p.grad.float() for p in model.parameters()]
    # The same objective written out: the clean and adversarial terms in one backward.
    model.zero_grad()
    x_adv = fk.fgsm(model, x, y, eps=0.125)
    loss = 0.5 * cross_entropy(model(x), y).mean() + 0.5 * cross_entropy(model(x_adv), y).mean()
    loss.backward()
    for g, expected in zip(got, (p.grad.float() for p in model.parameters())):
        torch.testing.assert_close(g, expected, rtol=2e-2, atol=1e-3)


def test_float64_attack_is_the_closed_form():
    model = mlp(torch.float64)
    x, y = batch(dtype=torch.float64)
    x_leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_leaf), y, reduction="sum"), x_leaf)
    expected = (x + 0.1 * grad.sign()).clamp(0, 1)
    x_adv = fk.fgsm(model, x, y, eps=0.1)
    assert x_adv.dtype == torch.float64
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_attacks_under_autocast_keep_the_input_dtype_and_raise_the_loss(dtype, name):
    model = mlp()
    x, y = batch(32)
    with torch.autocast("cpu", dtype=dtype):
        assert model(x).dtype == dtype  # autocast really is on for this model
        x_adv = attacks(0.125)[name](model, x, y)
    assert x_adv.dtype == torch.float32
    assert bool(((x_adv - x).abs() <= 0.125 + 1e-6).all())
    with torch.no_grad():
        clean, adversarial = (F.cross_entropy(model(t), y, reduction="none") for t in (x, x_adv))
    assert bool((adversarial > clean).float().mean() >= 0.9)


@pytest.mark.parametrize("dtype", LOW)
def test_adversarial_loss_under_autocast_trains_float32_weights(dtype):
    model = mlp()
    x, y = batch(32)
    criterion = fk.AdversarialLoss(alpha=0.5, eps=0.125)
    with torch.autocast("cpu", dtype=dtype):
        loss = criterion(model, x, y)
    assert loss.dtype == torch.float32
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)
    reference_model = mlp()
    expected = fk.AdversarialLoss(alpha=0.5, eps=0.125)(reference_model, x, y)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=5e-2, atol=0)
    for g, r in zip(grads, (p.grad for p in reference_model.parameters())):
        assert F.cosine_similarity(g.flatten(), r.flatten(), dim=0) > 0.95


def test_float16_eps_rounding_never_leaves_the_ball():
    """eps=0.1 is not representable in float16; the ball uses the rounded radius consistently."""
    x, y = batch(dtype=torch.float16)
    x_adv = fk.pgd(mlp(torch.float16), x, y, eps=0.1, step_size=0.05, steps=4,
                   generator=torch.Generator().manual_seed(0))
    radius = torch.tensor(0.1, dtype=torch.float16).double()
    assert float((x_adv.double() - x.double()).abs().max()) <= float(radius) * (1 + 2 ** -10) + 2 ** -11
    assert math.isfinite(float(x_adv.double().sum()))


def test_adversarial_loss_with_a_grad_scaler():
    """Scaled losses scale the precomputed clean gradients too; unscaled, they are the plain ones."""
    x, y = batch(32)
    model, reference = mlp(), mlp()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fk.AdversarialLoss(alpha=0.5, eps=0.125)(model, x, y)
    scaler.scale(loss).backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler.unscale_(optimizer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fk.AdversarialLoss(alpha=0.5, eps=0.125)(reference, x, y).backward()
    for p, r in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-5, atol=1e-7)


def test_a_dtype_mismatch_inside_the_model_is_named_and_a_casting_model_works():
    """The library does not refuse float64 inputs to a float32 model, which may cast them; where
    the model fails on them, the error names both dtypes and chains the model's own."""
    with pytest.raises(TypeError, match="x is float64 but model has float32 parameters") as caught:
        fk.fgsm(mlp(), batch(dtype=torch.float64)[0], batch()[1], eps=0.1)
    assert isinstance(caught.value.__cause__, RuntimeError) and "dtype" in str(caught.value.__cause__)
    casting = nn.Sequential(mlp())
    casting.register_forward_pre_hook(lambda module, args: (args[0].float(),))
    x, y = batch(dtype=torch.float64)
    assert fk.fgsm(casting, x, y, eps=0.1).dtype == torch.float64


@pytest.mark.parametrize("margin", [30.0, 60.0, 80.0])
def test_the_l2_step_of_a_tiny_gradient_has_full_length(margin):
    """A margin of 60 gives an input gradient near 1e-26, whose squares underflow in float32."""
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]))
        model.bias.copy_(torch.tensor([margin, 0.0]))
    x, y = torch.full((3, 4), 0.5), torch.zeros(3, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the gradient is not zero: no warning either
        x_adv = fk.fgsm(model, x, y, eps=0.1, norm=2, clip=None)
    delta = (x_adv - x).double()
    torch.testing.assert_close(delta.norm(dim=1), torch.full((3,), 0.1, dtype=torch.float64), rtol=1e-6, atol=0)
    expected = torch.tensor([-1.0, 1.0, 0.0, 0.0], dtype=torch.float64) / math.sqrt(2)  # the exact direction
    torch.testing.assert_close(delta / 0.1, expected.expand(3, 4), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", LOW + [torch.float32])
@pytest.mark.parametrize("margin", [60.0, 95.0])
def test_a_margin_near_the_end_of_float32_keeps_the_gradient_direction(dtype, margin):
    """p_k = exp(-95) is a float32 subnormal: still a direction, for every dtype and both norms."""
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]))
        model.bias.copy_(torch.tensor([margin, 0.0]))
    model = model.to(dtype)
    x, y = torch.full((2, 4), 0.5, dtype=dtype), torch.zeros(2, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        linf = fk.fgsm(model, x, y, eps=0.125, clip=None)
        l2 = fk.fgsm(model, x, y, eps=0.125, norm=2, clip=None)
    sign = torch.tensor([-1.0, 1.0, 0.0, 0.0], dtype=torch.float64).expand(2, 4)
    assert torch.equal((linf.double() - x.double()) / 0.125, sign)
    torch.testing.assert_close((l2.double() - x.double()) / 0.125, sign / math.sqrt(2), rtol=0,
                               atol=4 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_inputs_through_a_float32_model_keep_the_gradient_sign(dtype):
    """float16 data fed to a float32 model: the float32 gradient is cast to float16 on its way
    back to the input, where a confident sample's would flush to zero unless rescaled."""
    model = confident_linear(torch.float32)
    x, _ = batch(8, dtype)
    y = torch.zeros(8, dtype=torch.long)
    expected_sign = reference_gradient(model, x, y).sign()
    x_adv = fk.fgsm(lambda z: model(z.float()), x, y, eps=2.0 ** -5, clip=None)
    assert x_adv.dtype == dtype
    assert torch.equal((x_adv.double() - x.double()).sign(), expected_sign)


class HalfInsideNet(nn.Module):
    """Float32 logits from float16 internals under autocast (``.float()`` at the end, as many
    models do), confident by ``margin`` nats on class 0."""

    def __init__(self, margin: float, dtype: torch.dtype = torch.float32, inner_autocast: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.hidden, self.out = nn.Linear(10, 16), nn.Linear(16, 3)
        with torch.no_grad():
            self.out.bias.copy_(torch.tensor([margin, 0.0, 0.0]))
        self.to(dtype)
        self.inner_autocast = inner_autocast  # the model enters autocast itself, in its forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.float16, enabled=self.inner_autocast):
            return self.out(torch.tanh(self.hidden(x))).float()


def test_autocast_inside_the_model_is_seen_by_the_attacks():
    """Autocast entered in the model's forward, behind float32 logits and float32 weights, leaves
    no trace in the model's modules or at the call: the graph shows it. The attack is the one
    taken with autocast around the call (each sample's gradient rescaled before float16)."""
    x, _ = batch(128)
    y = torch.zeros(128, dtype=torch.long)
    x_adv = fk.fgsm(HalfInsideNet(margin=14.0, inner_autocast=True), x, y, eps=0.125)
    with torch.autocast("cpu", dtype=torch.float16):
        expected = fk.fgsm(HalfInsideNet(margin=14.0), x, y, eps=0.125)
    assert torch.equal(x_adv, expected)
    assert bool((x_adv != x).any(dim=1).all())


def test_adversarial_loss_with_autocast_inside_the_model_takes_the_attack_step():
    model = HalfInsideNet(margin=12.0, inner_autocast=True)
    x, _ = batch(128)
    y = torch.zeros(128, dtype=torch.long)
    criterion = fk.AdversarialLoss(alpha=0.5, eps=0.125)
    criterion(model, x, y)
    x_adv = fk.fgsm(model, x, y, eps=0.125)
    with torch.no_grad():
        expected = model(x_adv)
    assert bool((x_adv != x).any(dim=1).all())
    assert torch.equal(criterion.adversarial_logits, expected)


def test_adversarial_loss_with_a_grad_scaler_and_autocast_inside_the_model_keeps_the_clean_gradient():
    margin, scale = 14.0, 2.0 ** 16
    model, exact = HalfInsideNet(margin, inner_autocast=True), HalfInsideNet(margin, torch.float64)
    x, _ = batch(128)
    y = torch.zeros(128, dtype=torch.long)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    scaler.scale(fk.AdversarialLoss(alpha=0.5, eps=0.0)(model, x, y)).backward()
    scaler.unscale_(torch.optim.SGD(model.parameters(), lr=0.0))
    cross_entropy(exact(x.double()), y).mean().backward()
    for p, e in zip(model.parameters(), exact.parameters()):
        along = float((p.grad.double() * e.grad).sum() / (e.grad * e.grad).sum())
        assert abs(along - 1) < 0.05, along


def test_adversarial_loss_under_autocast_with_float32_logits_takes_the_attack_step():
    """The FGSM step of AdversarialLoss is fgsm's, even where the model hides float16 behind
    float32 logits (its mean-loss gradient underflowed there, and the inputs were not moved)."""
    model = HalfInsideNet(margin=12.0)
    x, _ = batch(128)
    y = torch.zeros(128, dtype=torch.long)
    criterion = fk.AdversarialLoss(alpha=0.5, eps=0.125)
    with torch.autocast("cpu", dtype=torch.float16):
        criterion(model, x, y)
        x_adv = fk.fgsm(model, x, y, eps=0.125)
        with torch.no_grad():
            expected = model(x_adv)
    assert bool((x_adv != x).any(dim=1).all())  # fgsm moves every sample
    assert torch.equal(criterion.adversarial_logits, expected)


def test_adversarial_loss_with_a_grad_scaler_keeps_the_clean_gradient_of_float16_internals():
    """The loss scale must reach the clean term's backward through float16 layers: scaled after
    the fact, a gradient that underflowed stays zero."""
    margin, scale = 14.0, 2.0 ** 16
    model, exact = HalfInsideNet(margin), HalfInsideNet(margin, torch.float64)
    x, _ = batch(128)
    y = torch.zeros(128, dtype=torch.long)
    criterion = fk.AdversarialLoss(alpha=0.5, eps=0.0)  # only the clean term's gradients differ
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = criterion(model, x, y)
    scaler.scale(loss).backward()
    scaler.unscale_(torch.optim.SGD(model.parameters(), lr=0.0))
    cross_entropy(exact(x.double()), y).mean().backward()  # eps = 0: both terms are the clean loss
    for p, e in zip(model.parameters(), exact.parameters()):
        along = float((p.grad.double() * e.grad).sum() / (e.grad * e.grad).sum())
        assert abs(along - 1) < 0.05, along


class _BatchStatistics(nn.Module):
    """Batch normalisation written by hand, as many research models do: no ``_BatchNorm`` to
    recognise, and every sample's output depends on the whole batch."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(features)), nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=0, keepdim=True)
        return centred / torch.sqrt(centred.pow(2).mean(dim=0, keepdim=True) + 1e-5) * self.weight + self.bias


class _BatchNormWithHalfScale(nn.Module):
    """Batch statistics in train mode (samples interact) and one float16 parameter equal to 1, so
    that low precision is involved while every product stays exact in float32."""

    def __init__(self, norm: type[nn.Module] = nn.BatchNorm1d) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(10, 16), norm(16), nn.Tanh(), nn.Linear(16, 3))
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.scale.float()


def _mixed_confidence_batch() -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.rand(32, 10)
    x[:16] *= 8.0  # half the batch confident, half not: very different per-sample scales
    return x


def _float64_gradient(norm: type[nn.Module], model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    exact = _BatchNormWithHalfScale(norm).double().train()
    exact.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    x64 = x.double().requires_grad_(True)
    F.cross_entropy(exact(x64), y, reduction="sum").backward()
    return x64.grad


@pytest.mark.parametrize("norm", [nn.BatchNorm1d, _BatchStatistics])
def test_rescaling_keeps_the_batch_gradient_when_samples_interact(norm):
    # Per-sample scales change the direction of a batch whose samples share statistics, whether
    # or not the model shows it (hand-written batch statistics are not a BatchNorm).
    model = _BatchNormWithHalfScale(norm).train()
    x = _mixed_confidence_batch()
    with torch.no_grad():
        y = model(x).argmax(1)
    expected = _float64_gradient(norm, model, x, y).sign()
    for x_adv in (fk.fgsm(model, x, y, eps=0.01, clip=None),
                  fk.iterative_fgsm(model, x, y, eps=0.01, step_size=0.01, steps=1, clip=None)):
        assert torch.equal((x_adv.double() - x.double()).sign(), expected)


def test_rescaling_keeps_the_batch_gradient_of_a_function_whose_samples_interact():
    # Behind a function the modules cannot be seen at all (the docs' lambda x: model(x)["logits"]).
    model = _BatchNormWithHalfScale().train()
    x = _mixed_confidence_batch().half()  # float16 inputs: the float32 gradient is cast back to them
    with torch.no_grad():
        y = model(x.float()).argmax(1)
    expected = _float64_gradient(nn.BatchNorm1d, model, x, y).sign()
    x_adv = fk.fgsm(lambda z: model(z.float()), x, y, eps=0.01, clip=None)
    assert torch.equal((x_adv.double() - x.double()).sign(), expected)


class _Recorded(nn.Module):
    """Records its forwards and the backwards through its output, behind a float16 scale."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.events = inner, []
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.events.append("forward")
        out = self.inner(x) * self.scale.float()
        if out.requires_grad:
            out.register_hook(lambda grad: self.events.append("backward"))
        return out


def test_the_samples_check_holds_one_graph_at_a_time():
    # Both halves' forwards ran before either backward: twice the activations alive at once.
    model = _Recorded(mlp())
    x, y = batch(8)
    fk.fgsm(model, x, y, eps=0.1, clip=None)
    assert model.events == ["forward", "backward", "forward", "backward"]


class _SquareRootFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(10, 3)
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.sqrt()).half().float() * self.scale.float()  # the gradient passes float16


def test_an_infinite_derivative_is_not_taken_for_samples_that_interact():
    # sqrt at 0 has an infinite derivative: the other half's zero logit gradient gives 0 * inf =
    # NaN there, which was read as an interaction, and a confident sample (margin about 70) lost
    # its per-sample scale: its gradient flushed to zero in float16 and it was not moved.
    torch.manual_seed(0)
    model = _SquareRootFirst()
    with torch.no_grad():
        model.linear.weight.mul_(3.0)
    x = torch.rand(8, 10)
    x[:, 0] = 0.0  # a black pixel in every sample
    x[:4] *= 3000.0  # half the batch very confident
    with torch.no_grad():
        y = model(x).argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NaN- or zero-gradient warning
        x_adv = fk.fgsm(model, x, y, eps=0.1, clip=None)
    assert bool((x_adv != x).any(dim=1).all())  # every sample moved


def test_adversarial_loss_keeps_the_batch_gradient_when_samples_interact():
    model = _BatchNormWithHalfScale(_BatchStatistics).train()
    x = _mixed_confidence_batch()
    with torch.no_grad():
        y = model(x).argmax(1)
    x_expected = x + 0.01 * _float64_gradient(_BatchStatistics, model, x, y).sign().float()
    criterion = fk.AdversarialLoss(alpha=0.5, eps=0.01, clip=None)
    criterion(model, x, y)
    with torch.no_grad():
        assert torch.equal(criterion.adversarial_logits, model(x_expected))


def test_float16_weights_kept_as_buffers_count_as_low_precision():
    class HalfBuffer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("weight", confident_linear(torch.float16).weight.detach().clone())
            self.bias = nn.Parameter(torch.tensor([30.0, 0.0, 0.0]))  # the margin, in float32

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x.half(), self.weight).float() + self.bias

    x, _ = batch(8)
    x_adv = fk.fgsm(HalfBuffer(), x, torch.zeros(8, dtype=torch.long), eps=2.0 ** -5, clip=None)
    assert bool((x_adv != x).all())


@pytest.mark.filterwarnings("ignore:torch.is_autocast_cpu_enabled:DeprecationWarning")
def test_torch_before_2_4_is_asked_about_autocast_without_a_device(monkeypatch):
    # torch.is_autocast_enabled(device_type) exists from torch 2.4; the package supports 2.1.
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda: False)
    x, y = batch(8)
    assert fk.fgsm(mlp(), x, y, eps=0.1).shape == x.shape
    fk.AdversarialLoss(alpha=0.5, eps=0.1)(mlp(), x, y).backward()


def scaled_norm(t: torch.Tensor) -> torch.Tensor:
    """Each sample's L2 norm in float64, divided by its largest entry first so that it cannot underflow."""
    rows = t.double().flatten(1)
    peak = rows.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return (rows / peak).norm(dim=1) * peak[:, 0]


@pytest.mark.parametrize(("dtype", "scale"), [(torch.float32, 1e-20), (torch.float64, 1e-160)])
def test_the_l2_projection_holds_for_perturbations_whose_squares_underflow(dtype, scale):
    """Inputs in tiny units: the squares of a step of 1e-22 underflow in float32, and the projection
    must still see how far outside the ball a point is."""
    torch.manual_seed(0)
    model = nn.Linear(16, 3).to(dtype)
    x = (torch.rand(4, 16, dtype=torch.float64) * scale).to(dtype)
    eps = scale / 100
    with torch.no_grad():
        y = model(x).argmin(dim=1)  # the least likely class: its gradient cannot saturate to zero
    x_adv = fk.pgd(model, x, y, eps=eps, step_size=eps, steps=5, norm=2, random_start=False, clip=None)
    assert (scaled_norm(x_adv - x) <= eps * (1 + 1e-5)).all()
    assert (scaled_norm(x_adv - x) >= eps * (1 - 1e-5)).all()  # steps of eps, projected back to the sphere


def test_the_l2_projection_of_a_point_far_outside_a_tiny_ball_lands_on_its_sphere():
    from fgsmkit.constraints import L2Ball

    ball = L2Ball(torch.zeros(1, 4), torch.tensor(1e-25), None)
    projected = ball.project(torch.full((1, 4), 1e-24))
    torch.testing.assert_close(scaled_norm(projected), torch.tensor([1e-25], dtype=torch.float64), rtol=1e-6, atol=0)


def test_the_linf_random_start_does_not_depend_on_the_default_dtype():
    model, (x, y) = mlp(), batch()
    runs = []
    for default in (torch.float32, torch.float64):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(default)
        try:
            runs.append(fk.pgd(model, x, y, eps=0.1, step_size=0.01, steps=2,
                               generator=torch.Generator().manual_seed(0)))
        finally:
            torch.set_default_dtype(previous)
    assert torch.equal(runs[0], runs[1])


def test_the_linf_random_start_of_float64_inputs_has_float64_resolution():
    model, (x, y) = mlp(torch.float64), batch(dtype=torch.float64)
    start = fk.pgd(model, x, y, eps=0.5, step_size=1e-30, steps=1, clip=None,
                   generator=torch.Generator().manual_seed(0))
    # float32 noise scaled by 0.5 has at most 24 significant bits: 2**30 * noise would be whole.
    noise = (start - x) / 0.5 * 2**30
    assert not torch.equal(noise, noise.round())


class SqrtFirst(nn.Module):
    """sqrt of the first feature: at 0 its input gradient is +inf there, finite elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[1.0, 0.5, 0.2], [-1.0, -0.5, -0.2]]))
            self.lin.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.cat([x[:, :1].sqrt(), x[:, 1:]], 1))


def test_an_infinite_gradient_entry_gives_the_l2_step_its_limiting_direction():
    """The limit of g / ||g|| as one entry grows without bound: all of the step along that entry."""
    x = torch.tensor([[0.0, 0.5, 0.5]])
    x_adv = fk.fgsm(SqrtFirst(), x, torch.tensor([0]), eps=0.5, norm=2, clip=None)
    assert torch.equal(x_adv - x, torch.tensor([[-0.5, 0.0, 0.0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l2_norms_at_the_top_of_the_range_are_finite(dtype):
    from fgsmkit.constraints import L2Ball, per_sample_l2_norm

    largest = torch.finfo(dtype).max
    assert per_sample_l2_norm(torch.tensor([[largest, 0.0]], dtype=dtype)).item() == largest
    step = L2Ball(torch.zeros(1, 3, dtype=dtype), torch.tensor(1.0, dtype=dtype), None).step(
        torch.tensor([[largest, 1.0, 0.0]], dtype=dtype), torch.tensor(1.0, dtype=dtype))
    assert step[0, 0].item() == 1.0


class _DropoutNet(nn.Module):
    """Dropout, then a linear layer; records each forward's dropout mask and input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.drop, self.linear = nn.Dropout(0.5), nn.Linear(16, 3)
        self.masks: list[torch.Tensor] = []
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        h = self.drop(x)
        self.masks.append(h.detach() != 0)
        return self.linear(h)


def _run_under(autocast: bool, call) -> tuple[_DropoutNet, torch.Tensor]:
    """``call(model)`` on a fresh dropout net, from one seed, with or without bfloat16 autocast;
    the model and the random number generator's state afterwards."""
    model = _DropoutNet().train()
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        call(model)
    return model, torch.get_rng_state()


def _loss(model: nn.Module) -> None:
    fk.AdversarialLoss(0.5, 0.1)(model, torch.rand(8, 16), torch.arange(8) % 3)


def _fgsm(model: nn.Module) -> None:
    fk.fgsm(model, torch.rand(8, 16), torch.arange(8) % 3, eps=0.1)


@pytest.mark.parametrize(("call", "adversarial_passes"), [(_loss, 1), (_fgsm, 0)], ids=["loss", "fgsm"])
def test_extra_low_precision_passes_draw_the_dropout_masks_of_the_first(call, adversarial_passes) -> None:
    # Under autocast the input gradient takes passes of its own (rescaled per sample, the even and
    # the odd samples apart). They drew new dropout masks, so AdversarialLoss built its FGSM
    # example for another noisy network than the one its clean loss was computed for (61.6% of
    # the signs agreed with that network's gradient).
    model, state = _run_under(True, call)
    float32_model, float32_state = _run_under(False, call)
    extra = model.masks[1:len(model.masks) - adversarial_passes]
    assert len(model.masks) > len(float32_model.masks) and extra
    assert all(torch.equal(mask, model.masks[0]) for mask in extra)
    # ... and they use up no random numbers: the generator ends where the float32 path leaves it.
    assert torch.equal(model.masks[0], float32_model.masks[0])
    assert torch.equal(state, float32_state)
