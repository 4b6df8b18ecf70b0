"""The embedded MNIST sample: 10,000 real digits shipped inside the package, read offline.

See ``data/mnist_sample/README.md`` for their provenance and licence.
"""

from __future__ import annotations

import functools
import hashlib
import io
from importlib import resources

import numpy as np
from torch import Tensor

from ._tensors import as_tensors, check_split
from .idx import read_idx

# SHA-256 of the shipped files; a damaged installation fails loudly instead of training on noise.
SAMPLE_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "71e0e0dd710ecd2d7ead1460d4a1e34f0fb4b851e0484e2a57540886058e2089",
    "train-labels-idx1-ubyte.gz": "45f5f1ec777ab35eb8a2e7c57f7dd6cf548651dde096b111c31e6fd3f3d15373",
    "t10k-images-idx3-ubyte.gz": "47225405e2a4a602c42c5df218f9ed4cda114ce99977ea3f0a31b7c3d9daee3d",
    "t10k-labels-idx1-ubyte.gz": "142624c8f3ae0e3d36afe21579bfa4ace627bd7f6f921be9d0f840452b0efde4",
}
_PREFIX = {"train": "train", "test": "t10k"}


def mnist_sample(split: str = "train") -> tuple[Tensor, Tensor]:
    """The embedded MNIST sample: 8,000 training and 2,000 test digits, available offline.

    The 10,000 images are the first 10,000 of the MNIST training set, shuffled with
    ``numpy.random.default_rng(0).permutation(10000)`` and split 8,000 / 2,000. The test split
    is therefore *not* the official MNIST test set: numbers measured on it are comparable to
    full-MNIST results in trend, not in absolute value. MNIST is by Yann LeCun, Corinna Cortes
    and Christopher J.C. Burges, distributed under CC BY-SA 3.0 (see the README shipped beside
    the files for the full provenance). For the full dataset use :func:`load_mnist`.

    Parameters
    ----------
    split : {"train", "test"}
        Which part of the sample.

    Returns
    -------
    images : Tensor
        float32, shape ``(N, 1, 28, 28)``, pixel values in [0, 1] (byte value / 255).
    labels : Tensor
        int64, shape ``(N,)``, digits 0-9.

    Raises
    ------
    ValueError
        If ``split`` is not "train" or "test".
    RuntimeError
        If a shipped file does not match its recorded SHA-256 (a damaged installation).

    Examples
    --------
    >>> from fgsmkit.datasets import mnist_sample
    >>> x, y = mnist_sample("test")
    >>> x.shape, x.dtype, y.shape, y.dtype
    (torch.Size([2000, 1, 28, 28]), torch.float32, torch.Size([2000]), torch.int64)
    """
    split = check_split(split)
    images, labels = _decoded(split)
    return as_tensors(images, labels, f"embedded MNIST sample ({split})")


@functools.lru_cache(maxsize=None)
def _decoded(split: str) -> tuple[np.ndarray, np.ndarray]:
    # Decoded once per process; as_tensors copies, so callers never share these arrays.
    prefix = _PREFIX[split]
    return _read(f"{prefix}-images-idx3-ubyte.gz"), _read(f"{prefix}-labels-idx1-ubyte.gz")


def _read(name: str) -> np.ndarray:
    data = (resources.files(__package__) / "data" / "mnist_sample" / name).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SAMPLE_FILES[name]:
        raise RuntimeError(
            f"the embedded sample file {name} is damaged (SHA-256 {digest}, expected {SAMPLE_FILES[name]}); "
            "reinstall fgsmkit"
        )
    return read_idx(io.BytesIO(data))
