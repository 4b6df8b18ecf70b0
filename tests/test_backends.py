"""The attack backends: every one gives exactly what the eager walk gives."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import gc
import math
import warnings
import weakref

import pytest
import torch

import fgsmkit as fk
from _cuda_graph_emulator import emulated_cuda_graphs  # noqa: F401 (a fixture)
from fgsmkit.attacks import _backends
from fgsmkit.attacks._walk import take_step
from fgsmkit.constraints import Box, make_ball

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def small_model(device: str = "cpu") -> torch.nn.Module:
    torch.manual_seed(0)
    return fk.models.MaxoutMLP(in_features=12, hidden=(8, 8), pieces=3, num_classes=4).to(device).eval()


def batch(device: str = "cpu", size: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(size, 12, generator=g).to(device), torch.randint(0, 4, (size,), generator=g).to(device)


def attacks(model, x, y, backend, device="cpu"):
    """The attacks the backends serve, each run with ``backend``."""
    gen = lambda: torch.Generator(device=device).manual_seed(3)  # noqa: E731
    return {
        "fgsm": fk.fgsm(model, x, y, eps=0.1, backend=backend),
        "bim": fk.iterative_fgsm(model, x, y, eps=0.1, step_size=0.02, steps=6, backend=backend),
        "pgd": fk.pgd(model, x, y, eps=0.1, step_size=0.02, steps=6, generator=gen(), backend=backend),
        "restarts": fk.pgd(model, x, y, eps=0.1, step_size=0.02, steps=4, restarts=3, generator=gen(),
                           loss_fn=lambda z, t: torch.nn.functional.cross_entropy(z, t, reduction="none"),
                           backend=backend),
        "targeted": fk.pgd(model, x, (y + 1) % 4, eps=0.1, step_size=0.02, steps=4, targeted=True,
                           generator=gen(), backend=backend),
        "predicted labels": fk.iterative_fgsm(model, x, None, eps=0.1, step_size=0.02, steps=4, backend=backend),
    }


def test_auto_is_eager_on_cpu():
    x, _ = batch()
    assert _backends.check_backend("auto", x, math.inf) == "eager"
    assert _backends.walk_for("eager", small_model()).__name__ == "ascend"


@pytest.mark.parametrize(("attack", "backend", "norm", "message"), [
    (attack, *case)
    for attack in ("fgsm", "iterative_fgsm", "pgd")
    for case in [("fast", math.inf, "backend must be one of"), ("compile", 2, "L-inf step only"),
                 ("cuda_graph", math.inf, "needs x on a CUDA device")]
    if not (attack == "iterative_fgsm" and case[1] == 2)  # the basic iterative method is L-inf only
])
def test_unusable_backends_are_refused_with_the_fix(attack, backend, norm, message):
    model, (x, y) = small_model(), batch()
    kwargs = {} if attack == "fgsm" else {"step_size": 0.02, "steps": 2}
    if attack != "iterative_fgsm":
        kwargs["norm"] = norm
    with pytest.raises(ValueError, match=message):
        getattr(fk, attack)(model, x, y, eps=0.1, backend=backend, **kwargs)


@pytest.mark.parametrize(("attack", "fused", "calls"), [
    ("fgsm", "linf_fast_gradient_step", 1),
    ("iterative_fgsm", "linf_take_step", 3),
    ("pgd", "linf_take_step", 3),
])
def test_each_attack_takes_its_steps_through_the_compiled_step(monkeypatch, attack, fused, calls):
    # Bit-identity with eager cannot tell a compiled step from an eager one: count that each
    # attack's steps go through what backend="compile" hands to torch.compile (run eagerly here).
    taken: list[str] = []

    def counting(function):
        def run(*args):
            taken.append(function.__name__)
            return function(*args)
        return run

    monkeypatch.setattr(_backends, "compiled", counting)
    model, (x, y) = small_model(), batch()
    steps = {} if attack == "fgsm" else {"step_size": 0.02, "steps": 3}
    getattr(fk, attack)(model, x, y, eps=0.1, backend="compile", **steps)
    assert taken == [fused] * calls


@pytest.mark.compile
def test_compiled_step_is_bit_identical_to_eager():
    model, (x, y) = small_model(), batch()
    x_before = x.clone()
    eager = attacks(model, x, y, "eager")
    compiled = attacks(model, x, y, "compile")
    for name in eager:
        assert torch.equal(compiled[name], eager[name]), name
    assert torch.equal(x, x_before)
    # Per-sample eps and a tensor box (another graph), still exact.
    eps = torch.linspace(0.01, 0.2, x.shape[0])
    clip = (torch.zeros(12), torch.full((12,), 0.9))
    x = x.clamp(max=0.9)
    args = dict(eps=eps, step_size=0.03, steps=5, random_start=False, clip=clip)
    assert torch.equal(fk.pgd(model, x, y, backend="compile", **args), fk.pgd(model, x, y, **args))


@pytest.mark.compile
def test_compile_keeps_serving_a_sweep_of_boxes_budgets_and_dtypes():
    # torch.compile guarded on the box's numbers and the ball's Python state: after 8 distinct
    # settings every later call raised (fullgraph=True turns the recompile limit into an error).
    from torch._dynamo.utils import counters

    model, (x, y) = small_model(), batch()
    x = x * 0.5
    graphs_before = counters["stats"]["unique_graphs"]
    for i in range(10):
        for dtype in (torch.float32, torch.float64) if i < 2 else (torch.float32,):
            m, xd = model.to(dtype), x.to(dtype)
            eps = 0.1 if i % 2 else torch.linspace(0.01, 0.2, x.shape[0], dtype=dtype)
            args = dict(eps=eps, clip=(0.0, 1.0 + i) if i < 9 else None)
            assert torch.equal(fk.fgsm(m, xd, y, backend="compile", **args), fk.fgsm(m, xd, y, **args)), i
            args.update(step_size=0.03, steps=2)
            assert torch.equal(fk.iterative_fgsm(m, xd, y, backend="compile", **args),
                               fk.iterative_fgsm(m, xd, y, **args)), i
    model.float()
    # Past the limit torch runs the step eagerly, so equal results alone cannot show that it
    # stopped recompiling per box: count the graphs. The old design made 16 here (torch's limit
    # of 8 for each of its two compiled functions), this one 7 (dtype x eps shape x box or none).
    assert counters["stats"]["unique_graphs"] - graphs_before <= 8


@pytest.mark.compile
@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_compile_serves_a_callers_no_grad_with_the_graphs_it_has(attack):
    # The fused steps were compiled under the caller's grad mode, on which torch.compile guards:
    # an evaluation loop under no_grad cost a compilation of its own, one of the 8 torch allows
    # before it runs further kinds eagerly (with inference_mode and a few dtypes, the limit).
    from torch._dynamo.utils import counters

    model, (x, y) = small_model(), batch()
    args = {} if attack == "fgsm" else {"step_size": 0.02, "steps": 2, "random_start": False}
    with_grad = getattr(fk, attack)(model, x, y, eps=0.1, backend="compile", **args)
    graphs = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        without_grad = getattr(fk, attack)(model, x, y, eps=0.1, backend="compile", **args)
    assert counters["stats"]["unique_graphs"] == graphs
    assert torch.equal(without_grad, with_grad)


@pytest.mark.compile
def test_compiled_step_is_the_same_function_as_the_eager_step():
    # One implementation of the step: the compiled one wraps take_step, applied to any L-inf ball.
    x = torch.rand(6, 5)
    ball = make_ball(math.inf, x, torch.tensor(0.3), Box(torch.tensor(0.0), torch.tensor(1.0)))
    direction, size = torch.randn(6, 5), torch.tensor(0.07)
    assert torch.equal(_backends.compiled_step()(ball, x, direction, size), take_step(ball, x, direction, size))


@cuda
@pytest.mark.compile
def test_compiled_step_on_cuda_is_bit_identical():
    model, (x, y) = small_model("cuda"), batch("cuda")
    eager, compiled = attacks(model, x, y, "eager", "cuda"), attacks(model, x, y, "compile", "cuda")
    for name in eager:
        assert torch.equal(compiled[name], eager[name]), name


@cuda
@pytest.mark.parametrize("norm", [math.inf, 2.0])
def test_cuda_graph_is_bit_identical_to_eager(norm):
    model, (x, y) = small_model("cuda"), batch("cuda")
    args = dict(eps=0.1 if norm == math.inf else 0.5, step_size=0.02, steps=6, norm=norm)
    g = lambda: torch.Generator(device="cuda").manual_seed(5)  # noqa: E731
    eager = fk.pgd(model, x, y, generator=g(), **args)
    assert torch.equal(fk.pgd(model, x, y, generator=g(), backend="cuda_graph", **args), eager)
    # Replayed with new inputs of the same shape: the cached graph reads the new values.
    x2, y2 = batch("cuda")[0].flip(0), y.flip(0)
    assert torch.equal(fk.pgd(model, x2, y2, generator=g(), backend="cuda_graph", **args),
                       fk.pgd(model, x2, y2, generator=g(), **args))


@cuda
def test_cuda_graph_serves_every_attack_and_sees_weight_updates():
    model, (x, y) = small_model("cuda"), batch("cuda")
    eager, graphed = attacks(model, x, y, "eager", "cuda"), attacks(model, x, y, "cuda_graph", "cuda")
    for name in eager:
        assert torch.equal(graphed[name], eager[name]), name
    with torch.no_grad():  # an optimizer step updates the weights in place
        for p in model.parameters():
            p.mul_(1.5)
    args = dict(eps=0.1, step_size=0.02, steps=6, random_start=False)
    assert torch.equal(fk.pgd(model, x, y, backend="cuda_graph", **args), fk.pgd(model, x, y, **args))


@cuda
def test_cuda_graph_needs_a_module():
    model, (x, y) = small_model("cuda"), batch("cuda")
    with pytest.raises(TypeError, match="nn.Module"):
        fk.pgd(lambda t: model(t), x, y, eps=0.1, step_size=0.02, steps=3, backend="cuda_graph")


class _SynchronisingModel(torch.nn.Module):
    """Reads a value back to the host in its forward: fine eagerly, not capturable."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * float(x.abs().amax() > -1)


@cuda
def test_cuda_graph_refuses_a_model_that_synchronises_with_the_fix():
    model, (x, y) = _SynchronisingModel(small_model("cuda")), batch("cuda")
    with pytest.raises(ValueError, match="could not capture.*backend='eager'"):
        fk.pgd(model, x, y, eps=0.1, step_size=0.02, steps=3, backend="cuda_graph")
    # The failed capture leaves the device usable and the caller's stream current.
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    eager = fk.pgd(model, x, y, eps=0.1, step_size=0.02, steps=3, random_start=False)
    assert torch.equal(eager, fk.pgd(model.inner, x, y, eps=0.1, step_size=0.02, steps=3, random_start=False))


def _fail_with(error: Exception):
    def walk():
        raise error
    return walk


@contextlib.contextmanager
def _capture_end_fails(graph, pool=None, stream=None, capture_error_mode="global"):
    """As torch.cuda.graph when the capture failed: capture_end raises, the failure is its context."""
    try:
        yield
    except Exception:
        raise RuntimeError("CUDA error: operation failed due to a previous error during capture") from None


@pytest.mark.parametrize("capture_end_raises", [False, True])
def test_running_out_of_memory_while_capturing_is_not_blamed_on_the_model(
        emulated_cuda_graphs, monkeypatch, capture_end_raises):
    if capture_end_raises:
        monkeypatch.setattr(torch.cuda, "graph", _capture_end_fails)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        _backends._captured(torch.cuda.CUDAGraph(), _fail_with(torch.cuda.OutOfMemoryError("CUDA out of memory")),
                            torch.cuda.Stream())


@contextlib.contextmanager
def _no_cyclic_collection():
    """Only reference counting frees objects inside: what is left alive is held, or in a cycle."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_a_failed_capture_lets_go_of_the_model_at_once(emulated_cuda_graphs):
    # The error was kept in a local of a frame in its own traceback: the model, its inputs and the
    # half-built graph (its memory pool on a GPU) lived on until a full collection.
    def attack(model):
        try:
            fk.pgd(model, x, y, eps=0.1, step_size=0.02, steps=3, backend="cuda_graph")
        except ValueError as error:
            return str(error)
        return ""

    x, y = batch()
    attack(_SynchronisingModel(small_model()))  # the first in a process imports parts of torch
    model = _SynchronisingModel(small_model())
    alive = weakref.ref(model)
    with _no_cyclic_collection():
        message = attack(model)
        del model
        assert alive() is None
    assert "could not capture" in message


def test_running_out_of_memory_while_capturing_lets_go_of_the_capture_at_once(emulated_cuda_graphs, monkeypatch):
    # The out-of-memory error comes as the context of capture_end's (see _capture_end_fails).
    monkeypatch.setattr(torch.cuda, "graph", _capture_end_fails)

    class Walk:  # holds what a walk holds: the model, the static inputs
        def __init__(self):
            self.held = torch.zeros(3)

        def __call__(self):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    walk = Walk()
    alive = weakref.ref(walk.held)
    with _no_cyclic_collection():
        try:
            _backends._captured(torch.cuda.CUDAGraph(), walk, torch.cuda.Stream())
            raised = False
        except torch.cuda.OutOfMemoryError:
            raised = True
        del walk
        assert alive() is None
    assert raised


# The graph backend on CPU, through CUDA Graphs emulated by recording and replaying ATen
# operations on the same tensors (tests/_cuda_graph_emulator.py): what a captured graph would
# read or skip, these tests see, without a GPU.

PGD = dict(eps=0.1, step_size=0.02, steps=6, random_start=False)  # as "bim" in attacks()


def test_emulated_cuda_graph_gives_eager_bits_and_replays_for_new_inputs(emulated_cuda_graphs):
    graphs = emulated_cuda_graphs
    model, (x, y) = small_model(), batch()
    eager, graphed = attacks(model, x, y, "eager"), attacks(model, x, y, "cuda_graph")
    for name in eager:
        assert torch.equal(graphed[name], eager[name]), name
    assert graphs.replays > 0
    captures = graphs.captures
    x2, y2 = x.flip(0).mul(0.9), y.flip(0)
    assert torch.equal(fk.pgd(model, x2, y2, backend="cuda_graph", **PGD), fk.pgd(model, x2, y2, **PGD))
    assert graphs.captures == captures  # served by a graph already captured
    l2 = dict(PGD, eps=0.5, norm=2.0)
    for inputs, labels in ((x, y), (x2, y2)):
        graphed = fk.pgd(model, inputs, labels, backend="cuda_graph", **l2)
        assert torch.equal(graphed, fk.pgd(model, inputs, labels, **l2))
    assert graphs.captures == captures + 1


def test_emulated_cuda_graph_under_inference_mode_reads_each_calls_labels(emulated_cuda_graphs):
    # The static buffers were made as inference tensors, and the graph read a copy of the labels
    # that no call refreshed: new labels gave the first call's answer, and a call outside
    # inference_mode then failed to update the buffers.
    model, (x, y) = small_model(), batch()
    x2, y2 = x.flip(0), (y + 1) % 4
    with torch.inference_mode():
        fk.pgd(model, x, y, backend="cuda_graph", **PGD)
        second = fk.pgd(model, x2, y2, backend="cuda_graph", **PGD)
    third = fk.pgd(model, x, y2, backend="cuda_graph", **PGD)
    assert torch.equal(second, fk.pgd(model, x2, y2, **PGD))
    assert torch.equal(third, fk.pgd(model, x, y2, **PGD))
    assert emulated_cuda_graphs.captures == 1


def test_emulated_cuda_graph_follows_weights_layouts_and_precision_settings(emulated_cuda_graphs, monkeypatch):
    graphs = emulated_cuda_graphs
    model, (x, y) = small_model(), batch()
    fk.pgd(model, x, y, backend="cuda_graph", **PGD)
    with torch.no_grad():  # an optimizer step: in place, read by the same graph
        for p in model.parameters():
            p.mul_(1.5)
    assert torch.equal(fk.pgd(model, x, y, backend="cuda_graph", **PGD), fk.pgd(model, x, y, **PGD))
    assert graphs.captures == 1
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)  # new tensors
    transposed = x.t().contiguous().t()  # same values, another layout
    for inputs in (x, transposed):
        assert torch.equal(fk.pgd(model, inputs, y, backend="cuda_graph", **PGD), fk.pgd(model, inputs, y, **PGD))
    assert graphs.captures == 3
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", not torch.backends.cudnn.deterministic)
    fk.pgd(model, x, y, backend="cuda_graph", **PGD)
    assert graphs.captures == 4


class _PerClassTemperature(torch.nn.Module):
    """A loss_fn module with a registered buffer: cross-entropy at one temperature per class."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("temperature", torch.ones(4))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits / self.temperature, target, reduction="none")


def test_emulated_cuda_graph_follows_replaced_submodules_and_loss_fn_tensors(emulated_cuda_graphs):
    # The key held the model's tensors, flags and hooks, not which submodules it holds nor a
    # loss_fn module's tensors: the graph of the old activation, or of the old buffer, was replayed.
    torch.manual_seed(0)
    model, (x, y) = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)), batch()
    fk.pgd(model, x, y, backend="cuda_graph", **PGD)
    model[1] = torch.nn.Tanh()  # parameter-free: no tensor of the model changes
    assert torch.equal(fk.pgd(model, x, y, backend="cuda_graph", **PGD), fk.pgd(model, x, y, **PGD))
    loss_fn = _PerClassTemperature()
    fk.pgd(model, x, y, loss_fn=loss_fn, backend="cuda_graph", **PGD)
    loss_fn.temperature = torch.tensor([1.0, 4.0, 0.25, 2.0])  # a new tensor, not an in-place update
    assert torch.equal(fk.pgd(model, x, y, loss_fn=loss_fn, backend="cuda_graph", **PGD),
                       fk.pgd(model, x, y, loss_fn=loss_fn, **PGD))
    assert emulated_cuda_graphs.captures == 4


class _ConfiguredSlope(torch.nn.Module):
    """A leaky ReLU whose slope sits in a dict, which the key does not look into: two of them
    differ to the key by identity alone."""

    def __init__(self, slope: float) -> None:
        super().__init__()
        self.config = {"slope": slope}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.leaky_relu(x, self.config["slope"])


def test_emulated_cuda_graph_tells_a_replacement_from_the_freed_submodule_whose_id_it_took(emulated_cuda_graphs,
                                                                                           monkeypatch):
    # The key held each submodule's id(): a new activation given a freed one's id (CPython reuses
    # addresses) matched that one's graph, and its old slope, baked into the kernels, was replayed.
    monkeypatch.setattr(_backends, "GRAPHS_PER_MODEL", 100)  # every earlier activation's graph kept
    torch.manual_seed(0)
    model, (x, y) = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.Identity(), torch.nn.Linear(8, 4)), batch()
    ids: set[int] = set()
    for attempt in range(60):  # until CPython hands a new activation a freed one's address
        model[1] = None  # the old activation freed first, so that the new one may take its address
        gc.collect()
        model[1] = _ConfiguredSlope(0.5 * attempt - 2.0)
        reused = id(model[1]) in ids
        ids.add(id(model[1]))
        assert torch.equal(fk.pgd(model, x, y, backend="cuda_graph", **PGD), fk.pgd(model, x, y, **PGD)), attempt
        if reused:
            break
    assert reused  # the case this test is about happened
    assert emulated_cuda_graphs.captures == attempt + 1  # one graph per activation


class _Scaled(torch.nn.Module):
    """Logits times ``scale``, a tensor kept as a plain attribute (neither parameter nor buffer)."""

    def __init__(self, inner: torch.nn.Module, scale: torch.Tensor) -> None:
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.scale


class _Tempered(torch.nn.Module):
    """A loss_fn module with a Python number attribute: cross-entropy at ``temperature``."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits / self.temperature, target, reduction="none")


def test_emulated_cuda_graph_follows_numbers_and_plain_tensors_held_by_modules(emulated_cuda_graphs):
    # Numbers the forward reads (a LeakyReLU's slope set on the same module, a loss_fn module's
    # temperature) were frozen into the graph, and a plain tensor attribute was read where the
    # replaced tensor lay: the old graph was replayed, silently.
    torch.manual_seed(0)
    layers = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.LeakyReLU(0.01), torch.nn.Linear(8, 4))
    model, (x, y) = _Scaled(layers, torch.tensor([1.0, 2.0, 0.5, 1.0])), batch()
    loss_fn = _Tempered(1.0)

    def same_as_eager() -> bool:
        return torch.equal(fk.pgd(model, x, y, loss_fn=loss_fn, backend="cuda_graph", **PGD),
                           fk.pgd(model, x, y, loss_fn=loss_fn, **PGD))

    assert same_as_eager()
    layers[1].negative_slope = 3.0  # the same module, another number
    assert same_as_eager()
    model.scale = torch.tensor([0.25, 4.0, 1.0, -1.0])  # a new tensor, not an in-place update
    assert same_as_eager()
    loss_fn.temperature = 0.1
    assert same_as_eager()
    assert emulated_cuda_graphs.captures == 4
    model.scale.mul_(2.0)  # in place: read by the same graph
    assert same_as_eager()
    assert emulated_cuda_graphs.captures == 4


class _Graph(torch.nn.Module):
    """Features mixed along a sparse adjacency matrix kept as a plain attribute (a GCN layer)."""

    def __init__(self, adjacency: torch.Tensor) -> None:
        super().__init__()
        self.adjacency, self.linear = adjacency, torch.nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.sparse.mm(self.adjacency, x))


def test_emulated_cuda_graph_follows_sparse_tensors_and_numpy_numbers_held_by_modules(emulated_cuda_graphs):
    # A sparse tensor held as an attribute made the key raise (it has no data pointer of its
    # own), and NumPy numbers were left out of it: the old graph kept the old number.
    import numpy as np

    torch.manual_seed(0)
    x, y = batch()
    adjacency = torch.eye(10).roll(1, 0).add(torch.eye(10)).to_sparse()
    model = _Graph(adjacency)
    assert torch.equal(fk.pgd(model, x, y, backend="cuda_graph", **PGD), fk.pgd(model, x, y, **PGD))
    model.adjacency = torch.eye(10).to_sparse()
    assert torch.equal(fk.pgd(model, x, y, backend="cuda_graph", **PGD), fk.pgd(model, x, y, **PGD))
    assert emulated_cuda_graphs.captures == 2
    scaled = _Scaled(small_model(), np.float32(1.0))
    fk.pgd(scaled, x, y, backend="cuda_graph", **PGD)
    for scale in (np.float32(-3.0), np.int64(2), np.bool_(True)):
        scaled.scale = scale
        assert torch.equal(fk.pgd(scaled, x, y, backend="cuda_graph", **PGD), fk.pgd(scaled, x, y, **PGD)), scale
    assert emulated_cuda_graphs.captures == 6


def test_cuda_graph_key_holds_cpu_scalar_parameters_and_buffers_by_value():
    # A CUDA kernel takes a CPU scalar tensor by value: one updated in place (a loss_fn module
    # left on the CPU, its temperature a buffer) is frozen into the graph, yet the key held only
    # its address. The emulator runs on the CPU, where the replay reads it, so this is on the key.
    loss_fn = torch.nn.Module()
    loss_fn.register_buffer("temperature", torch.tensor(1.0))
    before = _backends._submodules(loss_fn)
    loss_fn.temperature.fill_(2.0)
    assert _backends._submodules(loss_fn) != before
    layer = torch.nn.Linear(12, 4)  # no scalar: an in-place update keeps the key (and the graph)
    before = _backends._submodules(layer)
    with torch.no_grad():
        layer.weight.mul_(2.0)
    assert _backends._submodules(layer) == before


class _Settable(torch.nn.Module):
    """Reads what its user sets (``activation``, ``mode``, ``shift``, ``tied``), rebinds some of it
    to equal new objects in its forward, and writes a counter and, in train mode, ``tau``."""

    class Mode(enum.Enum):
        PLAIN = "plain"
        DOUBLED = "doubled"

    def __init__(self) -> None:
        super().__init__()
        self.inner = small_model()
        self.activation = torch.tanh
        self.mode = self.Mode.PLAIN
        self.shift = torch.zeros(4)
        self.tied = [torch.nn.Parameter(torch.ones(4))]  # a list hides it from registration
        self.tau = 1.0
        self.calls = torch.tensor(0)  # a CPU scalar, updated in place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shift = self.shift.view(-1)  # a new object, the same tensor
        self.calls += 1
        if self.training:
            self.tau = max(0.5, self.tau * 0.99)
        logits = self.activation(self.inner(x) / self.tau) * self.tied[0] + self.shift
        return 2 * logits if self.mode is self.Mode.DOUBLED else logits


def test_emulated_cuda_graph_follows_what_the_forward_reads_not_what_it_writes(emulated_cuda_graphs):
    # What the forward only rebinds to an equal object (a view of the same tensor) was learned
    # as written and left out of the key; what it writes in train mode only was left out in
    # eval mode too; functions, Enums and a Parameter in a list were not keyed; a CPU scalar
    # counter updated in place made a new graph on every call.
    import operator

    model, (x, y) = _Settable(), batch()

    def same_as_eager() -> bool:
        return torch.equal(fk.pgd(model, x, y, backend="cuda_graph", **PGD), fk.pgd(model, x, y, **PGD))

    model.train()
    fk.pgd(model, x, y, backend="cuda_graph", **PGD)  # learns what the forward writes in train mode
    model.eval()
    for _ in range(3):
        assert same_as_eager()
    captures = emulated_cuda_graphs.captures
    assert captures == 2  # one graph per mode, however often it ran
    changes = [
        lambda: setattr(model, "tau", 4.0),
        lambda: setattr(model, "shift", torch.full((4,), 0.5)),
        lambda: setattr(model, "activation", torch.sigmoid),
        lambda: setattr(model, "mode", _Settable.Mode.DOUBLED),
        lambda: operator.setitem(model.tied, 0, torch.nn.Parameter(torch.full((4,), -1.0))),
    ]
    for number, change in enumerate(changes, start=1):
        change()
        assert same_as_eager(), number
        assert emulated_cuda_graphs.captures == captures + number


def test_emulated_cuda_graph_follows_sparse_tensors_updated_in_place(emulated_cuda_graphs):
    # An in-place update of a sparse COO tensor may move its indices and values (copy_ from a
    # tensor with more entries): keyed by identity, the graph read the old ones.
    torch.manual_seed(0)
    x, y = batch()
    model = _Graph(torch.eye(10).to_sparse())
    assert torch.equal(fk.pgd(model, x, y, backend="cuda_graph", **PGD), fk.pgd(model, x, y, **PGD))
    model.adjacency.copy_(torch.eye(10).roll(1, 0).add(torch.eye(10)).to_sparse())
    assert torch.equal(fk.pgd(model, x, y, backend="cuda_graph", **PGD), fk.pgd(model, x, y, **PGD))


def test_emulated_cuda_graph_keeps_one_graph_for_a_loss_fn_that_counts_its_calls(emulated_cuda_graphs):
    # A loss_fn module left on the CPU, counting its calls in a buffer: its scalar is keyed by
    # value, and as the attack does not restore a loss_fn's buffers, each call made a new graph.
    class Counting(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("step", torch.tensor(0))

        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            self.step += 1
            return torch.nn.functional.cross_entropy(logits, target, reduction="none")

    model, (x, y), loss_fn = small_model(), batch(), Counting()
    for _ in range(3):
        assert torch.equal(fk.pgd(model, x, y, loss_fn=loss_fn, backend="cuda_graph", **PGD),
                           fk.pgd(model, x, y, loss_fn=loss_fn, **PGD))
    assert emulated_cuda_graphs.captures == 1


class _KeepsLogits(torch.nn.Module):
    """Keeps its last output as a plain attribute, as feature-extraction code does."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.last = inner, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last = self.inner(x)
        return self.last


@pytest.mark.parametrize("frozen", [False, True])
def test_emulated_cuda_graph_reuses_its_graph_for_models_whose_forward_sets_attributes(emulated_cuda_graphs, frozen):
    # What a forward writes into its modules' attributes (its last outputs; the weight that
    # spectral_norm computes before each forward, without a grad_fn once the parameters are
    # frozen) is not an input of the graph: keyed by its address, it made a new graph per call.
    torch.manual_seed(0)
    normed = torch.nn.utils.spectral_norm(torch.nn.Linear(12, 8))
    model = _KeepsLogits(torch.nn.Sequential(normed, torch.nn.LeakyReLU(0.01), torch.nn.Linear(8, 4))).eval()
    model.requires_grad_(not frozen)
    x, y = batch()
    for _ in range(3):
        assert torch.equal(fk.pgd(model, x, y, backend="cuda_graph", **PGD), fk.pgd(model, x, y, **PGD))
    assert emulated_cuda_graphs.captures == 1
    model.inner[2].out_features = 4  # unchanged: still no new graph
    model.inner[1].negative_slope = 0.5  # a number the forward reads: a new graph
    assert torch.equal(fk.pgd(model, x, y, backend="cuda_graph", **PGD), fk.pgd(model, x, y, **PGD))
    assert emulated_cuda_graphs.captures == 2


def test_emulated_cuda_graph_serves_threads_one_call_at_a_time(emulated_cuda_graphs):
    # One graph's static buffers served every thread at once: a thread's inputs were overwritten
    # by another's between its copy and its replay, and it got an attack on the other's batch.
    import threading

    torch.manual_seed(0)
    model = fk.models.MaxoutMLP(in_features=64, hidden=(256, 256), pieces=3, num_classes=4).eval()
    g = torch.Generator().manual_seed(1)
    xs = [torch.rand(256, 64, generator=g) for _ in range(2)]
    ys = [torch.randint(0, 4, (256,), generator=g) for _ in range(2)]
    settings = dict(eps=0.1, step_size=0.02, steps=8, random_start=False)
    expected = [fk.pgd(model, x, y, **settings) for x, y in zip(xs, ys)]
    fk.pgd(model, xs[0], ys[0], backend="cuda_graph", **settings)
    wrong = [0, 0]

    def attack(i: int) -> None:
        for _ in range(20):
            wrong[i] += not torch.equal(fk.pgd(model, xs[i], ys[i], backend="cuda_graph", **settings), expected[i])

    threads = [threading.Thread(target=attack, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == [0, 0]
    assert emulated_cuda_graphs.captures == 1 and emulated_cuda_graphs.replays == 41


def test_emulated_cuda_graph_captures_on_one_stream_in_thread_local_mode(emulated_cuda_graphs):
    # Each capture made a new side stream (cuBLAS then keeps a workspace for each), and captured
    # in "global" mode, where a DataLoader's pin_memory thread calling CUDA breaks the capture.
    from _cuda_graph_emulator import SideStream

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    made = SideStream.made
    for size in (4, 6, 8):
        x, y = torch.rand(size, 12), torch.randint(0, 4, (size,))
        fk.pgd(model, x, y, backend="cuda_graph", **PGD)
    assert emulated_cuda_graphs.captures == 3
    assert emulated_cuda_graphs.capture_error_modes == ["thread_local"] * 3
    assert SideStream.made - made == 1


def test_emulated_cuda_graph_frees_the_oldest_graph_before_capturing_a_new_one(emulated_cuda_graphs, monkeypatch):
    # The oldest graph was evicted after the new one's capture: GRAPHS_PER_MODEL + 1 memory pools
    # were held at once, at the moment the capture needed memory.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    held = []
    capture = _backends._CapturedWalk.__init__

    def counting(self, *args, **kwargs):
        held.append(len(_backends._graphs.get(model, ())))
        capture(self, *args, **kwargs)

    monkeypatch.setattr(_backends._CapturedWalk, "__init__", counting)
    for size in range(4, 4 + _backends.GRAPHS_PER_MODEL + 2):
        fk.pgd(model, torch.rand(size, 12), torch.randint(0, 4, (size,)), backend="cuda_graph", **PGD)
    assert held == [0, 1, 2, 3, 3, 3]
    assert len(_backends._graphs[model]) == _backends.GRAPHS_PER_MODEL


@contextlib.contextmanager
def _switched(owner: object, name: str, value: object):
    # By hand: monkeypatch deletes, rather than restores, what torch's cuBLAS settings object
    # serves through __getattr__.
    before = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, before)


def test_emulated_cuda_graph_follows_the_switches_that_choose_kernels(emulated_cuda_graphs):
    # Attention's backends and their order, cuDNN on or off, fp16 accumulation and the BLAS
    # library choose the captured kernels too; under another choice the old graph was replayed.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model, (x, y) = small_model(), batch()
    fk.pgd(model, x, y, backend="cuda_graph", **PGD)
    matmul = torch.backends.cuda.matmul
    switches = {
        "attention backends": lambda: sdpa_kernel(SDPBackend.MATH),
        "attention priority": lambda: sdpa_kernel(  # every backend, in another order
            [SDPBackend.OVERRIDEABLE, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH, SDPBackend.EFFICIENT_ATTENTION,
             SDPBackend.FLASH_ATTENTION], set_priority=True),
        "cudnn": lambda: _switched(torch.backends.cudnn, "enabled", not torch.backends.cudnn.enabled),
        "blas": lambda: _switched(torch.backends.cuda, "preferred_blas_library", lambda backend=None: "cublaslt"),
        "fp16 accumulation": lambda: _switched(matmul, "allow_fp16_accumulation",
                                               not getattr(matmul, "allow_fp16_accumulation", False)),
    }
    for captures, (name, switch) in enumerate(switches.items(), start=2):
        fk.pgd(model, x, y, backend="cuda_graph", **PGD)  # the first graph: cached, most recently used
        with switch():
            assert torch.equal(fk.pgd(model, x, y, backend="cuda_graph", **PGD), fk.pgd(model, x, y, **PGD))
        assert emulated_cuda_graphs.captures == captures, name


class _HalfScaled(torch.nn.Module):
    """A float16 parameter (low precision, so the logit gradient is rescaled) behind the small
    model, with or without batch statistics written by hand (samples that interact)."""

    def __init__(self, batch_statistics: bool) -> None:
        super().__init__()
        self.inner, self.batch_statistics = small_model(), batch_statistics
        self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.float16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_statistics:
            x = (x - x.mean(dim=0)) * 4.0
        return self.inner(x) * self.scale.float()


def test_emulated_cuda_graph_keeps_the_first_steps_rescaling(emulated_cuda_graphs, monkeypatch):
    # The eager first step decides per-sample or whole-batch scales (a check with a host sync):
    # the graph takes that decision instead of checking again, and keeps graphs of each apart.
    checks = []
    check = fk.gradient.Objective._gradient_if_independent
    monkeypatch.setattr(fk.gradient.Objective, "_gradient_if_independent",
                        lambda self, *args: checks.append(1) or check(self, *args))
    model, (x, y) = _HalfScaled(batch_statistics=False), batch()
    assert torch.equal(fk.pgd(model, x, y, backend="cuda_graph", **PGD), fk.pgd(model, x, y, **PGD))
    assert len(checks) == 2  # once per call: the graph's warm-up and capture did not check again
    model.batch_statistics = True  # the samples interact now: one scale for the batch, another graph
    assert torch.equal(fk.pgd(model, x, y, backend="cuda_graph", **PGD), fk.pgd(model, x, y, **PGD))
    assert emulated_cuda_graphs.captures == 2


class _ReplacesItsBuffer(torch.nn.Module):
    """Keeps a running mean by replacing its buffer, as `self.mean = 0.9 * self.mean + ...`."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("mean", torch.zeros(12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.mean = 0.9 * self.mean + 0.1 * x.detach().mean(0)
        return self.inner(x - self.mean)


def test_emulated_cuda_graph_refuses_what_it_cannot_capture_and_restores_the_stream(emulated_cuda_graphs):
    from _cuda_graph_emulator import StreamLog

    model, (x, y) = small_model(), batch()
    with pytest.raises(ValueError, match="could not capture.*not permitted when stream is capturing.*'eager'"):
        fk.pgd(_SynchronisingModel(model), x, y, backend="cuda_graph", **PGD)
    assert StreamLog.current == "default"  # the failed capture left the capture stream current
    replacing = _ReplacesItsBuffer(model).train()
    mean, captures = replacing.mean, emulated_cuda_graphs.captures
    with pytest.raises(ValueError, match="replaces its parameter or buffer tensors"):
        fk.pgd(replacing, x, y, backend="cuda_graph", **PGD)
    # Refused on the eager warm-up, before a capture could bind a buffer that was never computed.
    assert emulated_cuda_graphs.captures == captures and replacing.mean is mean


def test_emulated_cuda_graph_cache_does_not_keep_a_model_alive_through_its_loss_fn(emulated_cuda_graphs):
    import gc
    import weakref

    model, (x, y) = small_model(), batch()
    scale = torch.nn.Parameter(torch.ones(()))
    model.register_parameter("temperature", scale)
    loss_fn = lambda z, t, m=model: torch.nn.functional.cross_entropy(z * m.temperature, t)  # noqa: E731
    fk.pgd(model, x, y, loss_fn=loss_fn, backend="cuda_graph", **PGD)
    assert emulated_cuda_graphs.captures == 1
    alive = weakref.ref(model)
    del model, loss_fn, scale
    gc.collect()
    assert alive() is None


@dataclasses.dataclass
class _Temperature:
    """A loss_fn's owner that compares by value and cannot be hashed, as dataclasses do."""

    value: float = 2.0

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits / self.value, target)


def test_emulated_cuda_graph_keys_a_bound_method_loss_fn_by_its_object(emulated_cuda_graphs):
    model, (x, y) = small_model(), batch()
    first, twin = _Temperature(), _Temperature()  # equal, but two objects
    for loss_fn in (first.loss, first.loss, twin.loss):  # a new bound method on every access
        assert torch.equal(fk.pgd(model, x, y, loss_fn=loss_fn, backend="cuda_graph", **PGD),
                           fk.pgd(model, x, y, loss_fn=loss_fn, **PGD))
    assert emulated_cuda_graphs.captures == 2


def test_emulated_cuda_graph_survives_precision_switches_that_cannot_be_read(emulated_cuda_graphs, monkeypatch):
    # Newer torch raises on reading the old TF32 setting once a new-style one was set (read only
    # where the new settings are missing), and a build may lack a backend.
    def unreadable():
        raise RuntimeError("you have used a mix of the legacy and new APIs to set the TF32 flags")

    monkeypatch.setattr(torch, "get_float32_matmul_precision", unreadable)
    monkeypatch.setattr(torch.backends.cuda, "preferred_blas_library", unreadable)
    model, (x, y) = small_model(), batch()
    assert torch.equal(fk.pgd(model, x, y, backend="cuda_graph", **PGD), fk.pgd(model, x, y, **PGD))


def test_emulated_cuda_graph_leaves_the_warning_filters_alone(emulated_cuda_graphs):
    # Each call read the precision switches inside warnings.catch_warnings(): that resets every
    # "shown once" record (a warning repeated on every batch), and, with calls from several
    # threads, could leave its "ignore" filter in place for good.
    model, (x, y) = small_model(), batch()
    shown = []
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # once per place, as Python shows most warnings
        warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
        for _ in range(4):  # eps wider than the box warns from this line each time
            fk.pgd(model, x, y, eps=2.0, step_size=0.1, steps=3, backend="cuda_graph")
    assert len(shown) == 1 and "eps" in shown[0]
    assert emulated_cuda_graphs.captures == 1


def test_the_old_tf32_settings_are_not_read_where_the_new_ones_exist(monkeypatch) -> None:
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("torch < 2.9 has only the old settings")

    def legacy():
        warnings.warn("This API is going to be deprecated, please see the new TF32 settings", UserWarning)
        return "highest"

    monkeypatch.setattr(torch, "get_float32_matmul_precision", legacy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flags = _backends._precision_flags()
    torch.set_float32_matmul_precision("high")  # the legacy setter still changes what is read
    try:
        assert _backends._precision_flags() != flags
    finally:
        torch.set_float32_matmul_precision("highest")

