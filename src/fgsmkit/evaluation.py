"""The paper's metrics, as functions of any classifier: error, confidence, agreement, rubbish.

Every function runs the model in batches of ``batch_size`` without autograd, in the train/eval
mode the model is in (``eval_mode=True`` switches it to eval mode for the call). A model is any
callable returning logits of shape ``(batch, classes)``, but only an ``nn.Module`` shows its
state: for one, the mode of every submodule and any buffers (such as BatchNorm statistics) are
restored afterwards. A function (a lambda, a ``functools.partial``, a bound ``forward``) hides
the modules it calls: ``eval_mode=True`` is refused, and a module it runs in train mode keeps
whatever its forward passes write (BatchNorm's running statistics, say). Call ``module.eval()``
first, or pass the module itself.

Probabilities are those of :meth:`fgsmkit.models.Classifier.probabilities` where the model is a
:class:`~fgsmkit.models.Classifier` (for example the RBF network's unnormalised detector
probabilities), also when wrapped by ``torch.compile``, ``DistributedDataParallel`` or
``DataParallel``; otherwise they are the softmax of the logits, a single logit column being read
as binary logistic regression (``[sigmoid(-z), sigmoid(z)]``). A function or another module
that calls a classifier is scored this way too, not with the classifier's own probabilities: a
module holding one that defines its own warns where it is scored with a softmax (a function's
modules cannot be seen). Pass the classifier itself, or make the wrapper a
:class:`~fgsmkit.models.Classifier` whose ``probabilities`` hands on the classifier's.

The predicted class is the one with the largest logit (the most probable one, read where
probabilities cannot underflow into ties) and the *confidence* is its probability. A model
whose outputs are already probabilities (one that ends in a softmax) warns where their softmax
would be taken, on the first batch: drop the softmax, or pass ``lambda x: model(x).log()``. A
single output column that lies in [0, 1] on a first batch of at least 16 samples (a sigmoid at
the end) warns in every metric, since each of its samples would be predicted class 1: pass
``lambda x: torch.logit(model(x))``.
NaN or infinite logits raise a ``ValueError``. Counts and sizes (``n``, ``batch_size``,
``sample_shape``) may be NumPy integers.

Transfer error, the error of model B on adversarial examples made on model A (the paper's
section 8), needs no function of its own:

>>> import functools, torch, fgsmkit as fk
>>> from fgsmkit.evaluation import error_rate, evaluate_attack
>>> a, b = fk.models.SoftmaxRegression(4, 3), fk.models.SoftmaxRegression(4, 3)
>>> x, y = torch.rand(16, 4), torch.randint(0, 3, (16,))
>>> report = evaluate_attack(a, functools.partial(fk.fgsm, eps=0.25), x, y, keep_examples=True)
>>> transfer_error = error_rate(b, report.examples, y)
>>> 0.0 <= transfer_error <= 1.0
True
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypedDict, TypeVar

import torch
from torch import Tensor, nn

from . import _validation
from ._validation import Count
from ._model import check_eval_mode, innermost_module, logits_of, model_state_kept
from ._output_checks import check_logits_finite, warn_if_probabilities, warn_if_sigmoid_outputs
from .gradient import predicted_labels, probabilities_of_logits
from .models import Classifier

Model = Callable[[Tensor], Tensor]
# evaluate_attack's model and its attack's first parameter share one type: an attack written for
# nn.Modules (or for one model class) fits a model of that type, a lambda or a partial fits any.
ModelT = TypeVar("ModelT", bound=Model)
Attack = Callable[[ModelT, Tensor, Tensor], Tensor]

# rubbish_rate draws its noise in blocks of this many inputs, whatever the batch size, so that
# the draws do not depend on it. It is the default batch size, at which the draws are those of
# the earlier one draw per batch (the reproduction's recorded rubbish numbers among them).
_NOISE_BLOCK = 1000

# What goes wrong, and the fix, where a model's outputs are already probabilities.
_SOFTMAX_OF_PROBABILITIES = (
    "the metrics expect logits and take the softmax of them; drop the softmax at the end of the model, or pass "
    "lambda x: model(x).log() (log-probabilities are logits)"
)


@dataclass(frozen=True)
class AttackReport:
    """What :func:`evaluate_attack` measured.

    Attributes
    ----------
    n : int
        Number of examples.
    clean_error : float
        Error rate on the clean examples.
    adversarial_error : float
        Error rate on the adversarial examples.
    confidence_on_adversarial_mistakes : float
        Mean probability of the predicted class over the misclassified adversarial examples
        (nan if there are none).
    examples : Tensor or None
        The adversarial examples, when asked for with ``keep_examples=True``. Reports compare
        (``==``) by their measurements alone: the examples are left out.

    Examples
    --------
    >>> import functools, torch, fgsmkit as fk
    >>> from fgsmkit.evaluation import evaluate_attack
    >>> model = fk.models.SoftmaxRegression(4, 3)
    >>> x, y = torch.rand(16, 4), torch.randint(0, 3, (16,))
    >>> report = evaluate_attack(model, functools.partial(fk.fgsm, eps=0.25), x, y)
    >>> report.n
    16
    """

    n: int
    clean_error: float
    adversarial_error: float
    confidence_on_adversarial_mistakes: float
    # Left out of ==: a tensor comparison has no single truth value.
    examples: Tensor | None = field(default=None, compare=False)


class AgreementOnMistakes(TypedDict):
    """What :func:`agreement_on_mistakes` returns, for type checkers: a plain dict at runtime."""

    a_mistakes: int
    agreement_on_a_mistakes: float
    both_mistakes: int
    agreement_when_both_err: float


def error_rate(model: Model, x: Tensor, y: Tensor, *, batch_size: Count = 1000, eval_mode: bool = False) -> float:
    """Fraction of ``x`` that ``model`` misclassifies.

    Parameters
    ----------
    model : callable
        Maps a batch of inputs to logits of shape ``(batch, classes)``.
    x : Tensor
        Inputs, batch first, at least one sample.
    y : Tensor
        True class indices, shape ``(batch,)``.
    batch_size : int
        Samples per forward pass.
    eval_mode : bool
        Run the model in eval mode (its mode is restored afterwards).

    Returns
    -------
    float
        The fraction of misclassified samples, in [0, 1].

    Examples
    --------
    >>> import torch
    >>> from fgsmkit.evaluation import error_rate
    >>> logits_are_inputs = lambda x: x
    >>> x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    >>> error_rate(logits_are_inputs, x, torch.tensor([0, 1, 1]))
    0.3333333333333333
    """
    y = _labels(y)
    batch_size, eval_mode = _check_batch(model, x, y, batch_size, eval_mode)
    predicted = _predictions(model, x, y, batch_size, eval_mode, with_confidence=False).labels
    return _mean((predicted != y).double())


def confidence_on_mistakes(model: Model, x: Tensor, y: Tensor, *, batch_size: Count = 1000,
                           eval_mode: bool = False) -> float:
    """Mean probability of the predicted class over the examples ``model`` misclassifies.

    Parameters
    ----------
    model : callable
        Maps a batch of inputs to logits of shape ``(batch, classes)``.
    x : Tensor
        Inputs, batch first, at least one sample.
    y : Tensor
        True class indices, shape ``(batch,)``.
    batch_size : int
        Samples per forward pass.
    eval_mode : bool
        Run the model in eval mode (its mode is restored afterwards).

    Returns
    -------
    float
        The mean probability of the predicted class over the misclassified samples; nan when
        there are none.

    Examples
    --------
    >>> import math, torch
    >>> from fgsmkit.evaluation import confidence_on_mistakes
    >>> x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [math.log(3), 0.0]])
    >>> round(confidence_on_mistakes(lambda x: x, x, torch.tensor([0, 1, 1])), 6)  # softmax(log 3, 0)[0]
    0.75
    """
    y = _labels(y)
    batch_size, eval_mode = _check_batch(model, x, y, batch_size, eval_mode)
    predicted, confidence, _ = _predictions(model, x, y, batch_size, eval_mode)
    assert confidence is not None  # asked for (with_confidence)
    return _mean(confidence[predicted != y])


def mean_confidence(model: Model, x: Tensor, *, batch_size: Count = 1000, eval_mode: bool = False) -> float:
    """Mean probability of the predicted class over ``x``.

    Parameters
    ----------
    model : callable
        Maps a batch of inputs to logits of shape ``(batch, classes)``.
    x : Tensor
        Inputs, batch first, at least one sample (no labels are needed).
    batch_size : int
        Samples per forward pass.
    eval_mode : bool
        Run the model in eval mode (its mode is restored afterwards).

    Returns
    -------
    float
        The mean probability of the predicted class.

    Examples
    --------
    >>> import math, torch
    >>> from fgsmkit.evaluation import mean_confidence
    >>> x = torch.tensor([[math.log(3), 0.0], [0.0, 0.0]])
    >>> round(mean_confidence(lambda x: x, x), 6)  # (0.75 + 0.5) / 2
    0.625
    """
    batch_size, eval_mode = _check_batch(model, x, None, batch_size, eval_mode)
    confidence = _predictions(model, x, None, batch_size, eval_mode).confidence
    assert confidence is not None  # asked for (with_confidence)
    return _mean(confidence)


def agreement_on_mistakes(model_a: Model, model_b: Model, x: Tensor, y: Tensor, *, batch_size: Count = 1000,
                          eval_mode: bool = False) -> AgreementOnMistakes:
    """How often model B picks the same wrong class as model A (the paper's sections 7-8).

    Typically ``x`` holds adversarial examples made on model A.

    Parameters
    ----------
    model_a : callable
        The classifier whose mistakes are counted: maps a batch of inputs to logits of shape
        ``(batch, classes)``.
    model_b : callable
        The classifier compared with it, over the same classes (a single logit column counts as
        two classes).
    x : Tensor
        Inputs, batch first, at least one sample.
    y : Tensor
        True class indices, shape ``(batch,)``.
    batch_size : int
        Samples per forward pass.
    eval_mode : bool
        Run both models in eval mode (their modes are restored afterwards).

    Returns
    -------
    dict
        ``"a_mistakes"`` (int): how many examples A misclassifies;
        ``"agreement_on_a_mistakes"`` (float): the fraction of A's mistakes on which B predicts
        the same class as A; ``"both_mistakes"`` (int): how many examples both misclassify;
        ``"agreement_when_both_err"`` (float): the fraction of those on which they predict the
        same class. A fraction with nothing to count is nan. Type checkers see the
        ``TypedDict`` ``fgsmkit.evaluation.AgreementOnMistakes``.

    Examples
    --------
    >>> import torch
    >>> from fgsmkit.evaluation import agreement_on_mistakes
    >>> a = lambda x: x[:, :3]  # logits are the first three columns...
    >>> b = lambda x: x[:, 3:]  # ...and the last three
    >>> x = torch.tensor([[0., 1., 0., 0., 1., 0.],    # both say 1 (wrong, y = 0)
    ...                   [0., 0., 1., 0., 1., 0.],    # A says 2, B says 1: both wrong, differ
    ...                   [0., 0., 1., 1., 0., 0.]])   # A says 2 (wrong), B is right
    >>> agreement_on_mistakes(a, b, x, torch.tensor([0, 0, 0]))["agreement_on_a_mistakes"]
    0.3333333333333333
    """
    y = _labels(y)
    # Both models are checked before either runs over all of x.
    batch_size, eval_mode = _check_batch(model_a, x, y, batch_size, eval_mode, "model_a")
    _validation.check_model(model_b, x, "model_b")
    check_eval_mode(model_b, eval_mode, "model_b")
    a = _predictions(model_a, x, y, batch_size, eval_mode, "model_a", with_confidence=False)
    b = _predictions(model_b, x, y, batch_size, eval_mode, "model_b", with_confidence=False)
    if a.classes != b.classes:
        raise ValueError(
            f"model_a has {a.classes} classes but model_b has {b.classes}; agreement compares the classes "
            "the two predict, so pass two classifiers over the same classes"
        )
    predicted_a, predicted_b = a.labels, b.labels
    a_wrong = predicted_a != y
    both_wrong = a_wrong & (predicted_b != y)
    same = (predicted_a == predicted_b).double()
    return {
        "a_mistakes": int(a_wrong.sum()),
        "agreement_on_a_mistakes": _mean(same[a_wrong]),
        "both_mistakes": int(both_wrong.sum()),
        "agreement_when_both_err": _mean(same[both_wrong]),
    }


def rubbish_rate(model: Model, n: Count, sample_shape: Count | Sequence[Count], *, threshold: float = 0.5,
                 generator: torch.Generator | None = None, batch_size: Count = 1000, eval_mode: bool = False,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> tuple[float, float]:
    """How often the model confidently classifies Gaussian noise (the paper's rubbish inputs).

    Draws ``n`` inputs from :math:`N(0, I)` and counts those that some class gets with
    probability above ``threshold``.

    Parameters
    ----------
    model : callable
        Maps a batch of inputs to logits of shape ``(batch, classes)``.
    n : int
        Number of noise inputs.
    sample_shape : int or sequence of int
        Shape of one input, e.g. ``784`` or ``(1, 28, 28)``.
    threshold : float
        Probability in [0, 1) above which an input counts as confidently classified.
    generator : torch.Generator, optional
        Source of the noise, for reproducible draws. The noise is drawn in blocks of
        1000 inputs, so the draws do not depend on ``batch_size`` (the model's outputs may, in
        their last bits, as matrix products round differently for other batch shapes).
    batch_size : int
        Samples per forward pass.
    eval_mode : bool
        Run the model in eval mode (its mode is restored afterwards).
    device : torch.device or str, optional
        Where to draw the noise; by default the device of the model's first parameter, or first
        buffer for a model without parameters (the CPU for one with neither). It must be the
        model's.
    dtype : torch.dtype, optional
        The floating-point dtype of the noise; by default that of the model's first parameter or
        buffer (float32 for a model with neither, or with integer ones). Another is the model's
        to accept (under autocast, say) or refuse.

    Returns
    -------
    rate : float
        Fraction of the inputs given some class with probability above ``threshold``.
    confidence : float
        Mean probability of the predicted class over those inputs (nan if there are none).

    Examples
    --------
    >>> import torch, fgsmkit as fk
    >>> from fgsmkit.evaluation import rubbish_rate
    >>> model = fk.models.SoftmaxRegression(784, 10)
    >>> rate, confidence = rubbish_rate(model, 1000, 784, generator=torch.Generator().manual_seed(0))
    >>> 0.0 <= rate <= 1.0
    True
    """
    n = _validation.check_positive_int(n, "n")
    batch_size = _validation.check_positive_int(batch_size, "batch_size")
    eval_mode = _validation.check_flag(eval_mode, "eval_mode")
    shape = _sample_shape(sample_shape)
    if not _validation.is_number(threshold) or not 0 <= threshold < 1:
        raise ValueError(f"threshold must be a probability in [0, 1); got {threshold!r}")
    probe = _noise_like(model, device, dtype)
    _validation.check_model(model, probe)
    generator = _validation.check_generator(generator, probe)
    confidences = []
    with model_state_kept(model, eval_mode), torch.no_grad():
        for noise in _noise_batches(n, shape, batch_size, generator, probe):
            if confidences:
                logits = _logits(model, noise)
            else:
                logits = _first_logits_of_noise(model, noise, shape)
                _warn_if_sigmoid_outputs(logits)
            confidences.append(_probabilities(model, logits, first=not confidences).amax(dim=1))
    confidence = torch.cat(confidences)
    rubbish = confidence > threshold
    return _mean(rubbish.double()), _mean(confidence[rubbish])


def evaluate_attack(model: ModelT, attack: Attack[ModelT], x: Tensor, y: Tensor, *, batch_size: Count = 1000,
                    eval_mode: bool = False, keep_examples: bool = False) -> AttackReport:
    """Attack ``x`` batch by batch and measure the clean and adversarial error.

    Parameters
    ----------
    model : callable
        Maps a batch of inputs to logits of shape ``(batch, classes)``.
    attack : callable
        ``attack(model, x, y) -> x_adv``, for example ``functools.partial(fgsmkit.fgsm, eps=0.25)``.
        It is called with autograd on (also inside ``no_grad`` or ``inference_mode``) and gets
        copies of each batch, detached from any graph ``x`` belongs to.
    x : Tensor
        Clean inputs, batch first, at least one sample.
    y : Tensor
        Their true class indices, shape ``(batch,)``.
    batch_size : int
        Samples per attack call and per forward pass.
    eval_mode : bool
        Run the model in eval mode, during the attack too (its mode is restored afterwards).
        For a model that is an ``nn.Module``, whatever the attack does to its mode or buffers is
        undone before its examples are scored, so that they are scored in the mode, and with the
        statistics, of the clean ones.
    keep_examples : bool
        Return the adversarial examples in :attr:`AttackReport.examples` (for transfer or
        agreement measurements); otherwise each batch's are dropped once measured.

    Returns
    -------
    AttackReport

    Examples
    --------
    >>> import functools, torch, fgsmkit as fk
    >>> from fgsmkit.evaluation import evaluate_attack
    >>> _ = torch.manual_seed(0)
    >>> model = fk.models.SoftmaxRegression(4, 3)
    >>> x, y = torch.rand(16, 4), torch.randint(0, 3, (16,))
    >>> report = evaluate_attack(model, functools.partial(fk.fgsm, eps=0.25), x, y, keep_examples=True)
    >>> report.clean_error, report.adversarial_error
    (0.4375, 0.75)

    On a linear model the loss is convex in ``x``, so FGSM raises every sample's loss. The error
    usually rises with it, but need not: a higher loss can still turn a wrong prediction right.

    >>> loss = functools.partial(torch.nn.functional.cross_entropy, reduction="none")
    >>> with torch.no_grad():
    ...     bool((loss(model(report.examples), y) >= loss(model(x), y)).all())
    True
    """
    if not callable(attack):
        raise TypeError(f"attack must be callable as attack(model, x, y) -> x_adv; got {type(attack).__name__}")
    y = _labels(y)
    batch_size, eval_mode = _check_batch(model, x, y, batch_size, eval_mode)
    keep_examples = _validation.check_flag(keep_examples, "keep_examples")
    with model_state_kept(model, eval_mode):
        clean = _predictions(model, x, y, batch_size, eval_mode=False, with_confidence=False).labels
        wrong, confident, kept = [], [], []
        for x_batch, y_batch in zip(x.split(batch_size), y.split(batch_size)):
            # The attack may switch the model's mode or update its statistics: undone before
            # the scoring pass, which sees the model as the clean pass did.
            # Autograd on, whatever the caller's mode: an attack written to the attack(model, x, y)
            # contract takes its own input gradient (fgsmkit's attacks turn it on themselves).
            with model_state_kept(model, eval_mode=False), torch.inference_mode(False), torch.enable_grad():
                # Copies: an attack may write into its input, a view of the caller's x (and
                # inference-mode tensors cannot be saved for a backward). Detached: made under
                # enable_grad, a copy of an x that requires grad would join the caller's graph,
                # and an attack's backward() would reach the caller's x.
                x_adv = _checked_attack_output(
                    attack(model, x_batch.detach().clone(), y_batch.detach().clone()), x_batch)
            with torch.no_grad():
                predicted, confidence = _predicted_class(model, _logits(model, x_adv), first=not wrong)
            wrong.append(predicted != y_batch)
            confident.append(confidence)
            if keep_examples:
                kept.append(x_adv)
    mistakes, confidence = torch.cat(wrong), torch.cat(confident)
    return AttackReport(
        n=x.shape[0],
        clean_error=_mean((clean != y).double()),
        adversarial_error=_mean(mistakes.double()),
        confidence_on_adversarial_mistakes=_mean(confidence[mistakes]),
        examples=torch.cat(kept) if keep_examples else None,
    )


def _checked_attack_output(x_adv: object, x: Tensor) -> Tensor:
    """What the attack returned for the batch ``x``, checked to be adversarial examples like ``x``."""
    if not isinstance(x_adv, Tensor) or x_adv.shape != x.shape:
        raise ValueError(
            f"attack must return a tensor shaped like its input {tuple(x.shape)}; got "
            f"{tuple(x_adv.shape) if isinstance(x_adv, Tensor) else type(x_adv).__name__}"
        )
    if x_adv.dtype != x.dtype:
        raise TypeError(f"attack must return a tensor of x's dtype {x.dtype}; got {x_adv.dtype}. "
                        "Convert its result, e.g. x_adv.to(x.dtype)")
    if x_adv.device != x.device:
        raise ValueError(f"attack must return a tensor on {x.device}, x's device; got {x_adv.device}. "
                         "Move its result, e.g. x_adv.to(x.device)")
    x_adv = x_adv.detach()
    # Checked here, or the model's NaN logits would be blamed on the model.
    if not bool(torch.isfinite(x_adv).all()):
        raise ValueError("attack returned NaN or inf in its adversarial examples; check the attack's "
                         "step (its eps and step size, or a division by zero)")
    return x_adv


def _probabilities(model: Model, logits: Tensor, first: bool) -> Tensor:
    """The same probabilities as ``predict_proba``: those a :class:`Classifier` defines for itself,
    or the softmax / sigmoid of the logits. On the ``first`` batch, a softmax of outputs that are
    already probabilities warns."""
    classifier = innermost_module(model)
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if isinstance(classifier, Classifier) and type(classifier).probabilities is not Classifier.probabilities:
        return classifier.probabilities(wide)
    if first and logits.shape[1] > 1:
        warn_if_probabilities(logits, _output_range(logits), _SOFTMAX_OF_PROBABILITIES)
        _warn_if_wrapping_own_probabilities(classifier)
    return probabilities_of_logits(wide)


def _warn_if_sigmoid_outputs(logits: Tensor) -> None:
    """Warn where the first batch's single output column holds a sigmoid's probabilities."""
    if logits.shape[1] == 1:
        warn_if_sigmoid_outputs(logits, _output_range(logits))


def _output_range(logits: Tensor) -> tuple[float, float]:
    low, high = torch.stack(torch.aminmax(logits)).tolist()
    return low, high


def _warn_if_wrapping_own_probabilities(model: Model) -> None:
    """Warn where ``model``, scored with a softmax, is a module holding a :class:`Classifier` that
    defines other probabilities (the RBF network's): a wrapper adding preprocessing, say."""
    if not isinstance(model, nn.Module):
        return  # a function's modules cannot be seen
    for name, module in model.named_modules():
        if name and isinstance(module, Classifier) and type(module).probabilities is not Classifier.probabilities:
            warnings.warn(
                f"model is scored with the softmax of its outputs, but its submodule {name!r} "
                f"({type(module).__name__}) defines its own probabilities, which the metrics use only for the "
                "model itself; pass that module as the model, or make the wrapper a fgsmkit.models.Classifier "
                "whose probabilities() hands on the submodule's",
                UserWarning,
                stacklevel=_validation.user_stacklevel(),
            )
            return


def _logits(model: Model, x: Tensor, name: str = "model") -> Tensor:
    """The logits of one batch, shape ``(batch, classes)``, checked to be finite (``name``: the
    model's argument, for the messages)."""
    # The model gets a copy: under no_grad nothing stops one that writes into its input
    # (nn.ReLU(inplace=True) first) from changing the caller's x, whose batches are views of it.
    logits = _validation.check_logits(logits_of(model, x.clone()), x, name)
    check_logits_finite(logits, f"{name} returned NaN or inf logits for these inputs, which have no predicted "
                                "class or probability to score; check the model and its inputs")
    return logits


def _predicted_class(model: Model, logits: Tensor, first: bool) -> tuple[Tensor, Tensor]:
    """The predicted classes for ``logits`` and their probabilities (``first``: the first batch)."""
    predicted = predicted_labels(logits)
    return predicted, _probabilities(model, logits, first).gather(1, predicted[:, None])[:, 0]


def _check_batch(model: Model, x: Tensor, y: Tensor | None, batch_size: object, eval_mode: object,
                 name: str = "model") -> tuple[int, bool]:
    """Check the arguments every metric takes (``y=None``: no labels; ``name``: the model's
    argument); returns ``batch_size`` and ``eval_mode`` as an int and a bool."""
    _validation.check_inputs(x, before="evaluating the model on it")
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one sample; a metric over no samples is undefined")
    _validation.check_model(model, x, name)
    if y is not None:
        _validation.check_labels(y, x)
        if y.ndim != 1:
            raise ValueError(f"y must be a 1-D tensor of class indices; got shape {tuple(y.shape)}")
    batch_size = _validation.check_positive_int(batch_size, "batch_size")
    eval_mode = _validation.check_flag(eval_mode, "eval_mode")
    check_eval_mode(model, eval_mode, name)
    return batch_size, eval_mode


class _Predictions(NamedTuple):
    labels: Tensor  # the predicted class of each sample
    confidence: Tensor | None  # its probability, where asked for
    classes: int  # how many classes the model tells apart (two for a single logit column)


def _predictions(model: Model, x: Tensor, y: Tensor | None, batch_size: int, eval_mode: bool,
                 name: str = "model", *, with_confidence: bool = True) -> _Predictions:
    """Predicted classes for all of ``x`` (arguments checked by :func:`_check_batch`), and
    their probabilities ``with_confidence``; ``y`` is checked against the model's classes.

    The predictions alone need no probabilities: the largest output is the predicted class,
    logits or probabilities alike, so that only the confidence warns about probabilities.
    """
    confidences, predictions = [], []
    with model_state_kept(model, eval_mode), torch.no_grad():
        for batch in x.split(batch_size):
            logits = _logits(model, batch, name)
            if not predictions:
                _warn_if_sigmoid_outputs(logits)
                if y is not None:
                    _validation.check_class_labels(y, logits.shape[1], name)
            if with_confidence:
                predicted, confidence = _predicted_class(model, logits, first=not predictions)
                confidences.append(confidence)
            else:
                predicted = predicted_labels(logits)
            predictions.append(predicted)
    confidence = torch.cat(confidences) if with_confidence else None
    return _Predictions(torch.cat(predictions), confidence, max(logits.shape[1], 2))


def _labels(y: object) -> Tensor:
    """``y``, a tensor, which a metric that compares predictions with the truth cannot do without."""
    if not isinstance(y, Tensor):
        fix = "" if y is None else ", convert it with torch.as_tensor(y)"
        raise TypeError("y must be a tensor of true class indices, shape (batch,): this metric compares "
                        f"the predictions with them; got {type(y).__name__}{fix}")
    return y  # checked with x by _check_batch


def _sample_shape(sample_shape: object) -> tuple[int, ...]:
    """``sample_shape`` as a tuple of Python ints; NumPy's ints are accepted, as they are for ``n``."""
    shape = (sample_shape,) if isinstance(sample_shape, numbers.Integral) else sample_shape
    if (not isinstance(shape, (tuple, list, torch.Size)) or not shape
            or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in shape)):
        raise ValueError(
            f"sample_shape must be a positive int or a sequence of them, e.g. (1, 28, 28); got {sample_shape!r}"
        )
    return tuple(int(d) for d in shape)


def _first_logits_of_noise(model: Model, noise: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The logits of the first batch of noise; a model that fails on it (the noise is made here,
    from ``sample_shape``, ``dtype`` and ``device``) gets those arguments named."""
    try:
        return _logits(model, noise)
    except (RuntimeError, TypeError) as error:
        if "memory" in str(error):  # out of memory (CUDA's or the CPU allocator's): not the arguments
            raise
        message = (
            f"model failed on the noise drawn with sample_shape={shape}, dtype={noise.dtype}, device="
            f"{str(noise.device)!r} ({str(error).splitlines()[0]}); pass the sample shape, dtype and device of "
            "the model's inputs (sample_shape without the batch dimension, e.g. (1, 28, 28))"
        )
        raise (TypeError if isinstance(error, TypeError) else ValueError)(message) from error


def _noise_like(model: Model, device: torch.device | str | None, dtype: torch.dtype | None) -> Tensor:
    """An empty tensor on the device and of the dtype of the noise: those asked for, by default
    those of the model's weights (:func:`~fgsmkit._validation.model_tensor`), checked against them."""
    found = _validation.model_tensor(model)
    kind, weights = found if found is not None else ("", torch.empty(0))
    if dtype is None:
        dtype = weights.dtype if weights.is_floating_point() else torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype for Gaussian noise; got {dtype!r}")
    try:
        probe = torch.empty(0, device=weights.device if device is None else device, dtype=dtype)
    except (RuntimeError, AssertionError, TypeError) as error:  # a bad name; CUDA not built or absent
        raise ValueError(
            f"device={device!r} cannot hold the noise ({str(error).splitlines()[0]}); pass device=None to draw "
            "it on the model's device, or a device of this machine, e.g. device='cpu'"
        ) from error
    if found is not None and probe.device != weights.device:
        raise ValueError(
            f"device={str(probe.device)!r} but model has {kind} on {weights.device}; pass device=None "
            f"to draw the noise on the model's device, or device={str(weights.device)!r}"
        )
    if probe.device.type == "meta":
        if found is not None:
            raise ValueError(
                f"model has {kind} on the meta device, which hold no values; load its weights first, "
                "e.g. model.to_empty(device='cpu') and model.load_state_dict(...)"
            )
        raise ValueError("device='meta' holds no values; pass a device that does, e.g. device='cpu'")
    return probe


def _noise_batches(n: int, shape: tuple[int, ...], batch_size: int, generator: torch.Generator | None,
                   like: Tensor) -> Iterator[Tensor]:
    """``n`` draws from N(0, I) on the device and in the dtype of ``like``, in batches of
    ``batch_size``, drawn in blocks of ``_NOISE_BLOCK``: memory for about one batch and one block."""
    pending: list[Tensor] = []  # drawn, not yet handed out
    drawn = 0
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        while sum(len(part) for part in pending) < size:
            block = min(_NOISE_BLOCK, n - drawn)
            pending.append(torch.randn((block, *shape), generator=generator, device=like.device, dtype=like.dtype))
            drawn += block
        held = pending[0] if len(pending) == 1 else torch.cat(pending)
        yield held[:size]
        pending = [held[size:]] if size < len(held) else []


def _mean(values: Tensor) -> float:
    """The mean as a Python float; nan for an empty tensor (nothing to average)."""
    return float(values.double().mean()) if values.numel() else math.nan


__all__ = [
    "AttackReport",
    "agreement_on_mistakes",
    "confidence_on_mistakes",
    "error_rate",
    "evaluate_attack",
    "mean_confidence",
    "rubbish_rate",
]
