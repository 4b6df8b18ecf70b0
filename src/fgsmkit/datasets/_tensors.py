"""IDX arrays of images and labels -> the tensors every loader returns."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

SPLITS = ("train", "test")


def check_split(split: object) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    return split  # type: ignore[return-value]


def as_tensors(images: np.ndarray, labels: np.ndarray, origin: str) -> tuple[Tensor, Tensor]:
    """``(N, H, W)`` uint8 images and ``(N,)`` labels -> float32 ``(N, 1, H, W)`` in [0, 1], int64 ``(N,)``.

    New tensors every call: nothing the caller does to them reaches a cached array.
    """
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"{origin}: images must be 8-bit and shaped (N, height, width); got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{origin}: {images.shape[0]} images but labels of shape {labels.shape}; "
            "the image and label files do not belong together"
        )
    x = torch.from_numpy(images).to(torch.float32).div_(255).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y
