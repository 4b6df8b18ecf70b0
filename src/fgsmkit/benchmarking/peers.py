"""Adapters for peer attack libraries: each turns a model and a batch into FGSM and PGD calls.

Every peer is optional. :func:`available` imports each one and returns the adapters that work,
plus a reason for each one that does not, so that the benchmark can say what it skipped;
:func:`versions` says which release of each was timed. All
adapters compute the same attack as fgsmkit: untargeted L-inf, cross-entropy on the true labels,
inputs clipped to ``[0, 1]``, PGD from the clean input (no random start) with a fixed step.
Each is timed through its library's public API, so its time also holds the work that API does
besides the attack (checks, extra forward passes, the weights' gradients): each :class:`Peer`'s
``note`` says what.

Some peers take the input gradient by ``loss.backward()``, which also forms every weight
gradient into the ``.grad`` of the model all contenders share. Their calls set ``.grad`` back
to None after each call (:func:`_dropping_weight_gradients`), so that no call finds gradients
left by an earlier one.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .workloads import Workload

Run = Callable[[], Tensor]
Builder = Callable[[nn.Module, Tensor, Tensor, Workload], "dict[str, Run | None]"]
# What a note says of a peer whose gradients come from loss.backward().
WEIGHT_GRADIENTS = ("its input gradient comes from loss.backward(), which also forms every weight gradient "
                    "(set back to None after each call, so that each call forms them anew, as the first did)")


@dataclass(frozen=True)
class Peer:
    """A peer library: its distribution, the modules it needs and a builder of its attack calls.

    ``build(model, x, y, workload)`` returns ``{"fgsm": run, "pgd": run}``; a value of None means
    the library has no such attack. ``note`` says what differs from fgsmkit's attack (a missing
    attack, another output, work its API does besides the attack and that is timed with it), for
    the reader of the results; ``uncompared`` names the attacks whose output differs from
    fgsmkit's by design, which are timed but not checked against it.
    """

    name: str
    distribution: str
    modules: tuple[str, ...]
    build: Builder
    note: str = ""
    uncompared: tuple[str, ...] = ()


def _dropping_weight_gradients(model: nn.Module, runs: dict[str, Run]) -> dict[str, Run]:
    """``runs``, each setting the ``.grad`` of ``model``'s parameters back to None after its call.

    A peer whose ``loss.backward()`` forms the weight gradients leaves them on the model that
    every contender shares: each later call of it (or of another such peer) then added into them
    in place, or freed them, instead of forming them anew, so that its time and memory depended
    on what ran before it. The benchmark's models start without gradients; dropping them after
    each call starts every call from there. It is timed with the call: a few attribute writes,
    and freeing the gradients, which every call of such a peer on a fresh model would cost too.
    """
    params = list(model.parameters())

    def dropping(run: Run) -> Run:
        def call() -> Tensor:
            output = run()
            for param in params:
                param.grad = None
            return output

        return call

    return {attack: dropping(run) for attack, run in runs.items()}


def _torchattacks(model: nn.Module, x: Tensor, y: Tensor, w: Workload) -> dict[str, Run | None]:
    import torchattacks

    fgsm = torchattacks.FGSM(model, eps=w.eps)
    pgd = torchattacks.PGD(model, eps=w.eps, alpha=w.step_size, steps=w.steps, random_start=False)
    return {"fgsm": lambda: fgsm(x, y), "pgd": lambda: pgd(x, y)}


def _foolbox(model: nn.Module, x: Tensor, y: Tensor, w: Workload) -> dict[str, Run | None]:
    import foolbox

    # Without device= foolbox moves the model to cuda:0 whenever CUDA is available, even for a CPU run.
    fmodel = foolbox.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
    fgsm = foolbox.attacks.LinfFastGradientAttack(random_start=False)
    pgd = foolbox.attacks.LinfProjectedGradientDescentAttack(
        abs_stepsize=w.step_size, steps=w.steps, random_start=False)
    return _dropping_weight_gradients(model, {
        "fgsm": lambda: fgsm(fmodel, x, y, epsilons=w.eps)[1],
        "pgd": lambda: pgd(fmodel, x, y, epsilons=w.eps)[1],
    })


def _advertorch(model: nn.Module, x: Tensor, y: Tensor, w: Workload) -> dict[str, Run | None]:
    from advertorch.attacks import GradientSignAttack, LinfBasicIterativeAttack

    fgsm = GradientSignAttack(model, eps=w.eps, clip_min=0.0, clip_max=1.0)
    pgd = LinfBasicIterativeAttack(model, eps=w.eps, nb_iter=w.steps, eps_iter=w.step_size,
                                   clip_min=0.0, clip_max=1.0)
    return _dropping_weight_gradients(model, {"fgsm": lambda: fgsm.perturb(x, y), "pgd": lambda: pgd.perturb(x, y)})


def _cleverhans(model: nn.Module, x: Tensor, y: Tensor, w: Workload) -> dict[str, Run | None]:
    import math

    from cleverhans.torch.attacks.fast_gradient_method import fast_gradient_method
    from cleverhans.torch.attacks.projected_gradient_descent import projected_gradient_descent

    return _dropping_weight_gradients(model, {
        "fgsm": lambda: fast_gradient_method(model, x, w.eps, math.inf, clip_min=0.0, clip_max=1.0, y=y),
        # sanity_checks=False everywhere: its default ends with np.all() over CUDA tensors, which
        # raises on CUDA (cleverhans issue #1248); off on CPU too, so both devices time the same work.
        "pgd": lambda: projected_gradient_descent(model, x, w.eps, w.step_size, w.steps, math.inf,
                                                  clip_min=0.0, clip_max=1.0, y=y, rand_init=False,
                                                  sanity_checks=False),
    })


def _art(model: nn.Module, x: Tensor, y: Tensor, w: Workload) -> dict[str, Run | None]:
    import numpy as np
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=w.classes,
        clip_values=(0.0, 1.0), device_type="gpu" if x.is_cuda else "cpu")
    batch = x.shape[0]
    fgsm = FastGradientMethod(classifier, norm=np.inf, eps=w.eps, batch_size=batch)
    pgd = ProjectedGradientDescent(classifier, norm=np.inf, eps=w.eps, eps_step=w.step_size,
                                   max_iter=w.steps, num_random_init=0, batch_size=batch, verbose=False)
    # ART works on NumPy arrays; converting is part of using it, so it is timed too.
    y_np = y.cpu().numpy()

    def run(attack: object) -> Tensor:
        return torch.from_numpy(attack.generate(x.cpu().numpy(), y_np)).to(x.device)  # type: ignore[attr-defined]

    return _dropping_weight_gradients(model, {"fgsm": lambda: run(fgsm), "pgd": lambda: run(pgd)})


def _adv_lib(model: nn.Module, x: Tensor, y: Tensor, w: Workload) -> dict[str, Run | None]:
    from adv_lib.attacks import pgd_linf

    return {
        "fgsm": None,
        "pgd": lambda: pgd_linf(model, x, y, w.eps, steps=w.steps, random_init=False,
                                absolute_step_size=w.step_size),
    }


PEERS = (
    Peer("torchattacks", "torchattacks", ("torchattacks",), _torchattacks),
    Peer("foolbox", "foolbox", ("foolbox",), _foolbox,
         note="timed through its public __call__, which besides the attack checks the input's bounds twice "
              "(four reads on the host), clips the result to the eps-ball again and runs one more forward pass "
              f"to say which inputs are adversarial; {WEIGHT_GRADIENTS}"),
    Peer("advertorch", "advertorch", ("advertorch.attacks",), _advertorch, note=WEIGHT_GRADIENTS),
    Peer("cleverhans", "cleverhans", ("cleverhans.torch.attacks.fast_gradient_method",), _cleverhans,
         note=f"in FGSM and in each PGD step {WEIGHT_GRADIENTS}; each call also compares the input with the "
              "box (two reductions, whose results go unused); its PGD runs with sanity_checks=False on every "
              "device: the default's final assert fails on CUDA (cleverhans issue #1248)"),
    Peer("ART", "adversarial-robustness-toolbox", ("art.attacks.evasion", "art.estimators.classification"), _art,
         note="it works on NumPy arrays, and the conversions are timed; it scans each step's gradient for NaN "
              "(its FGSM for infinities too); its PGD computes the attack's success rate as an argument of a log "
              "message, evaluated even when nothing is logged: two more forward passes (the clean and the "
              f"adversarial batch) per call; {WEIGHT_GRADIENTS}"),
    Peer("adv-lib", "adv-lib", ("adv_lib.attacks",), _adv_lib,
         note="adv-lib has no FGSM, and its pgd_linf returns for each sample the last iterate that "
              "fooled the model (else the clean input), not the final iterate: its PGD output "
              "differs from fgsmkit's by design",
         uncompared=("pgd",)),
)


def reason(error: BaseException) -> str:
    """One line saying what went wrong, for the list of skipped peers."""
    return f"{type(error).__name__}: {error}".splitlines()[0]


def available(peers: tuple[Peer, ...] = PEERS) -> tuple[list[Peer], dict[str, str]]:
    """The peers whose modules import, and ``{name: reason}`` for those that do not."""
    usable, skipped = [], {}
    for peer in peers:
        try:
            for module in peer.modules:
                importlib.import_module(module)
        except Exception as error:  # a broken peer raises anything at import (ImportError, AttributeError...)
            skipped[peer.name] = reason(error)
            continue
        usable.append(peer)
    return usable, skipped


def versions(peers: tuple[Peer, ...] = PEERS) -> dict[str, str | None]:
    """``{name: installed version}`` of each peer's distribution (None: not installed)."""
    found: dict[str, str | None] = {}
    for peer in peers:
        try:
            found[peer.name] = importlib.metadata.version(peer.distribution)
        except importlib.metadata.PackageNotFoundError:
            found[peer.name] = None
    return found
