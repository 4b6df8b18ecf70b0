"""Fetching dataset files: mirrors tried in turn, SHA-256 checked, files written atomically.

A file is streamed into a temporary file in its destination folder, its SHA-256 is compared with
the published value, and only then is it renamed to its final name (``os.replace``, atomic on
one file system). A download that is cut off, times out or arrives damaged leaves nothing behind
that a later run could mistake for the real file, nor the folders made for it.
"""

from __future__ import annotations

import hashlib
import http.client
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from .._atomic import replaced_atomically

_CHUNK = 1 << 20
# A mirror slower than this on average, once it has had ``timeout`` seconds, is trickling: the
# files take minutes at worst at this rate (MNIST's largest, 9.9 MB, 16 minutes).
_SLOWEST_BYTES_PER_SECOND = 10_000


@dataclass(frozen=True)
class RemoteFiles:
    """Where a dataset's files can be downloaded and what their bytes must hash to.

    Parameters
    ----------
    name : str
        The dataset's name, also the torchvision-style folder it is stored in (``<dir>/<name>/raw``).
    mirrors : tuple of str
        Base URLs, tried in order; a file's URL is the base URL followed by its name.
    sha256 : mapping of str to str
        File name -> expected SHA-256 (hex) of the file as served.

    Raises
    ------
    TypeError
        If ``name`` is not a str, a mirror is not a str, or ``sha256`` is not a mapping with
        str keys (a list of pairs must be passed as ``dict(pairs)``).
    ValueError
        If ``mirrors`` is empty or a single string, or a digest is not 64 lowercase hex
        characters.

    Examples
    --------
    Point the MNIST loader at a private mirror holding the same files:

    >>> import dataclasses
    >>> from fgsmkit.datasets import MNIST
    >>> mine = dataclasses.replace(MNIST, mirrors=("https://example.org/mnist/",))
    >>> mine.urls("t10k-labels-idx1-ubyte.gz")
    ('https://example.org/mnist/t10k-labels-idx1-ubyte.gz',)
    """

    name: str
    mirrors: tuple[str, ...]
    sha256: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Checked here, so that a wrong field fails where it was written, not mid-download.
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str (the dataset's folder name); got {self.name!r}")
        object.__setattr__(self, "mirrors", _base_urls(self.mirrors))
        object.__setattr__(self, "sha256", _digests(self.sha256))

    def urls(self, filename: str) -> tuple[str, ...]:
        """The URL of ``filename`` on each mirror, in the order they are tried."""
        return tuple(mirror.rstrip("/") + "/" + filename for mirror in self.mirrors)


def _base_urls(mirrors: object) -> tuple[str, ...]:
    if isinstance(mirrors, str) or not isinstance(mirrors, Iterable) or not mirrors:
        raise ValueError(f"mirrors must be a non-empty tuple of base URLs; got {mirrors!r}")
    mirrors = tuple(mirrors)
    for index, mirror in enumerate(mirrors):
        if not isinstance(mirror, str):
            raise TypeError(f"mirrors[{index}] must be a base URL (str); got {mirror!r}")
    return mirrors


def _digests(sha256: object) -> Mapping[str, str]:
    if not isinstance(sha256, Mapping):
        raise TypeError(
            f"sha256 must be a mapping of file name to SHA-256 digest, e.g. a dict; got {type(sha256).__name__}"
        )
    for filename, digest in sha256.items():
        if not isinstance(filename, str):
            raise TypeError(f"sha256 keys must be file names (str); got {filename!r}")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise ValueError(
                f"sha256[{filename!r}] must be a SHA-256 digest (64 lowercase hex characters); got {digest!r}"
            )
    return MappingProxyType(dict(sha256))


class DownloadError(OSError):
    """No mirror delivered a file with the expected checksum."""


def fetch(remote: RemoteFiles, filename: str, folder: Path, *, timeout: float) -> Path:
    """Download ``filename`` into ``folder`` from the first mirror that serves it intact.

    A mirror is abandoned, and the next one tried, when a wait for its answer or its data lasts
    longer than ``timeout`` seconds, or when ``timeout`` seconds after its first data it has
    delivered less than 10 kB/s on average since then (a trickle that would never finish); a
    slow but steady download takes as long as it needs.

    Raises
    ------
    DownloadError
        Listing each mirror and why it failed (HTTP error, timeout, cut-off or checksum mismatch).
    """
    if filename not in remote.sha256:
        # Nothing is downloaded unchecked.
        raise ValueError(f"{remote.name} has no SHA-256 for {filename!r}; add it to RemoteFiles.sha256")
    made = _missing_folders(folder)
    folder.mkdir(parents=True, exist_ok=True)
    failures = []
    try:
        for url in remote.urls(filename):
            try:
                return _fetch_one(url, folder / filename, remote.sha256[filename], timeout)
            except (OSError, http.client.HTTPException, ValueError) as error:
                failures.append(f"  {url}: {error or type(error).__name__}")
    finally:
        # The folders made for this file, where it did not arrive; rmdir keeps one that holds anything.
        for made_folder in made:
            try:
                made_folder.rmdir()
            except OSError:
                break
    raise DownloadError(f"could not download {filename} from any mirror:\n" + "\n".join(failures))


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _fetch_one(url: str, destination: Path, expected: str, timeout: float) -> Path:
    import urllib.request  # imported here: it pulls in http and ssl, which loading never needs

    digest = hashlib.sha256()
    with replaced_atomically(destination) as (out, _), urllib.request.urlopen(url, timeout=timeout) as response:
        announced = response.headers.get("Content-Length")
        received = 0
        # The rate is measured from the first data on: a mirror slow to answer but fast after
        # is not trickling (the wait for its answer is bounded by the socket timeout).
        first: tuple[float, int] | None = None  # when the first data came, and how much
        # read1, not read: read(n) waits for all n bytes, so a mirror trickling bytes (each socket
        # read within timeout) would never reach the rate check.
        while chunk := response.read1(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            received += len(chunk)
            if first is None:
                first = time.monotonic(), received
                continue
            elapsed, since = time.monotonic() - first[0], received - first[1]
            if elapsed > timeout and since < _SLOWEST_BYTES_PER_SECOND * elapsed:
                raise TimeoutError(
                    f"under {_SLOWEST_BYTES_PER_SECOND // 1000} kB/s after timeout={timeout:g} s "
                    f"({since} bytes in {elapsed:.1f} s since the first data); the next mirror is tried"
                )
        # read(n) returns b"" when the connection drops early instead of raising.
        if announced is not None and announced.isdigit() and received < int(announced):
            raise ValueError(f"download cut off after {received} of {announced} bytes")
        if digest.hexdigest() != expected:
            raise ValueError(f"checksum mismatch (SHA-256 {digest.hexdigest()}, expected {expected})")
    return destination
