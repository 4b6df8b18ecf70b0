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
import zlib
from typing import BinaryIO, Union

import numpy as np

from .._validation import check_flag

PathOrFile = Union[str, "os.PathLike[str]", BinaryIO]

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


def read_idx(source: PathOrFile) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw, into a NumPy array.

    Parameters
    ----------
    source : path-like or binary file object
        The file to read. Compression is detected from the gzip magic bytes, so a raw file
        named ``*.gz`` (or a compressed one without the suffix) is read correctly.

    Returns
    -------
    numpy.ndarray
        A new, writable array in native byte order with the file's shape and dtype
        (``uint8``, ``int8``, ``int16``, ``int32``, ``float32`` or ``float64``).

    Raises
    ------
    ValueError
        If the file is truncated, corrupt, not IDX, or holds more or fewer values than its
        header announces. The message names the file.

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
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as handle:
            data = handle.read()
    else:
        data = source.read()
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(
                f"{name} is a damaged or truncated gzip file ({error}); delete it and fetch it again"
            ) from None
    return _parse(data, name)


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
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(target: PathOrFile, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file.

    Parameters
    ----------
    target : path-like or binary file object
        Where to write.
    array : numpy.ndarray
        Values of dtype ``uint8``, ``int8``, ``int16``, ``int32``, ``float32`` or ``float64``,
        with at most 255 dimensions of fewer than 2**32 entries each.
    compress : bool, optional
        Gzip the output. None (the default) compresses when ``target`` is a path ending in
        ``.gz`` and writes raw IDX otherwise.

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
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        supported = ", ".join(sorted(d.name for d in _CODES))
        raise TypeError(f"array has dtype {array.dtype}, which IDX cannot store; convert it to one of {supported}")
    if array.ndim > 255 or any(size >= 2**32 for size in array.shape):
        raise ValueError(f"array of shape {array.shape} does not fit IDX (at most 255 dimensions, each < 2**32)")
    header = struct.pack(f">HBB{array.ndim}I", 0, _CODES[native], array.ndim, *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[_CODES[native]]).tobytes()
    if compress is None:
        compress = isinstance(target, (str, os.PathLike)) and os.fspath(target).endswith(".gz")
    compress = check_flag(compress, "compress")
    if compress:
        payload = gzip.compress(payload, mtime=0)
    if isinstance(target, (str, os.PathLike)):
        with open(target, "wb") as handle:
            handle.write(payload)
    else:
        target.write(payload)


def _describe(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"IDX file {os.fspath(source)!r}"
    name = getattr(source, "name", None)
    return f"IDX file {name!r}" if isinstance(name, str) else "IDX input"


__all__ = ["IDX_DTYPES", "read_idx", "write_idx"]
