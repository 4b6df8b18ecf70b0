"""Property tests of the invariants every attack must keep, whatever its arguments."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fgsmkit as fk

from _support import assert_same_state, small_mlp, state_of

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Hypothesis draws tiny models whose few outputs may happen to lie in [0, 1] and sum to 1: the
# invariants below hold all the same, and the warning about probabilities is not what is tested.
pytestmark = pytest.mark.filterwarnings("ignore:model's outputs are probabilities:UserWarning")

ATTACKS = {
    "fgsm": lambda model, x, y, eps, step, norm, targeted, clip, g, **extra: fk.fgsm(
        model, x, y, eps=eps, norm=norm, targeted=targeted, clip=clip, **extra),
    "iterative_fgsm": lambda model, x, y, eps, step, norm, targeted, clip, g, **extra: fk.iterative_fgsm(
        model, x, y, eps=eps, step_size=step, steps=4, targeted=targeted, clip=clip, **extra),
    "pgd": lambda model, x, y, eps, step, norm, targeted, clip, g, **extra: fk.pgd(
        model, x, y, eps=eps, step_size=step, steps=4, norm=norm, targeted=targeted, clip=clip,
        generator=g, **extra),
    "pgd_from_x": lambda model, x, y, eps, step, norm, targeted, clip, g, **extra: fk.pgd(
        model, x, y, eps=eps, step_size=step, steps=4, norm=norm, random_start=False, targeted=targeted,
        clip=clip, **extra),
    "pgd_restarts": lambda model, x, y, eps, step, norm, targeted, clip, g, **extra: fk.pgd(
        model, x, y, eps=eps, step_size=step, steps=2, norm=norm, restarts=3, targeted=targeted,
        clip=clip, generator=g, **extra),
}
NORMS = {"fgsm": (math.inf, 2.0), "iterative_fgsm": (math.inf,), "pgd": (math.inf, 2.0), "pgd_from_x": (math.inf, 2.0),
         "pgd_restarts": (math.inf, 2.0)}


# Magnitudes of x (powers of two, so that scaling is exact) away from [0, 1], where a norm whose
# squares underflow (2**-66 ~ 1e-20 in float32/bfloat16) or a slack written for unit-sized pixels
# would hide; float16 holds neither, and a box is given for unit-sized x only.
SCALES = {torch.float16: (1.0,), torch.bfloat16: (1.0, 2.0**-66, 2.0**33), torch.float32: (1.0, 2.0**-66, 2.0**33),
          torch.float64: (1.0, 2.0**-66, 2.0**33)}


class Rescale(nn.Module):
    """Multiplies by a power of two (exactly): a model for inputs of any magnitude keeps logits of
    order one, so that its gradient neither vanishes (a saturated softmax) nor stays unused."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def at_scale(model: nn.Module, scale: float) -> nn.Module:
    return model if scale == 1.0 else nn.Sequential(Rescale(1 / scale), model)


BOXES = ("unit", "none", "tensor", "open", "0-d")


@st.composite
def attack_cases(draw: st.DrawFn, names: tuple[str, ...] = tuple(sorted(ATTACKS)),
                 boxes: tuple[str, ...] = BOXES) -> dict:
    """An attack and its arguments; ``names`` and ``boxes`` narrow the draw where a test's
    invariant needs those cases every time (a box is drawn for unit-sized x only)."""
    name = draw(st.sampled_from(names))
    dtype = draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]))
    device = draw(st.sampled_from(["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]))
    batch = draw(st.integers(1, 5))
    sample_shape = draw(st.sampled_from([(12,), (3, 2, 2), (1, 3, 4)]))
    scale = draw(st.sampled_from(SCALES[dtype] if "none" in boxes else (1.0,)))
    if draw(st.booleans()):
        eps = draw(st.floats(0.0, 0.6, allow_nan=False)) * scale
    else:  # eps of the order of an ulp of x, where x +/- eps rounds
        eps = draw(st.sampled_from([0.25, 0.5, 1.0, 1.5, 3.0])) * torch.finfo(dtype).eps * scale
    per_sample = draw(st.booleans())
    box = draw(st.sampled_from(boxes)) if scale == 1.0 else "none"
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand((batch, *sample_shape), generator=generator, dtype=torch.float64) * scale).to(device=device,
                                                                                                  dtype=dtype)
    low = torch.zeros(sample_shape, dtype=dtype, device=device)
    high = torch.ones(sample_shape, dtype=dtype, device=device)
    if box == "tensor":  # a box that differs per feature, still containing x
        low = torch.minimum(low - 0.1, x.min(0).values - 0.05).clamp_min(-0.3)
        high = (x.max(0).values + 0.05).clamp_max(1.2)
    if box == "open":  # tensor bounds with an open side: no lower bound for the first features
        low = torch.where(torch.arange(low.numel(), device=device).reshape(low.shape) < 4, -math.inf, low)
    clip = {"unit": (0.0, 1.0), "none": None, "tensor": (low, high), "open": (low, high),
            "0-d": (torch.tensor(-0.25, dtype=dtype, device=device), torch.tensor(1.0, dtype=dtype, device=device))}[box]
    eps_arg = (torch.full((batch,), eps, dtype=torch.float64) * torch.rand(batch, generator=generator, dtype=torch.float64)
               ).to(device=device, dtype=dtype) if per_sample else eps
    targeted = draw(st.booleans())
    y = torch.randint(0, 4, (batch,), generator=generator).to(device)
    return {
        "name": name, "dtype": dtype, "device": device, "x": x, "scale": scale,
        # y=None (untargeted only): the attacks label x with the model's own predictions.
        "y": None if not targeted and draw(st.booleans()) else y,
        "eps": eps_arg, "norm": draw(st.sampled_from(NORMS[name])), "targeted": targeted,
        "clip": clip, "seed": seed, "model": at_scale(small_mlp(12, 4, seed=seed % 7, dtype=dtype, device=device), scale),
    }


def default_step(case: dict) -> float:
    eps = case["eps"]
    return float(eps.max() if isinstance(eps, torch.Tensor) else eps) / 3 + 1e-3 * case["scale"]


def run(case: dict, step: float | None = None, **extra) -> torch.Tensor:
    generator = torch.Generator(device=case["device"]).manual_seed(case["seed"])
    step = default_step(case) if step is None else step
    return ATTACKS[case["name"]](case["model"], case["x"], case["y"], case["eps"], step, case["norm"],
                                 case["targeted"], case["clip"], generator, **extra)


def stateful_net(case: dict) -> nn.Module:
    """A network with state an attack could disturb: BatchNorm statistics, dropout, a frozen
    parameter; in train or eval mode."""
    torch.manual_seed(case["seed"])
    model = nn.Sequential(Rescale(1 / case["scale"]), nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8),
                          nn.Dropout(0.25), nn.Tanh(), nn.Linear(8, 4)).to(device=case["device"], dtype=case["dtype"])
    model[2].bias.requires_grad_(False)
    # BatchNorm cannot normalise a batch of one in train mode.
    model.train(case["seed"] % 2 == 0 and case["x"].shape[0] > 1)
    return model


def eps_per_sample(case: dict) -> torch.Tensor:
    eps = case["eps"]
    batch = case["x"].shape[0]
    if isinstance(eps, torch.Tensor):
        return eps.double()
    # A float eps is used as the dtype of x stores it.
    return torch.full((batch,), float(eps), dtype=case["dtype"], device=case["device"]).double()


def half_ulp(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Half an ulp, in ``dtype``, of each entry of ``v`` (float64): the most that rounding a real
    number of that magnitude to ``dtype`` can change it. Zero and subnormals share the subnormal ulp."""
    finfo = torch.finfo(dtype)
    _, exponent = torch.frexp(v.abs())  # |v| = m * 2**exponent with m in [0.5, 1)
    binade = torch.exp2((exponent - 1).clamp_min(math.log2(finfo.tiny)).double())
    return binade * finfo.eps / 2


def scaled_l2_norm(t: torch.Tensor) -> torch.Tensor:
    """Each sample's L2 norm in float64, measured on the sample divided by its largest entry, so
    that no square underflows or overflows whatever the magnitude."""
    t = t.double().flatten(1)
    peak = t.abs().amax(1, keepdim=True)
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    return (t / peak).norm(dim=1) * peak[:, 0]


def assert_in_l2_ball(case: dict, x_adv: torch.Tensor) -> None:
    x, dtype, eps = case["x"], case["dtype"], eps_per_sample(case)
    # With u the unit roundoff of the dtype of x, w that of the working precision (float32 for
    # float16/bfloat16) and n entries per sample: the projection measures the norm of the
    # rounded difference (relative error <= u) in working precision ((n + 1) / 2 + 1 roundings
    # of w), divides, multiplies (2 w), rounds to the dtype (u unless the same), and adds x:
    # each entry of x_adv errs by at most half its own ulp, h. Clipping to the box only moves
    # entries towards x. So ||x_adv - x|| <= eps * (1 + 2u + ((n + 1) / 2 + 3) w) + ||h||,
    # measured here in float64 to within (n + 4) roundings of 2**-53.
    n = x[0].numel()
    u = torch.finfo(dtype).eps / 2
    w = torch.finfo(torch.promote_types(dtype, torch.float32)).eps / 2
    h = scaled_l2_norm(half_ulp(x_adv.double(), dtype))
    bound = (eps * (1 + 2 * u + ((n + 1) / 2 + 3) * w) + h) * (1 + (n + 4) * 2.0**-53)
    assert (scaled_l2_norm(x_adv.double() - x.double()) <= bound).all()


@SETTINGS
@given(attack_cases())
def test_perturbation_stays_in_the_ball_and_the_box(case: dict) -> None:
    x_adv = run(case)
    x, dtype = case["x"], case["dtype"]
    eps = eps_per_sample(case)
    if case["norm"] == math.inf:
        # Each entry lies between x - eps and x + eps as rounded to the dtype of x (correctly
        # rounded: computed in float64 and rounded once, which for float16/bfloat16/float32 sum
        # operands gives the same bits): an overshoot of at most half an ulp of x -/+ eps per entry.
        e = eps.reshape((-1,) + (1,) * (x.ndim - 1))
        lower, upper = (x.double() - e).to(dtype), (x.double() + e).to(dtype)
        assert ((x_adv >= lower) & (x_adv <= upper)).all()
    else:
        assert_in_l2_ball(case, x_adv)
    if case["clip"] is not None:
        low, high = (torch.as_tensor(b, dtype=x.dtype, device=x.device) for b in case["clip"])
        assert (x_adv >= low).all() and (x_adv <= high).all()


@pytest.mark.parametrize(("dtype", "scale"), [(torch.float32, 2.0**-66),
                                           (torch.float32, 2.0**-90), (torch.float64, 2.0**-600)])
def test_l2_attacks_stay_in_the_ball_where_the_squares_underflow(dtype: torch.dtype, scale: float) -> None:
    """The random draws reach these magnitudes with the L2 norm too seldom to be relied on: a
    projection that squared differences of 1e-20 in float32 (subnormal squares, a norm several
    percent off) or of 1e-180 in float64 (squares of zero) would let x_adv out of the ball. (Squares
    that overflow cannot be reached: an L2 eps that large is refused.)"""
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(16, 12, generator=generator, dtype=torch.float64) * scale).to(dtype)
    model = at_scale(small_mlp(12, 4, seed=1, dtype=dtype), scale)
    eps = 0.3 * scale
    case = {"x": x, "eps": eps, "dtype": dtype, "device": "cpu", "norm": 2.0}
    for x_adv in (fk.fgsm(model, x, None, eps=eps, norm=2, clip=None),
                  fk.pgd(model, x, None, eps=eps, step_size=eps / 2, steps=3, norm=2, clip=None,
                         generator=generator)):
        assert (x_adv != x).any(1).all()
        assert_in_l2_ball(case, x_adv)


def laid_out(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``x`` with the same values in another memory layout: channels-last (4-d only), or a
    non-contiguous one (the features' order reversed in memory)."""
    if layout == "channels_last" and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "reversed":
        return x.transpose(0, -1).contiguous().transpose(0, -1)
    return x


def strides_that_matter(t: torch.Tensor) -> list[int]:
    """The strides of the dimensions longer than one (the others' strides are arbitrary)."""
    return [stride for stride, size in zip(t.stride(), t.shape) if size > 1]


@pytest.mark.parametrize("name", sorted(ATTACKS))
@SETTINGS
@given(data=st.data(), eval_mode=st.booleans(), x_is_leaf=st.booleans(),
       layout=st.sampled_from(["contiguous", "channels_last", "reversed"]))
def test_result_is_a_new_detached_tensor_like_x_and_nothing_is_modified(name: str, data: st.DataObject,
                                                                         eval_mode: bool, x_is_leaf: bool,
                                                                         layout: str) -> None:
    case = data.draw(attack_cases(names=(name,)))
    case["model"] = model = stateful_net(case)
    case["x"] = laid_out(case["x"], layout)
    y = case["y"]
    if x_is_leaf:  # x a leaf that requires grad, with a stale gradient of its own
        case["x"] = case["x"].clone().requires_grad_(True)
        case["x"].grad = torch.full_like(case["x"], 5.0)
    x = case["x"]
    params = list(model.parameters())
    params[0].grad = torch.full_like(params[0], 3.0)  # a stale gradient the attack must leave alone
    params[-1].grad = torch.zeros_like(params[-1])  # zeros, not None, and None elsewhere
    model.register_forward_hook(lambda *args: None)  # hooks of the caller's, which stay and run
    params[0].register_hook(lambda grad: None)
    x_before, y_before = x.detach().clone(), None if y is None else y.clone()
    x_grad_before, x_version, y_version = (None if x.grad is None else x.grad.clone()), x._version, (
        None if y is None else y._version)
    eps_before = case["eps"].clone() if isinstance(case["eps"], torch.Tensor) else case["eps"]
    bounds = [b for b in case["clip"] or () if isinstance(b, torch.Tensor)]
    bounds_before = [(b.clone(), b._version) for b in bounds]
    before = state_of(model)
    x_adv = run(case, eval_mode=eval_mode)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert strides_that_matter(x_adv) == strides_that_matter(x)  # laid out like x
    assert all(torch.equal(b, value) and b._version == version for b, (value, version) in zip(bounds, bounds_before))
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert x_adv.data_ptr() != x.data_ptr()
    assert torch.equal(x.detach(), x_before) and (y is None or torch.equal(y, y_before))
    assert x._version == x_version and (y is None or y._version == y_version)
    assert x.requires_grad == x_is_leaf and x.is_leaf
    assert (x.grad is None and x_grad_before is None) or torch.equal(x.grad, x_grad_before)
    if isinstance(eps_before, torch.Tensor):
        assert torch.equal(case["eps"], eps_before)
    assert_same_state(before, state_of(model))


@SETTINGS
@given(attack_cases())
def test_attacking_in_eval_mode_equals_attacking_a_model_put_in_eval_mode(case: dict) -> None:
    case["model"] = stateful_net(case)
    asked = run(case, eval_mode=True)
    case["model"].eval()
    assert torch.equal(asked, run(case))


@SETTINGS
@given(attack_cases())
def test_eps_zero_returns_x_exactly(case: dict) -> None:
    case = {**case, "eps": 0.0 if not isinstance(case["eps"], torch.Tensor) else torch.zeros_like(case["eps"])}
    case["name"] = "pgd" if case["name"] == "pgd_restarts" else case["name"]
    x_adv = run(case)
    assert torch.equal(x_adv, case["x"]) and x_adv.data_ptr() != case["x"].data_ptr()


@SETTINGS
@given(attack_cases())
def test_scalar_eps_equals_the_same_eps_per_sample(case: dict) -> None:
    first = case["eps"][0] if isinstance(case["eps"], torch.Tensor) else case["eps"]
    # eps as the dtype of x stores it, so that the test derives the same step size from both.
    case = {**case, "eps": float(torch.tensor(float(first), dtype=case["dtype"]))}
    per_sample = {**case, "eps": torch.full((case["x"].shape[0],), case["eps"], dtype=case["dtype"], device=case["device"])}
    assert torch.equal(run(case), run(per_sample))


@SETTINGS
@given(attack_cases())
def test_attacking_a_batch_equals_attacking_each_sample_alone(case: dict) -> None:
    if case["name"].startswith("pgd"):  # random starts are drawn for the whole batch at once
        case = {**case, "name": "pgd_from_x"}
    case = {**case, "dtype": torch.float64, "x": case["x"].double(), "model": case["model"].double(),
            "y": case["y"],
            "clip": None if case["clip"] is None else tuple(torch.as_tensor(b).double() for b in case["clip"])}
    if isinstance(case["eps"], torch.Tensor):
        case["eps"] = case["eps"].double()
    step = default_step(case)
    batched = run(case, step)
    for i in range(case["x"].shape[0]):
        eps_i = case["eps"][i : i + 1] if isinstance(case["eps"], torch.Tensor) else case["eps"]
        y_i = None if case["y"] is None else case["y"][i : i + 1]
        alone = run({**case, "x": case["x"][i : i + 1], "y": y_i, "eps": eps_i}, step)
        torch.testing.assert_close(alone, batched[i : i + 1], rtol=0, atol=1e-12 * case["scale"])


@pytest.mark.parametrize("norm", [math.inf, 2.0])
@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_on_softmax_regression_equals_its_closed_form(norm: float, targeted: bool) -> None:
    torch.manual_seed(1)
    model = fk.models.SoftmaxRegression(10, 3).double()
    x, y = torch.rand(16, 10, dtype=torch.float64), torch.randint(0, 3, (16,))
    w, b = model.linear.weight.detach(), model.linear.bias.detach()
    # d CE / dx = W^T (softmax(Wx + b) - onehot(y)), written out without autograd.
    grad = (torch.softmax(x @ w.T + b, 1) - torch.nn.functional.one_hot(y, 3).double()) @ w
    direction = -grad if targeted else grad
    step = direction.sign() if norm == math.inf else direction / direction.norm(dim=1, keepdim=True)
    expected = (x + 0.2 * step).clamp(0, 1)
    actual = fk.fgsm(model, x, y, eps=0.2, norm=norm, targeted=targeted)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


def test_fgsm_on_logistic_regression_moves_against_the_label_along_sign_w() -> None:
    torch.manual_seed(2)
    model = fk.models.LogisticRegression(20).double()
    x, y = torch.rand(8, 20, dtype=torch.float64) * 0.5 + 0.25, torch.tensor([0, 1] * 4)
    sign_w = model.linear.weight.detach()[0].sign()
    y_pm = (2 * y - 1).double()[:, None]  # labels in {-1, +1}
    torch.testing.assert_close(fk.fgsm(model, x, y, eps=0.1), x - 0.1 * y_pm * sign_w, rtol=0, atol=1e-15)


@pytest.mark.parametrize("seed", range(6))
def test_targeted_attacks_lower_the_target_loss(seed: int) -> None:
    model = small_mlp(12, 4, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(32, 12, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 4, (32,), generator=generator)
    loss = lambda inputs: torch.nn.functional.cross_entropy(model(inputs), target, reduction="none")  # noqa: E731
    for x_adv in (
        fk.fgsm(model, x, target, eps=0.01, targeted=True, clip=None),
        fk.pgd(model, x, target, eps=0.1, step_size=0.01, steps=10, targeted=True, clip=None, generator=generator),
        fk.pgd(model, x, target, eps=0.5, step_size=0.05, steps=10, targeted=True, norm=2, clip=None,
               random_start=False),
    ):
        assert (loss(x_adv) < loss(x)).all()


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("norm", [math.inf, 2.0])
def test_restarts_never_weaken_pgd(targeted: bool, norm: float) -> None:
    model = small_mlp(12, 4, seed=3)
    x = torch.rand(64, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(1))
    kwargs = dict(eps=0.15 if norm == math.inf else 0.6, step_size=0.05, steps=3, norm=norm, targeted=targeted)
    one = fk.pgd(model, x, y, generator=torch.Generator().manual_seed(7), **kwargs)
    five = fk.pgd(model, x, y, restarts=5, generator=torch.Generator().manual_seed(7), **kwargs)
    logits_one, logits_five = model(one), model(five)
    loss_one = torch.nn.functional.cross_entropy(logits_one, y, reduction="none")
    loss_five = torch.nn.functional.cross_entropy(logits_five, y, reduction="none")
    hit = (lambda logits: logits.argmax(1) == y) if targeted else (lambda logits: logits.argmax(1) != y)
    fooled_one, fooled_five = hit(logits_one), hit(logits_five)
    assert (fooled_five | ~fooled_one).all()
    same = fooled_one == fooled_five
    better = loss_five[same] <= loss_one[same] if targeted else loss_five[same] >= loss_one[same]
    assert better.all()
    assert not torch.equal(one, five)  # the later restarts did find something in some samples


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("norm", [math.inf, 2.0])
def test_restarts_keep_each_samples_strongest_restart(targeted: bool, norm: float) -> None:
    """Per sample: a restart that fools the model beats one that does not, then the highest loss
    (the lowest, targeted). Five single runs sharing one generator start where the restarts do."""
    model = small_mlp(12, 4, seed=3)
    x = torch.rand(64, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(1))
    kwargs = dict(eps=0.15 if norm == math.inf else 0.6, step_size=0.05, steps=3, norm=norm, targeted=targeted)
    shared = torch.Generator().manual_seed(7)
    singles = torch.stack([fk.pgd(model, x, y, generator=shared, **kwargs) for _ in range(5)])
    combined = fk.pgd(model, x, y, restarts=5, generator=torch.Generator().manual_seed(7), **kwargs)
    with torch.no_grad():
        logits = model(singles.flatten(0, 1)).view(5, 64, -1)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.repeat(5), reduction="none").view(5, 64)
    predicted = logits.argmax(-1)
    fooled = predicted == y if targeted else predicted != y
    score = fooled.double() * 1e6 + (-loss if targeted else loss)  # fooling first, then the loss
    strongest = singles[score.argmax(0), torch.arange(64)]
    assert torch.equal(combined, strongest)
    assert len(set(score.argmax(0).tolist())) > 1  # the winners come from different restarts


class Constant(nn.Module):
    """Logits that do not depend on the input: PGD stays where its random start put it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 4, dtype=x.dtype)


def random_starts(norm: float, eps: torch.Tensor, batch: int, features: int) -> torch.Tensor:
    x = torch.full((batch, features), 0.5, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="input gradient is zero"):
        start = fk.pgd(Constant(), x, torch.zeros(batch, dtype=torch.long), eps=eps, step_size=0.01, steps=1,
                       norm=norm, clip=None, generator=torch.Generator().manual_seed(0))
    return start - x


def test_linf_random_start_is_uniform_in_each_samples_own_ball() -> None:
    eps = torch.tensor([0.1, 0.3], dtype=torch.float64).repeat(1000)
    delta = random_starts(math.inf, eps, 2000, 12) / eps[:, None]  # uniform on [-1, 1] if right
    assert delta.abs().max() <= 1 and delta.min() < -0.99 and delta.max() > 0.99
    # 24,000 draws: the mean's standard deviation is 0.0037, a quarter's share's 0.0028.
    assert abs(delta.mean()) < 0.02
    for low, high in ((-1, -0.5), (-0.5, 0), (0, 0.5), (0.5, 1)):  # each quarter holds a quarter
        assert abs(((delta >= low) & (delta < high)).double().mean() - 0.25) < 0.015
    assert (delta.abs() == 1).double().mean() < 1e-3  # not piled up on the sides by a projection


def test_l2_random_start_is_uniform_in_each_samples_own_ball() -> None:
    eps = torch.tensor([0.2, 0.6], dtype=torch.float64).repeat(2000)
    delta = random_starts(2.0, eps, 4000, 12)
    radius = delta.norm(dim=1) / eps  # uniform in volume: P(radius <= r) = r**12
    assert radius.max() <= 1 + 1e-12
    for r in (0.8, 0.9, 0.95):
        assert abs((radius <= r).double().mean() - r**12) < 0.03
    assert (radius > 1 - 1e-9).double().mean() < 1e-3
    direction = delta / delta.norm(dim=1, keepdim=True)
    assert direction.mean(0).abs().max() < 0.03  # no preferred direction


def test_attacks_run_on_the_device_of_x(device: str) -> None:
    model = small_mlp(12, 4, dtype=torch.float32, device=device)
    x = torch.rand(4, 12, device=device)
    y = torch.randint(0, 4, (4,), device=device)
    g = torch.Generator(device=device).manual_seed(0)
    for x_adv in (fk.fgsm(model, x, y, eps=0.1), fk.pgd(model, x, y, eps=0.1, step_size=0.05, steps=2, generator=g),
                  fk.iterative_fgsm(model, x, y, eps=0.1, step_size=0.05, steps=2)):
        assert x_adv.device == x.device and x_adv.dtype == x.dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_keep_their_dtype_and_move_every_sample(dtype: torch.dtype) -> None:
    model = small_mlp(12, 4, seed=5, dtype=dtype)
    x = torch.rand(16, 12).to(dtype)
    y = model(x).argmax(1)
    x_adv = fk.fgsm(model, x, y, eps=0.125)
    assert x_adv.dtype == dtype
    moved = (x_adv != x).flatten(1).any(1)
    assert moved.all()


class _Dense(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def test_model_in_train_mode_with_batchnorm_keeps_its_running_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
    x, y = torch.rand(10, 6), torch.randint(0, 3, (10,))
    before = state_of(model)
    fk.pgd(model, x, y, eps=0.1, step_size=0.02, steps=5)
    assert_same_state(before, state_of(model))


def test_eval_mode_option_attacks_the_eval_model_and_restores_train_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 3)).train()
    x, y = torch.rand(10, 6), torch.randint(0, 3, (10,))
    in_eval = fk.fgsm(model, x, y, eps=0.1, eval_mode=True)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    assert torch.equal(in_eval, fk.fgsm(model, x, y, eps=0.1))


class _FreezesWhenEvaluated(nn.Module):
    """A model whose ``train()`` does more than set flags (as LoRA layers merge their adapters on
    ``eval()`` and unmerge them on ``train()``): here it freezes its body in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(6, 8), nn.Linear(8, 3)

    def train(self, mode: bool = True) -> _FreezesWhenEvaluated:
        super().train(mode)
        for p in self.body.parameters():
            p.requires_grad_(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


def test_eval_mode_is_undone_through_the_models_own_train_method() -> None:
    torch.manual_seed(0)
    x, y = torch.rand(10, 6), torch.randint(0, 3, (10,))
    model = _FreezesWhenEvaluated().train()
    model.head.eval()  # mixed modes come back as they were, each through its module's train()
    fk.fgsm(model, x, y, eps=0.1, eval_mode=True)
    assert model.training and model.body.training and not model.head.training
    assert all(p.requires_grad for p in model.parameters())  # the freeze of eval() is undone
    fk.evaluation.error_rate(model, x, y, eval_mode=True)
    assert model.training and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("norm", [math.inf, 2.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_adversarial_loss_updates_batchnorm_twice_and_leaves_everything_else_until_backward(
        dtype: torch.dtype, norm: float) -> None:
    """BatchNorm statistics move as after the clean and the adversarial forward, no more (the
    low-precision path's extra input-gradient pass must not count); modes of submodules, grads
    (None stays None), hooks and x, y are untouched before backward."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 4))
    model = model.to(dtype).train()
    model[3].eval()  # a submodule in eval mode inside a training model: dropout off, deterministic
    x = torch.rand(6, 12, dtype=torch.float64).to(dtype)  # requiring grad is refused (nothing would train it)
    x.grad = torch.ones_like(x)
    y = torch.randint(0, 4, (6,))
    seen = []
    reference = copy.deepcopy(model)
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    model[0].weight.grad = torch.zeros_like(model[0].weight)
    before = state_of(model)
    x_before, versions = x.detach().clone(), (x._version, y._version)
    loss = fk.AdversarialLoss(alpha=0.5, eps=0.1, norm=norm)(model, x, y)
    reference(seen[0])  # the clean pass and the adversarial one, as two training steps' forwards
    reference(seen[-1])
    expected = state_of(reference)
    after = state_of(model)
    for a, b in zip(after["buffers"], expected["buffers"]):
        assert torch.equal(a, b)
    before["buffers"] = after["buffers"]
    assert_same_state(before, after)
    assert torch.equal(x.detach(), x_before) and (x._version, y._version) == versions
    assert torch.equal(x.grad, torch.ones_like(x))
    loss.backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # the loss has no graph to the caller's x


@pytest.mark.parametrize("name", sorted(ATTACKS))
@SETTINGS
@given(data=st.data())
def test_every_point_the_model_sees_lies_in_the_ball_and_the_box(name: str, data: st.DataObject) -> None:
    # Only the result was checked: a random start left outside a tensor box, and projected back
    # by the first step, ran the model on points below the box's lower side.
    case = data.draw(attack_cases(names=(name,), boxes=("unit", "tensor", "open", "0-d")))
    seen = []
    case["model"].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    run(case)
    x, dtype, eps = case["x"], case["dtype"], eps_per_sample(case)
    assert seen or case["eps"] == 0  # eps=0 returns x without running the model
    for point in seen:
        if case["norm"] == math.inf:
            e = eps.reshape((-1,) + (1,) * (x.ndim - 1))
            assert ((point >= (x.double() - e).to(dtype)) & (point <= (x.double() + e).to(dtype))).all()
        else:
            assert_in_l2_ball(case, point)
        if case["clip"] is not None:
            low, high = (torch.as_tensor(b, dtype=x.dtype, device=x.device) for b in case["clip"])
            assert (point >= low).all() and (point <= high).all()


@pytest.mark.parametrize("norm", [math.inf, 2.0])
@pytest.mark.parametrize("restarts", [1, 3])
def test_the_model_only_sees_points_inside_the_ball_and_the_box(norm: float, restarts: int) -> None:
    # The result is projected at every step, so a random start outside the box or the ball left
    # no trace in it; the model, though, was run on pixels below 0.
    model = small_mlp()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 12, generator=g, dtype=torch.float64)
    x[:, :6] = x[:, :6].round()  # half the entries on a side of the box, where a random start leaves it
    y = torch.randint(0, 4, (64,), generator=g)
    eps = 0.3 if norm == math.inf else 1.0
    fk.pgd(model, x, y, eps=eps, step_size=eps / 4, steps=3, norm=norm, restarts=restarts, generator=g)
    assert len(seen) >= 3 * restarts
    for point in seen:
        assert ((point >= 0) & (point <= 1)).all()
        delta = (point - x).flatten(1)
        size = delta.abs().amax(dim=1) if norm == math.inf else delta.norm(dim=1)
        assert (size <= eps * (1 + 1e-12)).all()
