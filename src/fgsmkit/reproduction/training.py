"""Training loops of the reproduction, checkpointed after every epoch so a killed run resumes.

One loop serves every model; a :class:`Recipe` says what it minimises (plain cross-entropy,
eq. (6) adversarial training, its random-noise controls, or an L1 penalty on the first layer)
and which validation error picks the epoch that is kept. Each epoch reseeds the random number
generators from ``(seed, model name, epoch)``, so an epoch replayed after a restart draws
exactly the minibatches and dropout masks it would have drawn without the interruption.
"""

from __future__ import annotations

import functools
import json
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import fgsmkit as fk
from fgsmkit import evaluation
from fgsmkit.gradient import cross_entropy

from .data import Splits
from .runs import OtherRun, differences, held_preset, same
from .settings import Settings

KINDS = ("plain", "adversarial", "sign-noise", "uniform-noise", "l1")

# The version of the code that trains the models, recorded in every checkpoint. Bump it with any
# change that makes the same settings, seed and data train to other weights (a model's forward
# or initialisation, a loss, the attack used in training, this loop, their numerics): a run then
# refuses the older code's checkpoints instead of resuming them beside models the new code trained.
TRAINING_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    """What a model is trained on.

    Parameters
    ----------
    kind : str
        ``"plain"``, ``"adversarial"`` (eq. 6 with FGSM), ``"sign-noise"`` / ``"uniform-noise"``
        (eq. 6 with random +/-eps or U(-eps, eps) noise instead of FGSM) or ``"l1"`` (plain
        plus an L1 penalty on the first layer's weights).
    epochs : int
        Maximum number of epochs.
    select_on : str
        ``"clean"`` or ``"adversarial"``: the validation error that picks the kept epoch.
    optimizer : str
        ``"sgd"`` (the settings' learning rate and momentum schedule) or ``"adam"``.
    lr : float or None
        Learning rate; None takes the settings' (SGD) one.
    """

    kind: str
    epochs: int
    select_on: str = "clean"
    optimizer: str = "sgd"
    lr: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {self.kind!r}")
        if self.select_on not in ("clean", "adversarial"):
            raise ValueError(f"select_on must be 'clean' or 'adversarial'; got {self.select_on!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam'; got {self.optimizer!r}")


class CheckpointConflict(OtherRun):
    """A checkpoint was written by another run: another preset, other settings, seed, data, recipe
    or training code.

    It is kept, never overwritten: the other run's models may have taken hours to train.
    """


@dataclass
class Trained:
    """A trained model (in eval mode, the kept epoch's weights) and how it got there."""

    name: str
    model: nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    seconds: float


def derived_seed(seed: int, *parts: object) -> int:
    """A seed for one purpose (a model's initialisation, one of its epochs), stable across runs."""
    return (seed * 1_000_003 + zlib.crc32(repr(parts).encode())) % (2**63 - 1)


def loss_function(model: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    """The model's own training loss when it has one (the RBF network), else cross-entropy."""
    return getattr(model, "loss", cross_entropy)


def first_layer_weight(model: nn.Module) -> Tensor:
    return next(m.weight for m in model.modules() if isinstance(m, nn.Linear))


def momentum_at(epoch: int, recipe: Recipe, settings: Settings) -> float:
    """Momentum for 0-based ``epoch``: linear from start to end over the first half of the epochs."""
    ramp = max(1, recipe.epochs // 2)
    fraction = min(1.0, epoch / ramp)
    return settings.momentum_start + fraction * (settings.momentum_end - settings.momentum_start)


def fgsm_attack(model: nn.Module, eps: float) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """FGSM at ``eps`` with the model's own loss where it has one (the RBF network)."""
    return functools.partial(fk.fgsm, eps=eps, loss_fn=getattr(model, "loss", None))


def validation_errors(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> tuple[float, float]:
    """Clean and FGSM error of ``model`` on ``x``, in eval mode (its mode is restored)."""
    report = evaluation.evaluate_attack(model, fgsm_attack(model, eps), x, y, eval_mode=True)
    return report.clean_error, report.adversarial_error


class _Step:
    """One minibatch's loss under a recipe."""

    def __init__(self, recipe: Recipe, settings: Settings, model: nn.Module) -> None:
        self.recipe, self.settings = recipe, settings
        self.loss_fn = loss_function(model)
        if recipe.kind == "adversarial":
            self.adversarial = fk.AdversarialLoss(settings.alpha, settings.eps,
                                                  loss_fn=getattr(model, "loss", None))

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        kind, s = self.recipe.kind, self.settings
        if kind == "adversarial":
            return self.adversarial(model, x, y)
        clean = self.loss_fn(model(x), y).mean()
        if kind == "plain":
            return clean
        if kind == "l1":
            return clean + s.l1 * first_layer_weight(model).abs().sum()
        if kind == "sign-noise":
            noise = s.eps * torch.sign(torch.rand_like(x) - 0.5)
        else:
            noise = s.eps * (2 * torch.rand_like(x) - 1)
        noisy = (x + noise).clamp(0.0, 1.0)
        return s.alpha * clean + (1 - s.alpha) * self.loss_fn(model(noisy), y).mean()


def fingerprint(splits: Splits, recipe: Recipe, settings: Settings, seed: int) -> str:
    """What a checkpoint records of the run that trains its model; only a run with the same one resumes it.

    The data is matched by its digest; its name (``data_name``, :attr:`Splits.label`) is recorded
    beside it only to say, when a run refuses the checkpoint, which data it was trained on.
    """
    return json.dumps({"recipe": asdict(recipe), "preset": settings.name, "settings": settings.training_fields(),
                       "seed": seed, "data": splits.digest, "data_name": splits.label,
                       "training_version": TRAINING_VERSION}, sort_keys=True)


def _parsed(fingerprint: object) -> dict[str, Any] | None:
    """A checkpoint's fingerprint as a dict, or None if it is not one."""
    try:
        found = json.loads(fingerprint)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not isinstance(found, dict):
        return None
    # Checkpoints written before the version was recorded (2026-11-24 14:27 UTC) are read as version
    # 1: the recorded run's (docs/reproduction, made at 52ede8c) were, and regenerating its report
    # resumes them. Those from before e9d8456 (11:50 UTC that day) were not: their RBF network
    # computed its distances otherwise, and its rbf.pt (same layout) resumes, while their maxout
    # ones retrain (other parameter names). Nothing in the checkpoint tells the two apart.
    found.setdefault("training_version", 1)
    return found


def checkpoint_path(checkpoint_dir: str | Path, name: str) -> Path:
    return Path(checkpoint_dir) / f"{name}.pt"


def check_resumable(name: str, splits: Splits, recipe: Recipe, settings: Settings, seed: int,
                    checkpoint_dir: str | Path) -> None:
    """Raise :class:`CheckpointConflict` where :func:`train` with these arguments would find its
    checkpoint written by another run: called for every model before the first one trains.

    A missing or damaged checkpoint passes (:func:`train` trains that model from scratch).
    """
    path = checkpoint_path(checkpoint_dir, name)
    if not path.exists():
        return
    try:
        saved = fk.load_checkpoint(path)
    except ValueError:
        return
    _require_same_run(path, saved, fingerprint(splits, recipe, settings, seed), splits)


def _require_same_run(path: Path, saved: dict[str, Any], expected: str, splits: Splits) -> None:
    old, new = _parsed(saved.get("fingerprint")), json.loads(expected)
    if old is not None:
        # Checkpoints from before the preset was recorded are told apart by their settings, recipe and data.
        old.setdefault("preset", new["preset"])
        if old.get("data") not in (None, new["data"]) and old["data"] == splits.digest_with_test:
            old["data"] = new["data"]  # recorded before the digest left out the test split: the same training data
    if not same(old, new):
        raise CheckpointConflict(f"{path} was written by a run with {differences(old, new)}", held_preset(old, new))


def train(name: str, build: Callable[[], nn.Module], splits: Splits, recipe: Recipe, settings: Settings,
          seed: int, checkpoint_dir: str | Path, log: Callable[[str], None] = print) -> Trained:
    """Train (or resume, or load) one model and return it with the kept epoch's weights.

    After every epoch the weights, the optimiser's momentum, the best weights so far and the
    history are written atomically to ``checkpoint_dir/<name>.pt``. A later call with the same
    arguments continues from there; one that finds the model finished just loads it. A
    checkpoint written with another preset, other settings, seed, data, recipe or training code
    (:data:`TRAINING_VERSION`) raises :class:`CheckpointConflict` and is left as it is; a
    damaged one is trained again.

    Parameters
    ----------
    name : str
        The model's name: its checkpoint file and its random streams derive from it.
    build : callable
        Returns a freshly initialised model; called after seeding.
    splits : Splits
        Training and validation data.
    recipe : Recipe
        The objective, the epochs, and the validation error that selects the kept epoch.
    settings : Settings
        Batch size, optimiser, eps, alpha, patience.
    seed : int
        The run's seed.
    checkpoint_dir : path-like
        Folder of the checkpoints.
    log : callable
        Receives one progress line per epoch.

    Raises
    ------
    CheckpointConflict
        If ``checkpoint_dir/<name>.pt`` was written by a run with another preset, other settings,
        seed, data, recipe or training code.
    """
    path = checkpoint_path(checkpoint_dir, name)
    expected = fingerprint(splits, recipe, settings, seed)
    torch.manual_seed(derived_seed(seed, name, "init"))
    model = build()
    lr = settings.lr if recipe.lr is None else recipe.lr
    optimizer: torch.optim.Optimizer
    if recipe.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=settings.momentum_start)
    state = _resume(path, expected, splits, model, optimizer, name, log)
    label = f"[{name}: {recipe.kind}]"
    if state["done"]:
        log(f"{label} already trained (kept epoch {state['best_epoch']}); loaded {path}")
    step = _Step(recipe, settings, model)
    epoch = state["epoch"]
    while not state["done"] and epoch < recipe.epochs:
        started = time.perf_counter()
        torch.manual_seed(derived_seed(seed, name, "epoch", epoch))
        order = torch.randperm(len(splits.train_y), generator=torch.Generator().manual_seed(
            derived_seed(seed, name, "order", epoch)))
        if recipe.optimizer == "sgd":
            for group in optimizer.param_groups:
                group["momentum"] = momentum_at(epoch, recipe, settings)
        model.train()
        total, batches = 0.0, 0
        for start in range(0, len(order), settings.batch_size):
            index = order[start:start + settings.batch_size]
            loss = step(model, splits.train_x[index], splits.train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if hasattr(model, "apply_max_norm"):
                model.apply_max_norm()
            total, batches = total + float(loss.detach()), batches + 1
        epoch += 1
        val_clean, val_adv = validation_errors(model, splits.val_x, splits.val_y, settings.eps)
        score = val_adv if recipe.select_on == "adversarial" else val_clean
        if score < state["best_error"]:
            state.update(best_error=score, best_epoch=epoch, bad_epochs=0,
                         best={k: v.clone() for k, v in model.state_dict().items()})
        else:
            state["bad_epochs"] += 1
        state["history"].append({"epoch": epoch, "loss": total / max(batches, 1),
                                 "val_error": val_clean, "val_adv_error": val_adv})
        seconds = time.perf_counter() - started
        state["seconds"] += seconds
        state["epoch"] = epoch
        state["done"] = epoch >= recipe.epochs or state["bad_epochs"] >= settings.patience
        log(f"{label} epoch {epoch:3d}/{recipe.epochs}  loss {total / max(batches, 1):.4f}  "
            f"val error {100 * val_clean:5.2f}%  val FGSM error {100 * val_adv:5.2f}%  ({seconds:.1f}s)"
            + ("  *" if state["best_epoch"] == epoch else ""))
        if state["done"] and epoch < recipe.epochs:
            log(f"{label} stopping early: no better {recipe.select_on} validation error for "
                f"{settings.patience} epochs")
        fk.save_checkpoint({"fingerprint": expected, "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(), **state}, path)
    if state["best"] is not None:
        model.load_state_dict(state["best"])
    model.eval()
    return Trained(name, model, state["history"], state["best_epoch"], state["seconds"])


def _resume(path: Path, expected: str, splits: Splits, model: nn.Module, optimizer: torch.optim.Optimizer,
            name: str, log: Callable[[str], None]) -> dict[str, Any]:
    fresh: dict[str, Any] = {"epoch": 0, "done": False, "best": None, "best_error": math.inf,
                             "best_epoch": 0, "bad_epochs": 0, "history": [], "seconds": 0.0}
    if not path.exists():
        return fresh
    try:
        saved = fk.load_checkpoint(path)
    except ValueError as error:  # damaged: training again costs less than stopping the whole run
        log(f"[{name}] {error}; training from scratch")
        return fresh
    _require_same_run(path, saved, expected, splits)
    if _layout(saved["model"]) != _layout(model.state_dict()):
        # Another version of the model (load_state_dict would copy what matches, then raise).
        log(f"[{name}] {path} holds a model with other parameter names or shapes; training from scratch")
        return fresh
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if not saved["done"]:
        log(f"[{name}] resuming from {path} after epoch {saved['epoch']}")
    return {key: saved[key] for key in fresh}


def _layout(state: dict[str, Any]) -> dict[str, tuple[int, ...] | None]:
    """The names of a state dict's entries and the shapes of its tensors."""
    return {key: tuple(value.shape) if isinstance(value, torch.Tensor) else None for key, value in state.items()}
