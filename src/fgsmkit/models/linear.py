"""Softmax regression and logistic regression, the paper's linear models (sections 4-5)."""

from __future__ import annotations

from torch import Tensor, nn

from .._validation import check_positive_int
from ._base import Classifier, check_class_count


class SoftmaxRegression(Classifier):
    """Multinomial logistic regression: one affine map to ``num_classes`` logits.

    Parameters
    ----------
    in_features : int
        Features per sample; image-shaped input is flattened.
    num_classes : int
        Number of classes (>= 2).

    Examples
    --------
    >>> import torch, fgsmkit as fk
    >>> p = fk.models.SoftmaxRegression(784, 10).predict_proba(torch.rand(2, 784))
    >>> p.shape, torch.allclose(p.sum(dim=1), torch.ones(2))
    (torch.Size([2, 10]), True)
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.num_classes = check_class_count(num_classes)
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """The logits, shape ``(batch, num_classes)``."""
        return self.linear(self.flat(x))


class LogisticRegression(Classifier):
    """Binary logistic regression with one logit, ``p(y=1|x) = sigmoid(w.x + b)``.

    The forward returns logits of shape ``(batch, 1)``; the attacks read a single column as a
    binary problem with labels 0 and 1. :meth:`~fgsmkit.models.Classifier.predict_proba` returns
    ``(batch, 2)``, the columns being ``p(y=0|x)`` and ``p(y=1|x)``.

    Parameters
    ----------
    in_features : int
        Features per sample; image-shaped input is flattened.

    Examples
    --------
    >>> import torch, fgsmkit as fk
    >>> model = fk.models.LogisticRegression(784)
    >>> model(torch.rand(5, 784)).shape, model.predict_proba(torch.rand(5, 784)).shape
    (torch.Size([5, 1]), torch.Size([5, 2]))
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features, self.num_classes = check_positive_int(in_features, "in_features"), 2
        self.linear = nn.Linear(in_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        """The logit of class 1, shape ``(batch, 1)``."""
        return self.linear(self.flat(x))
