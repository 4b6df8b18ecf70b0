"""The fast gradient sign method (Goodfellow, Shlens & Szegedy, 2015, eq. 3)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import SupportsFloat

from torch import Tensor

from .._validation import Clip
from ..gradient import LossFn
from ._attack import fast_gradient_method


def fgsm(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor | None = None,
    *,
    eps: SupportsFloat | Tensor,
    targeted: bool = False,
    norm: float = math.inf,
    loss_fn: LossFn | None = None,
    clip: Clip = (0.0, 1.0),
    eval_mode: bool = False,
    backend: str = "auto",
) -> Tensor:
    r"""Fast gradient sign method: one step of size ``eps`` along the input gradient.

    Untargeted, :math:`x' = x + \epsilon\,\mathrm{sign}(\nabla_x J(x, y))`; targeted (``y`` the
    target classes), :math:`x' = x - \epsilon\,\mathrm{sign}(\nabla_x J(x, y))`. With ``norm=2``
    it is the fast gradient L2 method, :math:`x' = x + \epsilon\, g / \lVert g \rVert_2` per
    sample (a zero gradient gives a zero step). The result is clipped to ``clip``.

    Parameters
    ----------
    model : callable
        Maps a batch of inputs to logits of shape ``(batch, classes)``; an ``nn.Module`` or any
        function. It is run in the train/eval mode it is in, unless ``eval_mode`` is True.
    x : Tensor
        Clean inputs, floating point, batch first, any shape (flat vectors or images).
    y : Tensor, optional
        True labels, or target classes when ``targeted``. None uses the model's own predictions,
        which avoids label leaking.
    eps : float or Tensor
        Size of the perturbation: a number (a NumPy number or a 0-d tensor too), or a tensor of
        shape ``(batch,)`` (one per sample).
        ``eps=0`` returns ``x`` unchanged without running the model (the labels' shape, dtype
        and device are checked, their range against the model's classes is not).
    targeted : bool
        Move towards the classes ``y`` instead of away from them.
    norm : float
        ``float('inf')`` for the sign step, ``2`` for the L2 step.
    loss_fn : callable, optional
        ``loss_fn(logits, y)`` returning per-sample losses or their mean. Default: cross-entropy
        (computed in at least float32). The step does not depend on the reduction.
    clip : tuple or None
        ``(low, high)`` bounds of valid inputs, numbers (NumPy's too) or tensors that broadcast
        against ``x``; None for no bounds. ``x`` must lie inside them.
    eval_mode : bool
        Run the model in eval mode during the attack (its mode is restored afterwards).
    backend : {"auto", "eager", "compile", "cuda_graph"}
        How the attack's steps run; every backend gives bit-identical results (unless the
        model draws random numbers, e.g. dropout in training mode, or runs kernels that are
        not deterministic, e.g. cuDNN convolutions on CUDA without
        ``torch.backends.cudnn.deterministic``). ``"compile"``
        fuses the L-inf step (sign, scale, add, projection, clip) into one kernel with
        ``torch.compile`` (the first call compiles, which takes seconds; past torch's recompile
        limit, reached after about 8 mixes of dtype, budget shape and box in one process,
        further mixes run eagerly, with the same bits). ``"cuda_graph"``
        (CUDA, an ``nn.Module`` with static shapes and no host synchronisation in its forward;
        numbers and tensors that the modules of the model or of ``loss_fn`` hold as attributes
        are followed, a change making a new graph, but those its forward or ``loss_fn`` read
        from elsewhere, such as globals or closures, are frozen into the graph)
        captures the steps after the first once and replays them, which removes the launch
        cost of small models; the graph is cached per model, input shape and ``loss_fn`` (define
        it once, outside the loop: a new function on every call captures a new graph). ``"auto"`` is
        ``"eager"``.

    Returns
    -------
    Tensor
        The adversarial examples: a new tensor with the shape, dtype and device of ``x`` and no
        autograd history, inside ``clip``. With ``norm=inf``, ``x - eps <= x_adv <= x + eps``
        holds exactly when evaluated in ``x``'s dtype; ``(x_adv - x).abs()`` can exceed ``eps``
        by the rounding of ``x + eps``, half a unit in the last place of ``x``.

    Examples
    --------
    >>> import torch, fgsmkit as fk
    >>> model = fk.models.SoftmaxRegression(4, 3)
    >>> x, y = torch.rand(8, 4), torch.randint(0, 3, (8,))
    >>> x_adv = fk.fgsm(model, x, y, eps=0.1)
    >>> bool(((x_adv - x).abs() <= 0.1 + 1e-7).all())
    True
    """
    return fast_gradient_method(
        model, x, y, eps=eps, norm=norm, targeted=targeted, loss_fn=loss_fn, clip=clip, eval_mode=eval_mode,
        backend=backend,
    )
