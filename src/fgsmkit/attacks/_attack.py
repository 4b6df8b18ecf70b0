"""The attacks' shared entry points: check the arguments once, then take the fast gradient
method's single step or run the walk."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, SupportsFloat

import torch
from torch import Tensor

from .. import _validation
from .._validation import Clip, Count
from ..constraints import Ball, Box, make_ball
from .._model import local_model, model_state_kept
from ..gradient import LossFn, Objective
from . import _backends
from ._walk import Walk, keep_stronger


class _Checked(NamedTuple):
    """The arguments that every attack takes, checked."""

    x: Tensor
    y: Tensor | None
    box: Box | None
    norm: float
    eps: Tensor
    targeted: bool
    loss_fn: LossFn | None
    eval_mode: bool
    backend: str
    walk: Walk


def fast_gradient_method(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor | None,
    *,
    eps: SupportsFloat | Tensor,
    norm: float,
    targeted: bool,
    loss_fn: LossFn | None,
    clip: Clip,
    eval_mode: bool,
    backend: str = "auto",
) -> Tensor:
    """Check the arguments once, then take one step of length eps from ``x`` (:func:`~fgsmkit.fgsm`)."""
    checked = _check_shared(model, x, y, eps, norm, targeted, loss_fn, clip, eval_mode, backend)
    _validation.check_overflow(checked.x, checked.box, checked.norm, checked.eps, _validation.named("eps", eps))
    step = _backends.fast_gradient_step_for(checked.backend)
    return _attack(model, checked, eps, lambda objective, ball: step(ball, objective.ascent_direction(ball.x)))


def projected_gradient_ascent(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor | None,
    *,
    eps: SupportsFloat | Tensor,
    step_size: SupportsFloat | Tensor,
    steps: Count,
    norm: float,
    random_start: bool,
    restarts: Count,
    targeted: bool,
    loss_fn: LossFn | None,
    clip: Clip,
    generator: torch.Generator | None,
    eval_mode: bool,
    backend: str = "auto",
) -> Tensor:
    """Check the arguments once, then run the walk (:func:`~fgsmkit.pgd`, :func:`~fgsmkit.iterative_fgsm`)."""
    checked = _check_shared(model, x, y, eps, norm, targeted, loss_fn, clip, eval_mode, backend)
    step_t = _validation.check_step_size(step_size, checked.x, checked.norm, checked.eps)
    _validation.check_overflow(checked.x, checked.box, checked.norm, checked.eps, _validation.named("eps", eps),
                               step_t)
    steps = _validation.check_positive_int(steps, "steps")
    restarts = _validation.check_restarts(restarts)
    random_start = _validation.check_flag(random_start, "random_start")
    generator = _validation.check_generator(generator, checked.x)
    if restarts > 1 and not random_start:
        raise ValueError("restarts > 1 needs random_start=True; without it every restart is the same walk")
    if restarts > 1 and checked.y is not None and checked.y.ndim != 1:
        raise ValueError(
            "restarts > 1 keeps, per sample, the restart that fools the model (then the highest loss), "
            f"which needs y to hold class indices of shape ({checked.x.shape[0]},); got shape "
            f"{tuple(checked.y.shape)}. Use restarts=1 with these targets"
        )
    return _attack(model, checked, eps, lambda objective, ball: _walks(
        objective, ball, checked.walk, step_t, steps, random_start, restarts, generator))


def _check_shared(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor | None, eps: SupportsFloat | Tensor,
                  norm: float, targeted: bool, loss_fn: LossFn | None, clip: Clip, eval_mode: bool,
                  backend: str) -> _Checked:
    """Check the arguments that every attack takes."""
    box = _validation.check_inputs(x, clip)
    x = x.detach()
    _validation.check_model(model, x)
    y = _validation.check_labels(y, x)
    norm = _validation.check_norm(norm)
    eps_t = _validation.check_eps(eps, x, norm)
    targeted = _validation.check_flag(targeted, "targeted")
    eval_mode = _validation.check_flag(eval_mode, "eval_mode")
    loss_fn = _validation.check_loss_fn(loss_fn)
    backend = _backends.check_backend(backend, x, norm)
    walk = _backends.walk_for(backend, model)
    if targeted and y is None:
        raise ValueError(
            "targeted=True needs y, the target classes; with y=None the targets would be the model's "
            "own predictions, and the attack would make it more sure of them"
        )
    _validation.warn_if_budget_reaches_the_whole_box(eps, clip, box, norm, x)  # once nothing is refused
    return _Checked(x, y, box, norm, eps_t, targeted, loss_fn, eval_mode, backend, walk)


def _attack(model: Callable[[Tensor], Tensor], checked: _Checked, eps: object,
            run: Callable[[Objective, Ball], Tensor]) -> Tensor:
    """``run(objective, ball)`` with the model's state kept, or ``x`` unchanged where no attack
    can move it (``eps``, as the caller passed it, is a number 0, or ``x`` holds no entries: an
    empty batch, or samples without features)."""
    x, y = checked.x, checked.y
    if x.numel() == 0 or (not isinstance(eps, Tensor) and eps == 0):
        if y is not None and checked.loss_fn is None:
            _validation.class_label_range(y)  # their range against the classes would need the model
        return x.clone()
    ball = make_ball(checked.norm, x, checked.eps, checked.box)
    model = local_model(model)
    objective = Objective(model, y, checked.loss_fn, checked.targeted)
    version = _version(x)
    with model_state_kept(model, checked.eval_mode):
        best = run(objective, ball)
    if _version(x) != version:
        raise ValueError(
            "model wrote into its input in place (under torch.no_grad(), where autograd cannot refuse it), "
            "and its input was the caller's x, the centre of the eps-ball (x may hold other values now); "
            "make that operation out of place, or pass lambda x: model(x.clone())"
        )
    return best


def _version(x: Tensor) -> int | None:
    """How often ``x`` (and the caller's tensor, whose storage it shares) was written in place; None
    for an inference tensor, which keeps no count and which the model only ever sees copied."""
    return None if x.is_inference() else x._version


def _walks(objective: Objective, ball: Ball, walk: Walk, step_t: Tensor, steps: int, random_start: bool,
           restarts: int, generator: torch.Generator | None) -> Tensor:
    """The walk, ``restarts`` times, each sample's strongest result kept."""
    x = ball.x
    objective.compares_samples = restarts > 1
    if objective.y is None and random_start:
        # Labels come from the clean input, never from a random starting point.
        objective.label_with_predictions(x)
    start = ball.random_point(generator) if random_start else x
    best = walk(objective, ball, start, step_t, steps)
    if restarts > 1:
        best_loss, best_fooled = objective.per_sample_losses(best)
        for _ in range(restarts - 1):
            candidate = walk(objective, ball, ball.random_point(generator), step_t, steps)
            best, best_loss, best_fooled = keep_stronger(objective, best, best_loss, best_fooled, candidate)
    return best
