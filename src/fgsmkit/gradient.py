"""The input gradient, written once for every attack and for :class:`~fgsmkit.AdversarialLoss`.

The gradient is taken with respect to the input only (``torch.autograd.grad``), so no weight
gradient is computed and the model's ``.grad`` fields are never touched.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import BackwardCFunction, once_differentiable
from torch.nn.parallel import DistributedDataParallel
from torch.nn.parameter import is_lazy

from . import _validation
from .constraints import power_of_two_at_or_below, sample_rows

LossFn = Callable[[Tensor, Tensor], Tensor]
LOW_PRECISION = (torch.float16, torch.bfloat16)


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


def local_model(model: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """The module inside a DistributedDataParallel wrapper (compiled or not), else ``model``.

    An input gradient needs no gradient synchronisation, and DDP's forward is not free of
    collectives: it broadcasts buffers (BatchNorm statistics) from rank 0, which hangs an attack
    that runs on one rank only (e.g. evaluation on rank 0) and reorders the others' collectives.
    """
    inner = compiled_from(model)
    return inner.module if isinstance(inner, DistributedDataParallel) else model


def compiled_from(model: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """What ``torch.compile`` wrapped into ``model``, or ``model`` itself."""
    return getattr(model, "_orig_mod", model)


def innermost_module(model: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """The module inside any torch.compile, DistributedDataParallel and DataParallel wrappers:
    the one that knows what its outputs mean (its probabilities, say)."""
    while True:
        inner = compiled_from(model)
        if isinstance(inner, (DistributedDataParallel, nn.DataParallel)):
            inner = inner.module
        if inner is model:
            return model
        model = inner


def logits_of(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``model(x)``, with a clear error for a model that writes into the input being differentiated,
    and for one that fails on inputs of another dtype than its parameters'."""
    try:
        return model(x)
    except RuntimeError as error:
        found = _validation.model_tensor(model)
        if found is not None and found[1].is_floating_point() and found[1].dtype != x.dtype and "type" in str(error):
            kind, tensor = found
            raise TypeError(
                f"x is {str(x.dtype).removeprefix('torch.')} but model has {str(tensor.dtype).removeprefix('torch.')} "
                f"{kind}, and failed on it ({str(error).splitlines()[0]}); convert x (x.to({tensor.dtype})) or the "
                f"model (model.to({x.dtype}))"
            ) from error
        if "leaf Variable that requires grad is being used in an in-place operation" not in str(error):
            raise
        raise ValueError(
            "model writes into its input in place (e.g. nn.ReLU(inplace=True) or x.mul_() as its first "
            "operation), which autograd forbids on the input it differentiates; make that operation "
            "out of place, or pass lambda x: model(x.clone())"
        ) from error


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


def check_eval_mode(model: object, eval_mode: bool, name: str = "model") -> None:
    """Check that ``eval_mode=True`` can be honoured: ``model`` (the argument ``name``) is an
    nn.Module, whose mode can be switched."""
    if eval_mode and not isinstance(model, nn.Module):
        the_model = "the model" if name == "model" else name
        raise ValueError(
            f"eval_mode=True needs {the_model} to be an nn.Module, whose mode can be switched; got "
            f"{type(model).__name__}. Pass the module itself, or call module.eval() before the call"
        )


@contextlib.contextmanager
def model_state_kept(model: object, eval_mode: bool) -> Iterator[None]:
    """Run the block with the model in eval mode if asked, and leave its state as found.

    The train/eval flag of every submodule is restored afterwards. The buffers
    (such as BatchNorm running statistics), which an attack's forward passes in train mode would
    update, are restored either way: their values, and the tensors themselves where a forward
    replaced them (``self.average = 0.9 * self.average + ...``).
    """
    check_eval_mode(model, eval_mode)
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(module, module.training) for module in model.modules()]
    # Where each buffer is registered, and one copy of each tensor (several modules may share one).
    # Saved in eval mode too: code inside the block may switch the model to train mode.
    places = [(module, name, b) for module, _ in modes for name, b in module._buffers.items() if b is not None]
    saved: dict[int, tuple[Tensor, Tensor]] = {}
    for module, name, buffer in places:
        if is_lazy(buffer):
            raise ValueError(
                f"model has an uninitialized lazy buffer ({type(module).__name__}.{name}), whose value cannot be "
                "saved and restored around the attack; run the model once first (lazy modules take their "
                "shapes from the first batch), e.g. with torch.no_grad(): model(x)"
            )
        if id(buffer) not in saved:
            saved[id(buffer)] = buffer, buffer.clone()
    if eval_mode:
        model.eval()
    try:
        yield
    finally:
        # Restored even without eval_mode: code inside the block (an attack passed to
        # evaluate_attack, a forward) may switch them. Through each module's own train(), parents
        # before children (a child's call then corrects what its parent's set): a train() that
        # does more than set flags (LoRA layers merge their adapters on eval() and unmerge them
        # on train()) is undone as it was done. Most modules never change.
        for module, training in modes:
            if module.training != training:
                module.train(training)
        # Through .data, like BatchNorm's own update: a graph built before the attack saved these
        # buffers for its backward, and a tracked in-place copy would bump their version counters
        # and make that backward fail.
        if places:
            with torch.no_grad():
                for module, name, buffer in places:
                    if getattr(module, name, None) is not buffer:
                        setattr(module, name, buffer)
                for buffer, copy in saved.values():
                    buffer.data.copy_(copy)


class RandomDraws:
    """Where the random number generators stood when a forward pass began (the CPU's, and the
    CUDA device's for a CUDA ``device``): a pass run inside :meth:`again` draws the same numbers,
    dropout's masks say, and leaves the generators as it found them.

    The input gradient sometimes needs passes of its own (rescaled for float16 or bfloat16); run
    this way they see the noisy network of the first pass, the one the loss was computed for.
    Other generators (other CUDA devices' for ``nn.DataParallel`` replicas, MPS, XPU) are left
    alone: saving every CUDA device's would create a context on each.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = self._states()

    def _states(self) -> tuple[Tensor, Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _restore(self, states: tuple[Tensor, Tensor | None]) -> None:
        torch.set_rng_state(states[0])
        if states[1] is not None:
            torch.cuda.set_rng_state(states[1], self.device)

    @contextlib.contextmanager
    def again(self) -> Iterator[None]:
        now = self._states()
        self._restore(self.start)
        try:
            yield
        finally:
            self._restore(now)


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` ("cpu", "cuda", ...)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def runs_in_low_precision(model: object, x: Tensor, logits: Tensor) -> bool:
    """Whether the gradient of ``logits = model(x)`` with respect to ``x`` may pass through float16
    or bfloat16: low-precision inputs or logits, autocast at the call, or a low-precision tensor
    anywhere in the autograd graph between them (casts and autocast inside the model's forward
    behind float32 logits, low-precision weights, those of a plain function too).

    A graph node that hides its insides (a compiled graph, a custom ``autograd.Function``, a
    ``DataParallel`` replica) sends the question to the model's modules: any low-precision
    parameter or buffer counts.
    """
    if x.dtype in LOW_PRECISION or logits.dtype in LOW_PRECISION or autocast_enabled(x.device.type):
        return True
    seen_low, opaque = _low_precision_in_graph(logits)
    return seen_low or opaque and isinstance(model, nn.Module) and any(
        t is not None and t.dtype in LOW_PRECISION
        for m in model.modules() for t in itertools.chain(m._parameters.values(), m._buffers.values()))


def _low_precision_in_graph(output: Tensor) -> tuple[bool, bool]:
    """Whether the backward from ``output`` passes through a float16 or bfloat16 tensor (the dtypes
    of the gradients each node receives; a leaf's own dtype), and whether a node on the way hides
    its insides (a custom ``autograd.Function``'s backward, which compiled graphs are). One visit
    per node, stopping at the first low-precision one."""
    root = output.grad_fn
    seen, pending = {root}, [root] if root is not None else []
    opaque = False
    while pending:
        node = pending.pop()
        variable = getattr(node, "variable", None)  # a gradient accumulator: the leaf's own dtype
        if variable is not None:
            if variable.dtype in LOW_PRECISION:
                return True, opaque
            continue
        # ``_input_metadata`` is private in torch; where it is missing, only the modules can tell.
        metadata = getattr(node, "_input_metadata", None)
        if metadata is None or isinstance(node, BackwardCFunction):
            opaque = True
        elif any(meta.dtype in LOW_PRECISION for meta in metadata):
            return True, opaque
        for child, _ in node.next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                pending.append(child)
    return False, opaque


PER_SAMPLE = (1,)
WHOLE_BATCH = (0, 1)


def rescaled_dims(model: object, x: Tensor, logits: Tensor) -> tuple[int, ...] | None:
    """The dims of the logit gradient at ``logits = model(x)`` that share one power-of-two scale on
    the way back through ``model``; None where no float16 or bfloat16 is involved (no rescaling).

    :data:`PER_SAMPLE` unless the model visibly normalises with batch statistics; the first
    gradient then checks that the samples do not interact (:meth:`Objective.input_gradient`).
    """
    if not runs_in_low_precision(model, x, logits):
        return None
    # Per sample only where samples do not interact: through batch statistics a per-sample scale
    # would change the direction of the whole batch's gradient.
    return WHOLE_BATCH if uses_batch_statistics(model) else PER_SAMPLE


def power_of_two_scaled(logit_grad: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``logit_grad`` divided by the power of two at or below its largest magnitude over ``dims``.

    Exact, and it changes neither sign nor direction. Divided by the power rather than
    multiplied by its inverse: below 2^-127 (a margin near 90) the inverse overflows float32.
    """
    return logit_grad / power_of_two_at_or_below(logit_grad.abs().amax(dim=dims, keepdim=True))


def uses_batch_statistics(model: object) -> bool:
    """Whether ``model`` normalises with statistics of the batch (BatchNorm in train mode, or
    without running statistics), so that each sample's output depends on the others."""
    return isinstance(model, nn.Module) and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)
        for m in model.modules())


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
            if self.loss_fn is cross_entropy:  # a loss_fn of the user's may be written for probabilities
                warn_if_probabilities(logits, output_range)
                warn_if_sigmoid_outputs(logits, output_range)
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
