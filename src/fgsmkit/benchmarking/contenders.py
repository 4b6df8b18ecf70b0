"""What is timed besides the peers: fgsmkit, the same maths as plain PyTorch loops, and the floors.

The hand-written loops are what a user would write without a library: the gradient with respect
to the input by ``torch.autograd.grad``, a sign step, a clamp to the ball and to ``[0, 1]``. The
floor is one forward and one backward to the input, the cost no attack step can beat; PGD is
timed against that floor called once per step, in the same rounds.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import AdversarialLoss, fgsm, pgd
from .workloads import Workload

Run = Callable[[], object]
ALPHA = 0.5  # the paper's weight of the clean term
OURS_STEP = "AdversarialLoss step"


def hand_fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in), y), x_in)
    return (x + eps * grad.sign()).clamp(0.0, 1.0)


def hand_pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, step_size: float, steps: int) -> Tensor:
    # The ball's bounds folded with the box once (x is in [0, 1], so each bound stays on its side
    # of the other): one clamp per step projects onto both.
    low, high = (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = x_adv.detach().add(grad.sign(), alpha=step_size).clamp(low, high)
    return x_adv


def input_gradient_floor(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """One forward and one backward to the input: the cost of any attack step."""
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in), y), x_in)
    return grad


def input_gradient_floor_loop(model: nn.Module, x: Tensor, y: Tensor, steps: int) -> Run:
    """The floor ``steps`` times: what a PGD of ``steps`` steps cannot beat."""

    def run() -> None:
        for _ in range(steps):
            input_gradient_floor(model, x, y)

    return run


_CRITERION_LOSS = AdversarialLoss().loss_fn


def mean_loss(logits: Tensor, y: Tensor) -> Tensor:
    """The batch loss :class:`AdversarialLoss` uses by default: the hand-written adversarial
    training contenders use it, so that they differ from it in the algorithm only, not in the loss
    or its backward (and can train to bit-identical parameters)."""
    loss = _CRITERION_LOSS(logits, y)
    return loss if loss.ndim == 0 else loss.mean()


def straightforward_adversarial_loss(model: nn.Module, x: Tensor, y: Tensor, eps: float,
                                     alpha: float = ALPHA) -> Tensor:
    """Eq. (6) of the paper as usually written: 3 forwards (the clean one twice) and 2 backwards."""
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(alpha * mean_loss(model(x_in), y), x_in)
    x_adv = (x + eps * grad.sign()).clamp(0.0, 1.0)
    return alpha * mean_loss(model(x), y) + (1.0 - alpha) * mean_loss(model(x_adv), y)


def two_forward_adversarial_loss(model: nn.Module, x: Tensor, y: Tensor, eps: float,
                                 alpha: float = ALPHA) -> Tensor:
    """Eq. (6) by hand in 2 forwards and 3 backward passes: the clean graph is kept
    (``retain_graph``) and back-propagated twice, for the input gradient and in the final backward.

    The clean graph still reaches ``x_in``, which requires grad: a final ``backward()`` would form
    the first layer's input gradient again, so its step back-propagates into the parameters only
    (see :func:`training_step`).
    """
    x_in = x.clone().requires_grad_(True)
    clean = mean_loss(model(x_in), y)
    (grad,) = torch.autograd.grad(clean, x_in, retain_graph=True)
    x_adv = (x + eps * grad.sign()).clamp(0.0, 1.0)
    return alpha * clean + (1.0 - alpha) * mean_loss(model(x_adv), y)


def training_step(model: nn.Module, loss_of: Callable[[nn.Module], Tensor], parameters_only: bool = False) -> Run:
    """One SGD step on ``model`` of the loss ``loss_of(model)``.

    Parameters
    ----------
    model : nn.Module
        What the step trains.
    loss_of : callable
        ``loss_of(model)``, the scalar loss to back-propagate.
    parameters_only : bool
        Back-propagate into the model's parameters only (``backward(inputs=...)``), as a careful
        hand-written step does; False: plain ``backward()``, as an unchanged training loop does.
    """
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_of(model).backward(inputs=params if parameters_only else None)
        optimizer.step()

    return step


def attacks(model: nn.Module, x: Tensor, y: Tensor, w: Workload) -> dict[str, dict[str, Run]]:
    """``{attack: {contender: run}}`` for fgsmkit and the hand-written loops.

    fgsmkit runs its eager backend, named rather than left to ``"auto"``: it is the reference
    row of every ratio, whatever ``"auto"`` comes to pick.
    """
    return {
        "fgsm": {
            "fgsmkit": lambda: fgsm(model, x, y, eps=w.eps, backend="eager"),
            "hand-written": lambda: hand_fgsm(model, x, y, w.eps),
        },
        "pgd": {
            "fgsmkit": lambda: pgd(model, x, y, eps=w.eps, step_size=w.step_size, steps=w.steps,
                                   random_start=False, backend="eager"),
            "hand-written": lambda: hand_pgd(model, x, y, w.eps, w.step_size, w.steps),
        },
    }


def training_losses(eps: float) -> dict[str, Callable[[nn.Module, Tensor, Tensor], Tensor]]:
    """The adversarial training losses, ``{name: loss(model, x, y)}``: fgsmkit's and the hand-written ones."""
    criterion = AdversarialLoss(alpha=ALPHA, eps=eps)
    return {
        OURS_STEP: criterion,
        "3-forward adversarial step": lambda m, x, y: straightforward_adversarial_loss(m, x, y, eps),
        "2-forward adversarial step": lambda m, x, y: two_forward_adversarial_loss(m, x, y, eps),
    }


def training_steps(model: nn.Module, x: Tensor, y: Tensor, w: Workload) -> dict[str, Run]:
    """A clean SGD step and one per adversarial training loss, each on its own copy of ``model``.

    The clean step is an unchanged training loop's: ``F.cross_entropy``, not fgsmkit's loss.
    """
    steps = {"clean step": training_step(copy.deepcopy(model), lambda m: F.cross_entropy(m(x), y))}
    for name, loss in training_losses(w.eps).items():
        steps[name] = adversarial_training_step(name, loss, copy.deepcopy(model), x, y)
    return steps


def adversarial_training_step(name: str, loss: Callable[[nn.Module, Tensor, Tensor], Tensor], model: nn.Module,
                              x: Tensor, y: Tensor) -> Run:
    """The SGD step of the training loss ``name``: :class:`AdversarialLoss` in an unchanged training
    loop (plain ``backward()``), a hand-written loss into the parameters only."""
    return training_step(model, lambda m: loss(m, x, y), parameters_only=name != OURS_STEP)


def adversarial_loss_matches(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> dict[str, bool]:
    """For each hand-written adversarial loss, whether one SGD step with it gives bit-identical
    parameters to one with :class:`AdversarialLoss`.

    With cuDNN's deterministic algorithms: its default convolution backward may sum in another
    order from one call to the next, which no exactness claim survives.
    """
    parameters = {}
    for name, loss in training_losses(eps).items():
        copied = copy.deepcopy(model)
        with _deterministic_cudnn():
            adversarial_training_step(name, loss, copied, x, y)()
        parameters[name] = list(copied.parameters())
    ours = parameters.pop(OURS_STEP)
    return {name: all(torch.equal(a, b) for a, b in zip(ours, theirs)) for name, theirs in parameters.items()}


@contextlib.contextmanager
def _deterministic_cudnn() -> Iterator[None]:
    """cuDNN's deterministic algorithms, without its autotuner, inside the block only."""
    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = saved
