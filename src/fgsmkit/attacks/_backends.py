"""How the walk runs: eagerly, with the step fused by ``torch.compile``, or as a captured CUDA Graph.

Every backend runs the same step maths (:func:`._walk.take_step`, or for ``"compile"`` its
L-inf case over tensors only, built from the same helpers) and the same input gradient
(:class:`~fgsmkit.gradient.Objective`), and gives bit-identical results (for models without
random layers in training mode, such as dropout, whose draws may differ between backends, and
with deterministic kernels: on CUDA, cuDNN's convolutions need
``torch.backends.cudnn.deterministic``):

- ``"eager"``: plain PyTorch, one kernel per operation.
- ``"compile"``: the attack step (sign, scale, add, projection onto the ball and the box) fused
  into one kernel by ``torch.compile``. The L-inf step only: it is made of exact operations, so
  fusing cannot change a bit; the L2 step's norms would be summed in another order.
- ``"cuda_graph"``: on CUDA, the walk after its first step is captured once as a CUDA Graph and
  replayed, so that kernel launches cost nothing. The graph is cached per model, input shape and
  settings; it reads the parameters and buffers of the model (and of a ``loss_fn`` that is an
  ``nn.Module``) where they are, so in-place updates (an optimizer step, ``load_state_dict``)
  are seen (but for CPU scalars, whose values CUDA kernels take in: a new value makes a new
  graph), and new tensors or a replaced submodule make a new graph. The model must be an
  ``nn.Module`` whose forward is capturable (no host synchronisation, no data-dependent control
  flow, buffers updated in place rather than replaced), like the paper's models. What the
  modules hold as attributes is in the key as well: numbers (Python's and NumPy's), strings,
  Enums, functions, short tuples and lists of them, and plain tensors (neither parameters nor
  buffers; sparse ones too). A number is frozen into the captured kernels and a tensor is read
  at the address it had at capture (an in-place update is seen), so a new number or a replaced
  tensor makes a new graph. What the forward itself writes (its last activations, the weight
  ``spectral_norm`` computes, a counter) is found on the warm-up, for each train/eval mode,
  and left out. Numbers and tensors that the forward or ``loss_fn`` read from anywhere else
  (globals, closures, dicts, other objects, a TorchScript module's attributes) are frozen into
  the graph. Calls from several threads, or on several streams, take turns on a graph's static
  buffers.
- ``"auto"``: ``"eager"``. The fused paths are opt-in until they are measured on a GPU
  (docs/benchmarks/gpu.md).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
import itertools
import math
import numbers
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..constraints import Ball, Box, LinfBall, linf_projection, linf_step, make_ball
from ..gradient import Objective
from ._walk import StepFn, Walk, ascend, fast_gradient_step, take_step

BACKENDS = ("auto", "eager", "compile", "cuda_graph")
GRAPHS_PER_MODEL = 4  # captured graphs kept per model (each holds its own memory pool)


def check_backend(backend: object, x: Tensor, norm: float) -> str:
    """The backend to run, ``"auto"`` resolved; a clear error where ``backend`` cannot serve ``x``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    if backend == "auto":
        return "eager"
    if backend == "compile" and norm != math.inf:
        raise ValueError(
            "backend='compile' fuses the L-inf step only (fusing the L2 step would reorder its sums "
            "and change the last bits); use backend='eager' or 'cuda_graph' with norm=2"
        )
    if backend == "cuda_graph" and x.device.type != "cuda":
        raise ValueError(f"backend='cuda_graph' needs x on a CUDA device; got {x.device}. Use backend='eager'")
    return str(backend)


def walk_for(backend: str, model: object) -> Walk:
    """The walk function that runs ``backend``."""
    if backend == "eager":
        return ascend
    if backend == "compile":
        # A partial, not a lambda: no extra frame, so warnings still point at the attack's caller.
        return functools.partial(ascend, step=compiled_step())
    if not isinstance(model, nn.Module):
        raise TypeError(
            "backend='cuda_graph' needs the model to be an nn.Module (its parameters are read in place "
            f"by the captured graph); got {type(model).__name__}. Use backend='eager'"
        )
    return graphed_walk


def linf_take_step(x_adv: Tensor, direction: Tensor, step_size: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """:func:`._walk.take_step` on an L-inf ball whose bounds are ``[lower, upper]``, over tensors only.

    What ``"compile"`` fuses. Given the ball itself, torch.compile would guard on its Python
    state (the box's numbers, whether the bounds are built yet) and compile again for every new
    box or budget, until its recompile limit.
    """
    return linf_projection(linf_step(direction, step_size).add_(x_adv), lower, upper)


def linf_fast_gradient_step(x: Tensor, direction: Tensor, eps: Tensor, low: Tensor | None,
                            high: Tensor | None) -> Tensor:
    """:meth:`LinfBall.fast_gradient_step` over tensors only: the step of eps from ``x``, clipped to
    the box ``[low, high]`` (None: no box); ``x ± eps`` is already on the ball."""
    moved = linf_step(direction, eps).add_(x)
    return moved if low is None or high is None else linf_projection(moved, low, high)


_compiled: dict[Callable, Callable] = {}


def compiled(function: Callable) -> Callable:
    """``function`` compiled once per process (lazily: importing the compiler is slow).

    Not fullgraph=True: that turns torch's recompile limit (reached after enough new dtypes and
    eps shapes) into an error; without it further kinds run eagerly, with the same bits.
    Always run under no_grad: the fused steps take detached tensors, so grad mode changes nothing
    in them, but torch.compile guards on it, and a caller's ``no_grad()`` would otherwise cost a
    compilation of its own, one of the few allowed before that limit.
    """
    if function not in _compiled:
        _compiled[function] = torch.no_grad()(torch.compile(function))
    return _compiled[function]


def reset_compiled() -> None:
    """Forget every compiled function and torch.compile's in-process caches.

    The next call compiles afresh for its own shapes, as in a new process: otherwise a call on
    new shapes reuses the earlier compilation, recompiled with dynamic shapes (what a benchmark
    of one workload after another must not time).
    """
    _compiled.clear()
    if "torch._dynamo" in sys.modules:  # else nothing was compiled, and importing it takes a second
        torch.compiler.reset()


def compiled_step() -> StepFn:
    """:func:`._walk.take_step` for an L-inf ball, fused by torch.compile."""
    fused = compiled(linf_take_step)

    def step(ball: Ball, x_adv: Tensor, direction: Tensor, step_size: Tensor) -> Tensor:
        assert isinstance(ball, LinfBall)
        return fused(x_adv, direction, step_size, *ball.bounds)

    return step


def fast_gradient_step_for(backend: str) -> Callable[[Ball, Tensor], Tensor]:
    """How ``backend`` takes the fast gradient method's single step: fused by ``"compile"``;
    eager otherwise (a CUDA Graph of one step would save no launches)."""
    if backend != "compile":
        return fast_gradient_step
    fused = compiled(linf_fast_gradient_step)

    def step(ball: Ball, direction: Tensor) -> Tensor:
        box = ball.box
        return fused(ball.x, direction, ball.eps, *((box.low, box.high) if box is not None else (None, None)))

    return step


# model -> OrderedDict(key -> _CapturedWalk), most recently used last.
_graphs: weakref.WeakKeyDictionary[nn.Module, OrderedDict[tuple, _CapturedWalk]] = weakref.WeakKeyDictionary()
# One graph's static buffers serve every call with its key: calls from several threads take turns.
_graphs_lock = threading.Lock()
# The stream each device's graphs are warmed up and captured on: one per device, since cuBLAS
# keeps a workspace per stream it has run on, for good.
_capture_streams: dict[torch.device, torch.cuda.Stream] = {}


def graphed_walk(objective: Objective, ball: Ball, start: Tensor, step_size: Tensor, steps: int) -> Tensor:
    """The walk with its first step eager and the remaining ``steps - 1`` replayed from a CUDA Graph.

    The eager first step runs the objective's checks (finite logits, labels, zero gradients),
    which synchronise with the host and cannot be captured; it also fixes the labels when
    ``y`` was None.
    """
    x_adv = take_step(ball, start, objective.ascent_direction(start), step_size)
    if steps == 1:
        return x_adv
    model = objective.model
    assert isinstance(model, nn.Module) and objective.y is not None
    key = _graph_key(objective, ball, x_adv, step_size, steps - 1)
    # Outside inference_mode (an evaluation loop's): the static buffers must accept new values
    # on later calls, and inference tensors would be copied behind the graph's back.
    with _graphs_lock, torch.inference_mode(False), torch.cuda.device(x_adv.device):
        cached = _graphs.setdefault(model, OrderedDict())
        walk = cached.pop(key, None)
        if walk is None:
            # Evicted first: each graph holds a memory pool, and the new one's capture needs room.
            while len(cached) >= GRAPHS_PER_MODEL:
                cached.popitem(last=False)
            walk = _CapturedWalk(objective, ball, x_adv, step_size, steps - 1)
            if walk.found_written:  # what its forward writes: keyed without it from now on
                key = _graph_key(objective, ball, x_adv, step_size, steps - 1)
        cached[key] = walk
        return walk(objective.y, ball, x_adv, step_size)


def _signature(t: Tensor | None) -> tuple | None:
    return None if t is None else (tuple(t.shape), t.stride(), t.dtype, t.device)


def _graph_key(objective: Objective, ball: Ball, x_adv: Tensor, step_size: Tensor, steps: int) -> tuple:
    """What the captured kernels depend on besides the values in the static buffers.

    Numbers and tensors that the model's forward or ``loss_fn`` read from anywhere but the
    modules themselves (globals, closures, dicts, other objects) are not in it (the documented
    limit of ``backend="cuda_graph"``).
    """
    model, loss_fn = objective.model, objective.loss_fn
    assert isinstance(model, nn.Module)
    box = ball.box
    return (
        type(ball), steps, objective.targeted, _weakly(loss_fn), objective.rescaled_over,
        _signature(ball.x), _signature(x_adv), _signature(objective.y), _signature(ball.eps), _signature(step_size),
        None if box is None else (_signature(box.low), _signature(box.high)),
        _submodules(model), _submodules(loss_fn) if isinstance(loss_fn, nn.Module) else None,
        tuple(map(tuple, _hook_dicts(nn.modules.module))),  # hooks registered for every module
        _autocast_state(), _precision_flags(),
    )


def _submodules(module: nn.Module) -> tuple:
    """Which submodules ``module`` holds, in which mode, with which hooks, and what each holds
    that the captured kernels read (:func:`_inputs`)."""
    # Which submodules: one replaced by another, parameter-free, changes no tensor. By weak
    # reference, not id(): a replacement may be given a freed submodule's id.
    return tuple((type(m), weakref.ref(m), m.training, *map(tuple, _hook_dicts(m)), _inputs(m))
                 for m in module.modules())


# What nn.Module keeps in every instance's __dict__ for itself (hooks, registries, the mode),
# keyed apart or never read by a forward.
_MODULE_BOOKKEEPING = frozenset(vars(nn.Module()))
_UNKEYED = object()  # a value the key leaves out
# module -> {training: names}: what its forward (or a hook around it) was seen to write in that
# mode during a capture. Outputs, not inputs, of the graph: its last activations, the weight that
# spectral_norm computes, a counter.
_written: weakref.WeakKeyDictionary[nn.Module, dict[bool, set[str]]] = weakref.WeakKeyDictionary()


def _own_values(module: nn.Module) -> Iterator[tuple[str, object]]:
    """``(name, value)`` of what ``module`` holds itself: its parameters and buffers, and its
    attributes other than nn.Module's bookkeeping (whose names the module keeps apart)."""
    yield from module._parameters.items()
    yield from module._buffers.items()
    for name, value in vars(module).items():
        if name not in _MODULE_BOOKKEEPING:
            yield name, value


def _inputs(module: nn.Module) -> tuple:
    """What the captured kernels read from ``module`` itself, keyed (:func:`_frozen`), less what
    its forward was seen to write in its current mode.

    Parameters, buffers and plain tensors are read where they lie, so in-place updates are
    seen and new tensors need a new graph; numbers (a ``negative_slope``) and CPU scalar
    tensors are frozen into the kernels, so a new value needs one too.
    """
    written = _written.get(module, {}).get(module.training, ())
    held = []
    for name, value in _own_values(module):
        if name not in written:
            frozen = _frozen(value)
            if frozen is not _UNKEYED:
                held.append((name, frozen))
    return tuple(held)


def _keyed_values(modules: list[nn.Module]) -> list[dict[str, tuple[object, object]]]:
    """For each module, ``name -> (value, keyed value)`` of what it holds. The values are kept
    alive (a list's items too, as the forward may empty it) so that a tensor made later cannot
    take a freed one's address and look unchanged."""
    return [{name: (list(value) if isinstance(value, list) else value, _frozen(value))
             for name, value in _own_values(m)} for m in modules]


def _learn_written(modules: list[nn.Module], before: list[dict[str, tuple[object, object]]]) -> bool:
    """Record, for each module's current mode, what it holds whose keyed value differs from
    ``before`` (:func:`_keyed_values`, read before a forward ran); whether there was any.

    By keyed value, not identity: a forward that rebinds an input to an equal new object
    (``self.mean = self.mean.view(1, -1)``) still reads it, and one that updates a CPU scalar in
    place (a counter) writes it.
    """
    found = False
    for module, then in zip(modules, before):
        now = dict(_own_values(module))
        changed = {name for name in then.keys() | now.keys()
                   if name not in then or name not in now or then[name][1] != _frozen(now[name])}
        if changed:
            _written.setdefault(module, {}).setdefault(module.training, set()).update(changed)
            found = True
    return found


_LONGEST_KEYED = 16  # longer tuples and lists (class names, say) are not what kernels take in
# Kept by type (True == 1 == 1.0, yet they promote differently) and repr: NaN equals nothing,
# itself included, and -0.0 == 0.0 though x * -0.0 differs. The common types are looked up first.
_PLAIN_TYPES = frozenset({int, float, bool, complex, str, type(None), torch.dtype, torch.device,
                          torch.memory_format, torch.layout, torch.qscheme})
_SPARSE_PARTS: dict[torch.layout, Callable[[Tensor], tuple[Tensor, ...]]] = {
    torch.sparse_coo: lambda t: (t._indices(), t._values()),
    torch.sparse_csr: lambda t: (t.crow_indices(), t.col_indices(), t.values()),
    torch.sparse_bsr: lambda t: (t.crow_indices(), t.col_indices(), t.values()),
    torch.sparse_csc: lambda t: (t.ccol_indices(), t.row_indices(), t.values()),
    torch.sparse_bsc: lambda t: (t.ccol_indices(), t.row_indices(), t.values()),
}


def _frozen(value: object) -> object:
    """``value`` as the captured graph depends on it, or :data:`_UNKEYED` for what the key leaves out."""
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return kind, repr(value)
    if isinstance(value, Tensor):
        return _frozen_tensor(value)
    if isinstance(value, (numbers.Number, np.bool_, str)):  # NumPy's numbers, subclasses
        return kind, repr(value)
    if isinstance(value, enum.Enum):
        return kind, value.name
    if isinstance(value, (tuple, list)) and len(value) <= _LONGEST_KEYED:
        if all(type(part) in _PLAIN_TYPES for part in value):  # a kernel size, say: one repr
            return kind, repr(value)
        # Parameters in a list (an RNN's flat weights) by address alone: cheap, and enough.
        parts = tuple(("parameter", part.data_ptr()) if isinstance(part, nn.Parameter) else _frozen(part)
                      for part in value)
        return _UNKEYED if any(part is _UNKEYED for part in parts) else (kind, parts)
    if callable(value):  # an activation function held as an attribute
        return "callable", _weakly(value)
    return _UNKEYED


def _frozen_tensor(t: Tensor) -> object:
    if t.layout == torch.strided and not t.is_nested:
        if t.is_cpu and t.numel() == 1:
            return "cpu scalar", t.dtype, _frozen(t.item())  # CUDA kernels take its value in
        return "tensor", t.data_ptr(), _signature(t)
    if t.layout in _SPARSE_PARTS:
        # Where its indices and values lie: an in-place update may move them (copy_ from a
        # tensor with more entries).
        return "sparse", t.layout, tuple(t.shape), *map(_frozen_tensor, _SPARSE_PARTS[t.layout](t))
    # Nested or MKLDNN: by identity, held weakly.
    return "tensor", _WeakIdentity(t), t.layout, t.dtype, t.device


def _hook_dicts(owner: object) -> tuple[dict, ...]:
    """The forward and backward hooks of a module, or the global ones of ``torch.nn.modules.module``."""
    prefix = "" if isinstance(owner, nn.Module) else "_global"
    names = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")
    return tuple(getattr(owner, prefix + name, {}) for name in names)


def _weakly(function: Callable) -> object:
    """``function`` for a cache key, held weakly where it can be: a loss_fn that closes over the
    model would otherwise keep its own key of the weak model -> graphs map alive."""
    try:
        return _WeakIdentity(function)
    except TypeError:  # not weakly referable (builtins); such callables close over nothing
        return function


class _WeakIdentity:
    """An object (a callable, a tensor) held weakly and compared by identity: a bound method by
    its object and function (recreated on every attribute access, it still finds its entry),
    whatever the object's own ``__eq__`` and ``__hash__`` say. Dead, it equals nothing new."""

    __slots__ = ("_refs", "_hash")

    def __init__(self, target: object) -> None:
        parts = (target.__self__, target.__func__) if inspect.ismethod(target) else (target,)
        self._refs = tuple(weakref.ref(part) for part in parts)
        self._hash = hash(tuple(map(id, parts)))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _WeakIdentity) or len(other._refs) != len(self._refs):
            return False
        mine, theirs = [ref() for ref in self._refs], [ref() for ref in other._refs]
        return all(a is not None and a is b for a, b in zip(mine, theirs))


# The global switches that choose the captured kernels: TF32 (old and new settings), reduced-
# precision reductions, deterministic algorithms, cuDNN's autotuner, and which kernels run at
# all (scaled dot-product attention's backends and their order, as torch.nn.attention.sdpa_kernel
# sets them; cuDNN on or off; fp16 accumulation; the BLAS library). Each is read on its own:
# some are missing on older torch (or private). The old TF32 settings are read only where the new
# ones are missing (torch < 2.9), which say the same: newer torch warns on reading an old one (a
# per-call warning filter would not be thread-safe, and resets every "shown once" record), and
# raises once a new-style one was set.
_OLD_TF32_SETTINGS: tuple[Callable[[], object], ...] = (
    lambda: torch.get_float32_matmul_precision(),
    lambda: torch.backends.cudnn.allow_tf32,
)
_PRECISION_SWITCHES: tuple[Callable[[], object], ...] = (
    *(() if hasattr(torch.backends.cuda.matmul, "fp32_precision") else _OLD_TF32_SETTINGS),
    lambda: torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
    lambda: torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
    lambda: torch.backends.cudnn.deterministic,
    lambda: torch.backends.cudnn.benchmark,
    lambda: torch.are_deterministic_algorithms_enabled(),
    lambda: torch.backends.fp32_precision,  # type: ignore[attr-defined]
    lambda: torch.backends.cuda.matmul.fp32_precision,
    lambda: torch.backends.cudnn.fp32_precision,
    lambda: torch.backends.cudnn.conv.fp32_precision,  # type: ignore[attr-defined]
    lambda: torch.backends.cudnn.rnn.fp32_precision,  # type: ignore[attr-defined]
    lambda: torch.backends.cuda.flash_sdp_enabled(),
    lambda: torch.backends.cuda.mem_efficient_sdp_enabled(),
    lambda: torch.backends.cuda.math_sdp_enabled(),
    lambda: torch.backends.cuda.cudnn_sdp_enabled(),
    lambda: torch._C._get_overrideable_sdp_enabled(),  # type: ignore[attr-defined]
    lambda: tuple(torch._C._get_sdp_priority_order()),  # type: ignore[attr-defined]
    lambda: torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed(),
    lambda: torch.backends.cudnn.enabled,
    lambda: torch.backends.cuda.matmul.allow_fp16_accumulation,
    lambda: torch.backends.cuda.preferred_blas_library(),
)


def _precision_flags() -> tuple:
    """The current value of every precision switch (None where it cannot be read)."""
    return tuple(_read(switch) for switch in _PRECISION_SWITCHES)


def _read(switch: Callable[[], object]) -> object:
    try:
        return switch()
    except (AttributeError, RuntimeError):
        return None


def _autocast_state() -> tuple:
    """Whether CUDA autocast is on and its dtype: both change the captured kernels."""
    try:
        return torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    except (TypeError, AttributeError):  # torch < 2.4
        return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()


class _CapturedWalk:
    """``steps`` steps of the walk captured as one CUDA Graph over static input buffers.

    Made and called on the inputs' device (the caller sets it) and outside inference_mode.
    """

    def __init__(self, objective: Objective, ball: Ball, start: Tensor, step_size: Tensor, steps: int) -> None:
        box = ball.box
        self.inputs: dict[str, Any] = {
            "x": ball.x.clone(), "eps": ball.eps.clone(), "start": start.clone(),
            "step_size": step_size.clone(), "y": objective.y.clone(),  # type: ignore[union-attr]
            "low": None if box is None else box.low.clone(), "high": None if box is None else box.high.clone(),
        }
        static = self.inputs
        graph_objective = Objective(objective.model, static["y"], objective.loss_fn, objective.targeted)
        # The graph must read the labels that each call refreshes, not a copy of them.
        assert graph_objective.y is static["y"]
        graph_objective.checked = True  # the eager first step has run the checks
        # ... and decided how the logit gradient is rescaled (the samples check syncs with the host).
        graph_objective.decide_rescaling(objective.rescaled_over)
        graph_objective.samples_checked = True

        def walk() -> Tensor:
            graph_box = None if static["low"] is None else Box(static["low"], static["high"])
            graph_ball = make_ball(_norm_of(ball), static["x"], static["eps"], graph_box)
            return ascend(graph_objective, graph_ball, static["start"], static["step_size"], steps)

        model = objective.model
        assert isinstance(model, nn.Module)
        tensors_before = _module_tensors(model)
        modules = [*model.modules(), *(objective.loss_fn.modules() if isinstance(objective.loss_fn, nn.Module) else ())]
        held_before = _keyed_values(modules)
        # Warm up on a side stream (as torch.cuda.graphs requires), then capture on that stream.
        side = _capture_stream(start.device)
        side.wait_stream(torch.cuda.current_stream(start.device))
        with torch.cuda.stream(side), _without_autocast_cache():
            walk()
        torch.cuda.current_stream(start.device).wait_stream(side)
        # What the warm-up's forwards wrote is the graph's output, not its input.
        self.found_written = _learn_written(modules, held_before)
        # Found on the eager warm-up, before any capture: a capture only records kernels, so a
        # tensor bound during it would hold memory that was never computed.
        if not _same_tensors(_module_tensors(model), tensors_before):
            raise ValueError(
                "backend='cuda_graph' cannot serve a model whose forward replaces its parameter or buffer "
                "tensors (self.buffer = ... rather than an in-place update): the captured graph would read "
                "the replaced ones. Update them in place, or use backend='eager'"
            )
        self.graph = torch.cuda.CUDAGraph()
        self.output = _captured(self.graph, walk, side)
        self.done: torch.cuda.Event | None = None  # recorded once the last call's output was copied

    def __call__(self, y: Tensor, ball: Ball, start: Tensor, step_size: Tensor) -> Tensor:
        static = self.inputs
        stream = torch.cuda.current_stream(start.device)
        if self.done is not None:
            # The last call may have run on another stream: its replay must have read the static
            # buffers, and its output been copied, before this call overwrites them.
            stream.wait_event(self.done)
        for name, value in (("x", ball.x), ("eps", ball.eps), ("start", start), ("step_size", step_size),
                            ("y", y)):
            static[name].copy_(value)
        if ball.box is not None:
            static["low"].copy_(ball.box.low)
            static["high"].copy_(ball.box.high)
        self.graph.replay()
        output = self.output.clone()
        self.done = stream.record_event()
        return output


def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    if device not in _capture_streams:
        _capture_streams[device] = torch.cuda.Stream(device=device)
    return _capture_streams[device]


def _module_tensors(model: nn.Module) -> list[tuple[str, Tensor]]:
    """Each parameter and buffer name with the tensor it holds (kept alive, so that identities
    cannot be reused)."""
    return list(itertools.chain(model.named_parameters(), model.named_buffers()))


def _same_tensors(now: list[tuple[str, Tensor]], before: list[tuple[str, Tensor]]) -> bool:
    return len(now) == len(before) and all(a == b and s is t for (a, s), (b, t) in zip(now, before))


def _captured(graph: torch.cuda.CUDAGraph, walk: Callable[[], Tensor], stream: torch.cuda.Stream) -> Tensor:
    """``walk()`` captured into ``graph`` on ``stream``, or an error that says why the model cannot
    be captured.

    The eager warm-up has just run the same steps, so what fails here is the capture itself.
    """
    try:
        # The outer stream context puts the caller's stream back even when the capture fails
        # (torch.cuda.graph's own exit stops at the failed capture_end).
        # thread_local: CUDA calls of the caller's other threads (a DataLoader's pin_memory
        # thread) must not invalidate this capture, as the default "global" mode lets them.
        with torch.cuda.stream(stream), _without_autocast_cache(), \
                torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            return walk()
    except torch.cuda.OutOfMemoryError:
        raise
    except RuntimeError as error:
        # torch.cuda.graph's exit ends the capture first: what failed inside comes as the context
        # of capture_end's own error.
        ended = "during capture" in str(error) and isinstance(error.__context__, Exception)
        cause = error.__context__ if ended else error
        # No error may stay in a local of this frame, which is in the raised error's traceback,
        # nor two errors hold each other (capture_end's exit frame holds the one inside): such a
        # cycle keeps the model, the inputs and the graph's memory until a full collection.
        if not isinstance(cause, torch.cuda.OutOfMemoryError):
            reason, cause = str(cause), None
            raise ValueError(
                "backend='cuda_graph' could not capture the attack's steps as a CUDA Graph: the model's forward "
                "or backward synchronises with the host (.item(), float(tensor), printing a tensor, shapes "
                f"that depend on values) or is otherwise not capturable ({reason}). Use backend='eager'"
            ) from error
        out_of_memory, cause = cause, None
    try:  # raised outside the handler, so that it does not take capture_end's error as its context
        raise out_of_memory from None
    finally:
        out_of_memory = None


def _without_autocast_cache() -> contextlib.AbstractContextManager:
    """Autocast as the caller set it, minus its weight cache, which a captured graph must not use
    (the cached casts would be freed when the caller's autocast region ends)."""
    enabled, dtype = _autocast_state()
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype, cache_enabled=False)


def _norm_of(ball: Ball) -> float:
    return math.inf if isinstance(ball, LinfBall) else 2.0

