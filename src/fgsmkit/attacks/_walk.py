"""Projected gradient ascent: the one loop behind every attack.

FGSM is one step of it from the clean input with step size eps; the basic iterative method is
several steps from the clean input; PGD starts from a random point and may restart
(:mod:`._attack` checks the arguments and picks which of these to run).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..constraints import Ball
from ..gradient import Objective

StepFn = Callable[[Ball, Tensor, Tensor, Tensor], Tensor]
Walk = Callable[[Objective, Ball, Tensor, Tensor, int], Tensor]


def take_step(ball: Ball, x_adv: Tensor, direction: Tensor, step_size: Tensor) -> Tensor:
    """One steepest-ascent step along ``direction`` from ``x_adv``, projected onto the ball.

    The one place the step is written; the compiled backend fuses its L-inf case, written over
    tensors only (:func:`._backends.linf_take_step`) from the same helpers.
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
