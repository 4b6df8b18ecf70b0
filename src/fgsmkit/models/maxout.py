"""Maxout units and the paper's maxout network (Goodfellow et al., 2013)."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_positive_int, finite_number
from ._base import Classifier, check_class_count


def check_max_norm(max_norm: object) -> float:
    """``max_norm`` as a float: a finite number > 0 (a 0-d tensor too)."""
    value = finite_number(max_norm)
    if value is None or value <= 0:
        raise ValueError(f"max_norm must be a finite number > 0, or None; got {max_norm!r}")
    return value


def max_norm_(weight: Tensor, max_norm: float) -> None:
    """Rescale, in place, each row of ``weight`` to norm <= ``max_norm``.

    A row is one unit's incoming weights, or in a maxout layer each affine piece's (each row of
    its ``nn.Linear.weight``, so a unit's pieces together may exceed ``max_norm``). This is the
    maxout paper's max column norm constraint (its weights are stored transposed), applied after
    each optimizer step. It is :func:`torch.renorm`, which multiplies a row of
    norm ``n`` over ``max_norm`` by ``max_norm / (n + 1e-7)``, a factor rounded to ``weight``'s
    dtype; rows at or under ``max_norm`` are left as they are. A rescaled row's norm is not
    exactly ``max_norm``:

    - It can end over it by the rounding of the factor and of each entry: about 2**-7 (7.8e-3)
      relative at most in bfloat16 and 2**-10 (9.8e-4) in float16, for entries in the dtype's
      normal range. In float32 the norm's own rounding grows with the row: measured, up to
      2.3e-7 relative for rows of 2 to 4,096 entries and 1.2e-6 for 65,536. A row left over is
      rescaled again, by as little, on the next call.
    - The 1e-7 added to ``n`` leaves it under, by ``1e-7 / (n + 1e-7)`` relative, at most about
      ``1e-7 / max_norm``: negligible for the usual values, but up to 9% for ``max_norm=1e-6``.

    Parameters
    ----------
    weight : Tensor
        One row per unit, such as ``nn.Linear.weight``, changed in place (a stored tensor or a
        view of one, not a weight computed from others); with more than two dimensions (a
        convolution's weight) each slice along the first is one unit.
    max_norm : float
        The largest L2 norm a row may keep (> 0).

    Raises
    ------
    ValueError
        If ``weight`` has fewer than two dimensions (for one unit's vector ``v``, pass the view
        ``v[None]``), is computed from other tensors (a parametrized or pruned layer's weight,
        which an in-place change would not reach), or ``max_norm`` is not a finite number > 0.

    Examples
    --------
    >>> import torch, fgsmkit as fk
    >>> weight = torch.full((3, 4), 2.0)             # rows of norm 4
    >>> fk.models.max_norm_(weight, 1.9365)
    >>> weight.norm(dim=1)
    tensor([1.9365, 1.9365, 1.9365])
    """
    max_norm = check_max_norm(max_norm)
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        got = f"dtype {weight.dtype}" if isinstance(weight, Tensor) else type(weight).__name__
        raise TypeError(f"weight must be a floating-point torch.Tensor (a layer's weight); got {got}")
    if weight.ndim < 2:
        raise ValueError(
            f"weight must have one row per unit (2 or more dimensions, such as nn.Linear.weight); got shape "
            f"{tuple(weight.shape)}. For one unit's weight vector v, call max_norm_(v[None], max_norm)"
        )
    if weight.grad_fn is not None and not weight._is_view():
        # Written into, such a result changes a copy that the next access recomputes.
        raise ValueError(
            "weight is computed from other tensors (a parametrized or pruned layer's weight), so rescaling "
            "it in place would not reach them; pass the stored parameter, or remove the parametrization first"
        )
    with torch.no_grad():
        weight.copy_(torch.renorm(weight, p=2, dim=0, maxnorm=max_norm))


class Maxout(nn.Module):
    """A maxout layer: each of ``out_features`` units is the max of ``pieces`` affine pieces.

    Parameters
    ----------
    in_features : int
        Size of each input sample.
    out_features : int
        Number of maxout units.
    pieces : int
        Number of affine pieces per unit (``k`` in the maxout paper).

    Examples
    --------
    >>> import torch, fgsmkit as fk
    >>> layer = fk.models.Maxout(784, 240, pieces=5)
    >>> layer(torch.rand(2, 784)).shape
    torch.Size([2, 240])
    """

    def __init__(self, in_features: int, out_features: int, pieces: int) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self.pieces = check_positive_int(pieces, "pieces")
        # Row u * pieces + k holds piece k of unit u.
        self.linear = nn.Linear(in_features, out_features * pieces)

    def forward(self, x: Tensor) -> Tensor:
        """The units' outputs, shape ``(..., out_features)``, of inputs ``(..., in_features)``."""
        return self.linear(x).unflatten(-1, (self.out_features, self.pieces)).amax(dim=-1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, pieces={self.pieces}"


class MaxoutMLP(Classifier):
    """The paper's MNIST network: maxout hidden layers and a softmax output layer.

    The default is 784 -> 240 units x 5 pieces -> 240 units x 5 pieces -> 10; the paper's
    larger network is ``hidden=(1600, 1600)``.

    Parameters
    ----------
    in_features : int
        Features per sample (784 for MNIST); image-shaped input is flattened.
    hidden : sequence of int
        Units per hidden maxout layer.
    pieces : int
        Affine pieces per maxout unit.
    num_classes : int
        Number of classes.
    dropout : float
        Dropout probability on the hidden layers' outputs (the maxout paper used 0.5).
    input_dropout : float
        Dropout probability on the input (the maxout paper used 0.2).
    max_norm : float or None
        Max norm of each affine piece's incoming weights (each row of a layer's weight),
        enforced by :meth:`apply_max_norm` (the maxout paper used 1.9365, per piece too); None
        for no constraint.

    Examples
    --------
    >>> import torch, fgsmkit as fk
    >>> net = fk.models.MaxoutMLP()
    >>> net(torch.rand(3, 1, 28, 28)).shape
    torch.Size([3, 10])
    """

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (240, 240), pieces: int = 5,
                 num_classes: int = 10, dropout: float = 0.0, input_dropout: float = 0.0,
                 max_norm: float | None = None) -> None:
        super().__init__()
        self.dropout = _check_dropout(dropout, "dropout")
        self.input_dropout = _check_dropout(input_dropout, "input_dropout")
        self.max_norm = None if max_norm is None else check_max_norm(max_norm)
        hidden = _layer_widths(hidden)
        pieces = check_positive_int(pieces, "pieces")
        self.in_features = check_positive_int(in_features, "in_features")
        self.num_classes = check_class_count(num_classes)
        # Only layers with parameters are numbered, so that the parameter names do not depend on
        # dropout (a training setting): a network trained with it loads into one built without.
        widths = [self.in_features, *hidden]
        layers: list[nn.Module] = [Maxout(a, b, pieces) for a, b in zip(widths, widths[1:])]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """The logits, shape ``(batch, num_classes)``, of inputs ``(batch, ...)`` with
        ``in_features`` elements each; dropout is applied in training mode only."""
        *hidden, output = self.layers  # not self.layers[:-1], which builds a new Sequential per call
        h = self._dropped(self.flat(x), self.input_dropout)
        for maxout in hidden:
            h = self._dropped(maxout(h), self.dropout)
        return output(h)

    def _dropped(self, h: Tensor, p: float) -> Tensor:
        return F.dropout(h, p, self.training) if p else h

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}, input_dropout={self.input_dropout}, max_norm={self.max_norm}"

    def apply_max_norm(self) -> None:
        """Enforce ``max_norm`` on every layer's weights; call it after each optimizer step."""
        if self.max_norm is None:
            return
        layers = [(name, module) for name, module in self.named_modules() if isinstance(module, nn.Linear)]
        for name, module in layers:  # all checked before any is changed
            if "weight" not in module._parameters:
                raise TypeError(
                    f"{name} computes its weight from other tensors (a parametrization such as weight_norm, or "
                    "pruning), which max_norm cannot rescale in place; remove it first "
                    "(torch.nn.utils.parametrize.remove_parametrizations or torch.nn.utils.prune.remove), or "
                    "constrain its stored tensors yourself"
                )
        for _, module in layers:
            max_norm_(module.weight, self.max_norm)


def _check_dropout(p: object, name: str) -> float:
    value = finite_number(p)
    if value is None or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1) (a probability of dropping); got {p!r}")
    return value


def _layer_widths(hidden: object) -> list[int]:
    """Any sequence of integers (a tuple, a list, a NumPy or torch array) as a list of widths >= 1."""
    try:
        widths = [_integer(units) for units in hidden]  # type: ignore[attr-defined]
    except TypeError:
        raise TypeError(f"hidden must be a sequence of int layer widths, e.g. hidden=(240,); got {hidden!r}") from None
    return [check_positive_int(units, "hidden widths") for units in widths]


def _integer(units: object) -> int:
    if isinstance(units, bool) or isinstance(units, Tensor) and units.dtype == torch.bool:
        raise TypeError("a bool is not a layer width")
    return operator.index(units)
