"""Models that carry state or are transformed: BatchNorm statistics and torch.compile."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fgsmkit as fk
from _support import assert_same_state, state_of


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3))


def batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def warmed_up_bn_net() -> nn.Module:
    """Running statistics away from their initial values, so that an update would show."""
    model = bn_net()
    with torch.no_grad():
        model(batch(16)[0] * 2 + 1)
    return model


ATTACKS = {
    "fgsm": lambda m, x, y, **kw: fk.fgsm(m, x, y, eps=0.1, **kw),
    "iterative_fgsm": lambda m, x, y, **kw: fk.iterative_fgsm(m, x, y, eps=0.1, step_size=0.03, steps=3, **kw),
    "pgd": lambda m, x, y, **kw: fk.pgd(m, x, y, eps=0.1, step_size=0.03, steps=3, restarts=2,
                                      generator=torch.Generator().manual_seed(0), **kw),
    "pgd_l2": lambda m, x, y, **kw: fk.pgd(m, x, y, eps=0.5, step_size=0.2, steps=3, norm=2,
                                         generator=torch.Generator().manual_seed(0), **kw),
}


@pytest.mark.parametrize("eval_mode", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_leave_batchnorm_statistics_and_modes_alone(name, training, eval_mode):
    model = warmed_up_bn_net().train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    x, y = batch()
    ATTACKS[name](model, x, y, eval_mode=eval_mode)
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key  # running_mean, running_var, num_batches_tracked, weights
    assert [m.training for m in model.modules()] == modes


class MovingAverage(nn.Module):
    """Tracks its inputs' mean in train mode by replacing its buffer, not by updating it in place."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("average", torch.full((3, 4, 4), 0.5))
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.average = 0.9 * self.average + 0.1 * x.detach().mean(dim=0)
        return self.net(x - self.average)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_a_buffer_the_forward_replaces_is_put_back(name):
    torch.manual_seed(0)
    model = MovingAverage()
    original = model.average
    x, y = batch()
    ATTACKS[name](model, x, y)
    assert model.average is original
    assert torch.equal(original, torch.full((3, 4, 4), 0.5))
    with torch.no_grad():  # the forward in train mode would replace the buffer once more
        expected = (copy.deepcopy(model)(x).argmax(1) != y).double().mean().item()
    assert fk.evaluation.error_rate(model, x, y) == pytest.approx(expected) and model.average is original


@pytest.mark.parametrize("name", ["fgsm", "iterative_fgsm"])
def test_attacks_use_the_mode_the_model_is_in(name):
    """A train-mode model is attacked with batch statistics, unless eval_mode asks otherwise."""
    model = warmed_up_bn_net().train()
    x, y = batch()
    in_train = ATTACKS[name](model, x, y)
    in_eval = ATTACKS[name](model, x, y, eval_mode=True)
    assert model.training
    assert not torch.equal(in_train, in_eval)
    torch.testing.assert_close(in_eval, ATTACKS[name](model.eval(), x, y), rtol=0, atol=0)


def test_adversarial_loss_updates_batchnorm_like_its_two_training_passes():
    """Eq. (6) trains on the clean and the adversarial batch: both passes are training passes."""
    model = warmed_up_bn_net().train()
    reference = warmed_up_bn_net().train()
    x, y = batch()
    fk.AdversarialLoss(alpha=0.5, eps=0.1)(model, x, y)
    x_adv = fk.fgsm(reference, x, y, eps=0.1)  # leaves reference's statistics alone
    with torch.no_grad():
        reference(x)
        reference(x_adv)
    for (key, got), expected in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7, msg=key)
    assert int(model[1].num_batches_tracked) == 1 + 2


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3))


def test_compiled_models_are_attacked_and_trained_like_eager_ones():
    """torch.compile with the aot_eager backend: Dynamo and AOTAutograd, without code generation time.

    The same sequence runs on an eager and a compiled copy: every attack (train and eval mode)
    and three AdversarialLoss steps must agree.
    """
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 10, generator=g), torch.randint(0, 3, (8,), generator=g)
    eager, compiled_inner = small_net(), small_net()
    compiled = torch.compile(compiled_inner, backend="aot_eager")
    for name, attack in ATTACKS.items():
        if name == "pgd_l2":
            continue
        for eval_mode in (False, True):
            torch.testing.assert_close(attack(compiled, x, y, eval_mode=eval_mode),
                                       attack(eager, x, y, eval_mode=eval_mode), rtol=1e-5, atol=1e-6)
    for model in (eager, compiled):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        criterion = fk.AdversarialLoss(alpha=0.5, eps=0.1)
        for _ in range(3):
            criterion(model, x, y).backward()
            optimizer.step()
            optimizer.zero_grad()
    for got, expected in zip(compiled_inner.state_dict().values(), eager.state_dict().values()):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(eager[0].weight, small_net()[0].weight)  # training moved the weights


def test_compiled_float16_model_keeps_the_rescaled_gradient():
    """The float16 path takes two gradients through one compiled graph."""
    torch.manual_seed(0)
    eager = nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 3)).half()
    compiled = torch.compile(eager, backend="aot_eager")
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(6, 10, generator=g).half(), torch.randint(0, 3, (6,), generator=g)
    torch.testing.assert_close(fk.fgsm(compiled, x, y, eps=0.125), fk.fgsm(eager, x, y, eps=0.125), rtol=0, atol=0)
    loss = fk.AdversarialLoss(eps=0.125)(compiled, x, y)
    loss.backward()
    assert bool(torch.isfinite(loss)) and all(p.grad is not None for p in eager.parameters())


def test_model_state_kept_restores_buffers_of_a_compiled_model():
    model = torch.compile(small_net(), backend="aot_eager")
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 10, generator=g), torch.randint(0, 3, (8,), generator=g)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fk.pgd(model, x, y, eps=0.1, step_size=0.03, steps=2)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert F.cross_entropy(model(x), y).requires_grad


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_an_attack_between_a_forward_and_its_backward_keeps_that_graph_usable(name):
    """Clean logits first, then the attack, then one backward (TRADES-style loops, accuracy logging).

    BatchNorm saves its running statistics for backward; restoring them after the attack must not
    invalidate that saved state (an in-place copy would bump their version counters).
    """
    model = warmed_up_bn_net().train()
    x, y = batch()
    clean_logits = model(x)
    x_adv = ATTACKS[name](model, x, y)
    loss = F.cross_entropy(clean_logits, y) + F.cross_entropy(model(x_adv), y)
    loss.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_adversarial_loss_of_a_batchnorm_model_under_autocast(dtype):
    """The low-precision path's extra input-gradient pass restores statistics before the backward."""
    model = warmed_up_bn_net().train()
    reference = warmed_up_bn_net().train()
    x, y = batch()
    with torch.autocast("cpu", dtype=dtype):
        loss = fk.AdversarialLoss(alpha=0.5, eps=0.1)(model, x, y)
        x_adv = fk.fgsm(reference, x, y, eps=0.1)
        with torch.no_grad():
            reference(x)
            reference(x_adv)
    loss.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    for (key, got), expected in zip(model.state_dict().items(), reference.state_dict().values()):
        if "running" in key or "num_batches" in key:  # as two training passes, not three
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7, msg=key)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_batchnorm_statistics_are_restored_inside_no_grad_and_inference_mode(mode):
    model = warmed_up_bn_net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = batch()
    expected = ATTACKS["pgd"](model, x, y)
    with mode():
        got = ATTACKS["pgd"](model, x, y)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class FailsOnThirdCall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = warmed_up_bn_net()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("out of memory (simulated)")
        return self.net(x)


@pytest.mark.parametrize("eval_mode", [False, True])
def test_an_exception_inside_the_model_leaves_its_state_as_found(eval_mode):
    """A job that catches the error (a retry with a smaller batch, say) goes on with an intact model."""
    model = FailsOnThirdCall().train()
    before = state_of(model)  # parameters, grads, requires_grad flags, modes, buffers, hooks
    x, y = batch()
    with pytest.raises(RuntimeError, match="simulated"):
        fk.pgd(model, x, y, eps=0.1, step_size=0.03, steps=5, eval_mode=eval_mode)
    assert model.calls == 3
    assert all(m.training for m in model.modules())
    assert_same_state(before, state_of(model))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_models_are_attacked_like_eager_ones():
    model = warmed_up_bn_net().train()
    scripted = torch.jit.script(warmed_up_bn_net().train())
    x, y = batch()
    for eval_mode in (False, True):
        torch.testing.assert_close(ATTACKS["pgd"](scripted, x, y, eval_mode=eval_mode),
                                   ATTACKS["pgd"](model, x, y, eval_mode=eval_mode), rtol=1e-6, atol=1e-6)
    assert scripted.training


def test_a_compiled_training_step_and_a_compiled_attack_call():
    """torch.compile around the library's calls (not only around the model): Dynamo breaks the
    graph where it must (autograd.grad, host checks) and the results are the eager ones."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 10, generator=g), torch.randint(0, 3, (8,), generator=g)
    model = small_net()
    criterion = fk.AdversarialLoss(alpha=0.5, eps=0.1)
    step = torch.compile(lambda x, y: criterion(model, x, y), backend="aot_eager")
    attack = torch.compile(lambda x, y: fk.fgsm(model, x, y, eps=0.1), backend="aot_eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.testing.assert_close(attack(x, y), fk.fgsm(model, x, y, eps=0.1), rtol=1e-6, atol=1e-6)
        step(x, y).backward()
    # Nothing of fgsmkit's makes Dynamo warn (it did about an lru_cache it traced through).
    assert not [w for w in caught if "fgsmkit" in str(w.message)], [str(w.message)[:200] for w in caught]
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    criterion(model, x, y).backward()
    for got, expected in zip(compiled_grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_an_uninitialized_lazy_buffer_is_refused_with_the_fix():
    # Its running statistics cannot be saved before the first forward gives them a shape: the
    # attack failed inside torch ("Attempted to use an uninitialized parameter in clone").
    model = nn.Sequential(nn.Linear(10, 8), nn.LazyBatchNorm1d(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 10, generator=g), torch.randint(0, 3, (8,), generator=g)
    with pytest.raises(ValueError, match=r"uninitialized lazy buffer \(LazyBatchNorm1d.running_mean\).*model\(x\)"):
        fk.fgsm(model, x, y, eps=0.1)
    with torch.no_grad():
        model(x)
    assert fk.fgsm(model, x, y, eps=0.1).shape == x.shape


def test_a_compiled_batchnorm_model_trains_with_alpha_zero_and_runs_under_no_grad() -> None:
    # AOTAutograd donates the buffers of a BatchNorm model's backward: retain_graph=True raises.
    torch.manual_seed(0)
    model = torch.compile(nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3)),
                          backend="aot_eager")
    x, y = torch.rand(8, 10), torch.randint(0, 3, (8,))
    fk.AdversarialLoss(alpha=0.5, eps=0.1)(model, x, y).backward()
    fk.AdversarialLoss(alpha=0.0, eps=0.1)(model, x, y).backward()
    with torch.no_grad():
        fk.AdversarialLoss(alpha=0.5, eps=0.1)(model, x, y)
