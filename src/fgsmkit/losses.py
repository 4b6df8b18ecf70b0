"""Adversarial training objectives: eq. (6) of the paper and the closed form of its section 5."""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Any, NamedTuple, SupportsFloat

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from . import _validation
from ._validation import Clip
from .constraints import make_ball, sample_rows
from ._model import RandomDraws, compiled_from, local_model, logits_of, model_state_kept
from ._output_checks import check_first_gradient, warn_if_not_logits
from ._precision import rescaled_dims
from .gradient import LossFn, Objective, autograd_usable, cross_entropy, gradients_through_model


def _check_alpha(alpha: object) -> float:
    value = _validation.finite_number(alpha)
    if value is None or not 0.0 <= value <= 1.0:
        raise _validation.refusal(alpha)(f"alpha must be a float in [0, 1]; got {alpha!r}")
    return value


# The default loss: averages like a plain training loop's F.cross_entropy (the same value up to
# rounding; the gradient differs where PyTorch's cancels, see gradient.cross_entropy).
DEFAULT_LOSS: LossFn = functools.partial(cross_entropy, reduction="mean")


def _mean(loss: Tensor, batch: int) -> Tensor:
    _validation.check_loss(loss, batch)
    return loss if loss.ndim == 0 else loss.mean()


class _PrecomputedGradient(torch.autograd.Function):
    """Returns ``value``; its backward hands ``params`` gradients computed ahead of time.

    This lets the clean term reuse the weight gradients from the same backward pass that gave
    the input gradient, while the caller still runs an ordinary ``loss.backward()`` (scaled
    losses, e.g. by a GradScaler, scale these gradients too). ``accumulators`` are the
    parameters' gradient accumulators (autograd nodes), found with them in the clean graph.
    """

    @staticmethod
    def forward(ctx: Any, value: Tensor, grads: tuple[Tensor, ...], accumulators: tuple[Any, ...],
                *params: Tensor) -> Tensor:
        ctx.grads, ctx.accumulators, ctx.params = grads, accumulators, params
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        if not ctx.params:
            raise RuntimeError(
                "the loss returned by AdversarialLoss can be back-propagated only once: its first backward "
                "handed over the clean term's precomputed gradients (retain_graph=True cannot keep them). "
                "Call the criterion again for another backward"
            )
        if torch.is_grad_enabled():
            raise RuntimeError(
                "the loss returned by AdversarialLoss cannot be differentiated twice (create_graph=True): "
                "its clean term's gradients are computed ahead of time, without a graph. For a penalty on "
                "the gradients, write the objective from its terms, with x_adv = fgsmkit.fgsm(...)"
            )
        grads, accumulators, params = ctx.grads, ctx.accumulators, ctx.params
        ctx.grads, ctx.accumulators, ctx.params = (), (), ()
        if not (grad_output.device.type == "cpu" and bool(grad_output == 1)):
            # A scaled loss. (A plain loss.backward() hands the gradients over as they are,
            # saving a pass over every weight; only on CPU, where reading grad_output is free.)
            grads = tuple((g * grad_output).to(g.dtype) for g in grads)
        # A gradient whose memory another one shares (W = A + B hands A and B the same tensor)
        # must stay untouched until autograd has added both: only unshared ones are handed over.
        memory = Counter(g.untyped_storage().data_ptr() for g in grads if g.layout == torch.strided)
        owned = [g.layout == torch.strided and memory[g.untyped_storage().data_ptr()] == 1 for g in grads]
        return (None, None, None, *map(_handed_over, params, accumulators, grads, owned))


def _handed_over(param: Tensor, accumulator: Any, grad: Tensor, owned: bool) -> Tensor | None:
    """``grad`` for autograd to add to the adversarial term's gradient of ``param``, or None once
    it is stored in ``param.grad`` directly.

    Autograd adds two gradients of one parameter into a new tensor, as large as the weight
    (a third of a clean training step for the paper's MLP at batch 128). Where ``loss.backward()``
    will accumulate into ``param.grad`` and that is still None, the clean gradient is stored
    there instead, and autograd adds the adversarial one into it in place: ``clean + adv`` either
    way, the same bits. This node is an input of the parameter's accumulator, so it always runs
    first. Elsewhere (``torch.autograd.grad``, an existing ``.grad``, hooks on the parameter, a
    gradient that shares memory with another or is not laid out like ``param``, such as the
    expanded gradient of ``param.sum()``) autograd adds the two as usual.
    """
    if not owned or grad.stride() != param.stride() or param.grad is not None or param._backward_hooks:
        return grad
    try:
        accumulates = torch._C._will_engine_execute_node(accumulator)
    except RuntimeError:  # torch.autograd.grad(): gradients are returned, .grad is left alone
        return grad
    if not accumulates:
        return grad
    param.grad = grad
    return None


class _Leaves(NamedTuple):
    """What :func:`_graph_leaves` finds in a graph."""

    tensors: list[Tensor]
    accumulators: list[Any]
    once: bool  # a node that can be back-propagated only once (a compiled graph's) is in it


def _graph_leaves(loss: Tensor, skip: Tensor, since: int, until: int | None = None) -> _Leaves | None:
    """The tensors (other than ``skip``) that ``loss.backward()`` would accumulate gradients into,
    their gradient accumulators, and whether a node on the way can be back-propagated only once;
    None where the graph reaches back before this call.

    These are the model's trainable parameters, and also any other tensor the loss reaches: the
    learnable parts of a loss_fn (a temperature, a classification head), a parameter shared from
    another module. A node numbered outside ``[since, until]`` (this call's first node and its last,
    ``until`` None for no upper end) was built before the call (autograd numbers nodes per thread,
    so one built in another thread can come out above), say soft targets from a teacher network or a
    loss weight computed once per step: the adversarial term may share it, and a backward that
    yields the clean gradients would free it, so then there are none to hand over. The walk visits
    each node once (about a microsecond per node: a few for an MLP, thousands for an unrolled RNN).
    """
    leaves: list[Tensor] = []
    accumulators: list[Any] = []
    once = False
    seen: set[Any] = set()
    pending = [] if loss.grad_fn is None else [loss.grad_fn]  # None: the model cut the graph
    while pending:
        for node, _ in pending.pop().next_functions:
            if node is None or node in seen:
                continue
            seen.add(node)
            if node.next_functions:
                number = node._sequence_nr()
                if number < since or until is not None and number > until:
                    return None
                # torch.compile's backward refuses retain_graph=True (it reuses its saved buffers).
                once = once or type(node).__name__ == "CompiledFunctionBackward"
                pending.append(node)
                continue
            leaf = getattr(node, "variable", None)  # only gradient accumulators have one
            if leaf is not None and leaf is not skip:
                leaves.append(leaf)
                accumulators.append(node)
    return _Leaves(leaves, accumulators, once)


_NO_LEAVES = _Leaves([], [], once=True)  # no walk: nothing to hand over, no graph kept


def _refuse_parameters_ddp_marks_unused(model: nn.Module, clean_model: nn.Module, clean: Tensor,
                                        adversarial_term: Tensor, x_leaf: Tensor) -> None:
    """Raise where ``model`` is a ``DistributedDataParallel(find_unused_parameters=True)`` and a
    parameter of it takes part in the clean pass only.

    DDP sees only the adversarial forward, marks such a parameter unused (ready, with no
    gradient), and its backward then fails when the clean gradient arrives for it. Two walks
    over the graphs, for such wrappers only.
    """
    wrapper = compiled_from(model)
    if not (isinstance(wrapper, DistributedDataParallel) and wrapper.find_unused_parameters):
        return
    clean_leaves = (_graph_leaves(clean, x_leaf, since=0) or _NO_LEAVES).tensors
    adversarial_leaves = (_graph_leaves(adversarial_term, x_leaf, since=0) or _NO_LEAVES).tensors
    reached = {id(t) for t in adversarial_leaves}
    names = {id(p): name for name, p in clean_model.named_parameters()}
    missing = [names[id(t)] for t in clean_leaves if id(t) in names and id(t) not in reached]
    if missing:
        listed = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        which = f"parameter {listed} takes" if len(missing) == 1 else f"parameters {listed} take"
        raise ValueError(
            f"model is DistributedDataParallel(find_unused_parameters=True), and its {which} part in the clean "
            "pass but not in the adversarial one; DDP sees only the adversarial forward and marks such parameters "
            "unused, so its backward would fail when their clean gradients arrive. Give both passes the same "
            "routing (or the same dropped layers)"
        )


class AdversarialLoss(nn.Module):
    r"""The adversarial objective of Goodfellow et al. (2015), eq. (6).

    .. math::

        \tilde J(\theta, x, y) = \alpha\, J(\theta, x, y)
            + (1 - \alpha)\, J\big(\theta,\ x + \epsilon\,\mathrm{sign}(\nabla_x J(\theta, x, y)),\ y\big)

    As in the paper the perturbation is a constant: no gradient flows through the sign.
    ``criterion(model, x, y)`` returns a scalar to call ``.backward()`` on, in an unchanged
    training loop. It costs two forward and two backward passes: the backward of the clean loss
    yields both the input gradient and the clean term's weight gradients, which are handed to the
    parameters (and to any other tensor the clean term reaches, such as a learnable part of
    ``loss_fn``) when the returned loss is back-propagated. ``.grad`` is not touched before that.
    The loss can be back-propagated once: a second backward or ``create_graph=True`` raises.
    The clean forward's graph is kept, as in a hand-written objective, so a term of the caller's
    built on that forward (an auxiliary loss a layer records, features a hook captured) can be
    added to the returned loss; not where it runs through a ``torch.compile``-d part, whose
    backward runs once, nor with float16/bfloat16, a hook on a parameter or targets with a graph,
    where the clean term keeps its graph for the returned loss itself. The clean pass's saved
    activations are therefore held until the call returns, through the adversarial forward, as
    in a hand-written loop.
    Where float16/bfloat16 is involved (half-precision models or inputs, autocast at the call or
    inside the model's forward) the input gradient takes a forward and backward pass of its own,
    rescaled per sample so that it cannot underflow (one more pass checks that the samples do
    not interact, unless a train-mode BatchNorm shows it).

    It works under ``DistributedDataParallel`` (pass the wrapped model; only the adversarial pass
    goes through the wrapper, and the one backward all-reduces the combined gradient), with
    ``torch.compile``-d models, and inside ``no_grad``/``inference_mode`` (the value, without a
    graph). BatchNorm statistics are updated by the clean and the adversarial pass, as by two
    training steps' forwards. A model whose input gradient is zero or NaN is reported with a
    ``RuntimeWarning`` on the first call, and, with the default loss, one whose outputs are
    probabilities (a softmax or a sigmoid at its end) with a ``UserWarning``.

    Parameters
    ----------
    alpha : float
        Weight of the clean loss, in ``[0, 1]``. ``alpha=1`` is plain training. A NumPy number
        or a 0-d tensor is taken as its value.
    eps : float
        Size of the FGSM perturbation (>= 0); a NumPy number or a 0-d tensor too.
    loss_fn : callable, optional
        ``loss_fn(logits, y)``, per-sample or mean; per-sample losses are averaged. Default:
        cross-entropy computed in at least float32.
    norm : float
        ``float('inf')`` (the paper's sign step) or ``2`` (fast gradient L2 step).
    clip : tuple or None
        Valid input range ``(low, high)``, or None: bounds as in :func:`~fgsmkit.fgsm`.

    Attributes
    ----------
    clean_logits : Tensor or None
        The logits of the clean inputs from the last call, detached (for accuracy logging).
    adversarial_logits : Tensor or None
        The logits of the adversarial inputs from the last call, detached (None if ``alpha=1``).

    Examples
    --------
    >>> import torch, fgsmkit as fk
    >>> model = fk.models.SoftmaxRegression(4, 3)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> criterion = fk.AdversarialLoss(alpha=0.5, eps=0.25)
    >>> x, y = torch.rand(8, 4), torch.randint(0, 3, (8,))
    >>> loss = criterion(model, x, y)
    >>> loss.backward(); optimizer.step(); optimizer.zero_grad()
    >>> criterion.clean_logits.shape
    torch.Size([8, 3])
    """

    def __init__(self, alpha: SupportsFloat = 0.5, eps: SupportsFloat = 0.25, *, loss_fn: LossFn | None = None,
                 norm: float = math.inf, clip: Clip = (0.0, 1.0)) -> None:
        super().__init__()
        self.alpha = _check_alpha(alpha)
        self.eps = _validation.finite_at_least_zero(eps, "eps")
        self.loss_fn: LossFn = _validation.check_loss_fn(loss_fn) or DEFAULT_LOSS
        self.norm = _validation.check_norm(norm)
        if clip is not None:  # what can be checked before x is known (its shape, dtype, device)
            _validation.check_clip_pair(clip)
        self.clip: Clip = clip
        self.clean_logits: Tensor | None = None
        self.adversarial_logits: Tensor | None = None
        self.checked = False  # the input gradient is checked (a device sync) on the first call only

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, eps={self.eps}, norm={self.norm}, clip={self.clip}"

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:  # type: ignore[override]
        """The adversarial objective on one batch, a scalar to call ``.backward()`` on.

        Parameters
        ----------
        model : nn.Module
            The model being trained (a ``DistributedDataParallel`` wrapper too), returning logits.
        x : Tensor
            The clean inputs, shape ``(batch, ...)``, within ``clip``. While gradients are
            enabled they must not require grad: layers that make them belong inside ``model``.
        y : Tensor
            Their labels, class indices of shape ``(batch,)`` (or what ``loss_fn`` takes).

        Returns
        -------
        Tensor
            ``alpha * J(x, y) + (1 - alpha) * J(x_adv, y)``, with a graph to the model's parameters
            when gradients are enabled; detached inside ``no_grad`` or ``inference_mode``.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module (its parameters are trained); got {type(model).__name__}")
        box = _validation.check_inputs(x, self.clip)
        # Training, not a fixed input: detaching it would train what made x on nothing.
        if x.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                "x requires grad (it comes from trainable layers, or is a leaf with requires_grad=True), "
                "but AdversarialLoss trains model's parameters only: no gradient would reach what made x. "
                "Put those layers inside model, or pass x.detach() if they should not be trained"
            )
        x = x.detach()
        _validation.check_model(model, x)
        if _validation.check_labels(y, x) is None:
            raise ValueError("y must be the labels of x; adversarial training needs them")
        if x.shape[0] == 0:
            raise ValueError("x must hold at least one sample; the mean loss of an empty batch is NaN")
        # Settings are attributes a schedule may change between calls: checked on every call.
        alpha, norm = _check_alpha(self.alpha), _validation.check_norm(self.norm)
        eps = _validation.finite_at_least_zero(self.eps, "eps")
        loss_fn = _validation.check_loss_fn(self.loss_fn) or DEFAULT_LOSS
        label_range = _validation.class_label_range(y) if loss_fn is DEFAULT_LOSS else None
        # Before the model runs, so that these refusals leave its statistics as they were (what
        # needs its outputs is refused after the clean forward, as in a hand-written step).
        eps_t = _validation.check_eps(eps, x, norm)
        _validation.check_overflow(x, box, norm, eps_t, _validation.named("eps", eps))

        # Weight gradients only when the loss will be back-propagated; the input gradient even
        # under no_grad or inference_mode (an adversarial validation loss needs it too).
        training = torch.is_grad_enabled()
        # Under DistributedDataParallel only the pass that the returned loss is back-propagated
        # through may go through the wrapper (DDP expects one forward per backward); the clean
        # pass's weight gradients reach the parameters through that same backward.
        clean_model = model if alpha == 1.0 else local_model(model)
        with torch.inference_mode(False), torch.enable_grad():
            x_leaf, y = autograd_usable(x).detach().requires_grad_(True), autograd_usable(y)
            x_in = x_leaf.clone()  # its node is this call's first: what is older was built before
            draws = RandomDraws(x.device)  # a pass of the input gradient's own repeats these
            logits = _validation.check_logits(logits_of(clean_model, x_in), x)
            _validation.check_label_range(label_range, logits.shape[1])
            # Kept before loss_fn runs: a margin loss may edit the logits in place.
            self.clean_logits, self.adversarial_logits = _logged(logits, loss_fn), None
            clean = _mean(loss_fn(logits, y), x.shape[0])
            if training and logits.requires_grad and not clean.requires_grad:
                raise ValueError(
                    "loss_fn returned a loss that does not depend on the logits (detached, or made of "
                    "constants), so no parameter would be trained; return it without .detach() or .item()"
                )
            if alpha == 1.0:
                return clean if training else clean.detach()
            # The clean term keeps its graph where the adversarial pass shares part of it: targets
            # with a graph (a teacher trained alongside, built in any thread), or a weight that a
            # cached parametrization (torch.nn.utils.parametrize.cached()) computes in the clean pass.
            shares_graph = y.requires_grad or bool(getattr(nn.utils.parametrize, "_cache_enabled", 0))
            found = _NO_LEAVES if alpha == 0 or not training else None if shares_graph else _graph_leaves(
                clean, x_leaf, since=x_in.grad_fn._sequence_nr(), until=_latest_node_number(clean))
            # A hook on a parameter must see its gradient once, clean and adversarial summed, as in the
            # straightforward backward; a backward that yields the clean weight gradients would run it.
            if found is not None and any(p._backward_hooks for p in found.tensors):
                found = None
            params, accumulators, once = found or _NO_LEAVES
            direction, weight_grads = self._clean_gradients(clean_model, x_in, logits, y, clean, alpha, loss_fn,
                                                            None if found is None else params, not once, draws)
        if not self.checked:
            output_range = check_first_gradient(direction, self.clean_logits)
            if loss_fn is DEFAULT_LOSS:
                warn_if_not_logits(logits, output_range)
            self.checked = True  # only once the checks have passed: a refused call is not the first
        _validation.warn_if_budget_reaches_the_whole_box(eps, self.clip, box, norm, x)
        ball = make_ball(norm, x, eps_t, box)
        x_adv = ball.fast_gradient_step(direction)

        adv_logits = model(x_adv)
        self.adversarial_logits = _logged(adv_logits, loss_fn)
        adversarial_term = (1.0 - alpha) * _mean(loss_fn(adv_logits, y), x.shape[0])
        if training and alpha > 0:
            _refuse_parameters_ddp_marks_unused(model, clean_model, clean, adversarial_term, x_leaf)
        if weight_grads is None:  # the clean term is back-propagated through its own graph
            clean_term = alpha * clean if training and alpha > 0 else alpha * clean.detach()
            return clean_term + adversarial_term
        used = [(p, a, g) for p, a, g in zip(params, accumulators, weight_grads) if g is not None]
        if not used:
            return alpha * clean.detach() + adversarial_term
        used_params, used_accumulators, used_grads = zip(*used)
        clean_term = _PrecomputedGradient.apply(alpha * clean.detach(), used_grads, used_accumulators, *used_params)
        return clean_term + adversarial_term

    @staticmethod
    def _clean_gradients(clean_model: nn.Module, x_in: Tensor, logits: Tensor, y: Tensor, clean: Tensor,
                         alpha: float, loss_fn: LossFn, params: list[Tensor] | None, keep_graph: bool,
                         draws: RandomDraws) -> tuple[Tensor, tuple[Tensor | None, ...] | None]:
        """The clean loss's input gradient (only its direction is used) and the weight gradients of
        ``params``, or None (also for ``params=None``) where the clean term must keep its graph.
        ``keep_graph``: the backward keeps the clean graph, for the caller's other terms built on
        it. ``draws`` are the clean pass's random draws, which a pass of the gradient's own repeats.
        """
        if not logits.requires_grad:
            # The model cut the graph (no_grad or detach inside it): no input gradient, and the
            # clean term keeps its own graph, which may still reach a learnable loss_fn.
            return torch.zeros_like(x_in), None
        rescaled_over = rescaled_dims(clean_model, x_in, logits)
        if params is not None and rescaled_over is None:
            scaled = alpha * clean if alpha > 0 else clean
            # Kept where it can be: another term of the caller's may be built on the clean forward
            # (features a hook captured, an auxiliary loss a layer records), as in a hand-written loop.
            grads = gradients_through_model(scaled, [x_in, *params], allow_unused=True, retain_graph=keep_graph)
            return (torch.zeros_like(x_in) if grads[0] is None else grads[0]), grads[1:]
        # float16/bfloat16 anywhere (logits, inputs, autocast, weights): the input gradient is
        # rescaled per sample (Objective) so that a confident sample's does not underflow to zero,
        # and the weight gradients need the caller's loss scale (a GradScaler's) on their way back
        # through the low-precision layers, so the clean term keeps its graph. One backward cannot
        # give both, and a compiled graph may be back-propagated only once, so the input gradient
        # comes from a pass of its own (statistics such as BatchNorm's kept). The same pass serves
        # the graphs whose clean gradients cannot be handed over (params=None).
        objective = Objective(clean_model, y, loss_fn, targeted=False)
        objective.decide_rescaling(rescaled_over)
        objective.draws = draws  # the same dropout masks as the clean loss's
        with model_state_kept(clean_model, eval_mode=False):
            direction = objective.input_gradient(*objective.forward_again(x_in))
        return direction, None


def _logged(logits: Tensor, loss_fn: LossFn) -> Tensor:
    """``logits`` detached, for the caller's logging; a copy where a ``loss_fn`` of the caller's,
    which may edit them in place (a margin loss), is about to run."""
    return logits.detach() if loss_fn is DEFAULT_LOSS else logits.detach().clone()


def _latest_node_number(loss: Tensor) -> int | None:
    """The sequence number of ``loss``'s node, the last this call made (None without a graph)."""
    return None if loss.grad_fn is None else loss.grad_fn._sequence_nr()


def adversarial_logistic_loss(w: Tensor, b: float | Tensor, x: Tensor, y: Tensor, eps: SupportsFloat) -> Tensor:
    r"""Logistic loss on the worst-case L-inf perturbation, in closed form (section 5).

    For labels :math:`y \in \{-1, +1\}` the FGSM example of logistic regression is
    :math:`x - \epsilon\, y\, \mathrm{sign}(w)`, so its loss is

    .. math::

        \zeta\big(\epsilon \lVert w \rVert_1 - y\,(w^\top x + b)\big),
        \qquad \zeta(z) = \log(1 + e^{z}).

    The paper prints :math:`\zeta(y(\epsilon \lVert w \rVert_1 - w^\top x - b))`, which agrees
    only for :math:`y = +1`; for :math:`y = -1` it would reward the attacker's budget instead of
    charging it.

    Parameters
    ----------
    w : Tensor
        Weights, shape ``(d,)``.
    b : float or Tensor
        Bias: a number or a one-element tensor (one bias for all samples).
    x : Tensor
        Inputs, shape ``(batch, d)`` or ``(batch, ...)`` with ``d`` elements per sample.
    y : Tensor
        Labels in ``{-1, +1}``, shape ``(batch,)``.
    eps : float
        Size of the perturbation (>= 0); a NumPy number or a 0-d tensor too.

    Returns
    -------
    Tensor
        The per-sample losses, shape ``(batch,)``; take ``.mean()`` for the training objective.

    Examples
    --------
    >>> import torch, fgsmkit as fk
    >>> w, x, y = torch.tensor([1.0, -2.0]), torch.tensor([[0.5, 0.5]]), torch.tensor([1.0])
    >>> fk.adversarial_logistic_loss(w, 0.0, x, y, eps=0.1)
    tensor([1.1711])
    """
    for name, value in (("w", w), ("x", x), ("y", y)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
        _validation.check_real_values(value, name)
    if isinstance(b, Tensor):
        _validation.check_real_values(b, "b")
    if isinstance(b, Tensor) and b.numel() != 1 or not isinstance(b, Tensor) and not _validation.is_number(b):
        raise ValueError(
            f"b must be a number or a tensor with one element (one bias for all samples); got {b!r:.80}"
        )
    dtypes = [w.dtype, x.dtype, *([b.dtype] if isinstance(b, Tensor) else [])]
    if len(set(dtypes)) != 1 or not w.is_floating_point():
        raise TypeError(
            "w, x and b must share one floating-point dtype; got "
            + ", ".join(str(d).removeprefix("torch.") for d in dtypes) + ". Convert them, e.g. x.to(w.dtype)"
        )
    if w.ndim != 1:
        raise ValueError(f"w must be a 1-D weight vector; got shape {tuple(w.shape)}")
    if x.ndim < 1 or math.prod(x.shape[1:]) != w.shape[0]:
        raise ValueError(f"x must have {w.shape[0]} elements per sample; got shape {tuple(x.shape)}")
    # Compared as int64: in uint8, -1 is 255 (2 * y01 - 1 on labels read by read_idx), equal to -1.
    signs = y if y.is_floating_point() else y.long()
    if y.shape != (x.shape[0],) or not bool(((signs == 1) | (signs == -1)).all()):
        raise ValueError(f"y must hold one label per sample, each -1 or +1; got {y}")
    eps_value = _validation.finite_at_least_zero(eps, "eps")
    margin = sample_rows(x) @ w + (b.reshape(()) if isinstance(b, Tensor) else float(b))  # float: a Fraction too
    return F.softplus(eps_value * w.abs().sum() - y.to(margin.dtype) * margin)
