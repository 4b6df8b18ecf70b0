"""The data of a run: the MNIST files on disk (full MNIST, or what is there, named as what it is),
otherwise the embedded 10,000-image sample."""

from __future__ import annotations

import functools
import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .settings import Settings


@dataclass(frozen=True)
class Splits:
    """Train, validation and test tensors, images ``(N, 1, 28, 28)`` in [0, 1], int64 labels."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    source: str
    """What the data is and where it was found, in words, for the report."""
    label: str
    """What the data is, in a few words (:data:`FULL_MNIST`, :data:`EMBEDDED_SAMPLE`, or MNIST
    files on disk by their size): checkpoints record it, so that a run refusing one can say
    which data it was trained on."""

    @property
    def option(self) -> str:
        """The ``--data`` value that selects this data again: ``"full"``, ``"sample"``, or
        ``"auto"`` for other MNIST files on disk (no other value selects them)."""
        return DATA_OPTIONS.get(self.label, "auto")

    def describe(self) -> str:
        return (f"{self.source}: {len(self.train_y)} training, {len(self.val_y)} validation, "
                f"{len(self.test_y)} test images")

    @functools.cached_property
    def digest(self) -> str:
        """A SHA-256 of what training sees, the training and validation tensors (shapes, dtypes
        and values): what a checkpoint was trained on, whatever words describe it (0.1 s for full
        MNIST on one core). The test split is left out, so that a run with another ``test_limit``
        keeps every trained model."""
        return _sha256(self.train_x, self.train_y, self.val_x, self.val_y, prefix=b"train and validation;")

    @functools.cached_property
    def digest_with_test(self) -> str:
        """The digest that checkpoints recorded before the test split was left out: all six
        tensors. Still accepted, so that those runs resume while their test split is the same."""
        return _sha256(self.train_x, self.train_y, self.val_x, self.val_y, self.test_x, self.test_y)


def _sha256(*tensors: Tensor, prefix: bytes = b"") -> str:
    """SHA-256 of ``prefix`` and each tensor's shape, dtype and values."""
    hashed = hashlib.sha256(prefix)
    for t in tensors:
        hashed.update(f"{tuple(t.shape)} {t.dtype};".encode())
        hashed.update(t.detach().cpu().contiguous().numpy())  # read in place, not copied
    return hashed.hexdigest()


Pair = tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]

FULL_MNIST = "full MNIST"
EMBEDDED_SAMPLE = "the embedded MNIST sample"
DATA_OPTIONS = {FULL_MNIST: "full", EMBEDDED_SAMPLE: "sample"}
"""The ``--data`` value that selects the data of each :attr:`Splits.label` but MNIST files on disk."""


class DataUnavailable(RuntimeError):
    """The data asked for (``data="full"``, or full MNIST by ``download=True``) cannot be had."""


@dataclass(frozen=True)
class Found:
    """What :func:`find_full_mnist` got from :func:`fgsmkit.datasets.load_mnist`."""

    data: Pair | None
    """The training and test split, or None."""
    reason: str = ""
    """Why there is no data: the first line of load_mnist's error."""
    sample_in: dict[str, Path] = field(default_factory=dict)
    """The folder of each split whose files are copies of the embedded sample's."""


def find_full_mnist(download: bool) -> Found:
    """MNIST from :func:`fgsmkit.datasets.load_mnist`, or the reason it cannot be had."""
    try:
        (train, train_in), (test, test_in) = (_load_mnist(split, download) for split in ("train", "test"))
    except Exception as error:  # missing, offline or corrupt: the caller falls back to the sample
        return Found(None, (str(error).splitlines() or [type(error).__name__])[0])
    sample_in = {split: folder for split, folder in (("train", train_in), ("test", test_in)) if folder is not None}
    return Found((train, test), sample_in=sample_in)


def _load_mnist(split: str, download: bool) -> tuple[tuple[Tensor, Tensor], Path | None]:
    """One split from :func:`fgsmkit.datasets.load_mnist`, and the folder of its files where they
    are the embedded sample's (its warning is turned into the data's description, not shown)."""
    from fgsmkit.datasets import SampleFilesWarning, load_mnist

    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # recorded even where the warning was shown before
            pair = load_mnist(split=split, download=download)
    finally:
        for w in caught:  # any other warning, as it was
            if not isinstance(w.message, SampleFilesWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return pair, next((w.message.folder for w in caught if isinstance(w.message, SampleFilesWarning)), None)


FULL_MNIST_SIZE = (60_000, 10_000)  # training and test images


def _describe_found(train: int, test: int, sample_in: dict[str, Path]) -> tuple[str, str]:
    """What :func:`find_full_mnist` found, by its size and whether it is the embedded sample (a
    folder of IDX files may hold a subset, or copies of the sample's files): label and source."""
    found = f"{train:,} train / {test:,} test"
    if len(sample_in) == 2:
        return EMBEDDED_SAMPLE, f"{EMBEDDED_SAMPLE} ({found}; its files, found in {_folders(sample_in)})"
    if (train, test) == FULL_MNIST_SIZE:
        return FULL_MNIST, f"{FULL_MNIST} ({found})"
    copies = "".join(f"; the {split} files, in {folder}, are the embedded sample's"
                     for split, folder in sample_in.items())
    label = f"MNIST files on disk ({found})"
    return label, f"{label[:-1]}; full MNIST has 60,000 / 10,000{copies})"


def _folders(sample_in: dict[str, Path]) -> str:
    return " and ".join(sorted({str(folder) for folder in sample_in.values()}))


def _require_full_size(train: int, test: int, sample_in: dict[str, Path], download: bool) -> None:
    """Raise :class:`DataUnavailable` unless the MNIST files found hold all of MNIST (``data="full"``,
    or ``download=True``, which downloads only files that are missing)."""
    if (train, test) == FULL_MNIST_SIZE:
        return
    if len(sample_in) == 2:
        where = _folders(sample_in)
        found = f"the MNIST files in {where} are the embedded sample's (8,000 training / 2,000 test images)"
    else:
        from fgsmkit.datasets import MNIST, search_folders

        where = f"the folders searched ({', '.join(str(folder) for folder in search_folders(MNIST))})"
        found = f"the MNIST files found hold {train:,} training / {test:,} test images"
    if download:
        raise DataUnavailable(f"--download asks for full MNIST (60,000 training / 10,000 test images), but {found}, "
                              f"and it fetches only missing files; move them out of {where} for --download to "
                              "fetch full MNIST, or drop --download to run on them")
    raise DataUnavailable(f"--data full needs full MNIST (60,000 training / 10,000 test images); {found}; "
                          "replace them with the full files, or use --data auto to run on these")


def embedded_sample() -> Pair:
    from fgsmkit.datasets import mnist_sample

    return mnist_sample(split="train"), mnist_sample(split="test")


def load_splits(settings: Settings, data: str = "auto", download: bool = False,
                log: Callable[[str], None] = print) -> Splits:
    """Load the run's data and split off the validation set.

    The validation split is the last ``val_size`` images of the training split (its order is
    already random), so it is the same for every seed.

    Parameters
    ----------
    settings : Settings
        Gives the validation size and how many training and test images to keep.
    data : {"auto", "full", "sample"}
        ``"auto"`` uses the MNIST files :func:`~fgsmkit.datasets.load_mnist` finds (full MNIST,
        a subset, or copies of the embedded sample's files, each described as what it is) and the
        embedded sample otherwise; ``"full"`` fails without all 60,000 / 10,000 images of full
        MNIST; ``"sample"`` always uses the embedded sample.
    download : bool
        Ask for full MNIST, downloading it where no MNIST files are on disk (not with
        ``"sample"``): a failed download, or MNIST files on disk that are not full MNIST, stop the
        run rather than fall back to other data.
    log : callable
        Where to say which data is used.

    Raises
    ------
    DataUnavailable
        ``data="full"`` or ``download=True`` without all 60,000 / 10,000 images of full MNIST
        (``download=True`` downloads only where no MNIST files are found), a failed download,
        or data that leaves no training or test images, or no 3s and 7s in a split
        (experiment 3 needs them).
    """
    if data not in ("auto", "full", "sample"):
        raise ValueError(f"data must be 'auto', 'full' or 'sample'; got {data!r}")
    if download and data == "sample":
        raise ValueError("download=True needs data='auto' or 'full'; the sample is embedded, nothing to download")
    found = find_full_mnist(download) if data in ("auto", "full") else Found(None)
    full, reason = found.data, found.reason
    if full is not None:
        (train_x, train_y), (test_x, test_y) = full
        if data == "full" or download:
            _require_full_size(len(train_y), len(test_y), found.sample_in, download)
        label, source = _describe_found(len(train_y), len(test_y), found.sample_in)
    elif download:
        raise DataUnavailable(f"full MNIST could not be downloaded ({reason}); check the network connection, "
                              "or drop --download to run on the embedded sample")
    elif data == "full":
        raise DataUnavailable(f"full MNIST is not available ({reason}); "
                              "pass --download, set $FGSMKIT_DATA, or use --data sample")
    else:
        (train_x, train_y), (test_x, test_y) = embedded_sample()
        why = f"full MNIST: {reason.rstrip('.')}" if reason else "full MNIST was not found"
        label, source = EMBEDDED_SAMPLE, f"{EMBEDDED_SAMPLE} (8,000 train / 2,000 test; {why})"
    val_x, val_y = train_x[-settings.val_size:], train_y[-settings.val_size:]
    train_x, train_y = train_x[:-settings.val_size], train_y[:-settings.val_size]
    if settings.train_limit is not None:
        train_x, train_y = train_x[: settings.train_limit], train_y[: settings.train_limit]
    if settings.test_limit is not None:
        test_x, test_y = test_x[: settings.test_limit], test_y[: settings.test_limit]
    splits = Splits(*(torch.as_tensor(t).contiguous() for t in (train_x, train_y, val_x, val_y, test_x, test_y)),
                    source=source, label=label)
    _require_images(splits, settings.val_size)
    log(f"data: {splits.describe()}")
    return splits


def _require_images(splits: Splits, val_size: int) -> None:
    """Raise :class:`DataUnavailable` where an experiment would find a split empty: now, rather than
    after the models before it have trained."""
    if len(splits.train_y) == 0:
        raise DataUnavailable(f"{splits.source} leaves no training images once {val_size:,} are held out for "
                              f"validation; use data with more than {val_size:,} training images "
                              "(--data sample, or full MNIST)")
    if len(splits.test_y) == 0:
        raise DataUnavailable(f"{splits.source} has no test images; use --data sample, or full MNIST")
    for split, labels in (("training", splits.train_y), ("validation", splits.val_y), ("test", splits.test_y)):
        if not _of_digits(labels, 3, 7).any():
            raise DataUnavailable(f"the {split} split of {splits.source} has no 3s or 7s, which experiment 3 "
                                  "(logistic regression, 3 vs 7) trains and tests on; use --data sample, "
                                  "or full MNIST")


def binary_subset(x: Tensor, y: Tensor, negative: int = 3, positive: int = 7) -> tuple[Tensor, Tensor]:
    """The images of two digits, labelled 0 (``negative``) and 1 (``positive``), for section 5's 3 vs 7."""
    keep = _of_digits(y, negative, positive)
    return x[keep], (y[keep] == positive).long()


def _of_digits(labels: Tensor, *digits: int) -> Tensor:
    """Where ``labels`` is one of ``digits``."""
    return torch.isin(labels, torch.tensor(digits, dtype=labels.dtype))
