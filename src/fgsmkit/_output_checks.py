"""Errors and warnings about what a model returned: NaN or inf logits, samples whose input gradient
is dead, and probabilities where the loss expects logits."""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from . import _validation
from .constraints import sample_rows

NON_FINITE_LOGITS = "model returned NaN or inf logits for these inputs; the attack cannot use them"


def check_logits_finite(logits: Tensor, message: str = NON_FINITE_LOGITS) -> None:
    """Raise a ``ValueError`` with ``message`` (the caller's words) if ``logits`` hold NaN or inf."""
    if not bool(torch.isfinite(logits.detach()).all()):
        raise ValueError(message)


def check_first_gradient(grad: Tensor, logits: Tensor | None = None) -> tuple[float, float] | None:
    """Raise if ``logits`` (those ``grad`` came from) hold NaN or inf; warn about samples whose
    input gradient is NaN somewhere or zero everywhere.

    The warning points at the user's line that called into fgsmkit.
    """
    # One pass over the gradient, with no copy of it: a sample's sum is NaN if an entry is NaN
    # (sums propagate NaN) and nonzero only if an entry is, so the smallest |sum| is positive
    # when no sample is in trouble. It can also be NaN or zero for a healthy sample (inf - inf,
    # exact cancellation); the exact per-sample test below then decides. One host sync reads it
    # with the logits' extremes (stack widens them to a common dtype exactly).
    sums = sample_rows(grad).sum(dim=1)
    smallest = torch.linalg.vector_norm(sums, ord=-math.inf)  # min |sum| in one op, NaN if any is
    extremes = [smallest, *(torch.aminmax(logits.detach()) if logits is not None else ())]
    smallest_sum, *logit_range = torch.stack(extremes).tolist()
    if not all(math.isfinite(value) for value in logit_range):
        raise ValueError(NON_FINITE_LOGITS)
    if not (smallest_sum > 0 or not grad.numel()):  # False for NaN too; samples without features have no entries
        _warn_about_samples_in_trouble(grad)
    return (logit_range[0], logit_range[1]) if logit_range else None


def _warn_about_samples_in_trouble(grad: Tensor) -> None:
    """Warn about the samples whose input gradient is NaN somewhere or zero everywhere."""
    # A sample's largest |entry| is NaN if any entry is (amax propagates NaN), zero only if all are.
    peak = sample_rows(grad).abs().amax(dim=1)
    nan_count, zero_count = torch.stack([torch.isnan(peak).sum(), (peak == 0).sum()]).tolist()
    if nan_count:
        warnings.warn(
            f"the input gradient has NaN entries for {nan_count} of {grad.shape[0]} samples "
            "(e.g. log or sqrt at 0 inside the model or loss_fn); those entries are treated as zero "
            "and the inputs are not moved along them",
            RuntimeWarning,
            stacklevel=_validation.user_stacklevel(),
        )
    if zero_count:
        warnings.warn(
            f"the input gradient is zero for {zero_count} of {grad.shape[0]} samples (a saturated, "
            "non-differentiable or input-independent model); the gradient does not move those samples "
            "(they stay at x, or at pgd's random start), so they are not adversarial examples",
            RuntimeWarning,
            stacklevel=_validation.user_stacklevel(),
        )


LOSS_EXPECTS_LOGITS = (
    "the loss expects logits; drop the softmax at the end of the model (or take its log: log-probabilities "
    "are logits), or pass a loss_fn written for probabilities"
)


def warn_if_probabilities(outputs: Tensor, output_range: tuple[float, float] | None,
                          advice: str = LOSS_EXPECTS_LOGITS) -> None:
    """Warn where a model's outputs, all in [0, 1] (``output_range``, as read by
    :func:`check_first_gradient`), are rows that sum to 1: probabilities (a softmax at its end),
    which the default loss (or the metrics' softmax) would take for logits. ``advice``, in the
    caller's words, says what goes wrong and how to fix it."""
    if output_range is None or output_range[0] < 0 or output_range[1] > 1 or outputs.shape[1] < 2:
        return  # a single column: see warn_if_sigmoid_outputs
    # A softmax accumulates its row in at least float32 (an error growing with the number of
    # classes: 6e-7 for 1,000), then rounds each output to its dtype (about one rounding of the
    # row's sum: 3e-3 in bfloat16). A looser bound would take more logit models for probabilities.
    classes = outputs.shape[1]
    tolerance = 2 * torch.finfo(outputs.dtype).eps + classes * torch.finfo(torch.float32).eps
    if not bool(((outputs.detach().double().sum(dim=1) - 1).abs() <= tolerance).all()):
        return
    warnings.warn(
        f"model's outputs are probabilities (in [0, 1], each row sums to 1), but {advice}",
        UserWarning,
        stacklevel=_validation.user_stacklevel(),
    )


SIGMOID_OUTPUTS = (
    "model's single output column looks like a sigmoid's probabilities (the model ends in a sigmoid, or its "
    "outputs all lie in [0, 1]), but fgsmkit reads one column as the logit of class 1 (predicted where it is "
    "above 0); drop the sigmoid at the end of the model, or pass lambda x: torch.logit(model(x))"
)


def warn_if_sigmoid_outputs(outputs: Tensor, output_range: tuple[float, float] | None) -> None:
    """Warn where a model's single output column holds a sigmoid's probabilities, which would all
    count as class 1.

    With a graph its last operation decides (a sigmoid, behind views and casts); without one
    (under ``no_grad``) the values do: all in [0, 1] (``output_range``, the smallest and the
    largest), not all equal (zero weights), over at least 16 samples (a few logits of an
    untrained model can all fall in [0, 1]).
    """
    if outputs.shape[1] != 1:
        return
    if outputs.grad_fn is not None:
        node = outputs.grad_fn
        while node is not None and type(node).__name__.startswith(_PASSED_THROUGH) and node.next_functions:
            node = node.next_functions[0][0]
        ends_in_sigmoid = node is not None and type(node).__name__.startswith("SigmoidBackward")
    else:
        ends_in_sigmoid = (output_range is not None and outputs.shape[0] >= 16
                           and 0 <= output_range[0] < output_range[1] <= 1)
    if ends_in_sigmoid:
        warnings.warn(SIGMOID_OUTPUTS, UserWarning, stacklevel=_validation.user_stacklevel())


# Operations that keep a sigmoid's values: views, copies and casts.
_PASSED_THROUGH = ("View", "Unsqueeze", "Squeeze", "Reshape", "Clone", "ToCopy", "Alias", "Expand", "Slice", "Select")


def warn_if_not_logits(outputs: Tensor, output_range: tuple[float, float] | None) -> None:
    """Warn where the default loss is about to read a model's outputs as logits that are not: a
    softmax's probabilities (:func:`warn_if_probabilities`) or a sigmoid's
    (:func:`warn_if_sigmoid_outputs`). The first gradient of an attack and the first call of
    :class:`~fgsmkit.AdversarialLoss` ask it; a ``loss_fn`` of the caller's may be written for
    probabilities, so it is not asked there."""
    warn_if_probabilities(outputs, output_range)
    warn_if_sigmoid_outputs(outputs, output_range)
