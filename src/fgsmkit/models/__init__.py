"""The paper's models: maxout networks, shallow RBF networks, softmax and logistic regression."""

from ._base import Classifier
from .linear import LogisticRegression, SoftmaxRegression
from .maxout import Maxout, MaxoutMLP, max_norm_
from .rbf import RBFNetwork, rbf_detector_loss

__all__ = [
    "Classifier",
    "LogisticRegression",
    "Maxout",
    "MaxoutMLP",
    "RBFNetwork",
    "SoftmaxRegression",
    "max_norm_",
    "rbf_detector_loss",
]
