"""The model zoo: shapes, probabilities, gradients and the paper's definitions."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.utils.prune

import fgsmkit as fk
from fgsmkit.models import LogisticRegression, Maxout, MaxoutMLP, RBFNetwork, SoftmaxRegression

ZOO = {
    "maxout": lambda: MaxoutMLP(),
    "maxout_dropout": lambda: MaxoutMLP(hidden=(32, 16), pieces=3, dropout=0.5, input_dropout=0.2, max_norm=1.9365),
    "rbf": lambda: RBFNetwork(784, 10),
    "softmax": lambda: SoftmaxRegression(784, 10),
    "logistic": lambda: LogisticRegression(784),
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_flat_and_image_input_give_the_same_logits(name: str) -> None:
    torch.manual_seed(0)
    model = ZOO[name]().eval()
    images = torch.rand(5, 1, 28, 28)
    logits = model(images)
    assert torch.equal(logits, model(images.flatten(1)))
    assert logits.shape == (5, 1 if name == "logistic" else 10)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_predict_proba_is_a_probability_per_class_without_autograd(name: str) -> None:
    torch.manual_seed(0)
    model = ZOO[name]().eval()
    probs = model.predict_proba(torch.rand(7, 784))
    assert probs.shape == (7, 10 if name != "logistic" else 2)
    assert not probs.requires_grad
    assert ((probs >= 0) & (probs <= 1)).all()
    if name != "rbf":  # RBF detectors are independent: their probabilities need not sum to 1
        torch.testing.assert_close(probs.sum(1), torch.ones(7))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_parameter_gets_a_gradient_and_attacks_work(name: str) -> None:
    torch.manual_seed(0)
    model = ZOO[name]()
    x = torch.rand(6, 784)
    y = torch.randint(0, 2 if name == "logistic" else 10, (6,))
    loss_fn = RBFNetwork.loss if name == "rbf" else None
    fk.AdversarialLoss(loss_fn=loss_fn)(model, x, y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # A small step along the gradient's sign raises every sample's loss.
    x_adv = fk.fgsm(model.eval(), x, y, eps=0.01, loss_fn=loss_fn)
    per_sample_loss = loss_fn or fk.gradient.cross_entropy
    with torch.no_grad():
        assert (per_sample_loss(model(x_adv), y) > per_sample_loss(model(x), y)).all()


def test_maxout_is_the_max_over_its_affine_pieces() -> None:
    torch.manual_seed(0)
    layer = Maxout(6, 4, pieces=3)
    x = torch.randn(5, 6)
    pieces = x @ layer.linear.weight.T + layer.linear.bias  # (5, 4 * 3), unit-major
    expected = torch.stack([pieces[:, u * 3 : (u + 1) * 3].max(1).values for u in range(4)], dim=1)
    torch.testing.assert_close(layer(x), expected)


def test_the_paper_network_has_the_paper_shape() -> None:
    net = MaxoutMLP()
    maxouts = [m for m in net.modules() if isinstance(m, Maxout)]
    assert [(m.in_features, m.out_features, m.pieces) for m in maxouts] == [(784, 240, 5), (240, 240, 5)]
    assert [m.out_features for m in MaxoutMLP(hidden=(1600, 1600)).modules() if isinstance(m, Maxout)] == [1600, 1600]


def test_max_norm_caps_every_unit_weight_vector() -> None:
    torch.manual_seed(0)
    net = MaxoutMLP(hidden=(16,), pieces=2, max_norm=0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(50)
    small_row = net.layers[0].linear.weight[0].detach().clone()
    net.apply_max_norm()
    for module in net.modules():
        if isinstance(module, torch.nn.Linear):
            assert (module.weight.norm(dim=1) <= 0.5 + 1e-6).all()
    # Directions are kept, only lengths shrink.
    torch.testing.assert_close(net.layers[0].linear.weight[0], small_row / small_row.norm() * 0.5)


def test_rbf_network_is_the_paper_detector() -> None:
    torch.manual_seed(0)
    net = RBFNetwork(5, 3)
    x = torch.rand(4, 5, dtype=torch.float64)
    net = net.double()
    beta = -net.log_precision.exp()
    expected = torch.stack([((x - net.centers[c]) ** 2 * beta[c]).sum(1) for c in range(3)], dim=1)
    torch.testing.assert_close(net(x), expected)
    torch.testing.assert_close(net.predict_proba(x), expected.exp())


def test_rbf_confidence_vanishes_far_from_the_centres() -> None:
    net = RBFNetwork(784, 10)
    assert net.predict_proba(torch.full((3, 784), 50.0)).max() < 1e-6


def test_rbf_detector_loss_is_the_one_vs_rest_bernoulli_likelihood() -> None:
    log_probs = torch.log(torch.tensor([[0.9, 0.2, 0.5], [0.1, 0.7, 0.3]], dtype=torch.float64))
    y = torch.tensor([0, 1])
    p = log_probs.exp()
    expected = torch.stack([
        -(torch.log(p[0, 0]) + torch.log(1 - p[0, 1]) + torch.log(1 - p[0, 2])),
        -(torch.log(1 - p[1, 0]) + torch.log(p[1, 1]) + torch.log(1 - p[1, 2])),
    ])
    torch.testing.assert_close(RBFNetwork.loss(log_probs, y), expected)
    # Labels of any integer dtype, as for the default loss.
    for dtype in (torch.int32, torch.int16, torch.uint8):
        assert torch.equal(RBFNetwork.loss(log_probs, y.to(dtype)), RBFNetwork.loss(log_probs, y))
    # Stable where a detector is (numerically) certain.
    assert torch.isfinite(RBFNetwork.loss(torch.tensor([[0.0, -1e-30]]), torch.tensor([0]))).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rbf_detector_loss_has_finite_gradients_where_a_detector_is_nearly_certain(dtype) -> None:
    # log(1 - p) for p near 1 and log p near 0: the branch torch.where does not pick had a
    # log1p(-1) = -inf whose backward put NaN into the gradient (also of the target column).
    for log_p in (-1e-8, -1e-12, -1e-4):
        log_probs = torch.tensor([[log_p, -2.0], [-2.0, log_p]], dtype=dtype, requires_grad=True)
        RBFNetwork.loss(log_probs, torch.tensor([0, 0])).sum().backward()
        exact = torch.tensor([[log_p, -2.0], [-2.0, log_p]], dtype=torch.float64, requires_grad=True)
        p = exact.exp()
        (-(torch.log(p[0, 0]) + torch.log1p(-p[0, 1]) + torch.log(p[1, 0]) + torch.log1p(-p[1, 1]))).backward()
        assert bool(torch.isfinite(log_probs.grad).all()), (dtype, log_p, log_probs.grad)
        assert log_probs.grad[0, 0] == -1 and log_probs.grad[1, 0] == -1  # the target column's -1
        torch.testing.assert_close(log_probs.grad[0, 1].double(), exact.grad[0, 1], rtol=2e-2, atol=0)


@pytest.mark.parametrize(("y", "error", "message"), [
    (torch.tensor([0]), ValueError, r"y must hold one class index per row of log_probs, shape \(2,\); got shape \(1,\)"),
    (torch.tensor([[0], [1]]), ValueError, r"shape \(2,\); got shape \(2, 1\)"),
    (torch.tensor([0.9, 1.7]), TypeError, r"y must hold integer class indices"),
    (torch.tensor([0, 3]), RuntimeError, r"Class values must be smaller than num_classes"),  # one_hot's own
    ([0, 1], TypeError, r"y must be a torch.Tensor"),
])
def test_rbf_detector_loss_refuses_labels_that_are_not_one_index_per_row(y, error, message) -> None:
    with pytest.raises(error, match=message):
        RBFNetwork.loss(torch.full((2, 3), -1.0), y)


@pytest.mark.parametrize("make", [
    lambda: fk.models.SoftmaxRegression(4, 1),
    lambda: fk.models.MaxoutMLP(num_classes=1),
    lambda: fk.models.RBFNetwork(4, 1),
])
def test_models_need_two_classes(make) -> None:
    # One output column is read as a binary logit by the attacks and the metrics; these models'
    # probabilities would be a one-column softmax (always 1), and evaluation indexed column 1.
    with pytest.raises(ValueError, match=r"num_classes must be >= 2; got 1.*LogisticRegression"):
        make()


def test_trained_rbf_network_separates_two_blobs_and_is_unsure_elsewhere() -> None:
    torch.manual_seed(0)
    x = torch.cat([torch.randn(100, 2) * 0.1 + 1, torch.randn(100, 2) * 0.1 - 1])
    y = torch.cat([torch.zeros(100), torch.ones(100)]).long()
    net = RBFNetwork(2, 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        net.loss(net(x), y).mean().backward()
        optimizer.step()
    assert (net(x).argmax(1) == y).float().mean() > 0.98
    assert net.predict_proba(torch.tensor([[6.0, -6.0]])).max() < 0.05


def test_logistic_regression_probabilities_are_the_sigmoid() -> None:
    model = LogisticRegression(3)
    x = torch.rand(4, 3)
    z = model(x)[:, 0]
    torch.testing.assert_close(model.predict_proba(x), torch.stack([1 - torch.sigmoid(z), torch.sigmoid(z)], 1).detach())


def test_models_reject_the_wrong_number_of_features() -> None:
    with pytest.raises(ValueError, match="MaxoutMLP expects 784 features per sample; got input of shape"):
        MaxoutMLP()(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="dropout"):
        MaxoutMLP(dropout=1.0)
    with pytest.raises(ValueError, match="max_norm"):
        MaxoutMLP(max_norm=0)
    with pytest.raises(ValueError, match="pieces must be an int >= 1"):
        Maxout(3, 3, pieces=0)
    with pytest.raises(ValueError, match="pieces must be an int >= 1"):
        MaxoutMLP(hidden=(), pieces=0)  # no maxout layer to catch it
    for bad in (float("nan"), float("inf"), -1.0, "2"):
        with pytest.raises(ValueError, match="max_norm must be a finite number > 0"):
            MaxoutMLP(max_norm=bad)
    with pytest.raises(TypeError, match=r"hidden must be a sequence of int layer widths, e.g. hidden=\(240,\)"):
        MaxoutMLP(hidden=240)
    # Arrays of widths and a 0-d tensor for max_norm are fine.
    for widths in ([6, 5], np.array([6, 5]), torch.tensor([6, 5])):
        assert MaxoutMLP(in_features=4, hidden=widths, pieces=2, max_norm=torch.tensor(2.0))(torch.rand(3, 4)).shape == (3, 10)
    with pytest.raises(ValueError, match="hidden widths must be an int >= 1; got 0"):
        MaxoutMLP(hidden=(240, 0))


@pytest.mark.parametrize("make", [
    lambda: fk.models.SoftmaxRegression(4, 0),
    lambda: fk.models.MaxoutMLP(num_classes=0),
    lambda: fk.models.RBFNetwork(4, 0),
    lambda: fk.models.LogisticRegression(0),
    lambda: fk.models.SoftmaxRegression(4.5, 3),
])
def test_models_reject_sizes_below_one(make) -> None:
    with pytest.raises(ValueError, match=r"(num_classes|in_features) must be an int >= 1"):
        make()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_rbf_log_probability_is_exactly_zero_at_a_centre(dtype, scale) -> None:
    """A detector is certain at its own centre, whatever the units of the input and the dtype."""
    torch.manual_seed(0)
    net = RBFNetwork(784, 10)
    with torch.no_grad():
        net.centers.mul_(scale)
    net = net.to(dtype)
    logits = net(net.centers.detach().clone())
    assert torch.equal(logits.diagonal(), torch.zeros(10, dtype=dtype))
    assert (logits <= 0).all()


def test_rbf_log_probabilities_near_the_centres_are_accurate_in_float32() -> None:
    """Sharp detectors (precision e^3) near their centres: a float64 reference within float32 rounding."""
    torch.manual_seed(0)
    net = RBFNetwork(784, 10)
    with torch.no_grad():
        net.log_precision.fill_(3.0)
    x = net.centers.detach() + 1e-3 * torch.randn(10, 784)
    expected = net.double()(x.double()).diagonal()
    got = net.float()(x).diagonal().double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)


def test_maxout_parameter_names_do_not_depend_on_dropout() -> None:
    """A network trained with dropout loads into one built without it (dropout is a training setting)."""
    torch.manual_seed(0)
    trained = MaxoutMLP(hidden=(32, 16), pieces=3, dropout=0.5, input_dropout=0.2)
    plain = MaxoutMLP(hidden=(32, 16), pieces=3)
    assert list(trained.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(trained.state_dict())
    x = torch.rand(5, 784)
    assert torch.equal(plain(x), trained.eval()(x))


def test_maxout_dropout_is_active_in_training_only() -> None:
    torch.manual_seed(0)
    net, x = MaxoutMLP(hidden=(32,), pieces=2, dropout=0.5, input_dropout=0.2), torch.rand(4, 784)
    assert not torch.equal(net.train()(x), net(x))
    assert torch.equal(net.eval()(x), net(x))
    assert "dropout=0.5, input_dropout=0.2" in repr(net)


@pytest.mark.parametrize("bad", [None, "0.2", [0.5], True, float("nan")])
def test_maxout_dropout_arguments_are_checked_by_name(bad) -> None:
    for name in ("dropout", "input_dropout"):
        with pytest.raises(ValueError, match=f"{name} must be a number in \\[0, 1\\)"):
            MaxoutMLP(**{name: bad})


@pytest.mark.parametrize("bad", [(True,), (240, False), (torch.tensor(True),), (np.bool_(True),)])
def test_maxout_hidden_widths_refuse_bools(bad) -> None:
    with pytest.raises(TypeError, match="hidden must be a sequence of int layer widths"):
        MaxoutMLP(hidden=bad)


@pytest.mark.parametrize("bad", [True, 0, -1.0, None, float("nan"), float("inf")])
def test_max_norm_refuses_what_is_not_a_positive_number(bad) -> None:
    weight = torch.ones(3, 4)
    with pytest.raises(ValueError, match="max_norm must be a finite number > 0"):
        fk.models.max_norm_(weight, bad)
    assert torch.equal(weight, torch.ones(3, 4))


@pytest.mark.parametrize("shape", [(5,), ()])
def test_max_norm_refuses_a_weight_without_rows_and_says_how_to_pass_one(shape) -> None:
    # torch.renorm's own "input needs at least 2 dimensions" named neither the argument nor a fix.
    weight = torch.full(shape, 10.0)
    with pytest.raises(ValueError, match=rf"weight must have one row per unit .*got shape {re.escape(str(shape))}.*"
                                         r"max_norm_\(v\[None\], max_norm\)"):
        fk.models.max_norm_(weight, 1.0)
    assert torch.equal(weight, torch.full(shape, 10.0))
    vector = torch.full((4,), 10.0)
    fk.models.max_norm_(vector[None], 1.0)  # as advised: the view writes into the vector
    torch.testing.assert_close(vector.norm(), torch.tensor(1.0))


@pytest.mark.parametrize(("dtype", "over"), [(torch.bfloat16, 2**-7), (torch.float16, 2**-10)])
def test_max_norm_ends_over_the_cap_by_no_more_than_its_docstring_says(dtype, over) -> None:
    # Two roundings in the dtype: renorm's factor and each entry. Short rows show it most.
    torch.manual_seed(0)
    for width in (2, 10, 784):
        weight = (torch.randn(4000, width) * 5).to(dtype)
        fk.models.max_norm_(weight, 1.9365)
        assert (weight.double().norm(dim=1) / 1.9365 - 1).max() <= over + 1e-6


@pytest.mark.parametrize(("log_probs", "error", "message"), [
    (torch.tensor([[-1, -2]]), TypeError, "log_probs must hold floating-point log-probabilities; got dtype torch.int64"),
    ([[-1.0, -2.0]], TypeError, "log_probs must be a torch.Tensor"),
])
def test_rbf_detector_loss_refuses_log_probs_that_are_not_a_float_tensor(log_probs, error, message) -> None:
    with pytest.raises(error, match=message):
        RBFNetwork.loss(log_probs, torch.tensor([0]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rbf_detector_loss_trains_a_wrong_detector_that_is_nearly_certain_in_low_precision(dtype) -> None:
    """log p = -3e-5 for the wrong class is within float16's smallest normal of 0: the loss is
    computed in float32, where it still has a gradient (1/(1-p) - 1 = p/(1-p), about 3e4)."""
    log_probs = torch.tensor([[-2.0, -3e-5]], dtype=dtype, requires_grad=True)
    loss = RBFNetwork.loss(log_probs, torch.tensor([0]))
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert log_probs.grad[0, 1] > 1e4


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_models_export_copy_and_pickle_to_the_same_function(name: str) -> None:
    import copy
    import pickle

    torch.manual_seed(0)
    model, x = ZOO[name]().eval(), torch.rand(3, 784)
    exported = torch.export.export(model, (x,)).module()
    for other in (exported, copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(other(x), model(x))


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_input_of_another_dtype_than_the_parameters_is_refused_by_name(name: str, dtype: torch.dtype) -> None:
    # The RBF network returned float32 logits for float16 input, and failed on float64 input
    # with torch's "addmv input tensors must have the same dtype"; the others named no argument.
    model = ZOO[name]()
    dtype_name = str(dtype).removeprefix("torch.")
    refusal = rf"{type(model).__name__} has float32 parameters but x is {dtype_name}; convert x \(x.to\(torch.float32\)\)"
    with pytest.raises(TypeError, match=refusal):
        model(torch.rand(2, 784).to(dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if dtype == torch.float16:  # autocast casts such inputs itself
            assert model(torch.rand(2, 784).to(dtype)).shape[0] == 2
        else:  # but never float64 ones
            with pytest.raises(TypeError, match=refusal):
                model(torch.rand(2, 784).to(dtype))
        # nor float64 weights
        with pytest.raises(TypeError, match=rf"{type(model).__name__} has float64 parameters but x is float32"):
            ZOO[name]().double()(torch.rand(2, 784))


@pytest.mark.parametrize("compute", ["weight_norm", "prune"])
def test_max_norm_refuses_a_layer_whose_weight_is_computed(compute) -> None:
    # The weight of a parametrized or pruned layer is recomputed from its stored tensors at each
    # access: rescaling it in place changed a copy that the next forward threw away, silently.
    torch.manual_seed(0)
    net = MaxoutMLP(in_features=6, hidden=(4,), pieces=2, max_norm=0.1)
    if compute == "weight_norm":
        torch.nn.utils.parametrizations.weight_norm(net.layers[1])
    else:
        torch.nn.utils.prune.l1_unstructured(net.layers[1], "weight", amount=0.5)
    before = [p.clone() for p in net.parameters()]
    with pytest.raises(TypeError, match=r"layers\.1 computes its weight .*remove"):
        net.apply_max_norm()
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    with pytest.raises(ValueError, match="weight is computed from other tensors"):
        fk.models.max_norm_(net.layers[1].weight, 0.1)


def test_max_norm_caps_each_piece_as_its_docstring_says() -> None:
    # Each affine piece (one row of the layer's weight) is capped, as in the maxout paper's code;
    # a unit's pieces together may exceed the cap.
    torch.manual_seed(0)
    net = MaxoutMLP(in_features=8, hidden=(3,), pieces=4, max_norm=0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(50)
    net.apply_max_norm()
    pieces = net.layers[0].linear.weight.unflatten(0, (3, 4))
    assert pieces.norm(dim=2).max() <= 0.5 * (1 + 1e-6)
    assert pieces.flatten(1).norm(dim=1).min() > 0.5 * 1.5
    assert "each affine piece" in fk.models.max_norm_.__doc__


def test_max_norm_shortfall_is_what_its_docstring_says() -> None:
    # A row just over a tiny cap ends 1e-7 / (n + 1e-7) under it: about 9% for a cap of 1e-6.
    weight = torch.full((1, 4), 0.5e-6) * 1.0001
    fk.models.max_norm_(weight, 1e-6)
    shortfall = 1 - weight.double().norm().item() / 1e-6
    assert shortfall == pytest.approx(1e-7 / (1.0001e-6 + 1e-7), rel=1e-4)
    assert "9%" in fk.models.max_norm_.__doc__


@pytest.mark.parametrize("x", [np.zeros((2, 784), np.float32), [[0.0] * 784]])
def test_models_refuse_input_that_is_not_a_tensor_by_name(x) -> None:
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor; got .*torch.as_tensor"):
        SoftmaxRegression(784, 10)(x)


def test_models_say_how_to_pass_a_single_sample() -> None:
    with pytest.raises(ValueError, match=r"got input of shape \(784,\).*x.unsqueeze\(0\)"):
        SoftmaxRegression(784, 10)(torch.rand(784))


def test_rbf_network_repr_shows_its_sizes() -> None:
    assert repr(RBFNetwork(784, 10)) == "RBFNetwork(in_features=784, num_classes=10)"
