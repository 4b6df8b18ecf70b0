"""Files that are replaced whole or not at all: written beside the target, then renamed over it."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


_KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
          stat.S_IFSOCK: "socket"}


@contextlib.contextmanager
def replaced_atomically(path: Path) -> Iterator[tuple[BinaryIO, str]]:
    """Yield a new file beside ``path``, open for writing, and its name.

    When the block ends normally the file is flushed to disk and renamed over ``path``, so that a
    process killed at any moment leaves the old file or the new one, never a truncated one. When
    the block raises (a failed check, say) the new file is removed and ``path`` is untouched. The
    block may read the file back by name once it has flushed it.

    As with ``open``, a symlink is written through (the file it names is replaced, the link
    kept), a file that exists keeps its permission bits, and a new one gets mode 0666 less the
    umask (``tempfile.mkstemp``'s 0600 would hide it from the folder's other users). Unlike
    ``open``, the replacement is a new file: it belongs to the writer, and other hard links to
    the old one keep the old content, and a path naming anything but a regular file (a FIFO, a
    device such as ``/dev/null``, a folder) is refused.
    """
    path = Path(os.path.realpath(path))  # the file a symlink names, which open() would write
    try:
        found = os.stat(path).st_mode
    except FileNotFoundError:
        found = None
    if found is not None and stat.S_ISDIR(found):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if found is not None and not stat.S_ISREG(found):
        # Renamed over, a FIFO or a device node (/dev/null, for root) would become a regular file.
        raise ValueError(
            f"path {str(path)!r} is a {_KINDS.get(stat.S_IFMT(found), 'special file')}, not a regular file: "
            "fgsmkit writes a new file and renames it over the old one. Pass the path of a regular file"
        )
    mode = None if found is None else stat.S_IMODE(found)
    while True:
        name = str(path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:  # 64 random bits: practically never
            continue
        except FileNotFoundError:  # named as open(path) names it, not by the temporary name
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path)) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)  # the umask applied to os.open's mode, not to this
            yield handle, name
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)
