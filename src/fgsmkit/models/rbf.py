"""The paper's shallow RBF network (section 7): one Gaussian detector per class."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._validation import check_index_dtype, check_positive_int
from ._base import Classifier, check_class_count


def log1mexp(log_p: Tensor) -> Tensor:
    """``log(1 - exp(log_p))`` for ``log_p <= 0``, stable at both ends (Maechler, 2012)."""
    log_p = log_p.clamp_max(-torch.finfo(log_p.dtype).tiny)
    near_zero = log_p > -math.log(2)
    # Each branch gets only inputs it is finite at: torch.where back-propagates into the branch
    # it does not pick too, and log1p(-exp(l)) = -inf near l = 0 would turn that into NaN.
    return torch.where(near_zero, torch.log(-torch.expm1(torch.where(near_zero, log_p, -1.0))),
                       torch.log1p(-torch.exp(torch.where(near_zero, -1.0, log_p))))


def rbf_detector_loss(log_probs: Tensor, y: Tensor) -> Tensor:
    """One-vs-rest Bernoulli negative log-likelihood of independent class detectors.

    The detector of the true class is pushed towards probability 1 and every other towards 0,
    which pins the detectors' absolute probabilities (softmax cross-entropy would leave them
    free up to a shared factor).

    Parameters
    ----------
    log_probs : Tensor
        Each detector's log-probability, shape ``(batch, classes)`` (:class:`RBFNetwork`'s output).
        Values above 0 (logits of another model, which are not log-probabilities) are read as 0,
        a detector at probability 1, with no gradient: they are not checked, since reading them
        would synchronise with the device at every step of an attack.
    y : Tensor
        Class indices, shape ``(batch,)``.

    Returns
    -------
    Tensor
        Per-sample losses, shape ``(batch,)``, in at least float32.

    Examples
    --------
    >>> import math, torch, fgsmkit as fk
    >>> log_probs = torch.log(torch.tensor([[0.9, 0.2]]))   # detector 0 at 0.9, detector 1 at 0.2
    >>> loss = fk.models.rbf_detector_loss(log_probs, torch.tensor([0]))
    >>> math.isclose(loss.item(), -math.log(0.9) - math.log(1 - 0.2), rel_tol=1e-6)
    True
    """
    if not isinstance(log_probs, Tensor):
        raise TypeError(f"log_probs must be a torch.Tensor; got {type(log_probs).__name__}")
    if not log_probs.is_floating_point():
        raise TypeError(f"log_probs must hold floating-point log-probabilities; got dtype {log_probs.dtype}")
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor of class indices; got {type(y).__name__}")
    if log_probs.ndim != 2 or y.shape != log_probs.shape[:1]:
        raise ValueError(
            f"y must hold one class index per row of log_probs, shape ({log_probs.shape[0]},); "
            f"got shape {tuple(y.shape)} for log_probs of shape {tuple(log_probs.shape)}"
        )
    # The range is left to one_hot: reading it would synchronise with the device at every step
    # of an attack that uses this loss (the attack has checked its labels once).
    check_index_dtype(y)
    target = torch.nn.functional.one_hot(y.long(), log_probs.shape[1]).to(torch.bool)  # any integer dtype
    # In at least float32: float16's log p of a wrong but nearly certain detector (-3e-5) lies
    # within its smallest normal number of 0, where log1mexp's clamp would leave no gradient.
    log_probs = log_probs.to(torch.promote_types(log_probs.dtype, torch.float32))
    return -torch.where(target, log_probs, log1mexp(log_probs)).sum(dim=1)


class RBFNetwork(Classifier):
    r"""Shallow RBF network: class ``c`` is detected with probability
    :math:`p_c(x) = \exp\big((x - \mu_c)^\top \beta_c (x - \mu_c)\big)`.

    Each class has a learned centre :math:`\mu_c` and a negative-definite diagonal
    :math:`\beta_c = -\mathrm{diag}(e^{\rho_c})`, so a detector is confident only near its
    centre. The forward returns the detectors' log-probabilities, usable as logits by the
    attacks; train with :meth:`loss` (:func:`rbf_detector_loss`). :meth:`~fgsmkit.models.Classifier.predict_proba` returns
    the detectors' own probabilities, not renormalised: far from every centre all are near 0.

    Parameters
    ----------
    in_features : int
        Features per sample; image-shaped input is flattened.
    num_classes : int
        Number of classes (detectors).

    Examples
    --------
    >>> import torch, fgsmkit as fk
    >>> net = fk.models.RBFNetwork(784, 10)
    >>> x, y = torch.rand(4, 784), torch.tensor([0, 1, 2, 3])
    >>> net.loss(net(x), y).shape
    torch.Size([4])
    """

    loss = staticmethod(rbf_detector_loss)

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.num_classes = check_class_count(num_classes)
        self.centers = nn.Parameter(torch.rand(num_classes, in_features))
        # exp(log_precision) = 1 / in_features keeps the initial log-probabilities of order -1.
        self.log_precision = nn.Parameter(torch.full((num_classes, in_features), -math.log(in_features)))

    def forward(self, x: Tensor) -> Tensor:
        """The detectors' log-probabilities, shape ``(batch, num_classes)``, of inputs
        ``(batch, ...)`` with ``in_features`` elements each."""
        x = self.flat(x)
        # sum_i prec_ci (x_i - mu_ci)^2 from the differences themselves: expanded into matrix
        # products, its large terms cancel near a centre, where a detector's confidence is read
        # (log p of -4 instead of 0 at the centre, for inputs in [0, 255]). One class at a time:
        # without autograd (evaluation) memory holds one (batch, features) difference, not one
        # per class; with it, backward keeps each class's either way.
        distances = [(x - centre).square() @ precision
                     for centre, precision in zip(self.centers, self.log_precision.exp())]
        return -torch.stack(distances, dim=1)

    def probabilities(self, logits: Tensor) -> Tensor:
        return logits.exp()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"
