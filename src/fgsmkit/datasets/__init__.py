"""Datasets: the IDX format, an embedded MNIST sample, and MNIST / Fashion-MNIST loaders.

Every loader returns ``(images, labels)``: float32 images of shape ``(N, 1, 28, 28)`` scaled to
[0, 1] and int64 labels of shape ``(N,)``. :func:`mnist_sample` works offline; :func:`load_mnist`
and :func:`load_fashion_mnist` read the full datasets from disk or download them.
"""

from .download import DownloadError, RemoteFiles
from .idx import read_idx, write_idx
from .mnist import (FASHION_MNIST, MNIST, DatasetNotFoundError, SampleFilesWarning, load_fashion_mnist, load_mnist,
                    search_folders)
from .sample import mnist_sample

__all__ = [
    "FASHION_MNIST",
    "MNIST",
    "DatasetNotFoundError",
    "DownloadError",
    "RemoteFiles",
    "SampleFilesWarning",
    "load_fashion_mnist",
    "load_mnist",
    "mnist_sample",
    "read_idx",
    "search_folders",
    "write_idx",
]
