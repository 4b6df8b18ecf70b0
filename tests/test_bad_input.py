"""Every bad argument raises an error that names the argument and says how to fix it."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fgsmkit as fk
from _support import small_mlp

MODEL = small_mlp(dtype=torch.float32)
X = torch.rand(4, 12)
Y = torch.tensor([0, 1, 2, 3])


def all_attacks(**overrides):
    """Each attack with valid arguments, updated by ``overrides``."""
    base = dict(model=MODEL, x=X, y=Y, eps=0.1)
    iterative = dict(step_size=0.02, steps=2)
    return [
        lambda: fk.fgsm(**{**base, **overrides}),
        lambda: fk.iterative_fgsm(**{**base, **iterative, **overrides}),
        lambda: fk.pgd(**{**base, **iterative, **overrides}),
    ]


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (dict(eps=-0.1), ValueError, r"eps must be >= 0"),
        (dict(eps=math.nan), ValueError, r"eps must be finite"),
        (dict(eps=math.inf), ValueError, r"eps must be finite"),
        (dict(eps=torch.tensor([0.1, -0.1, 0.1, 0.1])), ValueError, r"eps must be >= 0"),
        (dict(eps=torch.tensor([0.1, 0.1])), ValueError, r"eps must be a float or a tensor of shape \(4,\)"),
        (dict(eps="0.1"), TypeError, r"eps must be a float or a tensor"),
        (dict(eps=torch.tensor(True)), TypeError, r"eps must hold real numbers; got dtype torch.bool"),
        (dict(eps=torch.tensor(0.1 + 5j)), TypeError, r"eps must hold real numbers; got dtype torch.complex"),
        (dict(x=torch.tensor([[1000.0, -1000.0]], dtype=torch.float16), y=None, clip=None, eps=65000.0,
              model=lambda x: MODEL(x.float().repeat(1, 6))),
         ValueError, r"eps=65000.0 takes x .largest \|x\| = 1000. past the largest torch.float16"),
        (dict(x=torch.full((4, 12), 1e38) * torch.tensor([1.0, -1.0]).repeat(6), clip=None, eps=3e38),
         ValueError, r"eps=3e\+38 takes x .largest \|x\| = 1e\+38. past the largest torch.float32.*clip"),
        (dict(model=lambda x: MODEL(x)[:, :0]), ValueError, r"shape \(batch, classes\) = \(4, C\) with C >= 1"),
        (dict(x=X.double().mul(255).long()), TypeError, r"x must be a floating-point tensor.*x.float\(\) / 255"),
        (dict(x=torch.where(X > 0.5, math.nan, X)), ValueError, r"x contains NaN"),
        (dict(x=X + 1.0), ValueError, r"x must lie inside clip=\(0.0, 1.0\); observed range \[1"),
        (dict(x=torch.rand(4, 13)), ValueError, r"expects 12 features per sample"),
        (dict(x=torch.tensor(0.5)), ValueError, r"x must have a batch dimension"),
        (dict(x=[[0.5]]), TypeError, r"x must be a torch.Tensor"),
        (dict(y=Y[:3]), ValueError, r"y must have one label per sample, shape \(4,\)"),
        (dict(y=Y.float()), TypeError, r"y must hold integer class indices.*y.long\(\)"),
        (dict(y=torch.tensor([0, 1, 2, 4])), ValueError, r"labels must lie in \[0, 3\]"),
        (dict(y=torch.tensor([0, -1, 2, 3])), ValueError, r"labels must lie in \[0, 3\]"),
        (dict(y=Y[:, None].expand(4, 2)), ValueError, r"y must be a 1-D tensor of class indices"),
        (dict(clip=(1.0, 0.0)), ValueError, r"clip must satisfy low <= high"),
        (dict(clip=(0.0,)), TypeError, r"clip must be a pair \(low, high\) or None"),
        (dict(clip=(torch.zeros(5), 1.0)), ValueError, r"clip\[0\] of shape \(5,\) does not broadcast"),
        (dict(model=lambda x: MODEL(x)[:, :, None]), ValueError, r"model must return floating-point logits of shape \(batch, classes\)"),
        (dict(model=lambda x: (MODEL(x), None)), TypeError, r"model must return a tensor of logits.*Wrap a model that returns a tuple"),
        (dict(model=lambda x: MODEL(x)[:2]), ValueError, r"shape \(batch, classes\) = \(4, C\)"),
        (dict(model=lambda x: MODEL(x) * math.nan), ValueError, r"model returned NaN or inf logits"),
        (dict(model=lambda x: MODEL(x).to("meta")), ValueError,  # meta stands in for another device
         r"model returned logits on meta but x is on cpu; return logits on x's device"),
        (dict(model="not a model"), TypeError, r"model must be callable"),
        (dict(loss_fn="ce"), TypeError, r"loss_fn must be callable"),
        (dict(y=None, targeted=True), ValueError, r"targeted=True needs y, the target classes"),
        (dict(model=lambda x: MODEL(x), eval_mode=True), ValueError,
         r"eval_mode=True needs the model to be an nn.Module.*call module.eval\(\) before"),
        # A flag read from a config file as a string ran as True ("False" is truthy).
        (dict(targeted="False"), TypeError, r"targeted must be True or False; got 'False'"),
        (dict(eval_mode=1), TypeError, r"eval_mode must be True or False; got 1"),
        (dict(clip=(torch.tensor(False), 1.0)), TypeError, r"clip\[0\] must hold real numbers; got dtype torch.bool"),
        (dict(clip=(0.0, torch.tensor(1 + 0j))), TypeError, r"clip\[1\] must hold real numbers; got dtype torch.complex"),
        (dict(clip=(torch.zeros((), device="meta"), 1.0)), ValueError, r"clip\[0\] is on the meta device"),
        (dict(eps=torch.full((4,), 0.1, device="meta")), ValueError, r"eps is on the meta device"),
    ],
)
def test_every_attack_rejects(overrides: dict, error: type, message: str) -> None:
    for attack in all_attacks(**overrides):
        with pytest.raises(error, match=message):
            attack()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(step_size=0.0), r"step_size must be > 0"),
        (dict(step_size=-1.0), r"step_size must be > 0"),
        (dict(steps=0), r"steps must be an int >= 1"),
        (dict(steps=2.5), r"steps must be an int >= 1"),
    ],
)
def test_iterative_attacks_reject(overrides: dict, message: str) -> None:
    for attack in all_attacks(**overrides)[1:]:
        with pytest.raises(ValueError, match=message):
            attack()


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (dict(norm=1), ValueError, r"norm must be 2 or float\('inf'\)"),
        (dict(restarts=0), ValueError, r"restarts must be an int >= 1"),
        (dict(restarts=2, random_start=False), ValueError, r"restarts > 1 needs random_start=True"),
        (dict(restarts=2, loss_fn=lambda logits, y: nn.functional.cross_entropy(logits, y)), ValueError,
         r"restarts > 1 needs a loss_fn that returns one loss per sample"),
        (dict(generator=0), TypeError, r"generator must be a torch.Generator"),
        (dict(random_start="False"), TypeError, r"random_start must be True or False; got 'False'"),
    ],
)
def test_pgd_rejects(overrides: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        fk.pgd(MODEL, X, Y, eps=0.1, step_size=0.02, steps=2, **overrides)


def test_restarts_need_class_indices_to_compare_restarts() -> None:
    soft_cross_entropy = lambda logits, targets: -(targets * logits.log_softmax(1)).sum(1)  # noqa: E731
    one_hot = nn.functional.one_hot(Y, 4).float()
    args = dict(eps=0.1, step_size=0.02, steps=2, loss_fn=soft_cross_entropy)
    x_adv = fk.pgd(MODEL, X, one_hot, random_start=False, **args)  # one walk needs no comparison
    with torch.no_grad():
        assert (soft_cross_entropy(MODEL(x_adv), one_hot) > soft_cross_entropy(MODEL(X), one_hot)).all()
    with pytest.raises(ValueError, match=r"needs y to hold class indices of shape \(4,\); got shape \(4, 4\)"):
        fk.pgd(MODEL, X, one_hot, restarts=2, **args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device type (CUDA)")
def test_a_generator_on_another_device_is_named() -> None:
    with pytest.raises(ValueError, match=r"generator is on cuda.* but x is on cpu"):
        fk.pgd(MODEL, X, Y, eps=0.1, step_size=0.02, steps=2, generator=torch.Generator(device="cuda"))


def test_fgsm_rejects_an_unsupported_norm() -> None:
    with pytest.raises(ValueError, match=r"norm must be 2 or float\('inf'\)"):
        fk.fgsm(MODEL, X, Y, eps=0.1, norm=1)


def test_a_model_on_another_device_is_named() -> None:
    model = small_mlp(dtype=torch.float32).to("meta")
    with pytest.raises(ValueError, match=r"model has parameters on meta but x is on cpu"):
        fk.fgsm(model, X, Y, eps=0.1)


@pytest.mark.parametrize("clip", [(0.0, None), (None, 1.0)])
def test_an_open_side_of_the_box_is_shown_how_to_write(clip) -> None:
    side = "upper" if clip[1] is None else "lower"
    with pytest.raises(TypeError, match=rf"got None; for no {side} bound pass .*math.inf"):
        fk.fgsm(MODEL, X, Y, eps=0.1, clip=clip)
    with pytest.raises(TypeError, match=rf"got None; for no {side} bound"):
        fk.AdversarialLoss(clip=clip)


def test_inputs_of_another_dtype_than_the_models_are_named_with_the_fix() -> None:
    model = nn.Linear(12, 4)  # float32; the inputs are float64
    with pytest.raises(TypeError, match=r"x is float64 but model has float32 parameters.*x.to\(torch.float32\)"):
        fk.fgsm(model, torch.rand(3, 12, dtype=torch.float64), torch.zeros(3, dtype=torch.long), eps=0.1)


def test_labels_on_another_device_are_named() -> None:
    with pytest.raises(ValueError, match=r"y is on meta but x is on cpu"):
        fk.fgsm(MODEL, X, Y.to("meta"), eps=0.1)


@pytest.mark.parametrize("attack", [
    lambda y: fk.fgsm(MODEL, X, y, eps=0),
    lambda y: fk.pgd(MODEL, X, y, eps=0, step_size=0.02, steps=2),
])
def test_labels_that_are_not_class_indices_are_refused_at_eps_zero_too(attack) -> None:
    # eps=0 returns x without running the model; it used to skip the label checks as well.
    assert torch.equal(attack(Y), X)
    with pytest.raises(TypeError, match="y must hold integer class indices"):
        attack(Y.float())
    with pytest.raises(ValueError, match="y must be a 1-D tensor of class indices"):
        attack(Y[:, None])


def test_errors_leave_nothing_modified() -> None:
    x, y = X.clone(), Y.clone()
    with pytest.raises(ValueError, match=r"y holds labels in \[0, 9\]"):
        fk.fgsm(MODEL, x, torch.tensor([0, 1, 2, 9]), eps=0.1)
    assert torch.equal(x, X) and torch.equal(y, Y)
    assert all(p.grad is None for p in MODEL.parameters())


@pytest.mark.filterwarnings("ignore:the input gradient is zero")  # logits near 1e34 saturate
def test_the_reach_check_is_per_sample_and_counts_the_l2_step() -> None:
    identity = lambda t: t.float() @ torch.eye(2) * 1e-4  # noqa: E731
    y = torch.tensor([0, 1])
    x = torch.tensor([[60000.0, 0.0], [0.5, 0.0]], dtype=torch.float16)
    # Each sample's |x| + eps fits float16; the largest |x| plus the largest eps would not.
    x_adv = fk.fgsm(identity, x, y, eps=torch.tensor([1.0, 60000.0]), clip=None)
    assert bool(torch.isfinite(x_adv).all()) and bool((x_adv[1] != x[1]).all())  # 60000 + 1 rounds back
    # Within half a unit in the last place of the largest float32 the sum rounds back: finite.
    largest = torch.full((2, 2), torch.finfo(torch.float32).max)
    assert bool(torch.isfinite(fk.fgsm(identity, largest, y, eps=1e30, clip=None)).all())
    # The L2 walk steps before it projects: with eps 100 and step 60000 it made inf, then NaN.
    with pytest.raises(ValueError, match=r"eps \+ step_size takes x .largest \|x\| = 60000. past the largest"):
        fk.pgd(identity, x, y, eps=100.0, step_size=60000.0, steps=1, norm=2, clip=None, random_start=False)
    # eps + step_size summed in float16 rounded 15 away, and the projection's own rounding
    # (16360 + 7 -> 16368) took the next step to inf: the result was NaN.
    one = torch.tensor([[16360.0]], dtype=torch.float16)
    for eps in (15.0, 7.0):
        with pytest.raises(ValueError, match=r"eps \+ step_size takes x"):
            fk.pgd(lambda t: torch.cat([t, -t], 1).float() * 1e-4, one, torch.tensor([1]), eps=eps,
                   step_size=49152.0, steps=3, norm=2, clip=None, random_start=False)


@pytest.mark.filterwarnings("ignore:the input gradient is zero")
def test_the_reach_check_also_runs_where_the_box_cannot_catch_an_overflow() -> None:
    # A box with infinite bounds catches nothing, and the L2 step overflows before it is clipped
    # (its projection then multiplies inf by 0): both returned inf or NaN without a word.
    class Signs(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t, -t], 1).float() * 1e-4

    model = Signs()
    x, y = torch.full((2, 1), 1000.0, dtype=torch.float16), torch.tensor([0, 1])
    for clip in ((-math.inf, math.inf), (-1e10, 1e10), (torch.tensor(-math.inf), torch.tensor(math.inf))):
        with pytest.raises(ValueError, match=r"eps=65000.0 takes x .largest \|x\| = 1000. past the largest"):
            fk.fgsm(model, x, y, eps=65000.0, clip=clip)
    big = torch.tensor([[50000.0]], dtype=torch.float16)
    with pytest.raises(ValueError, match=r"eps=60000.0 takes x .largest \|x\| = 49984. past .*; pass a smaller budget$"):
        fk.fgsm(model, big, torch.tensor([1]), eps=60000.0, norm=2, clip=(0.0, 65504.0))
    with pytest.raises(ValueError, match=r"eps \+ step_size takes x"):
        fk.pgd(model, big, torch.tensor([1]), eps=1.0, step_size=60000.0, steps=1, norm=2, clip=(0.0, 65504.0),
               random_start=False)
    with pytest.raises(ValueError, match=r"eps=60000.0 takes x"):
        fk.AdversarialLoss(eps=60000.0, norm=2, clip=(0.0, 65504.0))(model, big, torch.tensor([1]))
    # A finite box catches the L-inf step: no error; 1000 + 65000 rounds to inf and is clipped.
    x_adv = fk.fgsm(model, x, y, eps=65000.0, clip=(-65504.0, 65504.0))
    assert torch.equal(x_adv, torch.tensor([[-64000.0], [65504.0]], dtype=torch.float16))


def test_numpy_flags_and_norms_are_taken_as_their_python_values() -> None:
    np = pytest.importorskip("numpy")
    expected = fk.pgd(MODEL, X, Y, eps=0.1, step_size=0.02, steps=2, norm=2, random_start=False)
    got = fk.pgd(MODEL, X, Y, eps=0.1, step_size=0.02, steps=2, norm=np.float32(2), random_start=np.bool_(False))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("attack", [fk.iterative_fgsm, fk.pgd])
def test_step_size_none_is_refused_rather_than_run_as_fgsm(attack) -> None:
    # None was how fgsm asked the shared core for its single step: steps, restarts and the
    # random start were then ignored, and the result was fgsm's.
    with pytest.raises(TypeError, match=r"step_size must be a float or a tensor; got NoneType"):
        attack(MODEL, X, Y, eps=0.1, step_size=None, steps=10)


def test_restarts_refuse_a_loss_fn_that_returns_a_mean_on_the_first_gradient() -> None:
    # Refused only when the first walk's losses were compared: after all its steps.
    calls = []

    def model(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.shape[0])
        return MODEL(t)

    with pytest.raises(ValueError, match=r"restarts > 1 needs a loss_fn that returns one loss per sample"):
        fk.pgd(model, X, Y, eps=0.1, step_size=0.02, steps=40, restarts=5,
               loss_fn=lambda logits, y: nn.functional.cross_entropy(logits, y))
    assert len(calls) == 1


def test_adversarial_loss_names_logits_on_another_device() -> None:
    class OnMeta(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = small_mlp(dtype=torch.float32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x).to("meta")

    with pytest.raises(ValueError, match=r"model returned logits on meta but x is on cpu"):
        fk.AdversarialLoss(eps=0.1)(OnMeta(), X, Y)


@pytest.mark.parametrize("attack", [fk.iterative_fgsm, fk.pgd])
def test_a_sweep_from_eps_zero_with_the_rule_of_thumb_step_returns_x(attack) -> None:
    # step_size = 2.5 * eps / steps is 0 at eps = 0: refused for a number, accepted for the same
    # zeros per sample, so a robustness sweep that starts at eps = 0 crashed on its first point.
    for eps in (0.0, torch.zeros(4), torch.tensor(0.0)):
        got = attack(MODEL, X, Y, eps=eps, step_size=2.5 * eps / 10, steps=10)
        assert torch.equal(got, X) and got is not X
    with pytest.raises(ValueError, match=r"step_size must be > 0"):  # where eps is not 0, it still must be
        attack(MODEL, X, Y, eps=0.1, step_size=0.0, steps=10)
    with pytest.raises(ValueError, match=r"step_size must be > 0"):
        attack(MODEL, X, Y, eps=torch.tensor([0.0, 0.1, 0.0, 0.0]), step_size=0.0, steps=10)
    with pytest.raises(ValueError, match=r"step_size must be > 0 \(or 0 where eps is 0\); got -1.0"):
        attack(MODEL, X, Y, eps=torch.zeros(4), step_size=torch.tensor(-1.0), steps=10)


@pytest.mark.parametrize(("norm", "advice"), [
    ("L2", "Pass norm=2"), ("l2", "Pass norm=2"), ("2", "Pass norm=2"), ("Linf", "Pass norm=math.inf"),
    ("inf", "Pass norm=math.inf"), ("L-inf", "Pass norm=math.inf"), ("l_2", "Pass norm=2"),
    ("L1", "Only the L2 and L-inf norms are supported"),
    ("fro", "Only the L2 and L-inf norms are supported"),
])
def test_a_norm_given_as_a_string_is_refused_with_the_number_to_pass(norm, advice) -> None:
    # "inf" and "Linf" were taken silently and "L2" refused, with no word of strings.
    with pytest.raises(TypeError, match=r"norm must be the number 2 or float\('inf'\), not a string; got "
                                         rf"'{norm}'. {advice}"):
        fk.fgsm(MODEL, X, Y, eps=0.1, norm=norm)


def test_the_clip_error_prints_the_value_outside_the_box_exactly() -> None:
    # Printed with 6 digits, an entry one ulp above 1 read "observed range [..., 1]".
    x = X.clone()
    x[0, 0] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    with pytest.raises(ValueError, match=r"observed range \[.*, 1\.0000001192092896\]"):
        fk.fgsm(MODEL, x, Y, eps=0.1)


def test_restarts_take_one_loss_per_sample_in_a_column_too() -> None:
    # A loss_fn returning shape (batch, 1) is one loss per sample: accepted for a single walk, but
    # restarts refused it with "needs a loss_fn that returns one loss per sample".
    def per_sample(logits, y):
        return nn.functional.cross_entropy(logits, y, reduction="none")

    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    column = fk.pgd(MODEL, X, Y, eps=0.1, step_size=0.02, steps=2, restarts=3, generator=g(),
                    loss_fn=lambda logits, y: per_sample(logits, y)[:, None])
    assert torch.equal(column, fk.pgd(MODEL, X, Y, eps=0.1, step_size=0.02, steps=2, restarts=3, generator=g(),
                                      loss_fn=per_sample))
    with pytest.raises(ValueError, match=r"one loss per sample .*; got shape \(4, 2\)"):
        fk.pgd(MODEL, X, Y, eps=0.1, step_size=0.02, steps=2, restarts=3,
               loss_fn=lambda logits, y: per_sample(logits, y)[:, None].expand(4, 2))


@pytest.mark.parametrize("attack", [fk.fgsm, fk.iterative_fgsm, fk.pgd])
def test_a_budget_wider_than_the_box_is_warned_about(attack) -> None:
    # eps=8 meant in 0-255 pixel units on [0, 1] inputs: every input of the box is within reach,
    # and the "attack" returned whatever maximises the loss, silently.
    kwargs = {} if attack is fk.fgsm else dict(step_size=1.0, steps=2)
    with pytest.warns(UserWarning, match=r"eps=8 is wider than clip=\(0.0, 1.0\) \(its width is 1\): every input "
                                         r"in the box is within reach.*eps=8/255"):
        attack(MODEL, X, Y, eps=8, **kwargs)
    if attack is not fk.iterative_fgsm:  # the L2 ball reaches the whole box only past its diagonal, sqrt(12)
        with pytest.warns(UserWarning, match=r"eps=4 is wider than clip=\(0.0, 1.0\) \(its diagonal is 3.464\)"):
            attack(MODEL, X, Y, eps=4, norm=2, **kwargs)
    with pytest.warns(UserWarning, match=r"eps=8.0 is wider than clip=\(0.0, 1.0\)"):  # a 0-d tensor, NumPy bounds
        attack(MODEL, X, Y, eps=torch.tensor(8.0), clip=(np.float32(0), np.float32(1)), **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attack(MODEL, X, Y, eps=1.0, **kwargs)  # as wide as the box: a choice, not a slip
        attack(MODEL, X, Y, eps=8, clip=None, **kwargs)
        if attack is not fk.iterative_fgsm:
            attack(MODEL, X, Y, eps=3.0, norm=2, **kwargs)
        with pytest.raises(ValueError, match="targeted=True needs y"):  # refused: no warning before the error
            attack(MODEL, X, None, eps=8, targeted=True, **kwargs)


def test_adversarial_loss_warns_about_a_budget_wider_than_the_box() -> None:
    # Training on points only the box limits is where eps=8 meant as 8/255 does most harm.
    with pytest.warns(UserWarning, match=r"eps=8.0 is wider than clip=\(0.0, 1.0\)"):
        fk.AdversarialLoss(0.5, 8)(MODEL, X, Y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_model_that_ends_in_a_softmax_is_warned_about(dtype) -> None:
    # The loss expects logits; probabilities saturate its gradient (the guide says not to do it).
    model = small_mlp(dtype=dtype)
    x = X.to(dtype)
    with torch.no_grad():  # confident: a bfloat16 softmax's rows then sum to 1 only within 2e-3
        for parameter in model.parameters():
            parameter.mul_(8)
    probabilities = nn.Sequential(model, nn.Softmax(dim=1))
    with pytest.warns(UserWarning, match=r"model's outputs are probabilities .*each row sums to 1.*logits"):
        fk.fgsm(probabilities, x, Y, eps=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # a float16 softmax this sure flattens a gradient
        fk.fgsm(nn.Sequential(model, nn.LogSoftmax(dim=1)), x, Y, eps=0.1)  # log-probabilities are logits
        fk.fgsm(model, x, Y, eps=0.1)
        # Outputs in [0, 1] whose rows do not sum to 1 (1,000 small ReLU outputs in bfloat16).
        relu = nn.Sequential(nn.Linear(12, 1000), nn.ReLU(), nn.Linear(1000, 1000), nn.Sigmoid()).to(dtype)
        fk.fgsm(lambda v: relu(v) / 40, x, Y, eps=0.1)
        # A loss_fn written for probabilities takes them as they are.
        fk.fgsm(probabilities, x, Y, eps=0.1, loss_fn=lambda p, t: nn.functional.nll_loss((p.float() + 1e-6).log(), t))


def test_float_labels_get_the_advice_that_fits_the_function() -> None:
    # Only an attack or AdversarialLoss takes a loss_fn; the metrics and rbf_detector_loss told
    # their users to pass one all the same.
    from fgsmkit.evaluation import error_rate
    from fgsmkit.models import rbf_detector_loss

    with pytest.raises(TypeError, match=r"y must hold integer class indices; got dtype torch.float32. Use y.long\(\) "
                                        r"\(or pass a loss_fn that takes these targets\)"):
        fk.fgsm(MODEL, X, Y.float(), eps=0.1)
    with pytest.raises(TypeError, match=r"\(or pass a loss_fn that takes these targets\)"):
        fk.AdversarialLoss(0.5, 0.1)(MODEL, X, Y.float())
    for call in (lambda: error_rate(MODEL, X, Y.float()), lambda: rbf_detector_loss(torch.zeros(4, 4), Y.float())):
        with pytest.raises(TypeError, match=r"y must hold integer class indices; got dtype torch.float32. Use y.long\(\)$"):
            call()


def test_logistic_labels_of_minus_one_in_uint8_are_refused() -> None:
    # 2 * y01 - 1 on uint8 labels (read_idx's) makes -1 into 255, which compared equal to -1:
    # the loss ran with y = 255 (17.1 instead of 0.85).
    w, x = torch.tensor([1.0, -2.0]), torch.rand(4, 2)
    y01 = torch.tensor([1, 0, 1, 0], dtype=torch.uint8)
    with pytest.raises(ValueError, match="y must hold one label per sample, each -1 or \\+1"):
        fk.adversarial_logistic_loss(w, 0.1, x, 2 * y01 - 1, eps=0.1)
    signs = 2 * y01.long() - 1
    assert torch.equal(fk.adversarial_logistic_loss(w, 0.1, x, signs, eps=0.1),
                       fk.adversarial_logistic_loss(w, 0.1, x, signs.float(), eps=0.1))


def test_a_single_sample_without_its_batch_dimension_is_told_to_add_it() -> None:
    # The message asked for 12 labels, one per feature.
    model = small_mlp()
    for call in (lambda: fk.fgsm(model, torch.rand(12), torch.tensor([2]), eps=0.1),
                 lambda: fk.AdversarialLoss()(model, torch.rand(12), torch.tensor([2])),
                 lambda: fk.evaluation.error_rate(model, torch.rand(12), torch.tensor([2]))):
        with pytest.raises(ValueError, match=r"x of shape \(12,\) is read as 12 samples of one feature, for one "
                                             r"sample add the batch dimension: x.unsqueeze\(0\)"):
            call()


def test_the_metrics_name_both_dtypes_when_the_model_fails_on_x() -> None:
    # PyTorch's "mat1 and mat2 must have the same dtype" came through; the attacks named both.
    model, x, y = nn.Linear(12, 4).double(), torch.rand(6, 12), torch.randint(0, 4, (6,))
    for call in (lambda: fk.evaluation.error_rate(model, x, y), lambda: fk.evaluation.mean_confidence(model, x)):
        with pytest.raises(TypeError, match=r"x is float32 but model has float64 parameters.*x.to\(torch.float64\)"):
            call()


def test_agreement_names_the_model_whose_classes_the_labels_exceed() -> None:
    x, y = torch.rand(6, 12), torch.tensor([0, 1, 2, 3, 0, 1])
    a, b = fk.models.SoftmaxRegression(12, 4), fk.models.SoftmaxRegression(12, 3)
    with pytest.raises(ValueError, match=r"y holds labels in \[0, 3\] but model_b has 3 classes"):
        fk.evaluation.agreement_on_mistakes(a, b, x, y)


@pytest.mark.parametrize("eps", [10**400, torch.tensor(0.1, device="meta")])
def test_numbers_that_cannot_be_read_as_floats_are_refused_by_name(eps: object) -> None:
    with pytest.raises(ValueError, match="eps must be a finite float >= 0"):
        fk.AdversarialLoss(eps=eps)


@pytest.mark.parametrize("call, name", [
    (lambda v: fk.pgd(small_mlp(), torch.rand(4, 12), eps=0.1, step_size=0.05, steps=v), "steps"),
    (lambda v: fk.pgd(small_mlp(), torch.rand(4, 12), eps=0.1, step_size=0.05, steps=2, restarts=v), "restarts"),
    (lambda v: fk.fgsm(small_mlp(), torch.rand(4, 12), eps=0.1, norm=v), "norm"),
    (lambda v: fk.AdversarialLoss(alpha=v), "alpha"),
    (lambda v: fk.AdversarialLoss(eps=v), "eps"),
    (lambda v: fk.evaluation.error_rate(small_mlp(), torch.rand(4, 12), torch.zeros(4, dtype=torch.long),
                                        batch_size=v), "batch_size"),
])
def test_a_setting_of_the_wrong_type_is_a_type_error_and_a_wrong_number_a_value_error(call, name) -> None:
    # Strings and None raised ValueError from these, where fgsm(eps="0.1") raised TypeError.
    for wrong_type in ("10", None, [2]):
        with pytest.raises(TypeError, match=rf"{name} must be"):
            call(wrong_type)
    with pytest.raises(ValueError, match=rf"{name} must be"):
        call(-3)


def test_raw_errors_of_the_fuzz_are_named() -> None:
    # AttributeError 'grad_fn' for a NumPy weight; linalg's "Got Long" for an int one; aminmax's
    # "not implemented" for a sparse x; "unsupported operand" for a Fraction bias.
    from fractions import Fraction
    for weight, got in ((np.ones((3, 4)), "ndarray"), (torch.ones(3, 4, dtype=torch.long), "dtype torch.int64")):
        with pytest.raises(TypeError, match=f"weight must be a floating-point torch.Tensor .*; got {got}"):
            fk.models.max_norm_(weight, 1.0)
    with pytest.raises(TypeError, match=r"x must be a dense tensor; got layout torch.sparse_coo.*x.to_dense\(\)"):
        fk.fgsm(small_mlp(), torch.rand(4, 12).to_sparse(), torch.zeros(4, dtype=torch.long), eps=0.1)
    w, x, y = torch.tensor([1.0, -2.0]), torch.rand(3, 2), torch.tensor([1.0, -1.0, 1.0])
    assert torch.equal(fk.adversarial_logistic_loss(w, Fraction(1, 4), x, y, eps=0.1),
                       fk.adversarial_logistic_loss(w, 0.25, x, y, eps=0.1))


def test_a_complex_or_bool_tensor_setting_is_a_type_error() -> None:
    # A real tensor is the right type (its value or shape may be wrong); these are not.
    for bad in (torch.tensor(0.1 + 0j), torch.tensor(True)):
        with pytest.raises(TypeError, match="eps must be a finite float >= 0"):
            fk.AdversarialLoss(eps=bad)
        with pytest.raises(TypeError, match="alpha must be a float in"):
            fk.AdversarialLoss(alpha=bad)
    with pytest.raises(ValueError, match="eps must be"):  # a real tensor out of range/shape: the value
        fk.AdversarialLoss(eps=torch.tensor([0.1, 0.2]))
