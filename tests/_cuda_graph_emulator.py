"""CUDA Graphs emulated on the CPU, so that ``backend="cuda_graph"`` runs where no GPU is.

A real graph records the kernels launched during capture, with the addresses they read and
write, and replay launches the same kernels on the same addresses: whatever the caller wrote
into those buffers since is read, everything else is as it was at capture. Here capture records
every ATen operation (a ``TorchDispatchMode``, below autograd, so backward passes are recorded
too) with the tensor objects it read and wrote, and replay runs the same operations on the same
tensor objects and copies each result into the tensor captured as its output. A walk that reads
a tensor its caller does not refresh, or that syncs with the host during capture (``.item()``,
``bool(t)``, ``.tolist()``, ``nonzero``, boolean indexing, a new tensor from Python data),
fails here as it would on a GPU, and a failed capture ends as ``torch.cuda.graph`` ends one.

Unlike a real graph, capture also computes (side effects such as BatchNorm statistics happen
once more), and replay draws random numbers in eager's order, which a real graph does not
promise: compare with eager only where nothing random runs inside the graph.

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
# What reads a value back to the host or copies from it: refused inside a real capture.
HOST_SYNCS = {
    aten._local_scalar_dense.default, aten.nonzero.default, aten.is_nonzero.default, aten.equal.default,
    aten.masked_select.default, aten._unique.default, aten._unique2.default, aten.unique_dim.default,
    aten.unique_consecutive.default, aten.lift_fresh.default, aten.lift_fresh_copy.default,
}
TENSOR_SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def _syncs(func: Any, args: tuple) -> bool:
    if func in HOST_SYNCS:
        return True
    if func is aten.index.Tensor:  # boolean masks need their count of True on the host
        return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1])
    return func is aten.repeat_interleave.Tensor and len(args) < 2


class _Recorder(TorchDispatchMode):
    def __init__(self, operations: list) -> None:
        super().__init__()
        self.operations = operations

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if _syncs(func, args):
            _refuse_sync(str(func))
        out = func(*args, **kwargs)
        self.operations.append((func, args, kwargs, out))
        return out


def _refuse_sync(what: str) -> None:
    raise RuntimeError(f"CUDA error: operation not permitted when stream is capturing ({what})")


@contextlib.contextmanager
def _tensor_syncs_refused() -> Iterator[None]:
    """Tensor methods that read data on the host without an ATen call on CPU tensors."""
    own = {name: torch.Tensor.__dict__.get(name) for name in TENSOR_SYNCS}  # None: inherited

    def refusing(name: str) -> Any:
        return lambda *args, **kwargs: _refuse_sync(f"Tensor.{name}")

    for name in TENSOR_SYNCS:
        setattr(torch.Tensor, name, refusing(name))
    try:
        yield
    finally:
        for name, method in own.items():
            if method is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, method)


class EmulatedGraph:
    """Stands in for ``torch.cuda.CUDAGraph``."""

    captures = 0
    replays = 0
    capture_error_modes: list[str] = []  # as each capture asked torch.cuda.graph

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

    def wait_event(self, event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> object:
        return object()


class SideStream(_Stream):
    """Stands in for ``torch.cuda.Stream``: a stream created rather than the current one."""

    made = 0

    def __init__(self, device: Any = None) -> None:
        super().__init__(device)
        SideStream.made += 1


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
def _graph(graph: EmulatedGraph, pool: Any = None, stream: Any = None,
           capture_error_mode: str = "global") -> Iterator[None]:
    # As torch.cuda.graph: the capture stream becomes current, and a capture that fails leaves
    # it current (its exit stops at the failed capture_end).
    EmulatedGraph.captures += 1
    EmulatedGraph.capture_error_modes.append(capture_error_mode)
    previous, StreamLog.current = StreamLog.current, stream if stream is not None else "capture"
    try:
        with _tensor_syncs_refused(), _Recorder(graph.operations):
            yield
    except Exception as error:
        if isinstance(error, torch.cuda.OutOfMemoryError):
            raise  # whether capture_end then raises too is not known; both paths are tested
        raise RuntimeError("CUDA error: operation failed due to a previous error during capture") from None
    StreamLog.current = previous


@pytest.fixture
def emulated_cuda_graphs(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[EmulatedGraph]]:
    """Run ``backend="cuda_graph"`` on CPU tensors, through the emulated graphs."""
    monkeypatch.setattr(torch.cuda, "CUDAGraph", EmulatedGraph)
    monkeypatch.setattr(torch.cuda, "graph", _graph)
    monkeypatch.setattr(torch.cuda, "Stream", SideStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _Stream())
    monkeypatch.setattr(torch.cuda, "stream", StreamLog.stream)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    check = _backends.check_backend
    monkeypatch.setattr(_backends, "check_backend",
                        lambda backend, x, norm: "cuda_graph" if backend == "cuda_graph" else check(backend, x, norm))
    EmulatedGraph.captures = EmulatedGraph.replays = 0
    EmulatedGraph.capture_error_modes = []
    StreamLog.current = "default"
    _backends._graphs.clear()
    _backends._capture_streams.clear()
    _backends._written.clear()
    yield EmulatedGraph
    _backends._graphs.clear()
    _backends._capture_streams.clear()
    _backends._written.clear()
