"""The attacks' shared entry point: check the arguments once, then run the walk."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .. import _validation
from ..constraints import Ball, make_ball
from ..gradient import LossFn, Objective, local_model, model_state_kept
from . import _backends
from ._walk import Walk, keep_stronger


def projected_gradient_ascent(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor | None,
    *,
    eps: float | Tensor,
    step_size: float | Tensor | None,
    steps: int,
    norm: float,
    random_start: bool,
    restarts: int,
    targeted: bool,
    loss_fn: LossFn | None,
    clip: tuple | None,
    generator: torch.Generator | None,
    eval_mode: bool,
    backend: str = "auto",
) -> Tensor:
    """Check the arguments once, then run the walk.

    ``step_size=None`` is the fast gradient method: one step of eps from ``x``.
    """
    box = _validation.check_inputs(x, clip)
    x = x.detach()
    _validation.check_model(model, x)
    y = _validation.check_labels(y, x)
    norm = _validation.check_norm(norm)
    eps_t = _validation.check_eps(eps, x, norm)
    step_t = eps_t if step_size is None else _validation.check_step_size(step_size, x, norm)
    _validation.check_overflow(x, box, norm, eps_t, _validation.named("eps", eps),
                               None if step_size is None else step_t)
    steps = _validation.check_positive_int(steps, "steps")
    restarts = _validation.check_restarts(restarts)
    targeted = _validation.check_flag(targeted, "targeted")
    random_start = _validation.check_flag(random_start, "random_start")
    eval_mode = _validation.check_flag(eval_mode, "eval_mode")
    loss_fn = _validation.check_loss_fn(loss_fn)
    generator = _validation.check_generator(generator, x)
    backend = _backends.check_backend(backend, x, norm)
    walk = _backends.walk_for(backend, model)
    if restarts > 1 and not random_start:
        raise ValueError("restarts > 1 needs random_start=True; without it every restart is the same walk")
    if restarts > 1 and y is not None and y.ndim != 1:
        raise ValueError(
            "restarts > 1 keeps, per sample, the restart that fools the model (then the highest loss), "
            f"which needs y to hold class indices of shape ({x.shape[0]},); got shape {tuple(y.shape)}. "
            "Use restarts=1 with these targets"
        )
    if targeted and y is None:
        raise ValueError(
            "targeted=True needs y, the target classes; with y=None the targets would be the model's "
            "own predictions, and the attack would make it more sure of them"
        )
    if x.shape[0] == 0 or (not isinstance(eps, Tensor) and eps == 0):
        if y is not None and loss_fn is None:
            _validation.class_label_range(y)  # their range against the classes would need the model
        return x.clone()

    ball = make_ball(norm, x, eps_t, box)
    model = local_model(model)
    objective = Objective(model, y, loss_fn, targeted)
    version = _version(x)
    with model_state_kept(model, eval_mode):
        best = _run(objective, ball, walk, step_t, steps, step_size is None, random_start, restarts, generator,
                    backend)
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


def _run(objective: Objective, ball: Ball, walk: Walk, step_t: Tensor, steps: int, fast_gradient: bool,
         random_start: bool, restarts: int, generator: torch.Generator | None, backend: str) -> Tensor:
    """The attack itself, its arguments checked and the model's state kept by the caller."""
    x = ball.x
    if objective.y is None and random_start:
        # Labels come from the clean input, never from a random starting point.
        objective.label_with_predictions(x)
    if fast_gradient:
        return _backends.fast_gradient_step_for(backend)(ball, objective.ascent_direction(x))
    start = ball.random_point(generator) if random_start else x
    best = walk(objective, ball, start, step_t, steps)
    if restarts > 1:
        best_loss, best_fooled = objective.per_sample_losses(best)
        for _ in range(restarts - 1):
            candidate = walk(objective, ball, ball.random_point(generator), step_t, steps)
            best, best_loss, best_fooled = keep_stronger(objective, best, best_loss, best_fooled, candidate)
    return best
