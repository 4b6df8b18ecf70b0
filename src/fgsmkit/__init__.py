"""fgsmkit: adversarial attacks and defenses for PyTorch, after Goodfellow, Shlens & Szegedy (2015).

Attacks are pure functions (:func:`fgsm`, :func:`iterative_fgsm`, :func:`pgd`); adversarial
training is a criterion (:class:`AdversarialLoss`); the paper's models are in
:mod:`fgsmkit.models`.
"""

from . import models
from .attacks import fgsm, iterative_fgsm, pgd
from .checkpoint import load_checkpoint, save_checkpoint
from .losses import AdversarialLoss, adversarial_logistic_loss

__version__ = "0.1.0"

__all__ = [
    "AdversarialLoss",
    "adversarial_logistic_loss",
    "fgsm",
    "iterative_fgsm",
    "load_checkpoint",
    "models",
    "pgd",
    "save_checkpoint",
]
