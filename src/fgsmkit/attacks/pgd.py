"""Iterative attacks: the basic iterative method (Kurakin et al., 2017) and PGD (Madry et al., 2018)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import SupportsFloat

import torch
from torch import Tensor

from .._validation import Clip, Count
from ..gradient import LossFn
from ._attack import projected_gradient_ascent


def iterative_fgsm(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor | None = None,
    *,
    eps: SupportsFloat | Tensor,
    step_size: SupportsFloat | Tensor,
    steps: Count,
    targeted: bool = False,
    loss_fn: LossFn | None = None,
    clip: Clip = (0.0, 1.0),
    eval_mode: bool = False,
    backend: str = "auto",
) -> Tensor:
    """Basic iterative method (BIM): ``steps`` sign steps from ``x``, each projected to the ball.

    Every step moves by ``step_size`` along the sign of the input gradient and is then projected
    onto the L-inf ball of radius ``eps`` around ``x`` and onto ``clip``. It equals
    :func:`pgd` with ``random_start=False``.

    Parameters
    ----------
    model, x, y, eps, targeted, loss_fn, clip, eval_mode, backend
        As in :func:`fgsm`.
    step_size : float or Tensor
        Size of each step (> 0), a number (NumPy's or a 0-d tensor too) or one per sample; 0 is
        allowed where ``eps`` is 0 (for a number, where every sample's is), as
        ``2.5 * eps / steps`` gives.
    steps : int
        Number of steps (>= 1); a NumPy integer too.

    Returns
    -------
    Tensor
        The adversarial examples, shaped, typed and placed like ``x``, inside ``clip`` and the
        eps-ball (exactly as :func:`fgsm` states it).

    Examples
    --------
    >>> import torch, fgsmkit as fk
    >>> model = fk.models.SoftmaxRegression(4, 3)
    >>> x, y = torch.rand(8, 4), torch.randint(0, 3, (8,))
    >>> x_adv = fk.iterative_fgsm(model, x, y, eps=0.1, step_size=0.02, steps=10)
    >>> x_adv.shape
    torch.Size([8, 4])
    """
    return projected_gradient_ascent(
        model, x, y, eps=eps, step_size=step_size, steps=steps, norm=math.inf, random_start=False,
        restarts=1, targeted=targeted, loss_fn=loss_fn, clip=clip, generator=None, eval_mode=eval_mode,
        backend=backend,
    )


def pgd(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor | None = None,
    *,
    eps: SupportsFloat | Tensor,
    step_size: SupportsFloat | Tensor,
    steps: Count,
    norm: float = math.inf,
    random_start: bool = True,
    restarts: Count = 1,
    targeted: bool = False,
    loss_fn: LossFn | None = None,
    clip: Clip = (0.0, 1.0),
    generator: torch.Generator | None = None,
    eval_mode: bool = False,
    backend: str = "auto",
) -> Tensor:
    """Projected gradient descent on the loss, in the L-inf or L2 ball.

    From a random point of the ball (or from ``x``), take ``steps`` steepest-ascent steps of
    ``step_size`` (sign steps for L-inf, normalised gradient steps for L2), projecting onto the
    ball and ``clip`` after each. With ``restarts > 1`` the walk is repeated from new random
    points and each sample keeps its strongest result: one that fools the model first, then the
    highest loss (the lowest target loss when ``targeted``).

    ``pgd(..., steps=1, step_size=eps, random_start=False)`` equals :func:`fgsm` exactly, and
    ``random_start=False`` equals :func:`iterative_fgsm`.

    Parameters
    ----------
    model, x, y, eps, targeted, norm, loss_fn, clip, eval_mode, backend
        As in :func:`fgsm`.
    step_size : float or Tensor
        Size of each step (> 0), a number (NumPy's or a 0-d tensor too) or one per sample; 0 is
        allowed where ``eps`` is 0 (for a number, where every sample's is), as
        ``2.5 * eps / steps`` gives.
    steps : int
        Number of steps per restart (>= 1); a NumPy integer too.
    random_start : bool
        Start from a point drawn uniformly from the ball (clipped to ``clip``).
    restarts : int
        Number of random starts (>= 1; a NumPy integer too); needs ``random_start=True`` when
        above 1, and a ``loss_fn`` that returns per-sample losses.
    generator : torch.Generator, optional
        Source of the random starts, on the device of ``x``, for reproducible attacks.

    Returns
    -------
    Tensor
        The adversarial examples, shaped, typed and placed like ``x``, inside ``clip`` and the
        eps-ball (for ``norm=inf`` exactly as :func:`fgsm` states it).

    Examples
    --------
    >>> import torch, fgsmkit as fk
    >>> model = fk.models.SoftmaxRegression(4, 3)
    >>> x, y = torch.rand(8, 4), torch.randint(0, 3, (8,))
    >>> g = torch.Generator().manual_seed(0)
    >>> x_adv = fk.pgd(model, x, y, eps=0.1, step_size=0.02, steps=10, generator=g)
    >>> bool(((x_adv - x).abs() <= 0.1 + 1e-7).all())
    True
    """
    return projected_gradient_ascent(
        model, x, y, eps=eps, step_size=step_size, steps=steps, norm=norm, random_start=random_start,
        restarts=restarts, targeted=targeted, loss_fn=loss_fn, clip=clip, generator=generator,
        eval_mode=eval_mode,
        backend=backend,
    )
