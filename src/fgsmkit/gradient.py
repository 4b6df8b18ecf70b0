"""The input gradient, written once for every attack and for :class:`~fgsmkit.AdversarialLoss`.

The gradient is taken with respect to the input only (``torch.autograd.grad``), so no weight
gradient is computed and the model's ``.grad`` fields are never touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _validation
from ._model import RandomDraws, logits_of
from ._output_checks import check_first_gradient, check_logits_finite, warn_if_not_logits
from ._precision import PER_SAMPLE, WHOLE_BATCH, power_of_two_scaled, rescaled_dims
from .constraints import sample_rows

LossFn = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(logits: Tensor, y: Tensor, reduction: str = "none") -> Tensor:
    """Cross-entropy, per sample unless ``reduction`` says otherwise, computed in at least float32.

    A single logit column is read as binary logistic regression (labels 0 and 1). Its gradient
    stays right for confident samples, where PyTorch's cancels (see :class:`_CrossEntropy`).
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if logits.shape[1] == 1:
        losses = _BinaryCrossEntropy.apply(logits[:, 0], y.to(logits.dtype))
    else:
        losses = _CrossEntropy.apply(logits, y.long())  # any integer dtype (uint8 labels, say)
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


class _CrossEntropy(torch.autograd.Function):
    """Softmax cross-entropy whose logit gradient keeps the true class's entry.

    The usual backward, ``softmax - onehot``, forms that entry as ``p_y - 1``: exactly zero once
    ``p_y`` rounds to 1 (a margin above about 17 in float32), while the other entries (``p_k``,
    tiny but representable) survive, so a confident sample's input gradient points the wrong
    way. Here the entry is ``-(sum of the other p_k)``, the same number without cancellation.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, y: Tensor) -> Tensor:
        ctx.save_for_backward(logits, y)
        return -torch.log_softmax(logits, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        logits, y = ctx.saved_tensors
        return _softmax_gradient(logits, y).mul_(grad_output.unsqueeze(1)), None


def _softmax_gradient(logits: Tensor, y: Tensor) -> Tensor:
    """``softmax(logits) - onehot(y)``, its true-class entry without cancellation.

    softmax rather than exp(log_softmax): one kernel fewer, and a small probability keeps its
    relative accuracy (exp turns the absolute rounding error of a large negative log-probability
    into a relative error that many times larger).
    """
    index = y.unsqueeze(1)
    grad = torch.softmax(logits, dim=1).scatter_(1, index, 0.0)  # the other classes' probabilities
    return grad.scatter_(1, index, grad.sum(dim=1, keepdim=True).neg_())


class _BinaryCrossEntropy(torch.autograd.Function):
    """Logistic loss whose gradient ``sigmoid(z) - y`` is formed as ``(1-y) sigmoid(z) - y sigmoid(-z)``.

    The two are equal, but the first is exactly zero for ``y = 1`` once ``sigmoid(z)`` rounds to 1.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, y: Tensor) -> Tensor:
        ctx.save_for_backward(z, y)
        return F.binary_cross_entropy_with_logits(z, y, reduction="none")

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        z, y = ctx.saved_tensors
        return _logistic_gradient(z, y) * grad_output, None


def _logistic_gradient(z: Tensor, y: Tensor) -> Tensor:
    return (1 - y) * torch.sigmoid(z) - y * torch.sigmoid(-z)


def cross_entropy_gradient(logits: Tensor, y: Tensor) -> Tensor:
    """The gradient of ``cross_entropy(logits, y, reduction="sum")`` with respect to ``logits``.

    Formed directly, as :func:`cross_entropy`'s backward forms it, with no autograd graph for
    the loss: an attack needs only this gradient, pushed back through the model.
    """
    logits = logits.detach().to(torch.promote_types(logits.dtype, torch.float32))
    if logits.shape[1] == 1:
        return _logistic_gradient(logits, y.to(logits.dtype)[:, None])
    return _softmax_gradient(logits, y.long())


def predicted_labels(logits: Tensor) -> Tensor:
    """The class the model predicts for each row of ``logits``."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def probabilities_of_logits(logits: Tensor) -> Tensor:
    """The class probabilities that ``logits`` stand for, shape ``(batch, classes)``: the softmax,
    or for a single column (the logit of class 1) the sigmoid and its complement."""
    if logits.shape[1] == 1:
        return torch.cat([torch.sigmoid(-logits), torch.sigmoid(logits)], dim=1)
    return torch.softmax(logits, dim=1)


def summed_loss(per_sample_or_scalar: Tensor, batch: int) -> Tensor:
    """A loss whose input gradient does not depend on the reduction ``loss_fn`` used.

    A per-sample loss is summed; a scalar (a batch mean) is scaled back up by the batch size,
    so that each sample's gradient has the same size either way.
    """
    _validation.check_loss(per_sample_or_scalar, batch)
    if per_sample_or_scalar.ndim == 0:
        return per_sample_or_scalar * batch
    return per_sample_or_scalar.sum()


def per_sample_for_restarts(loss: Tensor, batch: int) -> Tensor:
    """``loss`` as the per-sample losses that restarts compare, shape ``(batch,)`` (a column of
    them too); an error naming the fix where ``loss_fn`` reduced them (or returned more than one
    per sample)."""
    if loss.ndim == 0 or loss.shape[0] != batch or loss.numel() != batch:
        raise ValueError(
            "restarts > 1 needs a loss_fn that returns one loss per sample "
            f"(e.g. reduction='none') to pick each sample's strongest restart; got shape {tuple(loss.shape)}"
        )
    return loss.reshape(batch)


def gradients_through_model(outputs: Tensor, inputs: Tensor | Sequence[Tensor],
                            **kwargs: Any) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad(outputs, inputs, **kwargs)`` through a model, with a clear error for one
    that uses reentrant activation checkpointing, which cannot give gradients for chosen inputs."""
    try:
        return torch.autograd.grad(outputs, inputs, **kwargs)
    except RuntimeError as error:
        if "use_reentrant=True" not in str(error):
            raise
        raise ValueError(
            "model uses torch.utils.checkpoint with use_reentrant=True, which cannot give the gradient with "
            "respect to the input alone (nor the clean weight gradients that AdversarialLoss takes from the "
            "same backward); pass use_reentrant=False to checkpoint, PyTorch's recommended setting"
        ) from error


def autograd_usable(t: Tensor) -> Tensor:
    """``t``, or a copy of it if it was made under inference_mode (autograd cannot record those)."""
    if not t.is_inference():
        return t
    with torch.inference_mode(False):
        return t.clone()


class Objective:
    """The attacked loss ``J(x, y)`` and its input gradient.

    Parameters
    ----------
    model : callable
        Maps a batch of inputs to logits of shape ``(batch, classes)``.
    y : Tensor or None
        Labels (or, with ``targeted``, target classes); None takes the model's predictions
        on the first evaluated input.
    loss_fn : callable or None
        ``loss_fn(logits, y)`` returning per-sample losses or their mean; None is
        :func:`cross_entropy`.
    targeted : bool
        If True, :meth:`ascent_direction` points towards lower loss (towards the target).
    """

    def __init__(self, model: Callable[[Tensor], Tensor], y: Tensor | None, loss_fn: LossFn | None,
                 targeted: bool) -> None:
        self.model = model
        self.y = None if y is None else autograd_usable(y)
        self.loss_fn = loss_fn if loss_fn is not None else cross_entropy
        # Read now, before the model runs; checked against the number of classes once it has.
        self.label_range = (_validation.class_label_range(self.y)
                            if loss_fn is None and self.y is not None else None)
        self.targeted = targeted
        self.checked = False
        # Restarts compare per-sample losses: loss_fn's are then checked on the first gradient,
        # not after a whole walk.
        self.compares_samples = False
        # The dims of the logit gradient that share one power-of-two scale (None: no rescaling);
        # decided on first use, unless the caller has (see decide_rescaling). Per-sample scales
        # hold once the first gradient has shown that the samples do not interact.
        self.rescaled_over: tuple[int, ...] | None = None
        self.rescaling_decided = False
        self.samples_checked = False
        # Where the first gradient's forward pass began: passes of its own repeat its random draws.
        self.draws: RandomDraws | None = None

    def decide_rescaling(self, dims: tuple[int, ...] | None) -> None:
        """Fix :attr:`rescaled_over` to ``dims``, from :func:`rescaled_dims` (a caller that has
        already asked it saves a second walk over the model)."""
        self.rescaled_over, self.rescaling_decided = dims, True

    def _logits(self, x: Tensor) -> Tensor:
        logits = logits_of(self.model, x)
        if not self.checked:
            _validation.check_logits(logits, x)
            if self.y is None:
                self.y = predicted_labels(logits.detach())
            else:
                _validation.check_label_range(self.label_range, logits.shape[1])
        return logits

    def label_with_predictions(self, x: Tensor) -> None:
        """Take the model's predictions on the clean ``x`` as labels (``y=None``)."""
        with torch.no_grad():
            # A copy: under no_grad autograd cannot refuse a model that writes into its input.
            logits = self._logits(x.clone())
            check_logits_finite(logits)
            self.y = autograd_usable(predicted_labels(logits))

    def ascent_direction(self, x: Tensor) -> Tensor:
        """The input gradient of the loss at ``x``, negated for a targeted attack."""
        # The caller may be inside no_grad or inference_mode (an evaluation loop); the input
        # gradient is needed all the same.
        with torch.inference_mode(False), torch.enable_grad():
            x = autograd_usable(x).detach().requires_grad_(True)
            if not self.checked:  # only the first gradient may take passes of its own
                self.draws = RandomDraws(x.device)
            logits = self._logits(x)
            grad = self.input_gradient(x, logits)
        if not self.checked:
            self.checked, self.draws = True, None
            output_range = check_first_gradient(grad, logits)
            if self.loss_fn is cross_entropy:
                warn_if_not_logits(logits, output_range)
        # NaN entries are left in: the step treats them as zero (see constraints.Ball.step).
        return -grad if self.targeted else grad

    def logit_gradient(self, logits: Tensor) -> Tensor:
        """The gradient of the summed loss with respect to ``logits``, in at least float32."""
        if self.loss_fn is cross_entropy:
            return cross_entropy_gradient(logits, self.y)  # type: ignore[arg-type]
        wide = logits.detach().to(torch.promote_types(logits.dtype, torch.float32)).requires_grad_(True)
        # A copy for loss_fn: a margin loss may edit the logits in place, which autograd refuses
        # on a leaf (it accepts it on a model's output, what loss_fn gets in a training loop).
        try:
            raw = self.loss_fn(wide.clone(), self.y)  # type: ignore[arg-type]
        except RuntimeError as error:
            if wide.dtype == logits.dtype or "type" not in str(error):
                raise
            raise TypeError(
                f"loss_fn failed on the logits widened from {str(logits.dtype).removeprefix('torch.')} to "
                f"{str(wide.dtype).removeprefix('torch.')} (the input gradient is computed in float32 so that it "
                f"cannot underflow): {str(error).splitlines()[0]}; make loss_fn follow the logits' dtype, e.g. "
                "lambda z, y: F.cross_entropy(z, y, weight=w.to(z.dtype))"
            ) from error
        loss = summed_loss(raw, logits.shape[0])
        if self.compares_samples and not self.checked:
            per_sample_for_restarts(raw, logits.shape[0])
        if not loss.requires_grad:  # detached, or made of constants: reported as a zero gradient
            return torch.zeros_like(wide)
        (grad,) = torch.autograd.grad(loss, wide, allow_unused=True)
        return torch.zeros_like(wide) if grad is None else grad

    def input_gradient(self, x: Tensor, logits: Tensor) -> Tensor:
        """The gradient of the summed loss at ``logits = model(x)`` with respect to ``x``.

        The logits' gradient is taken first and pushed back through the model. Where float16 or
        bfloat16 is involved, each sample's gradient is scaled by a power of two, which changes
        neither its sign nor its direction; where the samples interact (batch statistics, seen
        in the model or found by the first gradient's two half-batch passes) the whole batch's
        is scaled by one power.
        """
        if not logits.requires_grad:
            return torch.zeros_like(x)
        logit_grad = self.logit_gradient(logits)
        if not self.rescaling_decided:
            self.decide_rescaling(rescaled_dims(self.model, x, logits))
        if self.rescaled_over is not None:
            # A confident sample's gradient (1e-8, say) would flush to zero on its way back
            # through a float16 model: rescale each sample's by a power of two.
            scaled = power_of_two_scaled(logit_grad, self.rescaled_over)
            if self.rescaled_over == PER_SAMPLE and not self.samples_checked and x.shape[0] > 1:
                self.samples_checked = True
                grad = self._gradient_if_independent(x, logits, scaled)
                if grad is not None:
                    return self._laid_out_like(grad, x)
                # The samples interact: one scale for the whole batch, through a pass of its own
                # (the check has used up the first graph).
                self.rescaled_over = WHOLE_BATCH
                x, logits = self.forward_again(x)
                scaled = power_of_two_scaled(self.logit_gradient(logits), WHOLE_BATCH)
            logit_grad = scaled
        (grad,) = gradients_through_model(logits, x, grad_outputs=logit_grad.to(logits.dtype), allow_unused=True)
        if grad is None:
            return torch.zeros_like(x)
        return self._laid_out_like(grad, x)

    def _gradient_if_independent(self, x: Tensor, logits: Tensor, scaled: Tensor) -> Tensor | None:
        """The input gradient with per-sample scales, or None where the samples interact.

        The even and the odd samples' (``scaled``) logit gradients are back-propagated apart, the
        odd ones through a forward of their own, run once the first graph is used up (a compiled
        graph may be back-propagated only once, and one graph at a time holds no more memory than
        a plain step). A finite nonzero entry in the other half's inputs means the samples
        interact: batch statistics written by hand, a BatchNorm behind a function. Per-sample
        scales would then change the batch's direction. NaN there is no evidence (``0 * inf``
        where the model's derivative is infinite, as ``sqrt`` at 0). One more forward and
        backward, on the first gradient of a call only.
        """
        even = torch.arange(x.shape[0], device=scaled.device) % 2 == 0
        halves = []
        for rows in (even, ~even):
            if halves:  # the odd half: a forward of its own, its logit gradient from it
                x, logits = self.forward_again(x)
                scaled = power_of_two_scaled(self.logit_gradient(logits), PER_SAMPLE)
            part = torch.where(rows[:, None], scaled, 0.0).to(logits.dtype)
            (grad,) = gradients_through_model(logits, x, grad_outputs=part, allow_unused=True)
            halves.append(torch.zeros_like(x) if grad is None else grad)
        leaked = [sample_rows(half)[~rows] for half, rows in zip(halves, (even, ~even))]
        if bool(torch.stack([(part.isfinite() & part.ne(0)).any() for part in leaked]).any()):
            return None
        return torch.where(even.reshape((-1,) + (1,) * (x.ndim - 1)), halves[0], halves[1])

    def forward_again(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """A new leaf with ``x``'s values and the model's logits at it: a graph of its own, for a
        gradient that the graph at hand cannot give (a compiled graph is back-propagated once).
        With :attr:`draws` set, the pass repeats the first pass's random draws (its dropout masks)."""
        leaf = x.detach().requires_grad_(True)
        with self.draws.again() if self.draws is not None else contextlib.nullcontext():
            # A copy, as AdversarialLoss's clean pass gives: a model may write into its input.
            return leaf, logits_of(self.model, leaf.clone())

    @staticmethod
    def _laid_out_like(grad: Tensor, x: Tensor) -> Tensor:
        if any(a != b for a, b, size in zip(grad.stride(), x.stride(), x.shape) if size > 1):
            # Laid out as the model's backward left it (a flatten makes it contiguous); the step
            # built on it must come out laid out like x (channels-last stays channels-last).
            grad = torch.empty_like(x).copy_(grad)
        return grad

    def per_sample_losses(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The per-sample losses at ``x`` and whether each sample is already fooled."""
        with torch.no_grad():
            logits = self._logits(x)
            # Read before loss_fn runs: a margin loss may edit the logits in place.
            predictions = predicted_labels(logits)
            losses = per_sample_for_restarts(self.loss_fn(logits, self.y), x.shape[0])
        fooled = predictions == self.y if self.targeted else predictions != self.y
        return losses, fooled
