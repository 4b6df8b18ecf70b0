"""Argument checks for the public functions.

Every public entry point checks its arguments here, once, and hands clean values to the core,
which stays free of checks. Each message names the argument and says how to fix it.
"""

from __future__ import annotations

import math
import numbers
import re
import sys
import warnings
from typing import TYPE_CHECKING, Any, SupportsFloat, Union

import numpy as np
import torch
from numpy import bool_ as np_bool
from torch import Tensor, nn

from .constraints import Box, sample_rows

if TYPE_CHECKING:
    from .gradient import LossFn

# Types of the public arguments, as wide as the checks below take them. SupportsFloat covers
# Python and NumPy numbers and 0-d tensors; a clip Bound may also be a tensor that broadcasts
# against x. Count is an int, NumPy's too: not SupportsIndex, which a 0-d tensor satisfies but
# check_positive_int refuses.
Bound = Union[SupportsFloat, Tensor]
Clip = Union[tuple[Bound, Bound], None]
Count = Union[int, np.integer[Any]]

SUPPORTED_NORMS = (2.0, math.inf)


def is_number(value: object) -> bool:
    """A real number, not a bool: Python's int and float, and NumPy's scalars (np.float32, ...)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def refusal(value: object) -> type[Exception]:
    """The exception for a numeric setting that is refused: ``ValueError`` for a number (or a
    real tensor) out of range, of the wrong shape or not a count; ``TypeError`` for anything
    else (a string, None, a list, a complex or bool tensor)."""
    if isinstance(value, Tensor):
        numeric = not value.dtype.is_complex and value.dtype != torch.bool
    else:
        numeric = is_number(value)
    return ValueError if numeric else TypeError


def named(name: str, value: object) -> str:
    """``name=value`` for a number, the bare name for a tensor (too long to print)."""
    return f"{name}={value}" if is_number(value) else name


def finite_number(value: object) -> float | None:
    """``value`` as a float if it is a finite real number (a Python or NumPy number, or a 0-d
    tensor), else None: the callers refuse None, and a value out of their range, in their words."""
    if isinstance(value, Tensor) and value.ndim == 0 and not value.dtype.is_complex and value.dtype != torch.bool:
        if value.is_meta:  # no value to read
            return None
        value = value.item()
    if not is_number(value):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except OverflowError:  # an int beyond float's range (10**400)
        return None
    return number if math.isfinite(number) else None


def model_tensor(model: object) -> tuple[str, Tensor] | None:
    """The tensor that tells where ``model`` lives, and whether it is one of its "parameters" or
    "buffers": the first parameter, or for a parameter-free model (fixed weights) the first
    buffer; None for a function, or a module with neither."""
    if isinstance(model, nn.Module):
        for kind, tensors in (("parameters", model.parameters()), ("buffers", model.buffers())):
            tensor = next(tensors, None)
            if tensor is not None:
                return kind, tensor
    return None


def finite_at_least_zero(value: object, name: str) -> float:
    """``value`` as a float: a finite number >= 0 (a 0-d tensor or NumPy number too)."""
    number = finite_number(value)
    if number is None or number < 0:
        raise refusal(value)(f"{name} must be a finite float >= 0; got {value!r}")
    return number


def check_model(model: object, x: Tensor, name: str = "model") -> None:
    """Check that ``model`` (the argument ``name``) is callable and lives on ``x``'s device."""
    if not callable(model):
        raise TypeError(f"{name} must be callable (an nn.Module or a function); got {type(model).__name__}")
    found = model_tensor(model)
    if found is not None and found[1].device != x.device:
        kind, tensor = found
        raise ValueError(
            f"{name} has {kind} on {tensor.device} but x is on {x.device}; "
            f"move one of them, e.g. x.to({str(tensor.device)!r})"
        )


def check_inputs(x: object, clip: object = None, *, before: str = "attacking it") -> Box | None:
    """Check ``x`` (a finite floating-point batch) and ``clip``, and that ``x`` lies inside it.

    Returns ``clip`` as a :class:`Box` (None for no box). With number bounds this reads ``x``
    once and synchronises with the device once. ``before`` ends the advice for NaN or inf in
    ``x`` ("clean the input before ..."): what the caller does with it.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"x must be a floating-point tensor; got dtype {x.dtype}. "
            "Convert it first, e.g. x.float() / 255 for 8-bit images"
        )
    if x.ndim == 0:
        raise ValueError("x must have a batch dimension; for a single sample use x.unsqueeze(0)")
    if x.device.type == "meta":
        raise ValueError("x is on the meta device, which holds no values; move it to the model's device")
    if x.layout != torch.strided:
        raise TypeError(f"x must be a dense tensor; got layout {x.layout}. Convert it with x.to_dense()")
    box = _clip_box(clip, x)
    if not x.numel():
        return box
    # aminmax is one fused pass, and NaN propagates to both ends: much cheaper than isfinite(x).
    # 0-d tensor bounds ride along, so that one host sync reads all four.
    scalar_bounds = box is not None and box.numbers is None and box.low.ndim == 0 and box.high.ndim == 0
    extremes = [*torch.aminmax(x), *((box.low, box.high) if scalar_bounds else ())]  # type: ignore[union-attr]
    x_low, x_high, *bounds = torch.stack(extremes).tolist()
    if not (math.isfinite(x_low) and math.isfinite(x_high)):
        raise ValueError(f"x contains NaN or inf; clean the input before {before}")
    if box is None:
        return None
    low_high = box.numbers or bounds
    if low_high:
        outside = x_low < low_high[0] or x_high > low_high[1]
    else:
        outside = bool(((x < box.low) | (x > box.high)).any())
    if outside:
        raise ValueError(
            f"x must lie inside clip={describe_clip(clip)}; observed range [{x_low!r}, {x_high!r}]. "
            "Rescale x to the box, or pass the right clip (clip=None for no box)"
        )
    return box


def check_labels(y: object, x: Tensor) -> Tensor | None:
    """Check what can be checked before the model has run (shape and device)."""
    if y is None:
        return None
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor of labels or None; got {type(y).__name__}")
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        single = (f"; x of shape {tuple(x.shape)} is read as {x.shape[0]} samples of one feature, for one "
                  "sample add the batch dimension: x.unsqueeze(0)") if x.ndim == 1 else ""
        raise ValueError(
            f"y must have one label per sample, shape ({x.shape[0]},); got shape {tuple(y.shape)}{single}"
        )
    if y.device != x.device:
        raise ValueError(f"y is on {y.device} but x is on {x.device}; move y with y.to(x.device)")
    return y


def check_class_labels(y: Tensor, num_outputs: int, name: str = "model") -> None:
    """Check labels for a metric, once the output width of the model (the argument ``name``) is known."""
    check_index_dtype(y)  # before class_label_range, whose advice names a loss_fn a metric does not take
    check_label_range(class_label_range(y), num_outputs, name)


LOSS_FN_ADVICE = " (or pass a loss_fn that takes these targets)"


def check_index_dtype(y: Tensor, advice: str = "") -> None:
    """Check that ``y`` has an integer dtype, as class indices do (reads no values); ``advice``
    ends the message (:data:`LOSS_FN_ADVICE` where the caller takes a ``loss_fn``)."""
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class indices; got dtype {y.dtype}. Use y.long(){advice}")


def class_label_range(y: Tensor) -> tuple[int, int] | None:
    """Check that ``y`` holds class indices for the default loss, and read their range (None if empty).

    Called before the model runs, next to the read of ``x``: a handful of small reads costs less
    together than spread between the model's kernels, which leave the caches cold.
    """
    if y.ndim != 1:
        raise ValueError(f"y must be a 1-D tensor of class indices; got shape {tuple(y.shape)}")
    check_index_dtype(y, LOSS_FN_ADVICE)  # the attacks and AdversarialLoss read labels for the default loss
    if not y.numel():
        return None
    low, high = torch.stack(torch.aminmax(y)).tolist()  # one pass, one host sync
    return low, high


def check_label_range(label_range: tuple[int, int] | None, num_outputs: int, name: str = "model") -> None:
    """Check the range :func:`class_label_range` read against the number of classes of the model
    (the argument ``name``)."""
    if label_range is None:
        return
    classes = max(num_outputs, 2)
    low, high = label_range
    if low < 0 or high >= classes:
        raise ValueError(
            f"y holds labels in [{low}, {high}] but {name} has {classes} classes; "
            f"labels must lie in [0, {classes - 1}]"
        )


def check_logits(logits: object, x: Tensor, name: str = "model") -> Tensor:
    """What the model (the argument ``name``) returned for ``x``: floating-point logits, one row
    per sample, on x's device."""
    batch = x.shape[0]
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"{name} must return a tensor of logits, shape (batch, classes); got {type(logits).__name__}. "
            "Wrap a model that returns a tuple or dict in an nn.Module whose forward returns model(x)['logits'] "
            "(the attacks and metrics also take a function: lambda x: model(x)['logits'])"
        )
    if logits.ndim != 2 or logits.shape[0] != batch or logits.shape[1] < 1 or not logits.is_floating_point():
        raise ValueError(
            f"{name} must return floating-point logits of shape (batch, classes) = ({batch}, C) with C >= 1; "
            f"got shape {tuple(logits.shape)} and dtype {logits.dtype}"
        )
    if logits.device != x.device:
        raise ValueError(
            f"{name} returned logits on {logits.device} but x is on {x.device}; return logits on x's device "
            "(end the forward with .to(x.device); the attacks and metrics also take lambda x: model(x).to(x.device))"
        )
    return logits


def check_loss(loss: object, batch: int) -> Tensor:
    """What ``loss_fn`` returned: per-sample losses (batch first) or their mean."""
    if not isinstance(loss, Tensor) or not loss.is_floating_point():
        got = f"dtype {loss.dtype}" if isinstance(loss, Tensor) else type(loss).__name__
        raise TypeError(
            f"loss_fn must return a floating-point tensor (per-sample losses of shape ({batch},) or "
            f"their mean); got {got}"
        )
    if loss.ndim > 0 and loss.shape[0] != batch:
        raise ValueError(
            f"loss_fn must return per-sample losses of shape ({batch},) or their mean (a scalar); "
            f"got shape {tuple(loss.shape)}"
        )
    return loss


def check_real_values(value: Tensor, name: str) -> None:
    """A tensor of real numbers that can be read: not bool or complex, not on the meta device."""
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{name} must hold real numbers; got dtype {value.dtype}")
    if value.device.type == "meta":
        raise ValueError(f"{name} is on the meta device, which holds no values; pass it on x's device")


def _check_budget(value: object, name: str, x: Tensor, *, positive: bool, norm: float,
                  eps: Tensor | None = None) -> Tensor:
    """A float or a per-sample tensor, returned as a tensor that broadcasts against x.

    With ``positive``, a per-sample tensor may still hold 0 where ``eps`` (checked) is 0.
    """
    relation = "> 0" if positive else ">= 0"
    largest, _ = _largest_budget(x.dtype, norm)
    if isinstance(value, Tensor):
        if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != x.shape[0]):
            raise ValueError(
                f"{name} must be a float or a tensor of shape ({x.shape[0]},) (one per sample); "
                f"got shape {tuple(value.shape)}"
            )
        check_real_values(value, name)
        if not value.is_floating_point():
            value = value.double()
        values = value.detach().to(device=x.device)
    elif is_number(value):
        # A plain number is checked in Python: the common case costs one small tensor, not five.
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{name} must be finite; got {value}")
        # A step of 0 is no step where the ball is x alone (eps = 0 everywhere): the rule of
        # thumb 2.5 * eps / steps gives it at the start of a sweep over eps.
        no_room = positive and number == 0 and eps is not None and not bool(eps.ne(0).any())
        if ((number <= 0) if positive else (number < 0)) and not no_room:
            raise ValueError(f"{name} must be {relation}; got {value}")
        if number > largest:
            raise ValueError(_too_large(name, value, x.dtype, norm))
        return scalar_tensor(number, x)
    else:
        raise TypeError(f"{name} must be a float or a tensor; got {type(value).__name__}")
    if values.numel():
        wrong_sign = values <= 0 if positive else values < 0
        if positive and eps is not None and values.ndim <= 1:
            # A sample with no budget has nowhere to go: its step may be 0 (2.5 * eps / steps).
            wrong_sign = wrong_sign & ((values < 0) | (eps.reshape(-1) != 0))
            relation = "> 0 (or 0 where eps is 0)"
        # In float64: in the budget's own dtype the limit rounds too (float16's 65504 is 65536 in
        # bfloat16), and a budget that rounds to inf in x's dtype would pass.
        checks = [torch.isfinite(values).all(), ~wrong_sign.any(), (values.double() <= largest).all()]
        finite, right_sign, small_enough = torch.stack(checks).tolist()  # one host sync
        if not finite:
            raise ValueError(f"{name} must be finite; got {value}")
        if not right_sign:
            raise ValueError(f"{name} must be {relation}; got {value}")
        if not small_enough:
            raise ValueError(_too_large(name, value, x.dtype, norm))
    shape = (-1,) + (1,) * (x.ndim - 1) if values.ndim == 1 else ()
    return values.to(x.dtype).reshape(shape)


# A dict rather than functools.lru_cache: torch.compile warns about every lru_cache it traces
# through ("silent incorrectness is a potential risk"), in the user's compiled training step.
_BUDGET_LIMITS: dict[tuple[torch.dtype, float], tuple[float, str]] = {}


def _largest_budget(dtype: torch.dtype, norm: float) -> tuple[float, str]:
    """The largest eps or step size for inputs of ``dtype``, and why no larger one works: it
    would round to inf, or for the L2 ball the square of a step's norm (at most
    ``(eps + step_size)**2``) would overflow the working precision."""
    key = (dtype, norm)
    if key not in _BUDGET_LIMITS:
        largest, reason = torch.finfo(dtype).max, f"a larger one rounds to inf in {dtype}"
        working = torch.promote_types(dtype, torch.float32)
        l2_limit = math.sqrt(torch.finfo(working).max) / 2
        if norm == 2 and l2_limit < largest:
            largest, reason = l2_limit, f"the squared L2 norm of a larger step overflows {working}"
        _BUDGET_LIMITS[key] = largest, reason
    return _BUDGET_LIMITS[key]


def _too_large(name: str, value: object, dtype: torch.dtype, norm: float) -> str:
    largest, reason = _largest_budget(dtype, norm)
    return f"{name} must be at most {largest:.4g} for {dtype} inputs ({reason}); got {value}"


_scalars: dict[tuple, tuple[Tensor, float]] = {}


def _scalar(number: float, like: Tensor) -> tuple[Tensor, float]:
    """``number`` rounded to the dtype of ``like``: as a 0-d tensor on its device, and as a Python
    float (which holds it exactly), read back once when the pair is cached, not on every call."""
    key = (number.hex(), like.dtype, like.device)  # hex keeps -0.0 apart from 0.0
    cached = _scalars.get(key)
    if cached is None:
        if len(_scalars) >= 64:
            _scalars.clear()
        with torch.inference_mode(False):  # usable inside and outside inference mode
            tensor = torch.tensor(number, dtype=like.dtype, device=like.device)
        cached = _scalars[key] = (tensor, float(tensor))
    return cached


def scalar_tensor(number: float, like: Tensor) -> Tensor:
    """``number`` as a 0-d tensor with the dtype and device of ``like``, rounded once.

    The tensors are cached (a few per process; nothing writes into them): creating one costs
    more than the elementwise step it scales, on every call.
    """
    return _scalar(number, like)[0]


def check_eps(eps: object, x: Tensor, norm: float) -> Tensor:
    return _check_budget(eps, "eps", x, positive=False, norm=norm)


def check_overflow(x: Tensor, box: Box | None, norm: float, eps: Tensor, eps_name: str,
                   step_size: Tensor | None = None) -> None:
    """Refuse budgets that take a sample of ``x`` past the largest number of its dtype, where the
    box cannot catch it: no box, a box with an infinite bound, or the L2 step, which overflows to
    inf before it is clipped (and its projection then gives NaN).

    ``step_size`` is the walk's (None for the fast gradient method): the L2 walk steps before it
    projects, so its points may reach ``eps + step_size`` from ``x``.
    """
    if not x.numel() or box is not None and box.finite and norm != 2:
        return
    if step_size is not None and norm == 2:
        reach, budgets, roundings = eps.double() + step_size.double(), "eps + step_size", 2
    else:
        reach, budgets, roundings = eps, eps_name, 0
    if box is not None and box.finite and box.numbers is not None:
        # x lies in the box, so its largest |x| is at most the larger |bound|: with room to spare
        # (float32 in [0, 1], say) that settles it without reading x.
        if max(map(abs, box.numbers)) + float(reach.max()) <= _largest_reach(x.dtype, roundings):
            return
    check_reach(x, reach, budgets, roundings, boxed=box is not None)


def _largest_reach(dtype: torch.dtype, roundings: int) -> float:
    """The largest ``|x| + reach`` whose sum, rounded ``roundings`` times in ``dtype``, stays finite;
    with none, a sum within half a unit of the largest number rounds back to it."""
    finfo = torch.finfo(dtype)
    return finfo.max / (1 + finfo.eps) ** roundings if roundings else finfo.max * (1 + finfo.eps / 4)


def check_reach(x: Tensor, reach: Tensor, budgets: str, roundings: int = 0, boxed: bool = False) -> None:
    """Refuse budgets that take a sample of ``x`` past the largest number of its dtype.

    ``reach`` is how far a coordinate may move (eps, or for the L2 walk eps + step_size before
    the projection), a scalar or one per sample, and ``budgets`` names it in the message. The
    result would hold inf (and the L2 projection of an overflowed step NaN). ``roundings``
    counts the roundings in x's dtype on the way (the L2 walk's projection and step), each of
    which may add a unit in the last place. ``boxed``: a box was given, so the message does not
    suggest one.
    """
    if not x.numel():
        return
    largest_x = torch.linalg.vector_norm(sample_rows(x.detach()), ord=math.inf, dim=1).double()
    worst, largest = torch.stack([(largest_x + reach.detach().double().reshape(-1)).amax(),
                                  largest_x.amax()]).tolist()
    if worst > _largest_reach(x.dtype, roundings):
        finfo = torch.finfo(x.dtype)
        raise ValueError(
            f"{budgets} takes x (largest |x| = {largest:.6g}) past the largest {x.dtype} ({finfo.max:.6g}), "
            "and the result would hold inf; pass a smaller budget" + ("" if boxed else ", or a clip box")
        )


def check_step_size(step_size: object, x: Tensor, norm: float, eps: Tensor | None = None) -> Tensor:
    """``step_size`` > 0, checked as :func:`check_eps` checks eps; one per sample may be 0 where
    that sample's ``eps`` (as :func:`check_eps` returned it) is 0."""
    return _check_budget(step_size, "step_size", x, positive=True, norm=norm, eps=eps)


def check_flag(value: object, name: str) -> bool:
    """True or False (NumPy's too): a string from a config file ("False") would otherwise count as True."""
    if not isinstance(value, (bool, np_bool)):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def check_positive_int(value: object, name: str) -> int:
    """A count or size: an int (NumPy's too) of at least 1, returned as a Python int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise refusal(value)(f"{name} must be an int >= 1; got {value!r}")
    return int(value)


def check_norm(norm: object) -> float:
    if isinstance(norm, str):  # other libraries' names ("Linf", "L2"): one convention here, numbers
        key = re.sub(r"[\s_-]", "", norm.lower()).removeprefix("l")  # "L-inf", "l_2", "L2 " alike
        known = {"2": "2", "2.0": "2", "inf": "math.inf", "infinity": "math.inf", "\u221e": "math.inf"}.get(key)
        advice = f"Pass norm={known}" if known else "Only the L2 and L-inf norms are supported"
        raise TypeError(f"norm must be the number 2 or float('inf'), not a string; got {norm!r}. {advice}")
    if not is_number(norm) or float(norm) not in SUPPORTED_NORMS:  # type: ignore[arg-type]
        raise refusal(norm)(f"norm must be 2 or float('inf'); got {norm!r}")
    return float(norm)


def check_clip_pair(clip: object) -> None:
    """What can be checked of ``clip`` before ``x`` is known: a pair, and number bounds in order."""
    if not isinstance(clip, (tuple, list)) or len(clip) != 2:
        raise TypeError(f"clip must be a pair (low, high) or None; got {clip!r}")
    for side, bound, example in (("lower", clip[0], "(-math.inf, 1)"), ("upper", clip[1], "(0, math.inf)")):
        if bound is None:
            raise TypeError(
                f"clip[{int(side == 'upper')}] must be a float or a tensor; got None; for no {side} bound pass "
                f"{'-' if side == 'lower' else ''}math.inf, e.g. clip={example}"
            )
    if is_number(clip[0]) and is_number(clip[1]) and float(clip[0]) > float(clip[1]):  # type: ignore[arg-type]
        raise ValueError(f"clip must satisfy low <= high everywhere; got clip={clip!r}")


def _clip_box(clip: object, x: Tensor) -> Box | None:
    """``clip`` as a :class:`Box`, its bounds checked (not yet against ``x``)."""
    if clip is None:
        return None
    check_clip_pair(clip)
    names = ("clip[0]", "clip[1]")
    if not isinstance(clip[0], Tensor) and not isinstance(clip[1], Tensor):  # type: ignore[index]
        (low, low_value), (high, high_value) = (_number_bound(v, name, x) for v, name in zip(clip, names))
        return Box(low, high, (low_value, high_value), math.isfinite(low_value) and math.isfinite(high_value))
    low, high = (_bound_tensor(value, name, x) for value, name in zip(clip, names))
    finite = torch.isfinite(low).all() & torch.isfinite(high).all()
    reversed_, finite = torch.stack([(low > high).any(), finite]).tolist()  # one host sync
    if reversed_:
        raise ValueError(f"clip must satisfy low <= high everywhere; got clip={clip!r}")
    return Box(low, high, finite=finite)


def _number_bound(value: object, name: str, x: Tensor) -> tuple[Tensor, float]:
    """A number bound, checked in Python: a cached 0-d tensor and its value rounded to x's dtype."""
    if not is_number(value):
        raise TypeError(f"{name} must be a float or a tensor; got {type(value).__name__}")
    if math.isnan(float(value)):
        raise ValueError(f"{name} must not be NaN")
    return _scalar(float(value), x)


def _bound_tensor(value: object, name: str, x: Tensor) -> Tensor:
    if not isinstance(value, Tensor):
        return _number_bound(value, name, x)[0]  # a 0-d tensor broadcasts against anything
    check_real_values(value, name)
    bound = value.detach().to(device=x.device, dtype=x.dtype)
    if bool(torch.isnan(bound).any()):
        raise ValueError(f"{name} must not be NaN")
    try:
        fits = torch.broadcast_shapes(bound.shape, x.shape) == x.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"{name} of shape {tuple(bound.shape)} does not broadcast against x of shape {tuple(x.shape)}"
        )
    return bound


def describe_clip(clip: object) -> str:
    """``clip`` as the user wrote it where its bounds are numbers."""
    if isinstance(clip, (tuple, list)) and len(clip) == 2 and all(is_number(v) for v in clip):
        low, high = (v if isinstance(v, (int, float)) else str(v) for v in clip)  # NumPy's as NumPy prints them
        return f"({low}, {high})"
    return "(low, high)"


def warn_if_budget_reaches_the_whole_box(eps: object, clip: object, box: Box | None, norm: float, x: Tensor) -> None:
    """Warn where a number ``eps`` (or a 0-d tensor) reaches every input of a box of number
    bounds: a budget in 0-255 pixel units (8 for 8/255) on inputs in [0, 1], say. Such an attack
    is bounded by the box alone."""
    if box is None or box.numbers is None or x.ndim < 1 or not x.numel():
        return
    if isinstance(eps, Tensor) and eps.ndim > 0:
        return  # per sample: a budget computed by the caller, not typed in
    budget = finite_number(eps)
    low, high = box.numbers
    whole_box = (high - low) * (math.sqrt(math.prod(x.shape[1:])) if norm == 2 else 1.0)
    if budget is None or budget <= whole_box:
        return
    shown = eps if is_number(eps) else budget
    extent = f"its diagonal is {whole_box:.4g}" if norm == 2 else f"its width is {high - low:.4g}"
    warnings.warn(
        f"eps={shown} is wider than clip={describe_clip(clip)} ({extent}): every input in the box is within "
        f"reach, so eps bounds nothing; for a budget in 0-255 pixel units on inputs in [0, 1], divide it by 255 "
        f"(eps={shown}/255)",
        UserWarning,
        stacklevel=user_stacklevel(),
    )


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning raised by this module's caller point at the first
    frame outside fgsmkit and torch (``nn.Module.__call__`` sits between a user and a loss)."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] in ("fgsmkit", "torch"):
        frame, level = frame.f_back, level + 1
    return level


def check_loss_fn(loss_fn: LossFn | None) -> LossFn | None:
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(logits, y) or None; got {type(loss_fn).__name__}")
    return loss_fn


def check_restarts(restarts: object) -> int:
    return check_positive_int(restarts, "restarts")


def check_generator(generator: object, x: Tensor) -> torch.Generator | None:
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
    if generator.device.type != x.device.type:
        raise ValueError(
            f"generator is on {generator.device} but x is on {x.device}; "
            f"pass torch.Generator(device={str(x.device)!r})"
        )
    return generator
