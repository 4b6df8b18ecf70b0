"""A user's model as fgsmkit runs it: the module behind its wrappers, its state kept around a
call, and its random draws repeated for a pass of fgsmkit's own."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.nn.parameter import is_lazy

from . import _validation


def local_model(model: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """The module inside a DistributedDataParallel wrapper (compiled or not), else ``model``.

    An input gradient needs no gradient synchronisation, and DDP's forward is not free of
    collectives: it broadcasts buffers (BatchNorm statistics) from rank 0, which hangs an attack
    that runs on one rank only (e.g. evaluation on rank 0) and reorders the others' collectives.
    """
    inner = compiled_from(model)
    return inner.module if isinstance(inner, DistributedDataParallel) else model


def compiled_from(model: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """What ``torch.compile`` wrapped into ``model``, or ``model`` itself."""
    return getattr(model, "_orig_mod", model)


def innermost_module(model: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """The module inside any torch.compile, DistributedDataParallel and DataParallel wrappers:
    the one that knows what its outputs mean (its probabilities, say)."""
    while True:
        inner = compiled_from(model)
        if isinstance(inner, (DistributedDataParallel, nn.DataParallel)):
            inner = inner.module
        if inner is model:
            return model
        model = inner


def logits_of(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``model(x)``, with a clear error for a model that writes into the input being differentiated,
    and for one that fails on inputs of another dtype than its parameters'."""
    try:
        return model(x)
    except RuntimeError as error:
        found = _validation.model_tensor(model)
        if found is not None and found[1].is_floating_point() and found[1].dtype != x.dtype and "type" in str(error):
            kind, tensor = found
            raise TypeError(
                f"x is {str(x.dtype).removeprefix('torch.')} but model has {str(tensor.dtype).removeprefix('torch.')} "
                f"{kind}, and failed on it ({str(error).splitlines()[0]}); convert x (x.to({tensor.dtype})) or the "
                f"model (model.to({x.dtype}))"
            ) from error
        if "leaf Variable that requires grad is being used in an in-place operation" not in str(error):
            raise
        raise ValueError(
            "model writes into its input in place (e.g. nn.ReLU(inplace=True) or x.mul_() as its first "
            "operation), which autograd forbids on the input it differentiates; make that operation "
            "out of place, or pass lambda x: model(x.clone())"
        ) from error


def check_eval_mode(model: object, eval_mode: bool, name: str = "model") -> None:
    """Check that ``eval_mode=True`` can be honoured: ``model`` (the argument ``name``) is an
    nn.Module, whose mode can be switched."""
    if eval_mode and not isinstance(model, nn.Module):
        the_model = "the model" if name == "model" else name
        raise ValueError(
            f"eval_mode=True needs {the_model} to be an nn.Module, whose mode can be switched; got "
            f"{type(model).__name__}. Pass the module itself, or call module.eval() before the call"
        )


@contextlib.contextmanager
def model_state_kept(model: object, eval_mode: bool) -> Iterator[None]:
    """Run the block with the model in eval mode if asked, and leave its state as found.

    The train/eval flag of every submodule is restored afterwards. The buffers
    (such as BatchNorm running statistics), which an attack's forward passes in train mode would
    update, are restored either way: their values, and the tensors themselves where a forward
    replaced them (``self.average = 0.9 * self.average + ...``).
    """
    check_eval_mode(model, eval_mode)
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(module, module.training) for module in model.modules()]
    # Where each buffer is registered, and one copy of each tensor (several modules may share one).
    # Saved in eval mode too: code inside the block may switch the model to train mode.
    places = [(module, name, b) for module, _ in modes for name, b in module._buffers.items() if b is not None]
    saved: dict[int, tuple[Tensor, Tensor]] = {}
    for module, name, buffer in places:
        if is_lazy(buffer):
            raise ValueError(
                f"model has an uninitialized lazy buffer ({type(module).__name__}.{name}), whose value cannot be "
                "saved and restored around the attack; run the model once first (lazy modules take their "
                "shapes from the first batch), e.g. with torch.no_grad(): model(x)"
            )
        if id(buffer) not in saved:
            saved[id(buffer)] = buffer, buffer.clone()
    if eval_mode:
        model.eval()
    try:
        yield
    finally:
        # Restored even without eval_mode: code inside the block (an attack passed to
        # evaluate_attack, a forward) may switch them. Through each module's own train(), parents
        # before children (a child's call then corrects what its parent's set): a train() that
        # does more than set flags (LoRA layers merge their adapters on eval() and unmerge them
        # on train()) is undone as it was done. Most modules never change.
        for module, training in modes:
            if module.training != training:
                module.train(training)
        # Through .data, like BatchNorm's own update: a graph built before the attack saved these
        # buffers for its backward, and a tracked in-place copy would bump their version counters
        # and make that backward fail.
        if places:
            with torch.no_grad():
                for module, name, buffer in places:
                    if getattr(module, name, None) is not buffer:
                        setattr(module, name, buffer)
                for buffer, copy in saved.values():
                    buffer.data.copy_(copy)


class RandomDraws:
    """Where the random number generators stood when a forward pass began (the CPU's, and the
    CUDA device's for a CUDA ``device``): a pass run inside :meth:`again` draws the same numbers,
    dropout's masks say, and leaves the generators as it found them.

    The input gradient sometimes needs passes of its own (rescaled for float16 or bfloat16); run
    this way they see the noisy network of the first pass, the one the loss was computed for.
    Other generators (other CUDA devices' for ``nn.DataParallel`` replicas, MPS, XPU) are left
    alone: saving every CUDA device's would create a context on each.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = self._states()

    def _states(self) -> tuple[Tensor, Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _restore(self, states: tuple[Tensor, Tensor | None]) -> None:
        torch.set_rng_state(states[0])
        if states[1] is not None:
            torch.cuda.set_rng_state(states[1], self.device)

    @contextlib.contextmanager
    def again(self) -> Iterator[None]:
        now = self._states()
        self._restore(self.start)
        try:
            yield
        finally:
            self._restore(now)


def uses_batch_statistics(model: object) -> bool:
    """Whether ``model`` normalises with statistics of the batch (BatchNorm in train mode, or
    without running statistics), so that each sample's output depends on the others."""
    return isinstance(model, nn.Module) and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)
        for m in model.modules())
