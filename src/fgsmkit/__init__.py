"""fgsmkit: adversarial attacks and defenses for PyTorch, after Goodfellow, Shlens & Szegedy (2015).

Attacks are pure functions (:func:`fgsm`, :func:`iterative_fgsm`, :func:`pgd`); adversarial
training is a criterion (:class:`AdversarialLoss`); the paper's models are in
:mod:`fgsmkit.models` and its metrics in :mod:`fgsmkit.evaluation`; data loaders are in
:mod:`fgsmkit.datasets` (imported on first use).
"""

import importlib
from typing import TYPE_CHECKING

from . import evaluation, models
from .attacks import fgsm, iterative_fgsm, pgd
from .checkpoint import load_checkpoint, save_checkpoint
from .losses import AdversarialLoss, adversarial_logistic_loss

__version__ = "0.1.0"

# Loaded on first attribute access, so that `import fgsmkit` stays light.
_LAZY_MODULES = ("datasets",)

if TYPE_CHECKING:  # type checkers see the lazily loaded modules as the attributes they become
    from . import datasets


def __getattr__(name: str) -> object:
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdversarialLoss",
    "adversarial_logistic_loss",
    "datasets",
    "evaluation",
    "fgsm",
    "iterative_fgsm",
    "load_checkpoint",
    "models",
    "pgd",
    "save_checkpoint",
]
