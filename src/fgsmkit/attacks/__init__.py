"""Attacks: pure functions from a model and clean inputs to adversarial inputs."""

from .fgsm import fgsm
from .pgd import iterative_fgsm, pgd

__all__ = ["fgsm", "iterative_fgsm", "pgd"]
