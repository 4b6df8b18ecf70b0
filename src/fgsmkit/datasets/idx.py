"""The IDX file format shared by MNIST, Fashion-MNIST, KMNIST and EMNIST.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the values in C order, big-endian. The files are
usually distributed gzip-compressed; :func:`read_idx` tells the two apart by their first bytes,
not by the file name.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Protocol, Union

import numpy as np

from .._atomic import replaced_atomically
from .._validation import check_flag


class SupportsReadBytes(Protocol):
    """A file object open for binary reading, such as ``open(path, "rb")``, ``gzip.open(...)``,
    ``ZipFile.open(...)`` or ``io.BytesIO``: :func:`read_idx` calls its ``read()``."""

    def read(self) -> bytes | bytearray | memoryview: ...


class SupportsWriteBytes(Protocol):
    """A file object open for binary writing (:func:`write_idx` calls its ``write(data)``)."""

    def write(self, data: bytes, /) -> object: ...


_Path = Union[str, bytes, "os.PathLike[str]"]
_PATHS = (str, bytes, os.PathLike)

# Type code -> big-endian dtype, from the format's definition (0x0A is unassigned).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
GZIP_MAGIC = b"\x1f\x8b"


def read_idx(source: _Path | SupportsReadBytes) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw, into a NumPy array.

    Parameters
    ----------
    source : path-like or binary file object
        The file to read: a ``str``, ``bytes`` or ``os.PathLike`` path, or a file object
        opened in binary mode (``"rb"``; anything whose ``read()`` returns bytes, such as
        ``gzip.open(...)`` or ``ZipFile.open(...)``). Compression is detected from the gzip
        magic bytes, so a raw file named ``*.gz`` (or a compressed one without the suffix) is
        read correctly.

    Returns
    -------
    numpy.ndarray
        A new, writable array in native byte order with the file's shape and dtype
        (``uint8``, ``int8``, ``int16``, ``int32``, ``float32`` or ``float64``).

    Raises
    ------
    TypeError
        If ``source`` is neither a path nor a file object, or the file is open in text mode.
    ValueError
        If the file is truncated, corrupt, not IDX, holds more or fewer values than its
        header announces, or has more dimensions than a NumPy array can (64; 32 before NumPy 2);
        also where a file object that decompresses as it reads (``gzip.open``, ``ZipFile.open``)
        finds its file cut or damaged. The message names the file.

    Examples
    --------
    >>> import io, numpy as np
    >>> from fgsmkit.datasets import read_idx, write_idx
    >>> buffer = io.BytesIO()
    >>> write_idx(buffer, np.arange(6, dtype=np.uint8).reshape(2, 3))
    >>> _ = buffer.seek(0)
    >>> read_idx(buffer)
    array([[0, 1, 2],
           [3, 4, 5]], dtype=uint8)
    """
    name = _describe(source)
    data = _read_bytes(source, name)
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(
                f"{name} is a damaged or truncated gzip file ({error}); delete it and fetch it again"
            ) from None
    return _parse(data, name)


def _read_bytes(source: object, name: str) -> bytes:
    if isinstance(source, bytes) and (source[:2] == GZIP_MAGIC or b"\x00" in source):
        # A path never holds a NUL byte, which an IDX file's contents start with (and gzip's
        # start with its magic).
        raise TypeError("source holds a file's contents, not a path; wrap them: read_idx(io.BytesIO(data))")
    if isinstance(source, _PATHS):
        with open(source, "rb") as handle:
            return handle.read()
    if not callable(getattr(source, "read", None)):
        hint = "; for a file descriptor use os.fdopen(fd, 'rb')" if type(source) is int else ""
        raise TypeError(f"source must be a path or a binary file object; got {type(source).__name__}{hint}")
    try:
        data = source.read()  # type: ignore[attr-defined]
    except (EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile) as error:
        # Raised by the file objects that decompress as they read (gzip.open, ZipFile.open).
        raise ValueError(f"{name} is damaged or truncated ({error}); delete it and fetch it again") from None
    except UnicodeDecodeError:  # open(path) with an encoding that cannot decode the bytes
        raise TypeError(f"{name} is open in text mode (its bytes are not text); open it with 'rb'") from None
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} is open in text mode (read() gave {type(data).__name__}); open it with 'rb'")
    return bytes(data)


def _parse(data: bytes, name: str) -> np.ndarray:
    if len(data) < 4:
        raise ValueError(f"{name} is too short to be an IDX file ({len(data)} bytes; the header alone has at least 4)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise ValueError(f"{name} is not an IDX file: its first two bytes are {data[:2]!r}, not two zero bytes")
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise ValueError(f"{name} has unknown IDX type code 0x{code:02X}; the format defines {known}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{name} is truncated inside its header: {ndim} dimensions need {header} bytes, got {len(data)}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        state = "truncated" if actual < expected else "longer than its header says"
        raise ValueError(
            f"{name} is {state}: shape {shape} of {dtype.newbyteorder('=').name} needs {expected} bytes of "
            f"values, the file holds {actual}; delete it and fetch it again"
        )
    values = np.frombuffer(data, dtype=dtype, offset=header)
    try:
        values = values.reshape(shape)
    except ValueError as error:  # IDX allows 255 dimensions, NumPy fewer; the sizes were checked above
        raise ValueError(f"{name} has {ndim} dimensions, more than a NumPy array can hold ({error})") from None
    return values.astype(dtype.newbyteorder("="))


def write_idx(target: _Path | SupportsWriteBytes, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file.

    Parameters
    ----------
    target : path-like or binary file object
        Where to write: a ``str``, ``bytes`` or ``os.PathLike`` path, or a file object opened
        in binary mode (anything with a ``write(data)`` that takes bytes). A path is replaced
        whole or not at all: the file is written beside it, then renamed over it, so a write
        cut short leaves the old file.
    array : numpy.ndarray
        Values of dtype ``uint8``, ``int8``, ``int16``, ``int32``, ``float32`` or ``float64``,
        with fewer than 2**32 entries along each dimension. (IDX allows 255 dimensions; a
        NumPy array has at most 64, or 32 before NumPy 2, so every array fits.)
    compress : bool, optional
        Gzip the output. None (the default) compresses when ``target`` is a path ending in
        ``.gz`` (in any case) and writes raw IDX otherwise.

    Raises
    ------
    TypeError
        If ``array``'s dtype is not one of the above, or ``compress`` is not True, False or None.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from fgsmkit.datasets import read_idx, write_idx
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte.gz")
    >>> write_idx(path, np.array([3, 1, 4], dtype=np.uint8))
    >>> read_idx(path)
    array([3, 1, 4], dtype=uint8)
    """
    if not isinstance(target, _PATHS) and not callable(getattr(target, "write", None)):
        hint = "; for a file descriptor use os.fdopen(fd, 'wb')" if type(target) is int else ""
        raise TypeError(f"target must be a path or a binary file object; got {type(target).__name__}{hint}")
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        supported = ", ".join(sorted(d.name for d in _CODES))
        raise TypeError(f"array has dtype {array.dtype}, which IDX cannot store; convert it to one of {supported}")
    if any(size >= 2**32 for size in array.shape):
        raise ValueError(f"array of shape {array.shape} does not fit IDX (each dimension must be < 2**32)")
    header = struct.pack(f">HBB{array.ndim}I", 0, _CODES[native], array.ndim, *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[_CODES[native]]).tobytes()
    if compress is None:
        compress = isinstance(target, _PATHS) and os.fsdecode(target).lower().endswith(".gz")
    compress = check_flag(compress, "compress")
    if compress:
        payload = gzip.compress(payload, mtime=0)
    if isinstance(target, _PATHS):
        # Whole or not at all: a write cut short (a full disk, a kill) keeps the old file.
        with replaced_atomically(Path(os.fsdecode(target))) as (handle, _):
            handle.write(payload)
    else:
        target.write(payload)


def _describe(source: object) -> str:
    if isinstance(source, _PATHS):
        return f"IDX file {os.fsdecode(source)!r}"
    name = getattr(source, "name", None)
    return f"IDX file {name!r}" if isinstance(name, str) and name else "IDX input"  # gzip over a buffer: ""


__all__ = ["IDX_DTYPES", "read_idx", "write_idx"]
