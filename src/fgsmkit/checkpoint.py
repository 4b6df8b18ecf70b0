"""Checkpoints that survive a kill: written atomically, read without running code from the file."""

from __future__ import annotations

import errno
import os
import pickle
import re
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from ._atomic import replaced_atomically


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``state`` to ``path`` atomically.

    The state is written to a temporary file beside ``path``, flushed to disk, then renamed over
    ``path``: a process killed at any moment leaves either the old checkpoint or the new one,
    never a truncated file.

    Parameters
    ----------
    state : dict
        Plain data only (tensors, numbers, strings, lists, dicts, state dicts), so that
        :func:`load_checkpoint` can read it with ``weights_only=True``; anything else raises a
        ``TypeError`` before ``path`` is touched.
    path : path-like
        Destination file; its folder is created if missing. As with ``open``, a symlink is
        written through and a file that exists keeps its permission bits. A path naming anything
        but a regular file (a FIFO, a device such as ``/dev/null``) raises a ``ValueError``.

    Examples
    --------
    >>> import tempfile, os, torch, fgsmkit as fk
    >>> path = os.path.join(tempfile.mkdtemp(), "run.pt")
    >>> fk.save_checkpoint({"epoch": 3, "w": torch.ones(2)}, path)
    >>> fk.load_checkpoint(path)["epoch"]
    3
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as (handle, name):
        try:
            torch.save(state, handle)
        except (pickle.PicklingError, AttributeError, TypeError) as error:  # what pickle raises, by version
            raise TypeError(f"{PLAIN_DATA_ONLY}; it holds an object that cannot be saved at all ({error})") from error
        handle.flush()
        _check_loadable(name)


def _check_loadable(file: str) -> None:
    """Refuse, before it replaces anything, a checkpoint that :func:`load_checkpoint` could not read.

    Reading it back memory-mapped costs little: the tensors' data is not read.
    """
    try:
        torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise TypeError(
            f"{PLAIN_DATA_ONLY}; it holds {_refused_global(error) or 'other objects'}. "
            "Convert them first (float(v) for a NumPy scalar, vars(args) for an argparse.Namespace)"
        ) from error


def _refused_global(error: pickle.UnpicklingError) -> str | None:
    """The class or function the weights-only unpickler refused to load, if it refused one.

    None where what it read is no name: ``GLOBAL .``, or a name cut short (``torch._utils._``)
    that the module, if loaded, lacks. Those are the bytes of a damaged file, not objects.
    """
    found = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module \S+ is blocked)", str(error))
    if not found or not all(part.isidentifier() for part in found[1].split(".")):
        return None
    module, _, name = found[1].rpartition(".")
    loaded = sys.modules.get(module or "builtins")  # vars, not getattr: no module code runs
    if loaded is not None and name not in vars(loaded):
        return None
    return found[1]


PLAIN_DATA_ONLY = ("state must hold plain data only (tensors, numbers, strings, lists, dicts, state dicts), "
                   "which load_checkpoint reads with weights_only=True")


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with ``weights_only=True``.

    ``weights_only`` refuses pickled code, so a checkpoint file from elsewhere cannot run
    anything when it is loaded.

    Parameters
    ----------
    path : path-like
        The checkpoint file.
    map_location : str, torch.device or None
        Where to put the tensors (default: CPU), as in :func:`torch.load`.

    Returns
    -------
    dict
        The state that was saved.

    Raises
    ------
    ValueError
        If the file is damaged, not a checkpoint, or holds objects other than plain data (named
        in the message). Files in ``torch.save``'s format before PyTorch 1.6 (or saved with
        ``_use_new_zipfile_serialization=False``) load too, but hold no checksums: one cut short
        is called damaged, while changed bytes inside one may load, or raise PyTorch's own error.

    Examples
    --------
    >>> import tempfile, os, torch, fgsmkit as fk
    >>> model = fk.models.SoftmaxRegression(4, 3)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.pt")
    >>> fk.save_checkpoint({"model": model.state_dict()}, path)
    >>> model.load_state_dict(fk.load_checkpoint(path)["model"])
    <All keys matched successfully>
    """
    path = Path(path)
    _check_archive(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_global(error)
        if refused:  # a real checkpoint, from code that saved objects
            raise ValueError(
                f"{path} holds objects other than plain data ({refused}), which load_checkpoint does not "
                "run; load it with torch.load(path, weights_only=False) only if you trust where it came from"
            ) from error
        raise _damaged(path, error) from error
    except (EOFError, IndexError, KeyError, UnicodeDecodeError, struct.error) as error:  # empty, text, cut, foreign
        raise _damaged(path, error) from error
    except OSError as error:
        if error.errno != errno.EINVAL:  # missing, a folder, permissions: about the path, not the content
            raise
        raise _damaged(path, error) from error  # a seek past the end of a truncated archive
    except RuntimeError as error:  # also raised for good files (a CUDA map_location without CUDA)
        if "TorchScript archives" in str(error):
            raise ValueError(f"{path} is a TorchScript archive, not a checkpoint; load it with torch.jit.load") from error
        # Signs of bytes that are not a torch.save archive: torch's zip reader, old-style pickles
        # ("Invalid magic number") and other zip files (a NumPy .npz, "inline_container"); and of a
        # damaged old-style torch.save file, which has no checksums to check.
        signs = ("PytorchStreamReader", "legacy .tar format", "Invalid magic number", "inline_container",
                 "might be corrupted", "storage has wrong byte size")
        if not any(sign in str(error) for sign in signs):
            raise
        raise _damaged(path, error) from error


def _check_archive(path: Path) -> None:
    """Refuse a zip archive (what torch.save writes) whose stored checksums do not match its bytes.

    torch.load does not check them: a changed byte in a tensor would load as a wrong weight.
    Reading the file once more costs milliseconds for the models here. Entries stored with a
    checksum of 0 are not checked: torch writes 0 when told to skip checksums
    (``torch.utils.serialization.config.save.compute_crc32 = False``). Other files are left to
    torch.load, which says what is wrong with them.
    """
    with open(path, "rb") as file:  # a missing file or a folder raises here, as torch.load would
        try:
            if not zipfile.is_zipfile(file):
                return
            with zipfile.ZipFile(file) as archive:
                for entry in archive.infolist():
                    if entry.CRC != 0:
                        with archive.open(entry) as member:  # raises BadZipFile at the end on a mismatch
                            while member.read(1 << 20):
                                pass
        # Bad CRC, cut, bad deflate; RuntimeError where a flipped flag marks an entry encrypted.
        except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError) as error:
            raise _damaged(path, error) from error
        except OSError as error:
            if error.errno != errno.EINVAL:  # a disk error, say: not about the bytes
                raise
            raise _damaged(path, error) from error  # a seek to a damaged offset before the start


def _damaged(path: Path, error: BaseException) -> ValueError:
    return ValueError(
        f"{path} cannot be read as a checkpoint: it is damaged, or not a torch.save file "
        f"({type(error).__name__}: {_cause(error)})"
    )


def _cause(error: BaseException) -> str:
    """The first line of what went wrong; for the weights-only unpickler, its own reason, without
    the advice around it to retry with weights_only=False or to allowlist the global it read
    (wrong for a damaged file)."""
    message = str(error)
    _, found, reason = message.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (reason if found else message).splitlines() if line.strip()]
    return lines[0].partition(" Please use")[0] if lines else "no details"
