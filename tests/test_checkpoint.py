"""Atomic checkpoints that load with weights_only=True."""

from __future__ import annotations

import argparse
import os
import stat
import threading
import warnings

import numpy as np
import pytest
import torch

import fgsmkit as fk


def test_a_checkpoint_round_trips_and_is_readable_by_the_folder(tmp_path) -> None:
    model = fk.models.SoftmaxRegression(4, 3)
    path = tmp_path / "nested" / "run.pt"
    fk.save_checkpoint({"epoch": 2, "model": model.state_dict(), "history": [0.5, 0.25]}, path)
    state = fk.load_checkpoint(path)
    assert state["epoch"] == 2 and state["history"] == [0.5, 0.25]
    assert all(torch.equal(a, b) for a, b in zip(state["model"].values(), model.state_dict().values()))



@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_checkpoint_gets_the_mode_torch_save_would_give_it(tmp_path, umask) -> None:
    # 0666 less the umask, as for any new file: not mkstemp's owner-only 0600 under umask 022.
    previous = os.umask(umask)
    try:
        fk.save_checkpoint({"epoch": 1}, tmp_path / "ours.pt")
        torch.save({"epoch": 1}, tmp_path / "torch.pt")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in tmp_path.iterdir()}
    assert modes == {"ours.pt": 0o666 & ~umask, "torch.pt": 0o666 & ~umask}


def test_overwriting_a_checkpoint_keeps_its_mode(tmp_path) -> None:
    # The replacement was a new file, 0666 less the umask: a checkpoint made private (0600) became
    # readable by every user, where open() and torch.save keep the mode of the file they overwrite.
    path = tmp_path / "run.pt"
    fk.save_checkpoint({"epoch": 1}, path)
    os.chmod(path, 0o600)
    fk.save_checkpoint({"epoch": 2}, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert fk.load_checkpoint(path) == {"epoch": 2}


def test_a_checkpoint_saved_to_a_symlink_is_written_through_it(tmp_path) -> None:
    # As open() does: a "last.pt" link to the latest epoch's file was replaced by a file of its
    # own, and the file it pointed to kept the old state.
    fk.save_checkpoint({"epoch": 10}, tmp_path / "epoch10.pt")
    (tmp_path / "last.pt").symlink_to("epoch10.pt")
    (tmp_path / "next.pt").symlink_to("epoch11.pt")  # dangling: open() creates the file it names
    fk.save_checkpoint({"epoch": 11}, tmp_path / "last.pt")
    fk.save_checkpoint({"epoch": 12}, tmp_path / "next.pt")
    assert (tmp_path / "last.pt").is_symlink() and (tmp_path / "next.pt").is_symlink()
    assert fk.load_checkpoint(tmp_path / "epoch10.pt") == {"epoch": 11}
    assert fk.load_checkpoint(tmp_path / "epoch11.pt") == {"epoch": 12}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch10.pt", "epoch11.pt", "last.pt", "next.pt"]


def test_a_path_that_is_not_a_regular_file_is_refused_and_left_as_it_was(tmp_path) -> None:
    # A FIFO (or a device node such as /dev/null, for root) was renamed over: the special file
    # became a regular one.
    fifo, folder = tmp_path / "pipe", tmp_path / "folder"
    os.mkfifo(fifo)
    folder.mkdir()
    (tmp_path / "link").symlink_to("pipe")
    for path in (fifo, tmp_path / "link"):
        with pytest.raises(ValueError, match=r"path .*pipe' is a FIFO, not a regular file: fgsmkit writes a new "
                                             r"file and renames it over the old one\. Pass the path of a regular file"):
            fk.save_checkpoint({"epoch": 1}, path)
        with pytest.raises(ValueError, match=r"is a FIFO, not a regular file"):
            fk.datasets.write_idx(path, np.zeros((2, 3), dtype=np.uint8))
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    with pytest.raises(IsADirectoryError, match=r"folder"):
        fk.save_checkpoint({"epoch": 1}, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "link", "pipe"]
    assert not any(folder.iterdir())


@pytest.mark.parametrize("bad, message", [
    ({"best": np.float64(0.97)}, "it holds .*scalar"),  # pickles, but weights_only cannot read it
    ({"args": argparse.Namespace(lr=0.1)}, "it holds .*Namespace"),
    ({"score": lambda x: x}, "cannot be saved at all"),  # does not pickle: pickle's own error before
    ({"lock": threading.Lock()}, "cannot be saved at all"),
])
def test_state_that_is_not_plain_data_is_refused_before_anything_is_replaced(tmp_path, bad, message):
    path = tmp_path / "run.pt"
    fk.save_checkpoint({"epoch": 1}, path)
    with pytest.raises(TypeError, match=f"plain data only.*{message}"):
        fk.save_checkpoint({"epoch": 2, **bad}, path)
    assert fk.load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temporary file left behind


def test_a_file_load_checkpoint_cannot_read_is_named_with_what_is_wrong(tmp_path) -> None:
    # torch's own errors named no file: a bare EOFError, KeyError: 101, or advice to retry with
    # weights_only=False for a file that was simply damaged.
    noise = torch.randint(0, 256, (1000,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for name, content in (("empty.pt", b""), ("text.pt", b"epoch 3\n"), ("noise.pt", bytes(range(256)) * 8),
                          ("random.pt", noise.numpy().tobytes())):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf"{name} cannot be read as a checkpoint: it is damaged, or not a torch.save") as caught:
            fk.load_checkpoint(tmp_path / name)
        # Not torch's advice to retry with weights_only=False, which a damaged file does not need.
        assert "weights_only" not in str(caught.value)
    good = tmp_path / "good.pt"
    fk.save_checkpoint({"epoch": 1, "w": torch.ones(1000)}, good)
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"truncated.pt cannot be read as a checkpoint"):
        fk.load_checkpoint(tmp_path / "truncated.pt")
    objects = tmp_path / "objects.pt"
    torch.save({"args": argparse.Namespace(lr=0.1)}, objects)  # written by other code
    with pytest.raises(ValueError, match=r"objects.pt holds objects other than plain data.*weights_only=False"):
        fk.load_checkpoint(objects)
    with pytest.raises(FileNotFoundError):
        fk.load_checkpoint(tmp_path / "missing.pt")


def test_a_good_checkpoint_is_not_called_damaged_when_torch_refuses_for_another_reason(tmp_path, monkeypatch) -> None:
    # Loaded to a CUDA device on a machine without one, it was reported as damaged (and the
    # reproduction would have retrained over it).
    path = tmp_path / "good.pt"
    fk.save_checkpoint({"w": torch.ones(3)}, path)

    def refuses(*args, **kwargs):
        raise RuntimeError("Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False.")

    monkeypatch.setattr(torch, "load", refuses)
    with pytest.raises(RuntimeError, match="Attempting to deserialize object on a CUDA device"):
        fk.load_checkpoint(path, map_location="cuda")


def test_files_of_other_formats_are_called_damaged_not_a_runtime_error(tmp_path) -> None:
    # Old-style pickles and NumPy archives reached torch's zip reader, whose RuntimeError
    # ("Invalid magic number", "inline_container") escaped the documented ValueError, as did
    # torch's refusal of a TorchScript archive under weights_only.
    import pickle

    with open(tmp_path / "pickled.pt", "wb") as handle:
        pickle.dump({"epoch": 3}, handle, protocol=2)
    np.savez(tmp_path / "arrays.npz", w=np.ones(3))
    with warnings.catch_warnings():  # TorchScript is deprecated; its archives still exist
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pt")
    for name in ("pickled.pt", "arrays.npz"):
        with pytest.raises(ValueError, match=rf"{name} cannot be read as a checkpoint"):
            fk.load_checkpoint(tmp_path / name)
    with pytest.warns(UserWarning, match="TorchScript"), \
            pytest.raises(ValueError, match="scripted.pt is a TorchScript archive, not a checkpoint; load it with torch.jit"):
        fk.load_checkpoint(tmp_path / "scripted.pt")


def test_a_checkpoint_whose_tensor_bytes_were_changed_is_damaged(tmp_path) -> None:
    # torch.load does not check the archive's CRCs: a flipped byte in a tensor loaded silently,
    # and a reproduction resumed from it would have evaluated a model nobody trained.
    path = tmp_path / "run.pt"
    fk.save_checkpoint({"w": torch.zeros(1000)}, path)
    content = bytearray(path.read_bytes())
    start = content.index(bytes(400))  # inside the tensor's 4000 zero bytes
    content[start + 200] = 1
    path.write_bytes(bytes(content))
    with pytest.raises(ValueError, match=r"run.pt cannot be read as a checkpoint: it is damaged.*CRC"):
        fk.load_checkpoint(path)


def test_a_checkpoint_saved_without_checksums_loads(tmp_path) -> None:
    # torch can be told to skip the checksums (every stored CRC is then 0), and torch.load reads
    # such files; the CRC check called them damaged, and a reproduction would have retrained.
    from torch.utils.serialization import config

    path = tmp_path / "run.pt"
    with config.patch({"save.compute_crc32": False}):  # monkeypatch's undo deletes torch's setting
        fk.save_checkpoint({"w": torch.arange(10.0)}, path)
    assert torch.equal(fk.load_checkpoint(path)["w"], torch.arange(10.0))
    assert config.save.compute_crc32


def test_a_damaged_compressed_member_is_called_damaged(tmp_path) -> None:
    # A checkpoint re-zipped with deflate (by an archiver, say) and then damaged raised zlib.error.
    import zipfile

    path = tmp_path / "run.pt"
    fk.save_checkpoint({"w": torch.zeros(1000)}, path)
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():
            target.writestr(entry.filename, source.read(entry))
    assert torch.equal(fk.load_checkpoint(deflated)["w"], torch.zeros(1000))  # torch reads deflate too
    content = bytearray(deflated.read_bytes())
    with zipfile.ZipFile(deflated) as archive:
        entry = archive.getinfo(next(name for name in archive.namelist() if name.endswith("data/0")))
    start = entry.header_offset + 30 + len(entry.filename) + len(entry.extra)
    content[start + entry.compress_size // 2] ^= 0xFF
    deflated.write_bytes(bytes(content))
    with pytest.raises(ValueError, match=r"deflated.pt cannot be read as a checkpoint: it is damaged"):
        fk.load_checkpoint(deflated)


def _flipped(content: bytes, offset: int) -> bytes:
    return content[:offset] + bytes([content[offset] ^ 1]) + content[offset + 1:]


@pytest.mark.parametrize("where", ["an entry's flags", "the zip64 locator's disk number",
                                   "the zip64 end record's offset"])
def test_a_flipped_bit_in_the_archive_directory_is_called_damaged(tmp_path, where) -> None:
    # One flipped bit escaped the documented ValueError: the flags bit that marks an entry
    # encrypted gave zipfile's RuntimeError ("password required"), a disk number BadZipFile, an
    # offset a seek before the start (OSError EINVAL); the reproduction's resume crashed on them.
    path = tmp_path / "run.pt"
    fk.save_checkpoint({"epoch": 3, "model": fk.models.SoftmaxRegression(4, 3).state_dict()}, path)
    content = path.read_bytes()
    offset = {"an entry's flags": content.index(b"PK\x01\x02") + 8,
              "the zip64 locator's disk number": content.rindex(b"PK\x06\x07") + 4,
              "the zip64 end record's offset": content.rindex(b"PK\x06\x06") + 48 + 7}[where]
    path.write_bytes(_flipped(content, offset))
    with pytest.raises(ValueError, match=r"run.pt cannot be read as a checkpoint: it is damaged"):
        fk.load_checkpoint(path)


def test_a_cut_old_style_file_is_called_damaged_not_said_to_hold_objects(tmp_path) -> None:
    # Files torch.save wrote before its zip format (torch < 1.6) still load. Cut short, they raised
    # torch's RuntimeError ("unexpected EOF") or struct.error, or, where the cut left a garbled
    # global ("GLOBAL ."), were said to hold objects, with advice to load them with weights_only=False.
    path = tmp_path / "old.pt"
    torch.save({"w": torch.ones(2), "epoch": 3}, path, _use_new_zipfile_serialization=False)
    content = path.read_bytes()
    assert fk.load_checkpoint(path)["epoch"] == 3
    for length in range(len(content)):
        path.write_bytes(content[:length])
        with pytest.raises(ValueError, match=r"old.pt cannot be read as a checkpoint: it is damaged") as caught:
            fk.load_checkpoint(path)
        assert "weights_only" not in str(caught.value) and "safe_globals" not in str(caught.value), length


class _Shell:
    def __reduce__(self):
        return os.system, ("true",)


def test_a_file_that_would_run_a_command_is_said_to_hold_objects_and_names_them(tmp_path) -> None:
    # torch blocks os.system with a message of its own, which was taken for damage.
    path = tmp_path / "shell.pt"
    torch.save({"x": _Shell()}, path)
    with pytest.raises(ValueError, match=r"shell.pt holds objects other than plain data \((posix|nt)\.system\)"):
        fk.load_checkpoint(path)
    torch.save({"args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ValueError, match=r"shell.pt holds objects other than plain data \(argparse\.Namespace\)"):
        fk.load_checkpoint(path)
