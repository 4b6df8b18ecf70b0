"""What is timed besides the peers: fgsmkit, the same maths as plain PyTorch loops, and the floors.

The hand-written loops are what a user would write without a library: the gradient with respect
to the input by ``torch.autograd.grad``, a sign step, a clamp to the ball and to ``[0, 1]``. The
floor is one forward and one backward to the input, the cost no attack step can beat.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import AdversarialLoss, fgsm, pgd
from .workloads import Workload

Run = Callable[[], object]
ALPHA = 0.5  # the paper's weight of the clean term


def hand_fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in), y), x_in)
    return (x + eps * grad.sign()).clamp(0.0, 1.0)


def hand_pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, step_size: float, steps: int) -> Tensor:
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv


def input_gradient_floor(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """One forward and one backward to the input: the cost of any attack step."""
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in), y), x_in)
    return grad


_CRITERION_LOSS = AdversarialLoss().loss_fn


def mean_loss(logits: Tensor, y: Tensor) -> Tensor:
    """The batch loss :class:`AdversarialLoss` uses by default: the training contenders all use
    it, so that they differ in the algorithm only, not in the loss or its backward."""
    loss = _CRITERION_LOSS(logits, y)
    return loss if loss.ndim == 0 else loss.mean()


def straightforward_adversarial_loss(model: nn.Module, x: Tensor, y: Tensor, eps: float,
                                     alpha: float = ALPHA) -> Tensor:
    """Eq. (6) of the paper as usually written: 3 forwards (the clean one twice) and 2 backwards."""
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(alpha * mean_loss(model(x_in), y), x_in)
    x_adv = (x + eps * grad.sign()).clamp(0.0, 1.0)
    return alpha * mean_loss(model(x), y) + (1.0 - alpha) * mean_loss(model(x_adv), y)


def training_step(model: nn.Module, loss_of: Callable[[nn.Module], Tensor]) -> Run:
    """One SGD step on ``model`` of the loss ``loss_of(model)``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_of(model).backward()
        optimizer.step()

    return step


def attacks(model: nn.Module, x: Tensor, y: Tensor, w: Workload) -> dict[str, dict[str, Run]]:
    """``{attack: {contender: run}}`` for fgsmkit, the hand-written loops and the floor."""
    return {
        "fgsm": {
            "fgsmkit": lambda: fgsm(model, x, y, eps=w.eps),
            "hand-written": lambda: hand_fgsm(model, x, y, w.eps),
        },
        "pgd": {
            "fgsmkit": lambda: pgd(model, x, y, eps=w.eps, step_size=w.step_size, steps=w.steps,
                                   random_start=False),
            "hand-written": lambda: hand_pgd(model, x, y, w.eps, w.step_size, w.steps),
        },
        "floor": {"fwd+bwd to input": lambda: input_gradient_floor(model, x, y)},
    }


def training_steps(model: nn.Module, x: Tensor, y: Tensor, w: Workload) -> dict[str, Run]:
    """Clean, fgsmkit-adversarial and straightforward-adversarial SGD steps, each on its own copy."""
    criterion = AdversarialLoss(alpha=ALPHA, eps=w.eps)
    return {
        "clean step": training_step(copy.deepcopy(model), lambda m: mean_loss(m(x), y)),
        "AdversarialLoss step": training_step(copy.deepcopy(model), lambda m: criterion(m, x, y)),
        "3-forward adversarial step": training_step(
            copy.deepcopy(model), lambda m: straightforward_adversarial_loss(m, x, y, w.eps)),
    }


def adversarial_loss_matches(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> bool:
    """Whether one SGD step with :class:`AdversarialLoss` gives bit-identical parameters to the
    straightforward 3-forward loss."""
    ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
    criterion = AdversarialLoss(alpha=ALPHA, eps=eps)
    training_step(ours, lambda m: criterion(m, x, y))()
    training_step(theirs, lambda m: straightforward_adversarial_loss(m, x, y, eps))()
    return all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))
