"""MNIST and Fashion-MNIST: found on disk, or downloaded from the standard mirrors.

A split is read from the first folder holding both of its files, searched in this order:

1. ``root`` (when given), then ``root/<Name>/raw``;
2. ``$FGSMKIT_DATA`` (when set), then ``$FGSMKIT_DATA/<Name>/raw``;
3. the user cache folder, ``$XDG_CACHE_HOME/fgsmkit`` or ``~/.cache/fgsmkit``, then
   ``<cache>/<Name>/raw``,

where ``<Name>`` is ``MNIST`` or ``FashionMNIST``, so an existing torchvision download
(``torchvision.datasets.MNIST(root)``) is found by passing the same ``root``. Each file may be
gzip-compressed (``train-images-idx3-ubyte.gz``) or not (``train-images-idx3-ubyte``).

Downloads go to ``<first folder of the list>/<Name>/raw``, where the two datasets (whose files
have the same names) cannot collide. The published SHA-256 digests below are those of
torchvision's dataset definitions (``torchvision/prototype/datasets/_builtin/mnist.py``); the
same files also match the MD5 digests that ``torchvision.datasets.MNIST`` and
``torchvision.datasets.FashionMNIST`` list.

Files found on disk may be uncompressed, recompressed or subsets, so they are not required to
match those digests; their IDX headers and sizes are checked when read. But a gzip file whose
SHA-256 is that of a known file of another dataset (the published MNIST and Fashion-MNIST
files, the embedded MNIST sample) is certain to be that dataset: a folder holding one is
skipped, and named in the error if no other folder holds the split. Uncompressed copies
cannot be told apart this way, so keep those in ``<Name>/raw`` when the two datasets share
a folder. Byte-for-byte copies of the embedded sample's gzip files load as MNIST with a
``UserWarning``: they hold 8,000 / 2,000 digits drawn from the MNIST training set, not the
official splits (uncompressed or recompressed copies are not recognised).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

from torch import Tensor

from .._validation import check_flag, finite_number, user_stacklevel
from ._tensors import as_tensors, check_split
from .download import RemoteFiles, fetch
from .idx import GZIP_MAGIC, read_idx
from .sample import SAMPLE_FILES

MNIST = RemoteFiles(
    name="MNIST",
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    sha256={
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
)
"""MNIST (LeCun, Cortes & Burges; CC BY-SA 3.0): mirrors and SHA-256 of its four files."""

FASHION_MNIST = RemoteFiles(
    name="FashionMNIST",
    mirrors=(
        # The S3 website endpoint has no HTTPS; the SHA-256 check is what vouches for the bytes.
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    sha256={
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
)
"""Fashion-MNIST (Xiao, Rasul & Vollgraf, Zalando Research; MIT): mirrors and SHA-256 of its four files."""

# SHA-256 -> (dataset, file) of the files known to hold one dataset. The two datasets use the same
# file names, so in a flat folder only the content can tell them apart.
KNOWN_FILES: dict[str, tuple[str, str]] = {
    **{digest: (MNIST.name, f"the embedded sample's {name}") for name, digest in SAMPLE_FILES.items()},
    **{digest: (MNIST.name, f"the published {name}") for name, digest in MNIST.sha256.items()},
    **{digest: (FASHION_MNIST.name, f"the published {name}") for name, digest in FASHION_MNIST.sha256.items()},
}
SAMPLE_DIGESTS = frozenset(SAMPLE_FILES.values())

PathLike = str | os.PathLike[str]


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not on disk and could not be downloaded."""


class SampleFilesWarning(UserWarning):
    """:func:`load_mnist` read byte-for-byte copies of the embedded sample's files, from ``folder``.

    They hold digits drawn from the MNIST training set (see :func:`mnist_sample`), not the
    official split: a model trained on full MNIST would be tested on digits it has seen. The
    ``folder`` attribute (a :class:`pathlib.Path`) says where they are.
    """

    def __init__(self, message: str, folder: Path) -> None:
        super().__init__(message)
        self.folder = folder


def load_mnist(
    root: PathLike | None = None,
    split: str = "train",
    download: bool = True,
    *,
    remote: RemoteFiles = MNIST,
    timeout: float = 30.0,
) -> tuple[Tensor, Tensor]:
    """MNIST: 60,000 training or 10,000 test digits, read from disk or downloaded once.

    Parameters
    ----------
    root : path-like, optional
        Folder searched first; a download goes to its torchvision-style subfolder
        (``root/MNIST/raw`` for MNIST). See the module documentation for the full search
        order (``$FGSMKIT_DATA``, the user cache folder, torchvision's layout).
    split : {"train", "test"}
        The official training or test set.
    download : bool
        Download the split's two files when no folder holds them. With False, a missing
        dataset raises at once and nothing touches the network.
    remote : RemoteFiles
        Mirrors and checksums; :data:`MNIST` by default. Replace it to use a private mirror.
    timeout : float
        Seconds a mirror may keep the client waiting for its answer or its next data, and after
        which (counted from its first data) it must average 10 kB/s; one that does not is
        abandoned and the next one tried (a slow but steady download takes as long as it needs).

    Returns
    -------
    images : Tensor
        float32, shape ``(N, 1, 28, 28)``, pixel values in [0, 1] (byte value / 255).
    labels : Tensor
        int64, shape ``(N,)``.

    Raises
    ------
    DatasetNotFoundError
        If no folder holds the files and downloading is off or failed on every mirror; the
        message lists the folders searched, the files to put there, each mirror's failure, and
        any file skipped because it holds another dataset (see the module documentation).
    ValueError
        If a file on disk is truncated or corrupt (the message names it), or ``split`` or
        ``timeout`` is out of range.
    TypeError
        If ``download`` is not True or False, or ``remote`` is not a :class:`RemoteFiles`.

    Examples
    --------
    >>> from fgsmkit.datasets import DatasetNotFoundError, load_mnist, mnist_sample
    >>> try:
    ...     x, y = load_mnist(split="test", download=False)
    ... except DatasetNotFoundError:
    ...     x, y = mnist_sample("test")  # offline: the embedded sample
    >>> x.shape[1:], x.dtype
    (torch.Size([1, 28, 28]), torch.float32)
    """
    return _load(MNIST.name, remote, root, split, download, timeout)


def load_fashion_mnist(
    root: PathLike | None = None,
    split: str = "train",
    download: bool = True,
    *,
    remote: RemoteFiles = FASHION_MNIST,
    timeout: float = 30.0,
) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST: 60,000 training or 10,000 test clothing images, read from disk or downloaded once.

    Same conventions, search order and errors as :func:`load_mnist`; the torchvision-style
    folder is ``<dir>/FashionMNIST/raw`` and the defaults come from :data:`FASHION_MNIST`.

    Parameters
    ----------
    root : path-like, optional
        Folder searched first; a download goes to ``root/FashionMNIST/raw``. See the module
        documentation for the full search order.
    split : {"train", "test"}
        The official training or test set.
    download : bool
        Download the split's two files when no folder holds them. With False, a missing
        dataset raises at once and nothing touches the network.
    remote : RemoteFiles
        Mirrors and checksums; :data:`FASHION_MNIST` by default. Replace it to use a private
        mirror.
    timeout : float
        Seconds a mirror may keep the client waiting, as in :func:`load_mnist`.

    Returns
    -------
    images : Tensor
        float32, shape ``(N, 1, 28, 28)``, pixel values in [0, 1] (byte value / 255).
    labels : Tensor
        int64, shape ``(N,)``, the class indices 0-9.

    Examples
    --------
    >>> from fgsmkit.datasets import FASHION_MNIST, load_fashion_mnist, search_folders
    >>> [folder.as_posix() for folder in search_folders(FASHION_MNIST, "data")[:2]]
    ['data', 'data/FashionMNIST/raw']
    >>> x, y = load_fashion_mnist("data", split="test")  # doctest: +SKIP
    """
    return _load(FASHION_MNIST.name, remote, root, split, download, timeout)


def cache_dir() -> Path:
    """The user cache folder: ``$XDG_CACHE_HOME/fgsmkit``, or ``~/.cache/fgsmkit``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fgsmkit"


def search_folders(remote: RemoteFiles, root: PathLike | None = None) -> list[Path]:
    """The folders searched for ``remote``'s files, in order (see the module documentation).

    Parameters
    ----------
    remote : RemoteFiles
        The dataset; its ``name`` is the torchvision-style subfolder (``<dir>/<name>/raw``)
        searched after each base folder.
    root : path-like, optional
        Folder searched first (``~`` is expanded), as ``root`` of :func:`load_mnist`. Without it
        the search starts at ``$FGSMKIT_DATA`` (when set), then the user cache folder.

    Returns
    -------
    list of pathlib.Path
        Each base folder followed by its ``<name>/raw`` subfolder, without repeats. The folders
        need not exist.

    Examples
    --------
    >>> from fgsmkit.datasets import MNIST, search_folders
    >>> folders = search_folders(MNIST, root="data")
    >>> [folder.as_posix() for folder in folders[:2]]
    ['data', 'data/MNIST/raw']
    """
    bases = [Path(root).expanduser()] if root is not None else []
    if os.environ.get("FGSMKIT_DATA"):
        bases.append(Path(os.environ["FGSMKIT_DATA"]).expanduser())
    bases.append(cache_dir())
    folders: list[Path] = []
    for base in bases:
        for folder in (base, base / remote.name / "raw"):
            if folder not in folders:
                folders.append(folder)
    return folders


def split_files(split: str) -> tuple[str, str]:
    """The (compressed) names of a split's image and label files."""
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


def _load(dataset: str, remote: RemoteFiles, root: PathLike | None, split: str, download: bool,
          timeout: float) -> tuple[Tensor, Tensor]:
    """``split`` of ``dataset`` (the loader's, whatever ``remote`` is called), found or downloaded."""
    split = check_split(split)
    download = check_flag(download, "download")
    if not isinstance(remote, RemoteFiles):
        raise TypeError(f"remote must be a RemoteFiles; got {type(remote).__name__}")
    seconds = finite_number(timeout)
    if seconds is None or seconds <= 0:
        raise ValueError(f"timeout must be a positive, finite number of seconds; got {timeout!r}")
    names = split_files(split)
    folders = search_folders(remote, root)
    found, skipped, is_sample = _find(dataset, remote, folders, names)
    if found is None:
        if not download:
            raise DatasetNotFoundError(_missing_message(remote, split, folders, names, skipped, None))
        found = _download(dataset, remote, split, folders, names, skipped, seconds)
        # A private mirror may serve the sample's files: they are no more the official split.
        is_sample = any(_digest(path) in SAMPLE_DIGESTS for path in found)
    if dataset == MNIST.name and is_sample:
        # A model trained on full MNIST would be tested on digits it has seen.
        count = "8,000" if split == "train" else "2,000"
        warnings.warn(
            SampleFilesWarning(
                f"{found[0].parent} holds fgsmkit's embedded MNIST sample ({count} {split} digits, drawn from the "
                f"MNIST training set), not the official {split} set; load it with "
                f"fgsmkit.datasets.mnist_sample({split!r}) to say so, or put the official files there",
                found[0].parent,
            ),
            stacklevel=user_stacklevel(),
        )
    images, labels = (read_idx(path) for path in found)
    return as_tensors(images, labels, f"{remote.name} {split} files in {found[0].parent}")


def _find(dataset: str, remote: RemoteFiles, folders: list[Path],
          names: tuple[str, ...]) -> tuple[tuple[Path, ...] | None, list[str], bool]:
    """The first folder's files of the split that are not another dataset's, the files skipped, and
    whether the files found are the embedded sample's (each file hashed once for both questions)."""
    skipped: list[str] = []
    for folder in folders:
        paths = [_existing(folder, name) for name in names]
        if all(path is not None for path in paths):
            digests = [_digest(path) for path in paths]  # type: ignore[arg-type]
            foreign = [note for path, digest in zip(paths, digests)
                       if (note := _foreign(dataset, remote, path, digest))]  # type: ignore[arg-type]
            if not foreign:
                return tuple(paths), skipped, not SAMPLE_DIGESTS.isdisjoint(digests)  # type: ignore[arg-type]
            skipped += foreign
    return None, skipped, False


def _foreign(dataset: str, remote: RemoteFiles, path: Path, digest: str | None) -> str | None:
    """Why ``path`` (whose :func:`_digest` is ``digest``) is certainly another dataset's file, or
    None when it may be ``dataset``'s (or one of ``remote``'s own files)."""
    owner = None if digest is None else KNOWN_FILES.get(digest)
    if owner is None or owner[0] == dataset or digest in remote.sha256.values():
        return None
    return f"{path} holds {owner[0]} ({owner[1]}), not {dataset}"


def _digest(path: Path) -> str | None:
    """The SHA-256 of a gzip file, None for any other (every known digest is of a gzip file)."""
    with path.open("rb") as handle:
        if handle.read(2) != GZIP_MAGIC:
            return None
        handle.seek(0)
        return hashlib.sha256(handle.read()).hexdigest()


def _existing(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _download(dataset: str, remote: RemoteFiles, split: str, folders: list[Path], names: tuple[str, ...],
              skipped: list[str], timeout: float) -> tuple[Path, ...]:
    # folders[1] is <first base>/<Name>/raw: root if given, else $FGSMKIT_DATA, else the cache.
    destination = folders[1]
    paths = []
    for name in names:
        existing = _existing(destination, name)
        if existing is not None and _foreign(dataset, remote, existing, _digest(existing)) is None:
            paths.append(existing)
            continue
        try:
            paths.append(fetch(remote, name, destination, timeout=timeout))
        except OSError as error:  # DownloadError, or the folder cannot be created
            raise DatasetNotFoundError(_missing_message(remote, split, folders, names, skipped, error)) from error
    return tuple(paths)


def _missing_message(remote: RemoteFiles, split: str, folders: list[Path], names: tuple[str, ...],
                     skipped: list[str], failure: BaseException | None) -> str:
    lines = [f"{remote.name} {split} split not found."]
    if skipped:
        lines.append("Skipped, because they hold another dataset (same file names, different content):")
        lines += [f"  {note}" for note in skipped]
    if failure is not None:
        lines.append(f"Downloading it failed: {failure}")
    lines.append(
        f"Put {names[0]} and {names[1]} (gzip-compressed, or uncompressed without the .gz) into one of:"
    )
    lines += [f"  {folder}" for folder in folders]
    lines.append("They are published at:")
    lines += [f"  {url}" for name in names for url in remote.urls(name)[:1]]
    if failure is None:
        lines.append("or pass download=True to fetch them.")
    return "\n".join(lines)


__all__ = [
    "FASHION_MNIST",
    "MNIST",
    "DatasetNotFoundError",
    "SampleFilesWarning",
    "cache_dir",
    "load_fashion_mnist",
    "load_mnist",
    "search_folders",
]
