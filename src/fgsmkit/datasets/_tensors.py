"""IDX arrays of images and labels -> the tensors every loader returns."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

SPLITS = ("train", "test")
IMAGE_SHAPE = (28, 28)
CLASSES = 10


def check_split(split: object) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    return split  # type: ignore[return-value]


def as_tensors(images: np.ndarray, labels: np.ndarray, origin: str) -> tuple[Tensor, Tensor]:
    """MNIST-style arrays, ``(N, 28, 28)`` uint8 images and ``(N,)`` digit labels -> float32
    ``(N, 1, 28, 28)`` in [0, 1] and int64 ``(N,)``.

    New tensors every call: nothing the caller does to them reaches a cached array.
    """
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(
            f"{origin}: images must be 8-bit and shaped (N, 28, 28); got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{origin}: {images.shape[0]} images but labels of shape {labels.shape}; "
            "the image and label files do not belong together"
        )
    # A float label file would be truncated to integers, and a label past 9 fails much later.
    if labels.dtype.kind not in "ui":
        raise ValueError(f"{origin}: labels must be integers; got {labels.dtype}")
    if labels.size and not (0 <= labels.min() and labels.max() < CLASSES):
        raise ValueError(
            f"{origin}: labels must be digits 0 to {CLASSES - 1}; got values in [{labels.min()}, {labels.max()}]"
        )
    x = torch.from_numpy(images).to(torch.float32).div_(255).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y
