"""Projected gradient ascent: the one loop behind every attack.

FGSM is one step of it from the clean input with step size eps; the basic iterative method is
several steps from the clean input; PGD starts from a random point and may restart.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .. import _validation
from . import _backends
from ..constraints import Ball, make_ball
from ..gradient import LossFn, Objective, local_model, model_state_kept

StepFn = Callable[[Ball, Tensor, Tensor, Tensor], Tensor]
Walk = Callable[[Objective, Ball, Tensor, Tensor, int], Tensor]


def take_step(ball: Ball, x_adv: Tensor, direction: Tensor, step_size: Tensor) -> Tensor:
    """One steepest-ascent step along ``direction`` from ``x_adv``, projected onto the ball.

    The one place the step is written; the compiled backend fuses this very function.
    """
    # The step is a new tensor: adding in place saves an allocation (a + b == b + a exactly).
    return ball.project(ball.step(direction, step_size).add_(x_adv))


def fast_gradient_step(ball: Ball, direction: Tensor) -> Tensor:
    """The fast gradient method's step: length eps from the ball's centre along ``direction``."""
    return ball.fast_gradient_step(direction)


def ascend(objective: Objective, ball: Ball, start: Tensor, step_size: Tensor, steps: int,
           step: StepFn = take_step) -> Tensor:
    """Take ``steps`` steepest-ascent steps from ``start``, projecting after each one."""
    x_adv = start
    for _ in range(steps):
        x_adv = step(ball, x_adv, objective.ascent_direction(x_adv), step_size)
    return x_adv


def keep_stronger(objective: Objective, best: Tensor, best_loss: Tensor, best_fooled: Tensor,
                  candidate: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample, keep whichever of ``best`` and ``candidate`` is the stronger attack.

    A sample that fools the model beats one that does not; between equals the higher loss wins
    (the lower one for a targeted attack, which pulls the loss of the target class down).
    """
    loss, fooled = objective.per_sample_losses(candidate)
    gain = best_loss - loss if objective.targeted else loss - best_loss
    better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (gain > 0))
    mask = better.reshape((-1,) + (1,) * (best.ndim - 1))
    return torch.where(mask, candidate, best), torch.where(better, loss, best_loss), fooled | best_fooled


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
    eps_t = _validation.check_eps(eps, x)
    step_t = eps_t if step_size is None else _validation.check_step_size(step_size, x)
    steps = _validation.check_steps(steps)
    norm = _validation.check_norm(norm)
    restarts = _validation.check_restarts(restarts)
    loss_fn = _validation.check_loss_fn(loss_fn)
    generator = _validation.check_generator(generator, x)
    backend = _backends.check_backend(backend, x, norm)
    walk = _backends.walk_for(backend, model)
    if restarts > 1 and not random_start:
        raise ValueError("restarts > 1 needs random_start=True; without it every restart is the same walk")
    if x.shape[0] == 0 or (not isinstance(eps, Tensor) and eps == 0):
        return x.clone()

    ball = make_ball(norm, x, eps_t, box)
    model = local_model(model)
    objective = Objective(model, y, loss_fn, targeted)
    with model_state_kept(model, eval_mode):
        if y is None and random_start:
            # Labels come from the clean input, never from a random starting point.
            objective.label_with_predictions(x)
        if step_size is None:
            return _backends.fast_gradient_step_for(backend)(ball, objective.ascent_direction(x))
        start = ball.random_point(generator) if random_start else x
        best = walk(objective, ball, start, step_t, steps)
        if restarts > 1:
            best_loss, best_fooled = objective.per_sample_losses(best)
            for _ in range(restarts - 1):
                candidate = walk(objective, ball, ball.random_point(generator), step_t, steps)
                best, best_loss, best_fooled = keep_stronger(objective, best, best_loss, best_fooled, candidate)
    return best
