"""CUDA Graphs emulated on the CPU, so that ``backend="cuda_graph"`` runs where no GPU is.

A real graph records the kernels launched during capture, with the addresses they read and
write, and replay launches the same kernels on the same addresses: whatever the caller wrote
into those buffers since is read, everything else is as it was at capture. Here capture records
every ATen operation (a ``TorchDispatchMode``, below autograd, so backward passes are recorded
too) with the tensor objects it read and wrote, and replay runs the same operations on the same
tensor objects and copies each result into the tensor captured as its output. A walk that reads
a tensor its caller does not refresh, or that syncs with the host during capture (``.item()``,
``bool(t)``, ``nonzero``), fails here as it would on a GPU.

The fixture :func:`emulated_cuda_graphs` patches the few ``torch.cuda`` entry points the graph backend calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fgsmkit.attacks import _backends

aten = torch.ops.aten
# What reads a value back to the host: refused inside a real capture.
HOST_SYNCS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.is_nonzero.default, aten.equal.default}


class _Recorder(TorchDispatchMode):
    def __init__(self, operations: list) -> None:
        super().__init__()
        self.operations = operations

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func in HOST_SYNCS:
            raise RuntimeError(f"CUDA error: operation not permitted when stream is capturing ({func})")
        out = func(*args, **kwargs)
        self.operations.append((func, args, kwargs, out))
        return out


class EmulatedGraph:
    """Stands in for ``torch.cuda.CUDAGraph``."""

    captures = 0
    replays = 0

    def __init__(self) -> None:
        self.operations: list = []

    def replay(self) -> None:
        EmulatedGraph.replays += 1
        with torch.no_grad():
            for func, args, kwargs, out in self.operations:
                result = func(*args, **kwargs)
                # In-place, out= and view operations wrote (or alias) their storage already.
                if any(r.alias_info is not None for r in func._schema.returns):
                    continue
                for captured, fresh in zip(tree_flatten(out)[0], tree_flatten(result)[0]):
                    if isinstance(captured, torch.Tensor):
                        captured.copy_(fresh)


class _Stream:
    def __init__(self, device: Any = None) -> None:
        pass

    def wait_stream(self, other: Any) -> None:
        pass


class StreamLog:
    """Which stream is current, as ``torch.cuda.stream`` contexts set and restore it."""

    current: object = "default"

    @staticmethod
    @contextlib.contextmanager
    def stream(stream: Any) -> Iterator[None]:
        previous, StreamLog.current = StreamLog.current, stream
        try:
            yield
        finally:
            StreamLog.current = previous


@contextlib.contextmanager
def _graph(graph: EmulatedGraph, pool: Any = None, stream: Any = None) -> Iterator[None]:
    # As torch.cuda.graph: the capture stream becomes current, and a capture that fails leaves
    # it current (its exit stops at the failed capture_end).
    EmulatedGraph.captures += 1
    previous, StreamLog.current = StreamLog.current, stream if stream is not None else "capture"
    with _Recorder(graph.operations):
        yield
    StreamLog.current = previous


@pytest.fixture
def emulated_cuda_graphs(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[EmulatedGraph]]:
    """Run ``backend="cuda_graph"`` on CPU tensors, through the emulated graphs."""
    monkeypatch.setattr(torch.cuda, "CUDAGraph", EmulatedGraph)
    monkeypatch.setattr(torch.cuda, "graph", _graph)
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _Stream())
    monkeypatch.setattr(torch.cuda, "stream", StreamLog.stream)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    check = _backends.check_backend
    monkeypatch.setattr(_backends, "check_backend",
                        lambda backend, x, norm: "cuda_graph" if backend == "cuda_graph" else check(backend, x, norm))
    EmulatedGraph.captures = EmulatedGraph.replays = 0
    StreamLog.current = "default"
    _backends._graphs.clear()
    yield EmulatedGraph
    _backends._graphs.clear()
