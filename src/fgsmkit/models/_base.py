"""What every model of the zoo shares: flat or image-shaped input and ``predict_proba``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._validation import check_positive_int
from .._precision import autocast_enabled
from ..gradient import probabilities_of_logits


def check_class_count(num_classes: object) -> int:
    """The number of output classes of a multi-class model: an int of at least 2.

    A single output column is read as one binary logit (by the attacks and the metrics), which
    these softmax-style models do not produce.
    """
    count = check_positive_int(num_classes, "num_classes")
    if count < 2:
        raise ValueError(
            f"num_classes must be >= 2; got {count}. For two classes with a single logit use "
            "fgsmkit.models.LogisticRegression"
        )
    return count


class Classifier(nn.Module):
    """A classifier that returns logits and knows the probabilities behind them.

    Inputs of any shape ``(batch, ...)`` with ``in_features`` elements per sample are
    flattened to ``(batch, in_features)``. Subclasses set ``in_features``, call :meth:`flat` in
    their forward and override :meth:`probabilities` when their logits are neither softmax logits
    nor a single binary logit.

    Examples
    --------
    >>> import torch, fgsmkit as fk
    >>> class TwoLayer(fk.models.Classifier):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.in_features = 784
    ...         self.net = torch.nn.Sequential(torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    ...     def forward(self, x):
    ...         return self.net(self.flat(x))
    >>> TwoLayer().predict_proba(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    in_features: int

    def flat(self, x: Tensor) -> Tensor:
        """``x`` as ``(batch, in_features)``; a clear error for any other number of features, or
        another dtype than the parameters' (unless autocast casts it)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}. Convert it with torch.as_tensor(x)")
        if x.ndim < 1 or math.prod(x.shape[1:]) != self.in_features:
            single = x.numel() == self.in_features and x.ndim <= 1
            raise ValueError(
                f"{type(self).__name__} expects {self.in_features} features per sample; "
                f"got input of shape {tuple(x.shape)}"
                + (". For a single sample add the batch dimension: x.unsqueeze(0)" if single else "")
            )
        weight = next(self.parameters(), None)
        # Autocast casts the other floating dtypes for the layers itself, but never float64 (in x
        # or in the weights) and never integers.
        if (weight is not None and x.dtype != weight.dtype
                and (torch.float64 in (x.dtype, weight.dtype) or not x.is_floating_point()
                     or not autocast_enabled(x.device.type))):
            names = [str(dtype).removeprefix("torch.") for dtype in (weight.dtype, x.dtype)]
            raise TypeError(
                f"{type(self).__name__} has {names[0]} parameters but x is {names[1]}; "
                f"convert x (x.to({weight.dtype})) or the model (model.to({x.dtype}))"
            )
        return x.reshape(x.shape[0], self.in_features)

    def probabilities(self, logits: Tensor) -> Tensor:
        """The probabilities that this model's ``logits`` stand for, shape ``(batch, classes)``: by
        default their softmax, or for a single column (the logit of class 1) its sigmoid and
        the complement."""
        return probabilities_of_logits(logits)

    def predict_proba(self, x: Tensor) -> Tensor:
        """Class probabilities of shape ``(batch, classes)``, computed without autograd, from the
        logits in at least float32 (a bfloat16 softmax keeps 8 bits).

        The model runs in the mode it is in, as when it is called: in training mode (a new
        module's), dropout makes the probabilities random; call ``model.eval()`` first.
        """
        with torch.no_grad():
            logits = self(x)
            return self.probabilities(logits.to(torch.promote_types(logits.dtype, torch.float32)))
