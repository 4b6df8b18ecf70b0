"""Atomic checkpoints that load with weights_only=True."""

from __future__ import annotations

import argparse
import os
import stat
import threading

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


@pytest.mark.parametrize("unreadable", [
    {"best": np.float64(0.97)},
    {"args": argparse.Namespace(lr=0.1)},
])
def test_state_that_load_checkpoint_could_not_read_is_refused_before_anything_is_replaced(tmp_path, unreadable):
    path = tmp_path / "run.pt"
    fk.save_checkpoint({"epoch": 1}, path)
    with pytest.raises(TypeError, match=r"plain data only.*it holds .*(scalar|Namespace)"):
        fk.save_checkpoint({"epoch": 2, **unreadable}, path)
    assert fk.load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temporary file left behind


@pytest.mark.parametrize("unpicklable", [{"score": lambda x: x}, {"lock": threading.Lock()}])
def test_state_that_cannot_be_pickled_is_a_type_error_too(tmp_path, unpicklable):
    # Before: pickle's own AttributeError or TypeError, whose type the docstring did not promise.
    path = tmp_path / "run.pt"
    fk.save_checkpoint({"epoch": 1}, path)
    with pytest.raises(TypeError, match=r"plain data only.*cannot be saved at all"):
        fk.save_checkpoint({"epoch": 2, **unpicklable}, path)
    assert fk.load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]
