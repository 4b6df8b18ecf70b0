"""Where float16 or bfloat16 meets the input gradient, and the power-of-two scaling that keeps a
small gradient from flushing to zero on its way back through such a model."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn
from torch.autograd.function import BackwardCFunction

from ._model import uses_batch_statistics
from .constraints import power_of_two_at_or_below

LOW_PRECISION = (torch.float16, torch.bfloat16)


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
    gradient then checks that the samples do not interact
    (:meth:`fgsmkit.gradient.Objective.input_gradient`).
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
