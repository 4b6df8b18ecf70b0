"""Datasets: the IDX format, an embedded MNIST sample, and MNIST / Fashion-MNIST loaders.

Every loader returns ``(images, labels)``: float32 images of shape ``(N, 1, 28, 28)`` scaled to
[0, 1] and int64 labels of shape ``(N,)``.
"""

from .idx import read_idx, write_idx
from .sample import mnist_sample

__all__ = ["mnist_sample", "read_idx", "write_idx"]
