"""AdversarialLoss (eq. 6) and the closed-form adversarial logistic loss (section 5)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fgsmkit as fk
from _support import small_mlp
from fgsmkit.gradient import cross_entropy


def data(n: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 12, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def mean_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The library's default loss: F.cross_entropy's value, with a cancellation-free gradient."""
    return cross_entropy(logits, y, reduction="mean")


def slow_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, alpha: float, eps: float,
                   norm: float = math.inf) -> torch.Tensor:
    """Eq. (6) the straightforward way: attack, then recompute the clean loss, then add."""
    x_adv = fk.fgsm(model, x, y, eps=eps, norm=norm)
    return alpha * mean_cross_entropy(model(x), y) + (1 - alpha) * mean_cross_entropy(model(x_adv), y)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("norm", [math.inf, 2.0])
def test_value_and_gradient_equal_the_straightforward_computation(alpha: float, norm: float) -> None:
    x, y = data()
    model = small_mlp()
    loss = fk.AdversarialLoss(alpha=alpha, eps=0.25, norm=norm)(model, x, y)
    loss.backward()
    ours = grads(model)
    model.zero_grad(set_to_none=True)
    reference = slow_reference(model, x, y, alpha, 0.25, norm)
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-14, atol=0)
    for a, b in zip(ours, grads(model)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_gradient_is_bit_identical_to_the_straightforward_computation_at_alpha_half() -> None:
    torch.manual_seed(0)
    model = fk.models.MaxoutMLP()
    x, y = torch.rand(128, 784), torch.randint(0, 10, (128,))
    fk.AdversarialLoss(alpha=0.5, eps=0.25)(model, x, y).backward()
    ours = grads(model)
    model.zero_grad(set_to_none=True)
    slow_reference(model, x, y, 0.5, 0.25).backward()
    assert all(torch.equal(a, b) for a, b in zip(ours, grads(model)))


def _bit_identical_setup():
    torch.manual_seed(0)
    model = fk.models.MaxoutMLP(hidden=(24, 24))
    x, y = torch.rand(16, 784), torch.randint(0, 10, (16,))
    slow_reference(model, x, y, 0.5, 0.25).backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    return model, x, y, expected


def test_clean_gradients_stored_in_grad_leave_autograd_grad_and_accumulation_right() -> None:
    # loss.backward() with .grad None stores the clean gradients in .grad and lets autograd add
    # the adversarial ones in place; every other way of differentiating gets the same numbers.
    model, x, y, expected = _bit_identical_setup()
    criterion = fk.AdversarialLoss(alpha=0.5, eps=0.25)
    params = list(model.parameters())

    by_grad = torch.autograd.grad(criterion(model, x, y), params)
    assert all(torch.equal(a, b) for a, b in zip(by_grad, expected))
    assert all(p.grad is None for p in params)  # autograd.grad never writes .grad

    model.zero_grad(set_to_none=False)  # zeros: 0 + (clean + adv) has the same bits
    criterion(model, x, y).backward()
    assert all(torch.equal(a, b) for a, b in zip(grads(model), expected))

    criterion(model, x, y).backward()  # accumulated onto the first: twice the gradient
    for a, b in zip(grads(model), expected):
        torch.testing.assert_close(a, 2 * b, rtol=1e-6, atol=1e-9)

    model.zero_grad(set_to_none=True)
    criterion(model, x, y).backward(inputs=params[:2])  # only these are accumulated
    assert all(torch.equal(p.grad, b) for p, b in zip(params[:2], expected[:2]))
    assert all(p.grad is None for p in params[2:])


def test_a_hook_on_a_parameter_sees_the_whole_gradient() -> None:
    model, x, y, expected = _bit_identical_setup()
    seen = []
    weight = model.output.weight if hasattr(model, "output") else list(model.parameters())[-2]
    handle = weight.register_hook(lambda g: seen.append(g.clone()))
    fk.AdversarialLoss(alpha=0.5, eps=0.25)(model, x, y).backward()
    handle.remove()
    index = [p is weight for p in model.parameters()].index(True)
    assert len(seen) == 1 and torch.equal(seen[0], expected[index])
    assert torch.equal(weight.grad, expected[index])


class _ScaledLoss(nn.Module):
    """A loss_fn with a learnable part: logits divided by a trained temperature."""

    def __init__(self) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return mean_cross_entropy(logits / self.temperature, y)


class _SharedHead(nn.Module):
    """Uses a weight it does not own (tied to another module's), so model.parameters() misses it."""

    def __init__(self, owner: nn.Linear) -> None:
        super().__init__()
        self.body = nn.Linear(12, 6, dtype=torch.float64)
        self.__dict__["owner"] = owner  # not registered as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.tanh(self.body(x)), self.owner.weight)


@pytest.mark.parametrize("setup", ["learnable loss_fn", "weight owned elsewhere"])
def test_every_tensor_the_clean_term_reaches_gets_its_gradient(setup: str) -> None:
    # The clean term's gradients are handed over for everything its backward would reach, not
    # only model.parameters(): the straightforward computation's gradients, bit for bit.
    x, y = data()
    torch.manual_seed(0)
    if setup == "learnable loss_fn":
        model, loss_fn = small_mlp(), _ScaledLoss()
        extra = [loss_fn.temperature]
    else:
        owner = nn.Linear(6, 4, dtype=torch.float64)
        model, loss_fn = _SharedHead(owner), mean_cross_entropy
        extra = [owner.weight]
    trained = [*model.parameters(), *extra]
    fk.AdversarialLoss(alpha=0.5, eps=0.25, loss_fn=loss_fn)(model, x, y).backward()
    ours = [p.grad.clone() for p in trained]
    for p in trained:
        p.grad = None
    x_adv = fk.fgsm(model, x, y, eps=0.25, loss_fn=loss_fn)
    (0.5 * loss_fn(model(x), y) + 0.5 * loss_fn(model(x_adv), y)).backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(ours, trained))


class _FrozenBackbone(nn.Module):
    """Runs its network under no_grad: its logits carry no graph (linear probing, a frozen model)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net(x)


def test_a_learnable_loss_fn_behind_a_frozen_model_gets_both_terms_gradients() -> None:
    # The input gradient is zero (the model cut the graph), so x_adv = x; the clean term still
    # reaches the temperature. Its share was dropped: the gradient came out half the true one.
    x, y = data()
    model, loss_fn = _FrozenBackbone(), _ScaledLoss()
    with pytest.warns(RuntimeWarning, match="input gradient is zero"):
        fk.AdversarialLoss(alpha=0.5, eps=0.25, loss_fn=loss_fn)(model, x, y).backward()
    ours = loss_fn.temperature.grad.clone()
    loss_fn.temperature.grad = None
    (0.5 * loss_fn(model(x), y) + 0.5 * loss_fn(model(x), y)).backward()
    assert torch.equal(ours, loss_fn.temperature.grad)


class _Summed(nn.Module):
    """W = A + B (a weight plus a learned delta): autograd hands A and B one gradient tensor.
    And a bias reached only through ``bias.sum()``, whose gradient is an expanded view."""

    def __init__(self) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.randn(4, 12, dtype=torch.float64) * 0.3)
        self.B = nn.Parameter(torch.randn(4, 12, dtype=torch.float64) * 0.3)
        self.bias = nn.Parameter(torch.randn(5, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.A + self.B) + self.bias.sum()


def _straightforward_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    slow_reference(model, x, y, 0.5, 0.25).backward()
    gradients = grads(model)
    model.zero_grad(set_to_none=True)
    return gradients


@pytest.mark.parametrize("shared", ["soft targets from a teacher", "a loss weight computed once"])
def test_history_built_before_the_call_is_back_propagated_once_like_the_straightforward_loss(shared) -> None:
    # Both terms reach a graph built before the criterion runs; the clean backward must not
    # free it, and its leaves get the gradients of both terms.
    x, y = data()
    torch.manual_seed(0)
    model, teacher = small_mlp(), small_mlp(seed=1)
    raw = nn.Parameter(torch.tensor([0.5, -0.2, 0.1, 0.3], dtype=torch.float64))
    if shared == "soft targets from a teacher":
        targets = teacher(x).softmax(dim=1)  # trained together with the student
        loss_fn = lambda z, t: -(t * z.log_softmax(dim=1)).sum(dim=1)  # noqa: E731
    else:
        weight = F.softplus(raw)  # once per step, used by both terms
        targets, loss_fn = y, lambda z, t: F.cross_entropy(z, t, reduction="none") * weight[t]
    trained = [*model.parameters(), *teacher.parameters(), raw]
    fk.AdversarialLoss(alpha=0.5, eps=0.25, loss_fn=loss_fn)(model, x, targets).backward()
    ours = [p.grad for p in trained]
    for p in trained:
        p.grad = None
    if shared == "soft targets from a teacher":
        targets = teacher(x).softmax(dim=1)
    else:
        weight = F.softplus(raw)
    x_adv = fk.fgsm(model, x, targets, eps=0.25, loss_fn=loss_fn)
    (0.5 * loss_fn(model(x), targets).mean() + 0.5 * loss_fn(model(x_adv), targets).mean()).backward()
    for a, p in zip(ours, trained):
        assert (a is None) == (p.grad is None)
        if a is not None:
            torch.testing.assert_close(a, p.grad, rtol=1e-13, atol=1e-15)


def test_gradients_that_share_memory_or_are_expanded_are_not_accumulated_into() -> None:
    x, y = data()
    torch.manual_seed(0)
    model = _Summed()
    expected = _straightforward_gradients(model, x, y)
    fk.AdversarialLoss(alpha=0.5, eps=0.25)(model, x, y).backward()
    assert model.A.grad is not model.B.grad
    for ours, reference in zip(grads(model), expected):  # A and B: summed in another order
        torch.testing.assert_close(ours, reference, rtol=1e-13, atol=1e-15)


def test_a_hook_on_a_parameter_runs_once_on_the_whole_gradient() -> None:
    x, y = data()
    model = small_mlp()
    weight = next(model.parameters())
    expected = _straightforward_gradients(model, x, y)
    calls = []
    weight.register_hook(lambda g: calls.append(g.clone()) or 2 * g)
    fk.AdversarialLoss(alpha=0.5, eps=0.25)(model, x, y).backward()
    assert len(calls) == 1
    torch.testing.assert_close(calls[0], expected[0], rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(weight.grad, 2 * expected[0], rtol=1e-13, atol=1e-15)
    for ours, reference in zip(grads(model)[1:], expected[1:]):
        torch.testing.assert_close(ours, reference, rtol=1e-13, atol=1e-15)


def test_a_second_backward_or_a_double_backward_is_refused_with_the_reason() -> None:
    x, y = data()
    model = small_mlp()
    criterion = fk.AdversarialLoss(alpha=0.5, eps=0.25)
    loss = criterion(model, x, y)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="back-propagated only once.*Call the criterion again"):
        loss.backward()
    # create_graph=True (a gradient penalty) would get the clean term's gradients as constants.
    loss = criterion(model, x, y)
    with pytest.raises(RuntimeError, match="cannot be differentiated twice"):
        torch.autograd.grad(loss, list(model.parameters()), create_graph=True)


def test_numpy_scalars_are_accepted_as_settings() -> None:
    np = pytest.importorskip("numpy")
    criterion = fk.AdversarialLoss(alpha=np.float32(0.5), eps=np.float64(0.25))
    assert (criterion.alpha, criterion.eps) == (0.5, 0.25)


def test_alpha_one_is_the_plain_loss() -> None:
    x, y = data()
    model = small_mlp()
    loss = fk.AdversarialLoss(alpha=1.0, eps=0.25)(model, x, y)
    loss.backward()
    ours = grads(model)
    model.zero_grad(set_to_none=True)
    plain = mean_cross_entropy(model(x), y)
    plain.backward()
    assert torch.equal(loss, plain)
    assert all(torch.equal(a, b) for a, b in zip(ours, grads(model)))
    # and PyTorch's loss, up to the rounding of its true-class gradient entry (p_y - 1)
    model.zero_grad(set_to_none=True)
    torch_loss = F.cross_entropy(model(x), y)
    torch_loss.backward()
    torch.testing.assert_close(loss, torch_loss, rtol=1e-14, atol=0)
    for a, b in zip(ours, grads(model)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_two_forward_passes_and_no_gradient_before_backward() -> None:
    x, y = data()
    model = small_mlp()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    stale = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, g in zip(model.parameters(), stale):
        p.grad = g.clone()
    criterion = fk.AdversarialLoss(alpha=0.5, eps=0.25)
    loss = criterion(model, x, y)
    assert len(calls) == 2
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), stale))  # untouched until backward
    loss.backward()
    assert len(calls) == 2
    # The backward accumulated onto the stale grads, as loss.backward() always does.
    accumulated = grads(model)
    model.zero_grad(set_to_none=True)
    slow_reference(model, x, y, 0.5, 0.25).backward()
    for a, g, p in zip(accumulated, stale, model.parameters()):
        torch.testing.assert_close(a, g + p.grad, rtol=1e-12, atol=1e-14)


def test_clean_logits_are_given_without_another_pass() -> None:
    x, y = data()
    model = small_mlp()
    criterion = fk.AdversarialLoss(alpha=0.5, eps=0.25)
    criterion(model, x, y)
    assert torch.equal(criterion.clean_logits, model(x))
    assert not criterion.clean_logits.requires_grad
    assert torch.equal(criterion.adversarial_logits, model(fk.fgsm(model, x, y, eps=0.25)))


def test_a_scaled_backward_scales_every_gradient() -> None:
    x, y = data()
    model = small_mlp()
    criterion = fk.AdversarialLoss(alpha=0.5, eps=0.25)
    criterion(model, x, y).backward()
    once = grads(model)
    model.zero_grad(set_to_none=True)
    (criterion(model, x, y) * 4.0).backward()  # e.g. a GradScaler's loss scale
    for a, b in zip(once, grads(model)):
        torch.testing.assert_close(4 * a, b, rtol=1e-14, atol=0)


def test_inputs_are_not_modified_and_train_mode_is_kept() -> None:
    x, y = data()
    model = small_mlp().train()
    x_before, y_before = x.clone(), y.clone()
    fk.AdversarialLoss()(model, x, y).backward()
    assert torch.equal(x, x_before) and torch.equal(y, y_before) and model.training


def test_training_with_it_lowers_the_adversarial_error_of_a_linear_model() -> None:
    torch.manual_seed(0)
    x = torch.rand(400, 10)
    y = (x[:, :5].sum(1) > x[:, 5:].sum(1)).long()
    errors = {}
    for alpha in (1.0, 0.5):
        torch.manual_seed(1)
        model = fk.models.SoftmaxRegression(10, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        criterion = fk.AdversarialLoss(alpha=alpha, eps=0.1)
        for _ in range(300):
            optimizer.zero_grad()
            criterion(model, x, y).backward()
            optimizer.step()
        x_adv = fk.fgsm(model, x, y, eps=0.1)
        errors[alpha] = (model(x_adv).argmax(1) != y).float().mean().item()
    assert errors[0.5] < errors[1.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(alpha=1.5), r"alpha must be a float in \[0, 1\]"),
        (dict(alpha=-0.1), r"alpha must be a float in \[0, 1\]"),
        (dict(alpha=math.nan), r"alpha must be a float in \[0, 1\]"),
        (dict(eps=-0.25), r"eps must be a finite float >= 0"),
        (dict(eps=math.inf), r"eps must be a finite float >= 0"),
        (dict(norm=1), r"norm must be 2 or float\('inf'\)"),
        (dict(clip=(1.0, 0.0)), r"clip must satisfy low <= high"),  # found at construction, not on a call
    ],
)
def test_bad_settings_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fk.AdversarialLoss(**kwargs)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("alpha", 1.5, r"alpha must be a float in \[0, 1\]"),
        ("alpha", math.nan, r"alpha must be a float in \[0, 1\]"),
        ("norm", 1, r"norm must be 2 or float\('inf'\)"),
        # The constructor refuses a per-sample eps (the batch size is not known); written later it
        # was taken as one per sample of whatever batch came.
        ("eps", torch.full((32,), 0.1), r"eps must be a finite float >= 0"),
        ("eps", -0.1, r"eps must be a finite float >= 0"),
    ],
)
def test_settings_changed_after_construction_are_checked_on_the_call(setting: str, value: float,
                                                                       message: str) -> None:
    # A schedule may write criterion.alpha between epochs, as it may write criterion.eps.
    x, y = data()
    criterion = fk.AdversarialLoss(alpha=0.5, eps=0.25)
    setattr(criterion, setting, value)
    with pytest.raises(ValueError, match=message):
        criterion(small_mlp(), x, y)


def test_inputs_with_a_graph_are_refused_rather_than_cut_from_it() -> None:
    # x made by a trainable layer: the straightforward objective sends that layer gradient, and
    # detaching x would silently train it on nothing.
    x, y = data()
    encoder = nn.Linear(12, 12).double()
    with pytest.raises(ValueError, match=r"x requires grad.*inside model"):
        fk.AdversarialLoss(alpha=0.5, eps=0.25)(small_mlp(), torch.sigmoid(encoder(x)), y)
    assert encoder.weight.grad is None
    with torch.no_grad():  # no graph is built, so nothing is cut: an adversarial validation loss
        value = fk.AdversarialLoss(alpha=0.5, eps=0.25)(small_mlp(), x.clone().requires_grad_(True), y)
    assert torch.equal(value, fk.AdversarialLoss(alpha=0.5, eps=0.25)(small_mlp(), x, y).detach())


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors:UserWarning")
def test_inputs_without_features_give_the_plain_loss() -> None:
    # Nothing to perturb: the adversarial term is the clean one (the model reads its bias only).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(0, 3))
    x, y = torch.rand(5, 0), torch.tensor([0, 1, 2, 1, 0])
    loss = fk.AdversarialLoss(alpha=0.5, eps=0.25)(model, x, y)
    assert torch.equal(loss, mean_cross_entropy(model(x), y))


def test_settings_take_numbers_in_any_form_the_attacks_take() -> None:
    x, y = data()
    expected = fk.AdversarialLoss(alpha=0.5, eps=0.25)(small_mlp(), x, y)
    assert torch.equal(fk.AdversarialLoss(alpha=torch.tensor(0.5), eps=torch.tensor(0.25))(small_mlp(), x, y), expected)


def test_bad_call_arguments_are_rejected() -> None:
    x, y = data()
    criterion = fk.AdversarialLoss()
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        criterion(lambda t: t, x, y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        criterion(small_mlp(), x, torch.full_like(y, 4))
    with pytest.raises(ValueError, match=r"x must lie inside clip"):
        criterion(small_mlp(), x * 3, y)


def _margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """An additive-margin softmax loss that subtracts its margin in place, as some are written."""
    logits[torch.arange(len(y)), y] -= 5.0
    return F.cross_entropy(logits, y)


def test_logged_logits_are_the_models_even_when_loss_fn_edits_them_in_place() -> None:
    x, y = data()
    model = small_mlp()
    criterion = fk.AdversarialLoss(0.5, 0.1, loss_fn=_margin_loss)
    criterion(model, x, y).backward()
    with torch.no_grad():
        assert torch.equal(criterion.clean_logits, model(x))
        assert torch.equal(criterion.adversarial_logits, model(fk.fgsm(model, x, y, eps=0.1, loss_fn=_margin_loss)))


def test_loss_fn_set_after_construction_is_checked_and_used_on_the_call() -> None:
    x, y = data()
    model = nn.Sequential(nn.Linear(12, 1)).double()
    hinge = lambda z, t: F.relu(1 - t * z[:, 0])  # noqa: E731  labels in {-1, +1}
    signs = y % 2 * 2 - 1
    criterion = fk.AdversarialLoss(0.5, 0.1)
    criterion.loss_fn = hinge  # a schedule may change it: no stale label check for the default loss
    assert torch.equal(criterion(model, x, signs), fk.AdversarialLoss(0.5, 0.1, loss_fn=hinge)(model, x, signs))
    criterion.loss_fn = None  # back to the default, as in the constructor
    assert torch.equal(criterion(small_mlp(), x, y), fk.AdversarialLoss(0.5, 0.1)(small_mlp(), x, y))
    criterion.loss_fn = "cross_entropy"
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        criterion(small_mlp(), x, y)


def test_a_model_that_returns_a_tuple_is_told_to_wrap_it_in_a_module() -> None:
    class WithAux(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(12, 4).double()

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.linear(x), x

    x, y = data()
    with pytest.raises(TypeError, match=r"got tuple.*an nn.Module whose forward returns model\(x\)\['logits'\]"):
        fk.AdversarialLoss()(WithAux(), x, y)


def test_cached_parametrizations_shared_by_both_passes_are_back_propagated_once() -> None:
    # parametrize.cached() computes a parametrized weight once, in the clean pass, and the
    # adversarial pass reuses it: a backward that yields the clean gradients would free it.
    from torch.nn.utils import parametrize, parametrizations
    x, y = data()
    model, reference = small_mlp(), small_mlp()
    for m in (model, reference):
        parametrizations.weight_norm(m.layers[0].linear)
    with parametrize.cached():
        loss = fk.AdversarialLoss(0.5, 0.1)(model, x, y)
        loss.backward()
    slow_reference(reference, x, y, 0.5, 0.1).backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-15)


@pytest.mark.filterwarnings("ignore:the input gradient is zero:RuntimeWarning")
def test_targets_built_in_another_thread_are_back_propagated_once() -> None:
    # Autograd numbers its nodes per thread: soft targets from a teacher run in the main thread
    # must not pass for this call's own graph when the criterion runs in a worker thread.
    import threading
    x, _ = data()
    student, teacher = small_mlp(), small_mlp()
    soft = lambda z, t: -(t * z.log_softmax(1)).sum(1)  # noqa: E731
    targets = teacher(x).softmax(1)  # built before the call, with a graph, in this thread
    errors: list[BaseException] = []

    def step() -> None:
        try:
            fk.AdversarialLoss(0.5, 0.1, loss_fn=soft)(student, x, targets).backward()
        except BaseException as error:  # noqa: BLE001  reported in the main thread
            errors.append(error)

    worker = threading.Thread(target=step)
    worker.start()
    worker.join()
    assert not errors, errors
    assert all(p.grad is not None for p in student.parameters())


def test_reentrant_activation_checkpointing_is_refused_with_the_fix() -> None:
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Linear(12, 16).double(), nn.Linear(16, 4).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(checkpoint(lambda h: torch.tanh(self.body(h)), x, use_reentrant=True))

    x, y = data()
    for call in (lambda m: fk.AdversarialLoss()(m, x, y), lambda m: fk.fgsm(m, x, y, eps=0.1)):
        with pytest.raises(ValueError, match=r"use_reentrant=True.*use_reentrant=False"):
            call(Checkpointed())


# The closed form of section 5 ------------------------------------------------------------------


@pytest.mark.parametrize("label", [-1.0, 1.0])
def test_closed_form_equals_the_logistic_loss_on_the_fgsm_example(label: float) -> None:
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(20, generator=g, dtype=torch.float64), 0.3
    x = torch.rand(16, 20, generator=g, dtype=torch.float64)
    y = torch.full((16,), label, dtype=torch.float64)
    x_fgsm = x - 0.1 * y[:, None] * w.sign()
    on_example = F.softplus(-y * (x_fgsm @ w + b))
    torch.testing.assert_close(fk.adversarial_logistic_loss(w, b, x, y, eps=0.1), on_example)


def test_closed_form_uses_the_fgsm_example_of_fk_fgsm() -> None:
    torch.manual_seed(3)
    model = fk.models.LogisticRegression(20).double()
    x = torch.rand(10, 20, dtype=torch.float64) * 0.6 + 0.2
    y01 = torch.tensor([0, 1] * 5)
    x_adv = fk.fgsm(model, x, y01, eps=0.1)
    y_pm = 2 * y01.double() - 1
    w, b = model.linear.weight.detach()[0], model.linear.bias.detach()[0]
    torch.testing.assert_close(fk.adversarial_logistic_loss(w, b, x, y_pm, eps=0.1),
                               F.softplus(-y_pm * (x_adv @ w + b)))


def test_the_paper_printed_form_is_wrong_for_negative_labels() -> None:
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(5, generator=g, dtype=torch.float64), torch.rand(3, 5, generator=g, dtype=torch.float64)
    for label in (1.0, -1.0):
        y = torch.full((3,), label, dtype=torch.float64)
        printed = F.softplus(y * (0.2 * w.abs().sum() - x @ w))
        ours = fk.adversarial_logistic_loss(w, 0.0, x, y, eps=0.2)
        assert torch.allclose(printed, ours) == (label == 1.0)


def test_closed_form_rejects_bad_labels_and_shapes() -> None:
    w, x = torch.ones(4), torch.rand(2, 4)
    with pytest.raises(ValueError, match=r"y must hold one label per sample, each -1 or \+1"):
        fk.adversarial_logistic_loss(w, 0.0, x, torch.tensor([0.0, 1.0]), eps=0.1)
    with pytest.raises(ValueError, match=r"x must have 4 elements per sample"):
        fk.adversarial_logistic_loss(w, 0.0, torch.rand(2, 5), torch.tensor([1.0, -1.0]), eps=0.1)
    with pytest.raises(ValueError, match=r"eps must be a finite float >= 0"):
        fk.adversarial_logistic_loss(w, 0.0, x, torch.tensor([1.0, -1.0]), eps=-1.0)
    # One bias for all samples: a (batch, 1) one broadcast to a (batch, batch) "loss".
    for b in (torch.full((2, 1), 0.3), torch.zeros(2)):
        with pytest.raises(ValueError, match=r"b must be a number or a tensor with one element"):
            fk.adversarial_logistic_loss(w, b, x, torch.tensor([1.0, -1.0]), eps=0.1)
    with pytest.raises(TypeError, match=r"w, x and b must share one floating-point dtype; got float64, float32"):
        fk.adversarial_logistic_loss(w.double(), 0.0, x, torch.tensor([1.0, -1.0]), eps=0.1)
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor"):
        fk.adversarial_logistic_loss(w, 0.0, x.tolist(), torch.tensor([1.0, -1.0]), eps=0.1)
    assert fk.adversarial_logistic_loss(w, torch.tensor([0.3]), x, torch.tensor([1.0, -1.0]), eps=0.1).shape == (2,)


def test_closed_form_refuses_bool_labels_and_meta_tensors() -> None:
    w, x = torch.ones(4), torch.rand(2, 4)
    with pytest.raises(TypeError, match="y must hold real numbers"):
        fk.adversarial_logistic_loss(w, 0.0, x, torch.tensor([True, True]), eps=0.1)
    with pytest.raises(ValueError, match="w is on the meta device"):
        fk.adversarial_logistic_loss(w.to("meta"), 0.0, x, torch.tensor([1.0, -1.0]), eps=0.1)
    with pytest.raises(ValueError, match="y is on the meta device"):
        fk.adversarial_logistic_loss(w, 0.0, x, torch.tensor([1.0, -1.0], device="meta"), eps=0.1)


def _batchnorm_mlp(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)


@pytest.mark.parametrize("eps, clip, scale", [(1e5, (0.0, 1.0), 1.0), (65000.0, None, 1000.0)])
def test_an_eps_the_dtype_cannot_hold_is_refused_before_the_model_runs(eps, clip, scale) -> None:
    # The refusal came after the clean forward and backward, which had moved the BatchNorm
    # statistics (and used up the first call's gradient check); fgsm refuses it untouched.
    model = _batchnorm_mlp(torch.float16)
    x, y = torch.rand(6, 8, dtype=torch.float16) * scale, torch.randint(0, 4, (6,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    criterion = fk.AdversarialLoss(eps=eps, clip=clip)
    with pytest.raises(ValueError, match="eps"):
        criterion(model, x, y)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert criterion.clean_logits is None and not criterion.checked


class _NaNLogits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * math.nan


def test_a_refused_first_call_leaves_the_first_call_checks_to_the_next() -> None:
    # The checks were marked done before they ran: after a call refused for NaN logits, the same
    # criterion returned NaN losses silently, and never warned about a later model's dead gradient.
    torch.manual_seed(0)
    x, y = torch.rand(6, 8), torch.randint(0, 4, (6,))
    criterion = fk.AdversarialLoss()
    for _ in range(2):
        with pytest.raises(ValueError, match="NaN or inf logits"):
            criterion(_NaNLogits(), x, y)
        assert not criterion.checked
    dead = nn.Sequential(nn.Linear(8, 4))
    with torch.no_grad():
        dead[0].weight.zero_()
    with pytest.warns(RuntimeWarning, match="input gradient is zero for 6 of 6 samples"):
        criterion(dead, x, y).backward()
    assert criterion.checked


def test_a_model_ending_in_a_softmax_warns_as_in_the_attacks() -> None:
    # The default loss took the probabilities for logits, silently, where fgsm warned.
    torch.manual_seed(0)
    net = nn.Linear(8, 4)
    with torch.no_grad():
        net.weight.mul_(20)
    model, (x, y) = nn.Sequential(net, nn.Softmax(dim=1)), (torch.rand(16, 8), torch.randint(0, 4, (16,)))
    criterion = fk.AdversarialLoss()
    with pytest.warns(UserWarning, match=r"model's outputs are probabilities .* the loss expects logits") as caught:
        criterion(model, x, y).backward()
    assert len(caught) == 1 and caught[0].filename == __file__
    with pytest.warns(UserWarning, match=r"single output column looks like a sigmoid"):
        fk.AdversarialLoss()(nn.Sequential(nn.Linear(8, 1), nn.Sigmoid()), x, (y > 1).long())
    # On the first call only, and not for a loss_fn of the caller's (written for probabilities).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        criterion(model, x, y)
        fk.AdversarialLoss(loss_fn=lambda p, t: F.nll_loss(p.log(), t))(model, x, y)


def test_a_model_that_writes_into_its_input_trains_on_every_path() -> None:
    # The extra forward of the low-precision path (and of a hooked parameter) gave its input,
    # a leaf, to the model: nn.ReLU(inplace=True) first was refused there, with advice (a
    # lambda) that AdversarialLoss refuses in turn. The clean pass has always accepted it.
    torch.manual_seed(0)
    x, y = torch.rand(6, 8), torch.randint(0, 4, (6,))
    in_place = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(8, 4))
    plain = nn.Sequential(nn.ReLU(), nn.Linear(8, 4))
    plain.load_state_dict(in_place.state_dict())
    for model in (in_place, plain):
        model[1].weight.register_hook(lambda g: g)  # the clean term keeps its graph: an extra pass
    assert torch.equal(fk.AdversarialLoss()(in_place, x, y), fk.AdversarialLoss()(plain, x, y))
    low = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(8, 4)).to(torch.bfloat16)
    fk.AdversarialLoss()(low, x.to(torch.bfloat16), y).backward()
    assert low[1].weight.grad is not None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_loss_fn_that_fails_on_widened_logits_is_named(dtype: torch.dtype) -> None:
    # A class-weighted loss with weights in the model's dtype failed inside fgsmkit with
    # PyTorch's "expected scalar type Float but found Half", naming neither loss_fn nor the fix.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)
    x, y = torch.rand(6, 8, dtype=dtype), torch.randint(0, 4, (6,))
    weight = torch.tensor([1.0, 2.0, 1.0, 0.5])
    message = (rf"loss_fn failed on the logits widened from {str(dtype)[6:]} to float32 \(the input gradient is "
               r"computed in float32 so that it cannot underflow\): .*; make loss_fn follow the logits' dtype, e.g. "
               r"lambda z, y: F.cross_entropy\(z, y, weight=w.to\(z.dtype\)\)")
    for call in (lambda loss: fk.fgsm(model, x, y, eps=0.1, loss_fn=loss),
                 lambda loss: fk.AdversarialLoss(loss_fn=loss)(model, x, y)):
        with pytest.raises(TypeError, match=message):
            call(nn.CrossEntropyLoss(weight=weight.to(dtype), reduction="none"))
        call(lambda z, t: F.cross_entropy(z, t, weight=weight.to(z.dtype), reduction="none"))  # the advice works


class _RecordsAuxiliaryLosses(nn.Module):
    """A layer that records an auxiliary loss on every forward (an MoE's load balancing, say)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body, self.head = nn.Sequential(nn.Linear(8, 16), nn.Tanh()), nn.Linear(16, 4)
        self.auxiliary: list[torch.Tensor] = []

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = self.body(t)
        self.auxiliary.append(features.pow(2).mean())
        return self.head(features)


def test_other_terms_built_on_the_clean_forward_can_be_back_propagated() -> None:
    # The call back-propagated the clean forward without keeping its graph: an auxiliary loss
    # recorded by a layer, or clean features a hook captured, then failed in loss.backward()
    # with "Trying to backward through the graph a second time", naming nothing of fgsmkit.
    torch.manual_seed(1)
    x, y = torch.rand(6, 8), torch.randint(0, 4, (6,))

    def hand_written(model: nn.Module) -> torch.Tensor:
        leaf = x.clone().requires_grad_(True)
        clean = cross_entropy(model(leaf), y, reduction="mean")
        (g,) = torch.autograd.grad(clean, leaf, retain_graph=True)
        return 0.5 * clean + 0.5 * cross_entropy(model((x + 0.1 * g.sign()).clamp(0, 1)), y, reduction="mean")

    for extra in ("auxiliary", "pairing"):
        results = []
        for objective in (hand_written, lambda m: fk.AdversarialLoss(0.5, 0.1)(m, x, y)):
            model, features = _RecordsAuxiliaryLosses(), []
            model.body.register_forward_hook(lambda module, inputs, output: features.append(output))
            loss = objective(model)
            term = sum(model.auxiliary) if extra == "auxiliary" else (features[0] - features[-1]).pow(2).mean()
            (loss + 0.01 * term).backward()
            results.append([p.grad for p in model.parameters()])
        assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(*results))
