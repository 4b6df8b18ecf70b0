"""The benchmark's workloads: a model, a batch of inputs in ``[0, 1]`` and the attack's budget."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..models import MaxoutMLP


class SmallCNN(nn.Module):
    """A small CIFAR-shaped convolutional network (3x32x32 input, 10 classes)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(),
                                        nn.Linear(128, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class Workload:
    """A model factory, an input shape and batch size, and the attacks' budget.

    ``setting`` describes the model and its input, without the batch size (see
    :attr:`description`). ``eps`` is the FGSM and PGD radius, ``step_size`` the PGD step;
    ``steps`` PGD steps are taken.
    """

    name: str
    setting: str
    build_model: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    batch: int
    eps: float
    step_size: float
    steps: int = 40
    classes: int = 10

    def make(self, device: torch.device | str, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
        """The model (eval mode) and a batch ``(x, y)`` on ``device``, all drawn from ``seed``."""
        torch.manual_seed(seed)
        model = self.build_model().to(device).eval()
        generator = torch.Generator().manual_seed(seed)
        x = torch.rand((self.batch, *self.input_shape), generator=generator).to(device)
        y = torch.randint(0, self.classes, (self.batch,), generator=generator).to(device)
        return model, x, y

    @property
    def description(self) -> str:
        """The model, its input and the batch size actually run (a shrunk workload's own)."""
        return f"{self.setting}, batch {self.batch}"

    def shrunk(self, batch: int, steps: int) -> Workload:
        """The same workload at a smaller batch and fewer steps (for quick runs and tests).

        Where the full PGD walks past the eps-ball (``steps * step_size > eps``) but the fewer
        steps would not, the step grows to ``2.5 * eps / steps`` (never above ``eps``): the
        projection onto the ball must still bind, or the PGD agreement check could not tell a
        loop that projects onto the wrong ball, or onto none, from a correct one.
        """
        step_size = self.step_size
        if self.steps * step_size > self.eps >= steps * step_size:
            step_size = min(2.5 * self.eps / steps, self.eps)  # cleverhans refuses a step above eps
        return dataclasses.replace(self, batch=batch, steps=steps, step_size=step_size)


WORKLOADS: dict[str, Workload] = {
    "maxout-128": Workload("maxout-128", "maxout MLP 784-(240x5)-(240x5)-10, MNIST-shaped",
                           MaxoutMLP, (1, 28, 28), 128, eps=0.25, step_size=0.01),
    "maxout-1024": Workload("maxout-1024", "maxout MLP 784-(240x5)-(240x5)-10, MNIST-shaped",
                            MaxoutMLP, (1, 28, 28), 1024, eps=0.25, step_size=0.01),
    "cnn-128": Workload("cnn-128", "small CNN (2 conv + 2 linear), CIFAR-shaped 3x32x32",
                        SmallCNN, (3, 32, 32), 128, eps=8 / 255, step_size=2 / 255),
}
