"""What every model of the zoo shares: flat or image-shaped input and ``predict_proba``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Classifier(nn.Module):
    """A classifier that returns logits and knows the probabilities behind them.

    Inputs of any shape ``(batch, ...)`` with ``in_features`` elements per sample are
    flattened to ``(batch, in_features)``.
    """

    in_features: int

    def flat(self, x: Tensor) -> Tensor:
        if x.ndim < 1 or math.prod(x.shape[1:]) != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expects {self.in_features} features per sample; "
                f"got input of shape {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], self.in_features)

    def probabilities(self, logits: Tensor) -> Tensor:
        """The probabilities that this model's ``logits`` stand for, shape ``(batch, classes)``."""
        return torch.softmax(logits, dim=1)

    def predict_proba(self, x: Tensor) -> Tensor:
        """Class probabilities of shape ``(batch, classes)``, computed without autograd."""
        with torch.no_grad():
            return self.probabilities(self(x))
