"""Tests of fgsmkit.evaluation with small models whose answers are known by construction."""

from __future__ import annotations

import functools
import math
import re
import warnings

import pytest
import torch
from torch import nn

import fgsmkit as fk
from fgsmkit.evaluation import (
    AttackReport,
    agreement_on_mistakes,
    confidence_on_mistakes,
    error_rate,
    evaluate_attack,
    mean_confidence,
    rubbish_rate,
)


def identity(x: torch.Tensor) -> torch.Tensor:
    """Logits are the inputs: predictions and softmax probabilities are read off ``x``."""
    return x


class Recorder(nn.Module):
    """Identity logits that records batch sizes and whether autograd was on."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.grad_enabled: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        self.grad_enabled.append(torch.is_grad_enabled())
        return x


# Three classes; logits log(p) give softmax probabilities p exactly.
PROBS = torch.tensor([
    [0.7, 0.2, 0.1],   # predicts 0
    [0.1, 0.6, 0.3],   # predicts 1
    [0.3, 0.3, 0.4],   # predicts 2
    [0.5, 0.25, 0.25],  # predicts 0
    [0.2, 0.1, 0.7],   # predicts 2
], dtype=torch.float64)
X = PROBS.log()
Y = torch.tensor([0, 2, 2, 1, 2])  # mistakes on rows 1 and 3


def test_error_rate_and_confidences_on_known_probabilities() -> None:
    assert error_rate(identity, X, Y) == pytest.approx(2 / 5)
    assert confidence_on_mistakes(identity, X, Y) == pytest.approx((0.6 + 0.5) / 2)
    assert mean_confidence(identity, X) == pytest.approx((0.7 + 0.6 + 0.4 + 0.5 + 0.7) / 5)


def test_no_mistakes_gives_nan_confidence_and_zero_error() -> None:
    right = PROBS.argmax(1)
    assert error_rate(identity, X, right) == 0.0
    assert math.isnan(confidence_on_mistakes(identity, X, right))


@pytest.mark.parametrize("batch_size", [1, 2, 5, 1000])
def test_results_do_not_depend_on_batch_size_and_batches_are_bounded(batch_size: int) -> None:
    model = Recorder()
    assert error_rate(model, X, Y, batch_size=batch_size) == pytest.approx(2 / 5)
    assert confidence_on_mistakes(model, X, Y, batch_size=batch_size) == pytest.approx(0.55)
    assert max(model.batches) <= batch_size
    assert not any(model.grad_enabled)


def test_single_logit_column_is_logistic_regression() -> None:
    z = torch.tensor([[2.0], [-1.0], [0.5]])
    y = torch.tensor([1, 1, 0])  # predictions 1, 0, 1: mistakes on rows 1 and 2
    assert error_rate(identity, z, y) == pytest.approx(2 / 3)
    expected = (torch.sigmoid(torch.tensor(1.0)) + torch.sigmoid(torch.tensor(0.5))) / 2
    assert confidence_on_mistakes(identity, z, y) == pytest.approx(float(expected))
    # The zoo's LogisticRegression gives the same answer through its own probabilities().
    model = fk.models.LogisticRegression(1)
    with torch.no_grad():
        model.linear.weight.fill_(1.0)
        model.linear.bias.zero_()
    assert confidence_on_mistakes(model, z, y) == pytest.approx(float(expected))


def test_zoo_models_use_their_own_probabilities_not_softmax() -> None:
    # An RBF network's detectors are not renormalised: far from every centre all are near 0,
    # while a softmax over the same logits would still say 1/num_classes or more.
    net = fk.models.RBFNetwork(2, 2)
    with torch.no_grad():
        net.centers.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
        net.log_precision.zero_()
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    # Distances to centre 0: 0, 1, 50; the nearer detector wins with probability exp(-distance).
    expected = (1.0 + math.exp(-1.0) + math.exp(-50.0)) / 3
    assert mean_confidence(net, x) == pytest.approx(expected)
    assert mean_confidence(net, x) < mean_confidence(lambda v: net(v), x)  # the softmax view


def test_agreement_on_mistakes_counts_by_hand() -> None:
    def one_hot(classes: list[int]) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.tensor(classes), 3).double() * 5

    pred_a = [1, 2, 2, 0, 1, 2]
    pred_b = [1, 1, 0, 0, 1, 2]
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    # A errs on rows 0, 1, 2, 5. B agrees with A on rows 0 and 5 of those; B also errs on
    # rows 0, 1, 5 (row 2: B says 0, right), so both err on 0, 1, 5 and agree on 0 and 5.
    x = torch.cat([one_hot(pred_a), one_hot(pred_b)], dim=1)
    result = agreement_on_mistakes(lambda v: v[:, :3], lambda v: v[:, 3:], x, y, batch_size=4)
    assert result == {
        "a_mistakes": 4,
        "agreement_on_a_mistakes": pytest.approx(2 / 4),
        "both_mistakes": 3,
        "agreement_when_both_err": pytest.approx(2 / 3),
    }


def test_agreement_without_mistakes_is_nan() -> None:
    result = agreement_on_mistakes(identity, identity, X, PROBS.argmax(1))
    assert result["a_mistakes"] == 0 and math.isnan(result["agreement_on_a_mistakes"])
    assert result["both_mistakes"] == 0 and math.isnan(result["agreement_when_both_err"])


def test_rubbish_rate_of_a_constant_model() -> None:
    three_to_one = lambda v: torch.tensor([[math.log(3), 0.0]]).expand(v.shape[0], 2)  # noqa: E731
    assert rubbish_rate(three_to_one, 50, (1, 4, 4)) == (1.0, pytest.approx(0.75))
    rate, confidence = rubbish_rate(three_to_one, 50, 16, threshold=0.8)
    assert rate == 0.0 and math.isnan(confidence)
    # "Classified with confidence above the threshold": exactly at it does not count.
    undecided = lambda v: torch.zeros(v.shape[0], 2)  # noqa: E731  (p = 0.5 for both classes)
    rate, confidence = rubbish_rate(undecided, 50, 16, threshold=0.5)
    assert rate == 0.0 and math.isnan(confidence)
    assert rubbish_rate(undecided, 50, 16, threshold=0.49)[0] == 1.0


def test_rubbish_rate_draws_standard_normal_inputs_of_the_given_shape() -> None:
    seen = []

    def half_confident(v: torch.Tensor) -> torch.Tensor:
        # Class 0 with probability 0.9 when the first input is positive, uniform over 3 otherwise.
        seen.append(v.clone())
        positive = (v.flatten(1)[:, 0] > 0).to(v.dtype)
        logits = torch.zeros(v.shape[0], 3, dtype=v.dtype)
        logits[:, 0] = positive * math.log(0.9 / 0.05)
        logits[:, 1] = positive * 0.0
        return logits

    n = 20000
    rate, confidence = rubbish_rate(half_confident, n, (2, 3), generator=torch.Generator().manual_seed(0),
                                    batch_size=3000)
    noise = torch.cat(seen)
    assert noise.shape == (n, 2, 3) and max(len(s) for s in seen) <= 3000
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 1) < 0.02
    assert rate == pytest.approx(float((noise[:, 0, 0] > 0).double().mean()))
    assert abs(rate - 0.5) < 0.02  # 5 standard errors
    assert confidence == pytest.approx(0.9)
    again = rubbish_rate(half_confident, n, (2, 3), generator=torch.Generator().manual_seed(0), batch_size=3000)
    assert again == (rate, confidence)


def test_rubbish_noise_follows_the_model_dtype() -> None:
    model = fk.models.SoftmaxRegression(4, 3).double()
    dtypes = []
    model.register_forward_pre_hook(lambda module, args: dtypes.append(args[0].dtype))
    rubbish_rate(model, 10, 4)
    assert dtypes == [torch.float64]


def rotate(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """An "attack" that moves each logit to the next class: known effect on identity logits."""
    return x.roll(1, dims=1)


def test_evaluate_attack_with_a_known_attack() -> None:
    # After the roll, predictions are 1, 2, 0, 1, 0: with y = 0 2 2 1 2, mistakes on rows 0, 2, 4,
    # whose predicted classes have probabilities 0.7, 0.4, 0.7.
    report = evaluate_attack(identity, rotate, X, Y, batch_size=2, keep_examples=True)
    assert isinstance(report, AttackReport) and report.n == 5
    assert report.clean_error == pytest.approx(2 / 5)
    assert report.adversarial_error == pytest.approx(3 / 5)
    assert report.confidence_on_adversarial_mistakes == pytest.approx((0.7 + 0.4 + 0.7) / 3)
    assert torch.equal(report.examples, X.roll(1, dims=1))
    assert evaluate_attack(identity, rotate, X, Y).examples is None


def test_evaluate_attack_agrees_with_fgsm_and_error_rate() -> None:
    torch.manual_seed(0)
    model = fk.models.SoftmaxRegression(6, 4)
    x, y = torch.rand(50, 6), torch.randint(0, 4, (50,))
    x_before = x.clone()
    attack = functools.partial(fk.fgsm, eps=0.3)
    report = evaluate_attack(model, attack, x, y, batch_size=7, keep_examples=True)
    x_adv = fk.fgsm(model, x, y, eps=0.3)
    assert torch.allclose(report.examples, x_adv, atol=1e-6)
    assert report.clean_error == error_rate(model, x, y)
    assert report.adversarial_error == error_rate(model, x_adv, y)
    assert report.confidence_on_adversarial_mistakes == pytest.approx(confidence_on_mistakes(model, x_adv, y))
    assert torch.equal(x, x_before)


class NoisyNet(nn.Module):
    """Dropout and BatchNorm: train and eval mode give different answers and state."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.norm(x))


@pytest.mark.parametrize("training", [True, False])
def test_model_mode_and_buffers_are_restored(training: bool) -> None:
    net = NoisyNet().train(training)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(20, 3)
    y = torch.randint(0, 3, (20,))
    for metric in (
        lambda **kw: error_rate(net, x, y, **kw),
        lambda **kw: mean_confidence(net, x, **kw),
        lambda **kw: agreement_on_mistakes(net, net, x, y, **kw),
        lambda **kw: rubbish_rate(net, 30, 3, **kw),
        lambda **kw: evaluate_attack(net, functools.partial(fk.fgsm, eps=0.1, clip=None), x, y, **kw),
    ):
        for eval_mode in (False, True):
            metric(eval_mode=eval_mode, batch_size=8)
            assert all(m.training == training for m in net.modules())
            for key, value in net.state_dict().items():
                assert torch.equal(value, state[key]), key


def test_eval_mode_switches_dropout_off_for_the_call() -> None:
    net = NoisyNet().train()
    x = torch.randn(200, 3)
    y = net.eval()(x).argmax(1)
    net.train()
    assert error_rate(net, x, y, eval_mode=True, batch_size=50) == 0.0
    assert error_rate(net, x, y, batch_size=50) > 0.0  # dropout and batch statistics in train mode
    # The same for evaluate_attack, whose attack here leaves x as it is.
    unchanged = lambda model, x, y: x.clone()  # noqa: E731
    assert evaluate_attack(net, unchanged, x, y, eval_mode=True, batch_size=50).clean_error == 0.0
    assert evaluate_attack(net, unchanged, x, y, batch_size=50).clean_error > 0.0


def test_inputs_are_not_modified() -> None:
    x, y = X.clone(), Y.clone()
    evaluate_attack(identity, rotate, x, y)
    agreement_on_mistakes(identity, identity, x, y)
    assert torch.equal(x, X) and torch.equal(y, Y)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: error_rate(identity, X, Y[:3]), ValueError, "one label per sample"),
        (lambda: error_rate(identity, X, Y.float()), TypeError, "integer class indices"),
        (lambda: error_rate(identity, X, Y + 5), ValueError, r"labels must lie in \[0, 2\]"),
        (lambda: error_rate(identity, X, Y, batch_size=0), ValueError, "batch_size must be an int >= 1"),
        (lambda: error_rate(identity, X[:0], Y[:0]), ValueError, "at least one sample"),
        (lambda: mean_confidence(identity, X.long()), TypeError, "floating-point"),
        (lambda: mean_confidence(lambda v: v[:, 0], X), ValueError, r"shape \(batch, classes\)"),
        (lambda: rubbish_rate(identity, 0, 3), ValueError, "n must be an int >= 1"),
        (lambda: rubbish_rate(identity, 5, (3, 0)), ValueError, "sample_shape must be"),
        (lambda: rubbish_rate(identity, 5, 3, threshold=1.0), ValueError, r"threshold must be .* \[0, 1\)"),
        (lambda: rubbish_rate(identity, 5, 3, generator=0), TypeError, "generator must be"),
        (lambda: evaluate_attack(identity, "fgsm", X, Y), TypeError, "attack must be callable"),
        (lambda: evaluate_attack(identity, lambda m, x, y: x[:, :2], X, Y), ValueError, "shaped like its input"),
    ],
)
def test_bad_arguments_are_named(call, error, message) -> None:
    with pytest.raises(error, match=message):
        call()


def _far_rbf() -> fk.models.RBFNetwork:
    """Detectors at 0, 1 and 2 (precision 1), so inputs near 10 are nearest to class 2."""
    net = fk.models.RBFNetwork(4, 3)
    with torch.no_grad():
        net.centers.copy_(torch.arange(3.0)[:, None].expand(3, 4))
        net.log_precision.zero_()
    return net


def test_wrapped_zoo_models_keep_their_own_probabilities() -> None:
    net = _far_rbf()
    x = torch.rand(8, 4) * 2
    expected = mean_confidence(net, x)
    for wrapped in (nn.DataParallel(net), torch.compile(net, backend="eager")):
        assert mean_confidence(wrapped, x) == expected  # the detectors' probabilities, not a softmax


def test_far_inputs_are_classified_by_their_logits_where_probabilities_underflow() -> None:
    # exp(-256) and exp(-144) are both 0 in float32: the predicted class must still be the nearest.
    net = _far_rbf()
    x = torch.full((4, 4), 8.0) + torch.arange(4.0)[:, None]
    y = torch.full((4,), 2)
    assert error_rate(net, x, y) == 0.0
    assert evaluate_attack(net, lambda model, xb, yb: xb, x, y).clean_error == 0.0


def test_non_finite_logits_are_refused_by_every_metric() -> None:
    x, y = torch.rand(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    broken = lambda t: t * math.nan  # noqa: E731
    for metric in (lambda: error_rate(broken, x, y), lambda: mean_confidence(broken, x),
                   lambda: agreement_on_mistakes(broken, identity, x, y),
                   lambda: rubbish_rate(broken, 10, 3),
                   lambda: evaluate_attack(torch.log, lambda model, xb, yb: xb - 2, x + 0.5, y)):
        with pytest.raises(ValueError, match="NaN or inf logits"):
            metric()


def test_labels_are_required_by_the_metrics_that_compare_with_them() -> None:
    x = torch.rand(6, 3)
    for metric in (lambda: error_rate(identity, x, None), lambda: confidence_on_mistakes(identity, x, None),
                   lambda: agreement_on_mistakes(identity, identity, x, None),
                   lambda: evaluate_attack(identity, lambda model, xb, yb: xb, x, None)):
        with pytest.raises(TypeError, match=r"y must be a tensor of true class indices"):
            metric()


def test_numpy_batch_sizes_are_accepted() -> None:
    np = pytest.importorskip("numpy")
    x, y = torch.rand(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    assert error_rate(identity, x, y, batch_size=np.int64(2)) == error_rate(identity, x, y)
    report = evaluate_attack(identity, lambda model, xb, yb: xb, x, y, batch_size=np.int64(4))
    assert report.n == 6


def test_an_attack_that_switches_the_mode_does_not_leave_it_switched() -> None:
    net = NoisyNet().train()

    def careless_attack(model, x, y):
        model.eval()  # and never switches back
        return x.clone()

    evaluate_attack(net, careless_attack, torch.randn(6, 3), torch.randint(0, 3, (6,)))
    assert all(m.training for m in net.modules())


def test_an_attack_that_switches_to_train_mode_leaves_the_statistics_as_found() -> None:
    # The buffers were saved only for a model found in train mode: an eval-mode model that the
    # attack put in train mode came back in eval mode but with new BatchNorm statistics.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).eval()
    before = [b.clone() for b in net.buffers()]

    def attack_in_train_mode(model, x, y):
        model.train()
        return fk.fgsm(model, x, y, eps=0.1)

    evaluate_attack(net, attack_in_train_mode, torch.rand(16, 4), torch.randint(0, 3, (16,)), batch_size=8)
    assert not any(m.training for m in net.modules())
    assert all(torch.equal(a, b) for a, b in zip(before, net.buffers()))


def _writes_into_its_input() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.ReLU(inplace=True), nn.Linear(5, 4))


def test_a_model_that_writes_into_its_input_leaves_x_as_it_was() -> None:
    net = _writes_into_its_input()
    out_of_place = nn.Sequential(nn.ReLU(), net[1])
    x, y = torch.randn(20, 5), torch.randint(0, 4, (20,))
    x_before = x.clone()
    for metric in (lambda m, **kw: error_rate(m, x, y, **kw), lambda m, **kw: mean_confidence(m, x, **kw),
                   lambda m, **kw: confidence_on_mistakes(m, x, y, **kw),
                   lambda m, **kw: agreement_on_mistakes(m, out_of_place, x, y, **kw),
                   lambda m, **kw: evaluate_attack(m, lambda model, xb, yb: xb, x, y, **kw)):
        assert metric(net, batch_size=8) == metric(out_of_place, batch_size=8)
        assert torch.equal(x, x_before)


def test_an_attack_that_writes_into_its_input_leaves_x_as_it_was() -> None:
    x, y = torch.rand(20, 5), torch.randint(0, 4, (20,))
    x_before = x.clone()

    def shift_in_place(model, xb, yb):
        return xb.add_(0.5)

    report = evaluate_attack(nn.Linear(5, 4), shift_in_place, x, y, batch_size=8, keep_examples=True)
    assert torch.equal(x, x_before)
    assert torch.equal(report.examples, x_before + 0.5)


@pytest.mark.parametrize("outputs_b, classes_b", [(5, 5), (1, 2)])
def test_agreement_refuses_models_over_different_classes(outputs_b: int, classes_b: int) -> None:
    torch.manual_seed(0)
    x, y = torch.rand(10, 6), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match=f"model_a has 3 classes but model_b has {classes_b}"):
        agreement_on_mistakes(nn.Linear(6, 3), nn.Linear(6, outputs_b), x, y)


def test_agreement_counts_a_single_logit_as_two_classes() -> None:
    z = torch.tensor([[2.0], [-1.0], [0.5]])
    two_columns = lambda v: torch.cat([torch.zeros_like(v), v], dim=1)  # noqa: E731  (the same classifier)
    result = agreement_on_mistakes(identity, two_columns, z, torch.tensor([1, 1, 0]))
    assert result["a_mistakes"] == 2 and result["agreement_on_a_mistakes"] == 1.0


@pytest.mark.parametrize("flag", ["False", 0, None])
def test_flags_must_be_true_or_false(flag: object) -> None:
    net = nn.Linear(3, 3)
    x, y = torch.rand(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    keep_all = lambda model, xb, yb: xb  # noqa: E731
    for metric in (lambda **kw: error_rate(net, x, y, **kw), lambda **kw: mean_confidence(net, x, **kw),
                   lambda **kw: confidence_on_mistakes(net, x, y, **kw),
                   lambda **kw: agreement_on_mistakes(net, net, x, y, **kw),
                   lambda **kw: rubbish_rate(net, 10, 3, **kw),
                   lambda **kw: evaluate_attack(net, keep_all, x, y, **kw)):
        with pytest.raises(TypeError, match=f"eval_mode must be True or False; got {flag!r}"):
            metric(eval_mode=flag)
    with pytest.raises(TypeError, match=f"keep_examples must be True or False; got {flag!r}"):
        evaluate_attack(net, keep_all, x, y, keep_examples=flag)
    np = pytest.importorskip("numpy")
    assert evaluate_attack(net, keep_all, x, y, eval_mode=np.True_, keep_examples=np.True_).examples is not None


@pytest.mark.parametrize(
    "attack, error, message",
    [
        (lambda model, xb, yb: xb.double(), TypeError, r"attack must return .* dtype torch.float32; got torch.float64"),
        (lambda model, xb, yb: (xb * 10).long(), TypeError,
         r"attack must return .* dtype torch.float32; got torch.int64"),
        (lambda model, xb, yb: xb * math.nan, ValueError, "attack returned NaN or inf"),
        (lambda model, xb, yb: xb / 0, ValueError, "attack returned NaN or inf"),
        (lambda model, xb, yb: xb.to("meta"), ValueError, "attack must return a tensor on cpu, x's device; got meta"),
    ],
)
def test_what_the_attack_returns_is_checked_and_blamed_on_it(attack, error, message) -> None:
    x, y = torch.rand(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    dtype_agnostic = lambda t: t[:, :4].float()  # noqa: E731  (would take any dtype)
    with pytest.raises(error, match=message):
        evaluate_attack(dtype_agnostic, attack, x, y, keep_examples=True)


class SignByMode(nn.Module):
    """Logits are the input in eval mode and its negation in train mode."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return -t if self.training else t


@pytest.mark.parametrize("training, eval_mode", [(True, True), (False, False), (True, False)])
def test_adversarial_examples_are_scored_in_the_mode_of_the_clean_ones(training: bool, eval_mode: bool) -> None:
    x, y = 2 * torch.eye(4)[torch.arange(12) % 4], torch.arange(12) % 4  # logits, not one-hot probabilities

    def unchanged_but_switches(model, xb, yb):
        model.train(not model.training)  # and leaves it so
        return xb.clone()

    report = evaluate_attack(SignByMode().train(training), unchanged_but_switches, x, y, eval_mode=eval_mode,
                             batch_size=5)
    assert report.adversarial_error == report.clean_error


def test_adversarial_examples_are_scored_with_the_statistics_found() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).eval()
    x, y = torch.rand(16, 4), torch.randint(0, 3, (16,))

    def unchanged_but_updates_statistics(model, xb, yb):
        model.train()
        model(xb * 100 + 50)  # new running statistics
        model.eval()
        return xb.clone()

    report = evaluate_attack(net, unchanged_but_updates_statistics, x, y, batch_size=8)
    assert report.adversarial_error == report.clean_error


class FixedWeights(nn.Module):
    """A model without parameters: its weights are a buffer."""

    def __init__(self, dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
        super().__init__()
        self.register_buffer("w", torch.ones(5, 4, dtype=dtype, device=device))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t @ self.w


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: rubbish_rate(nn.Linear(5, 4), 10, 5, device="meta"), ValueError,
         r"device='meta' but model has parameters on cpu; pass device=None .* or device='cpu'"),
        (lambda: rubbish_rate(FixedWeights(), 10, 5, device="meta"), ValueError,
         r"device='meta' but model has buffers on cpu"),
        (lambda: rubbish_rate(nn.Linear(5, 4, device="meta"), 10, 5), ValueError,
         r"model has parameters on the meta device, which hold no values"),
        (lambda: rubbish_rate(FixedWeights(device="meta"), 10, 5), ValueError,
         r"model has buffers on the meta device"),
        (lambda: rubbish_rate(identity, 10, 5, device="meta"), ValueError,
         r"device='meta' holds no values; pass a device that does, e.g. device='cpu'"),
    ],
)
def test_rubbish_rate_names_device_dtype_and_model(call, error, message) -> None:
    with pytest.raises(error, match=message):
        call()


def test_rubbish_noise_in_another_dtype_is_left_to_the_model_as_the_attacks_leave_it() -> None:
    """bfloat16 noise into a float32 model under autocast is fine; without autocast the model's
    own dtype error is raised, as for an attack on inputs of another dtype."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rate, _ = rubbish_rate(nn.Linear(5, 4), 10, 5, dtype=torch.bfloat16)
    assert 0.0 <= rate <= 1.0
    with pytest.raises(TypeError, match=r"model failed on the noise drawn with sample_shape=\(5,\), "
                                        r"dtype=torch.float64, device='cpu' \(x is float64 but model has float32"):
        rubbish_rate(nn.Linear(5, 4), 10, 5, dtype=torch.float64)


@pytest.mark.parametrize("call, error, message", [
    # n and sample_shape swapped: PyTorch's "mat1 and mat2 shapes cannot be multiplied".
    (lambda: rubbish_rate(nn.Linear(784, 10), 784, 1000), ValueError,
     r"model failed on the noise drawn with sample_shape=\(1000,\).*\(mat1 and mat2 shapes"),
    (lambda: rubbish_rate(nn.Linear(12, 4), 10, 12, device="gpu"), ValueError,
     r"device='gpu' cannot hold the noise .*device=None"),
])
def test_rubbish_rate_names_the_arguments_it_draws_the_noise_with(call, error, message) -> None:
    with pytest.raises(error, match=message):
        call()


def test_rubbish_noise_follows_the_buffers_of_a_model_without_parameters() -> None:
    rate, _ = rubbish_rate(FixedWeights(torch.float64), 10, 5)
    assert 0.0 <= rate <= 1.0


def test_numpy_ints_are_accepted_in_sample_shape() -> None:
    np = pytest.importorskip("numpy")
    shapes = []
    recorder = lambda v: (shapes.append(tuple(v.shape[1:])), v.flatten(1)[:, :2])[1]  # noqa: E731
    for sample_shape in (np.int64(6), (np.int64(2), np.int32(3)), tuple(np.array([6]))):
        rubbish_rate(recorder, 4, sample_shape)
    assert shapes == [(6,), (2, 3), (6,)]
    with pytest.raises(ValueError, match="sample_shape must be"):
        rubbish_rate(recorder, 4, (np.True_, 3))


def test_rubbish_noise_does_not_depend_on_batch_size() -> None:
    def noise_for(batch_size: int) -> torch.Tensor:
        seen = []

        def record(v: torch.Tensor) -> torch.Tensor:
            assert v.shape[0] <= batch_size
            seen.append(v.clone())
            return v[:, :3] * 4

        rubbish_rate(record, 2300, 3, generator=torch.Generator().manual_seed(1), batch_size=batch_size)
        assert [len(v) for v in seen[:-1]] == [batch_size] * (len(seen) - 1)  # all full but the last
        return torch.cat(seen)

    expected = noise_for(1000)
    assert expected.shape == (2300, 3)
    for batch_size in (1, 7, 999, 1001, 2300, 5000):
        assert torch.equal(noise_for(batch_size), expected), batch_size


def _hand_written_fgsm(model, x, y):
    """An attack written to the documented ``attack(model, x, y)`` contract, as users write it:
    it relies on autograd being on."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), x)
    return (x + 0.25 * grad.sign()).clamp(0, 1).detach()


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_a_hand_written_attack_runs_the_same_inside_no_grad_and_inference_mode(context) -> None:
    # An evaluation loop usually runs under no_grad; evaluate_attack called the attack in it, and
    # the attack's autograd.grad failed ("element 0 of tensors does not require grad").
    torch.manual_seed(0)
    model = fk.models.SoftmaxRegression(4, 3)
    x, y = torch.rand(32, 4), torch.randint(0, 3, (32,))
    expected = evaluate_attack(model, _hand_written_fgsm, x, y, keep_examples=True)
    with context():
        got = evaluate_attack(model, _hand_written_fgsm, x, y, keep_examples=True)
    assert torch.equal(got.examples, expected.examples)
    assert got.adversarial_error == expected.adversarial_error > got.clean_error


def test_zoo_models_in_bfloat16_give_the_probabilities_of_their_logits_in_float32() -> None:
    # A bfloat16 zoo model's probabilities were taken in bfloat16 (8 bits), a plain callable's in
    # float32: the same model scored differently against a threshold when wrapped in a lambda.
    torch.manual_seed(0)
    model = fk.models.SoftmaxRegression(784, 10).to(torch.bfloat16)
    with torch.no_grad():
        model.linear.weight.mul_(20)
    x = torch.randn(500, 784, dtype=torch.bfloat16)
    ours = model.predict_proba(x)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, torch.softmax(model(x).float(), dim=1))
    assert mean_confidence(model, x) == mean_confidence(lambda v: model(v), x)
    generator = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert (rubbish_rate(model, 300, 784, threshold=0.9, generator=generator())
            == rubbish_rate(lambda v: model(v), 300, 784, threshold=0.9, generator=generator(), dtype=torch.bfloat16))


def test_reports_compare_by_their_measurements_with_or_without_examples() -> None:
    # The examples tensor took part in ==, which then asked a tensor for one truth value.
    with_examples = evaluate_attack(identity, rotate, X, Y, keep_examples=True)
    assert with_examples == evaluate_attack(identity, rotate, X, Y, keep_examples=True)
    assert with_examples == evaluate_attack(identity, rotate, X, Y)
    assert with_examples != evaluate_attack(identity, lambda model, xb, yb: xb.clone(), X, Y, keep_examples=True)


def test_the_attack_gets_copies_detached_from_the_callers_graph() -> None:
    # The copies were made under enable_grad: for an x that requires grad they were non-leaves
    # of the caller's graph, and an attack that calls backward() wrote into the caller's x.grad.
    torch.manual_seed(0)
    model = fk.models.SoftmaxRegression(4, 3)

    def backward_fgsm(model, xb, yb):
        xb.requires_grad_(True)
        nn.functional.cross_entropy(model(xb), yb).backward()
        return (xb + 0.25 * xb.grad.sign()).detach()

    x, y = torch.rand(8, 4), torch.randint(0, 3, (8,))
    expected = evaluate_attack(model, backward_fgsm, x, y, keep_examples=True)
    for as_given in (lambda leaf: leaf, lambda leaf: leaf * 1):  # a leaf, and a tensor computed from one
        leaf = x.clone().requires_grad_(True)
        got = evaluate_attack(model, backward_fgsm, as_given(leaf), y, keep_examples=True)
        assert torch.equal(got.examples, expected.examples)
        assert leaf.grad is None
    model.zero_grad()


@pytest.mark.parametrize(
    "call, error, message",
    [
        # The shared checks spoke of attacking the input.
        (lambda x, y: error_rate(lambda t: t.half() * 1e5, x, y), ValueError,  # float16 overflows
         r"^model returned NaN or inf logits for these inputs, which have no predicted class"),
        (lambda x, y: mean_confidence(identity, x.masked_fill(x > 0.9, math.nan)), ValueError,
         r"^x contains NaN or inf; clean the input before evaluating the model on it$"),
        # ...and offered None, which these metrics then refused.
        (lambda x, y: error_rate(identity, x, y.tolist()), TypeError,
         r"^y must be a tensor of true class indices, shape \(batch,\): this metric compares the predictions "
         r"with them; got list, convert it with torch.as_tensor\(y\)$"),
    ],
)
def test_the_shared_checks_speak_of_evaluating_not_attacking(call, error, message) -> None:
    torch.manual_seed(0)
    x, y = torch.rand(8, 3), torch.randint(0, 3, (8,))
    with pytest.raises(error, match=message):
        call(x, y)


@pytest.mark.parametrize(
    "model_b, eval_mode, error, message",
    [
        (lambda t: t, True, ValueError, r"^eval_mode=True needs model_b to be an nn.Module"),
        ("identity", False, TypeError, r"^model_b must be callable"),
        (lambda t: t[:, 0], False, ValueError, r"^model_b must return floating-point logits"),
    ],
)
def test_agreement_names_the_model_at_fault_and_checks_both_before_running_either(
        model_b, eval_mode, error, message) -> None:
    model_a = Recorder()
    x, y = torch.rand(8, 3), torch.randint(0, 3, (8,))
    with pytest.raises(error, match=message):
        agreement_on_mistakes(model_a, model_b, x, y, eval_mode=eval_mode, batch_size=2)
    if isinstance(model_b, str) or eval_mode:  # what can be checked before a model runs
        assert model_a.batches == []
    with pytest.raises(ValueError, match=r"^eval_mode=True needs model_a to be an nn.Module"):
        agreement_on_mistakes(lambda t: t, model_a, x, y, eval_mode=True)


def _softmax_at_the_end() -> tuple[nn.Module, nn.Module]:
    """A confident linear model, and the same model ending in nn.Softmax (outputs probabilities)."""
    torch.manual_seed(0)
    logits_model = nn.Linear(20, 5)
    with torch.no_grad():
        logits_model.weight.mul_(20)
    return logits_model, nn.Sequential(logits_model, nn.Softmax(dim=1))


def test_metrics_that_take_a_softmax_warn_once_when_the_outputs_are_probabilities() -> None:
    # The softmax of probabilities gave mean confidences near 1/classes and no rubbish at all.
    logits_model, probabilities_model = _softmax_at_the_end()
    x, y = torch.rand(30, 20), torch.randint(0, 5, (30,))
    unchanged = lambda model, xb, yb: xb.clone()  # noqa: E731  (an attack that does not warn itself)
    for metric in (lambda m: mean_confidence(m, x, batch_size=7),
                   lambda m: confidence_on_mistakes(m, x, y, batch_size=7),
                   lambda m: rubbish_rate(m, 30, 20, batch_size=7),
                   lambda m: evaluate_attack(m, unchanged, x, y, batch_size=7)):
        with pytest.warns(UserWarning) as caught:
            metric(probabilities_model)
        assert len(caught) == 1  # on the first batch only
        assert re.fullmatch(
            r"model's outputs are probabilities \(in \[0, 1\], each row sums to 1\), but the metrics expect "
            r"logits and take the softmax of them; drop the softmax at the end of the model, or pass "
            r"lambda x: model\(x\).log\(\) \(log-probabilities are logits\)", str(caught[0].message))
        assert caught[0].filename == __file__  # the user's line
    # The advice gives the right numbers, without a warning.
    log_of_it = lambda t: probabilities_model(t).log()  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mean_confidence(log_of_it, x) == pytest.approx(mean_confidence(logits_model, x))
        noise = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        assert (rubbish_rate(log_of_it, 30, 20, generator=noise())
                == pytest.approx(rubbish_rate(logits_model, 30, 20, generator=noise())))


def test_metrics_of_predictions_alone_do_not_warn_about_probabilities() -> None:
    # The predicted class is the largest output, logits or probabilities alike.
    logits_model, probabilities_model = _softmax_at_the_end()
    x, y = torch.rand(30, 20), torch.randint(0, 5, (30,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert error_rate(probabilities_model, x, y) == error_rate(logits_model, x, y)
        assert (agreement_on_mistakes(probabilities_model, logits_model, x, y)
                == agreement_on_mistakes(logits_model, logits_model, x, y))


class Normalized(nn.Module):
    """The usual wrapper that adds preprocessing to a model (the identity here, on purpose)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net((t - 0.5) / 0.5 * 0.5 + 0.5)


class NormalizedClassifier(fk.models.Classifier):
    """The same wrapper as a Classifier that hands on its model's probabilities."""

    def __init__(self, net: fk.models.Classifier) -> None:
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net((t - 0.5) / 0.5 * 0.5 + 0.5)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return self.net.probabilities(logits)


def test_a_module_wrapping_a_model_with_its_own_probabilities_warns_that_it_gets_a_softmax() -> None:
    # A preprocessing wrapper around the RBF network was scored with a softmax, silently.
    torch.manual_seed(0)
    rbf, x = fk.models.RBFNetwork(4, 3), torch.rand(40, 4)
    for metric in (lambda m: mean_confidence(m, x, batch_size=7), lambda m: rubbish_rate(m, 30, 4, batch_size=7)):
        with pytest.warns(UserWarning) as caught:
            metric(Normalized(rbf))
        assert len(caught) == 1
        assert re.fullmatch(
            r"model is scored with the softmax of its outputs, but its submodule 'net' \(RBFNetwork\) defines its "
            r"own probabilities, which the metrics use only for the model itself; pass that module as the model, "
            r"or make the wrapper a fgsmkit.models.Classifier whose probabilities\(\) hands on the submodule's",
            str(caught[0].message))
    # The advice gives the network's own numbers; wrappers around softmax or single-logit models
    # are scored as their models would be, without a word.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mean_confidence(NormalizedClassifier(rbf), x) == pytest.approx(mean_confidence(rbf, x))
        for inner in (fk.models.SoftmaxRegression(4, 3), fk.models.LogisticRegression(4)):
            assert mean_confidence(Normalized(inner), x) == pytest.approx(mean_confidence(inner, x))
        error_rate(Normalized(rbf), x, torch.randint(0, 3, (40,)))  # no probabilities taken


class AsClassifier(fk.models.Classifier):
    """A model written as a Classifier that keeps the base probabilities()."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(t)


def test_a_classifier_with_the_base_probabilities_gets_the_same_warnings_as_a_module() -> None:
    # A Classifier subclass was trusted to return logits: its softmax-ended outputs and its
    # wrapped RBF network were scored with a softmax, silently.
    _, probabilities_model = _softmax_at_the_end()
    x = torch.rand(30, 20)
    with pytest.warns(UserWarning, match=r"model's outputs are probabilities"):
        assert mean_confidence(AsClassifier(probabilities_model), x) == pytest.approx(
            mean_confidence(lambda t: probabilities_model(t), x))
    rbf = fk.models.RBFNetwork(20, 3)
    with pytest.warns(UserWarning, match=r"its submodule 'net' \(RBFNetwork\) defines its own probabilities"):
        mean_confidence(AsClassifier(rbf), x)


def test_a_classifier_with_one_logit_column_gets_sigmoid_probabilities() -> None:
    # The base probabilities() took a softmax of the one column: confidence 1.0 for every
    # sample, and an index error for a sample of class 1.
    torch.manual_seed(0)
    net = nn.Linear(4, 1)
    model, x = AsClassifier(net), torch.randn(50, 4)
    logit = net(x).detach()
    assert (logit > 0).any() and (logit < 0).any()
    expected = torch.cat([torch.sigmoid(-logit), torch.sigmoid(logit)], dim=1)
    assert torch.equal(model.predict_proba(x), expected)
    assert mean_confidence(model, x) == pytest.approx(expected.amax(dim=1).double().mean().item())
    assert mean_confidence(model, x) == pytest.approx(mean_confidence(lambda t: net(t), x))


SIGMOID_WARNING = (
    r"model's single output column looks like a sigmoid's probabilities \(the model ends in a sigmoid, or its "
    r"outputs all lie in \[0, 1\]\), but fgsmkit reads one column as the logit of class 1 \(predicted where it is "
    r"above 0\); drop the sigmoid at the end of the model, or pass lambda x: torch.logit\(model\(x\)\)"
)


def test_a_model_ending_in_a_sigmoid_warns_that_one_column_is_read_as_a_logit() -> None:
    # Its outputs are all above 0, so every sample was scored as class 1, without a word.
    torch.manual_seed(0)
    net = nn.Linear(4, 1)
    sigmoid_model, x = nn.Sequential(net, nn.Sigmoid()), torch.randn(50, 4)
    y = (net(x)[:, 0] > 0).long()
    unchanged = lambda model, xb, yb: xb.clone()  # noqa: E731
    for metric in (lambda m: error_rate(m, x, y, batch_size=20),
                   lambda m: mean_confidence(m, x, batch_size=20),
                   lambda m: evaluate_attack(m, unchanged, x, y, batch_size=20),
                   lambda m: fk.fgsm(m, x.sigmoid(), eps=0.1)):  # labels from the predictions
        with pytest.warns(UserWarning) as caught:
            metric(sigmoid_model)
        assert len(caught) == 1
        assert re.fullmatch(SIGMOID_WARNING, str(caught[0].message))
        assert caught[0].filename == __file__
    # The advice gives the logits' numbers.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert error_rate(lambda t: torch.logit(sigmoid_model(t)), x, y) == error_rate(net, x, y) == 0.0
    # A constant column (zero weights, a single sample) says nothing about sigmoids.
    zero = fk.models.LogisticRegression(4)
    nn.init.zeros_(zero.linear.weight)
    nn.init.zeros_(zero.linear.bias)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean_confidence(zero, x)
        mean_confidence(sigmoid_model, x[:1])
    # Logits do not warn where the graph shows them, even all in [0, 1] (an untrained model's few
    # samples); without a graph, the values speak only from 16 samples on.
    small = nn.Linear(4, 1)
    with torch.no_grad():
        small.weight.mul_(0.01)
        small.bias.fill_(0.5)
    assert bool(((small(x) > 0) & (small(x) < 1)).all())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fk.fgsm(small, x.sigmoid(), eps=0.1)
        fk.AdversarialLoss()(small, x.sigmoid(), y)
        error_rate(small, x[:15], y[:15])
    with pytest.warns(UserWarning, match=SIGMOID_WARNING):
        error_rate(small, x[:16], y[:16])
    # Behind a view or a cast, a sigmoid is still seen.
    with pytest.warns(UserWarning, match=SIGMOID_WARNING):
        fk.fgsm(lambda t: torch.sigmoid(net(t)[:, 0]).double().view(-1, 1), x.sigmoid(), y, eps=0.1)


def test_rubbish_rate_warns_about_a_sigmoid_at_the_end() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1), nn.Sigmoid())
    with pytest.warns(UserWarning, match=r"single output column looks like a sigmoid"):
        rubbish_rate(model, n=100, sample_shape=4)


def test_out_of_memory_on_the_noise_is_not_blamed_on_the_arguments() -> None:
    class OOM(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(torch.OutOfMemoryError, match="out of memory"):
        rubbish_rate(OOM(), n=10, sample_shape=4)


def test_a_saturated_sigmoid_still_warns() -> None:
    torch.manual_seed(0)
    net = nn.Linear(4, 1)
    with torch.no_grad():
        net.weight.mul_(30.0)
    model, x = nn.Sequential(net, nn.Sigmoid()), torch.randn(50, 4)
    assert model(x).max().item() == 1.0  # float32 sigmoid rounds to exactly 1
    with pytest.warns(UserWarning, match=r"single output column looks like a sigmoid"):
        fk.evaluation.mean_confidence(model, x)
