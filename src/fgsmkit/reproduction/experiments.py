"""The paper's eleven MNIST results, each a function returning rows of (paper, ours).

Every experiment takes a :class:`Lab`, which trains each model the first time it is asked for
(resuming from its checkpoint) and hands the same trained model to every later experiment.
All numbers are percentages; the metrics come from :mod:`fgsmkit.evaluation` and the
adversarial examples from :func:`fgsmkit.fgsm`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import fgsmkit as fk
from fgsmkit import evaluation
from fgsmkit.evaluation import AttackReport

from .data import Splits, binary_subset
from .settings import Settings
from .training import Recipe, Trained, check_resumable, derived_seed, fgsm_attack, train

Row = dict[str, Any]


def row(experiment: str, metric: str, paper: float | str | None, ours: float | None, notes: str = "") -> Row:
    """One result: the paper's number (a percentage, or text) beside ours (a percentage).

    ``paper`` is written with the digits the paper printed (``16.0``, or the int ``99`` where it
    printed none): the report prints it as written.
    """
    return {"experiment": experiment, "metric": metric, "paper": paper,
            "ours": None if ours is None or math.isnan(ours) else round(float(ours), 4), "notes": notes}


class Ensemble(nn.Module):
    """Averages its members' class probabilities; the forward returns the log of that average."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        probabilities = torch.stack([torch.softmax(m(x), dim=1) for m in self.members]).mean(dim=0)
        return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()

    def predict_proba(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self(x).exp()


def maxout(settings: Settings, hidden: tuple[int, ...]) -> fk.models.MaxoutMLP:
    """The paper's maxout network with the maxout paper's dropout and max norm."""
    s = settings
    return fk.models.MaxoutMLP(784, hidden=hidden, pieces=s.pieces, dropout=s.dropout,
                               input_dropout=s.input_dropout, max_norm=s.max_norm)


def recipes(settings: Settings) -> dict[str, tuple[Callable[[], nn.Module], Recipe]]:
    """Every model of the run, by name: how to build it and how to train it."""
    s = settings
    small, large = s.hidden, s.large_hidden
    table: dict[str, tuple[Callable[[], nn.Module], Recipe]] = {
        "softmax": (lambda: fk.models.SoftmaxRegression(784, 10), Recipe("plain", s.linear_epochs)),
        "logistic-3v7": (lambda: fk.models.LogisticRegression(784), Recipe("plain", s.linear_epochs)),
        "rbf": (lambda: fk.models.RBFNetwork(784, 10),
                Recipe("plain", s.rbf_epochs, optimizer="adam", lr=s.rbf_lr)),
        "maxout": (lambda: maxout(s, small), Recipe("plain", s.maxout_epochs)),
        "maxout-adversarial": (lambda: maxout(s, small), Recipe("adversarial", s.maxout_epochs, "adversarial")),
        "maxout-large": (lambda: maxout(s, large), Recipe("plain", s.large_epochs)),
        "maxout-large-adversarial": (lambda: maxout(s, large),
                                     Recipe("adversarial", s.large_epochs, "adversarial")),
        "maxout-sign-noise": (lambda: maxout(s, small), Recipe("sign-noise", s.control_epochs, "adversarial")),
        "maxout-uniform-noise": (lambda: maxout(s, small),
                                 Recipe("uniform-noise", s.control_epochs, "adversarial")),
        "maxout-l1": (lambda: maxout(s, small), Recipe("l1", s.l1_epochs)),
    }
    for i in range(s.ensemble_size):
        table[f"ensemble-{i}"] = (lambda: maxout(s, small), Recipe("plain", s.ensemble_epochs))
    return table


@dataclass
class Lab:
    """Trains each model once, on demand, and keeps what the figures need."""

    settings: Settings
    splits: Splits
    seed: int
    checkpoint_dir: Path
    log: Callable[[str], None] = print
    trained: dict[str, Trained] = field(default_factory=dict)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)

    def model(self, name: str) -> nn.Module:
        if name not in self.trained:
            build, recipe = recipes(self.settings)[name]
            self.trained[name] = train(name, build, self.training_splits(name), recipe, self.settings, self.seed,
                                       self.checkpoint_dir, self.log)
        return self.trained[name].model

    def check_checkpoints(self) -> None:
        """Raise :class:`~fgsmkit.reproduction.training.CheckpointConflict` if any model's checkpoint
        was written by another run: before the first model trains, not hours into the run."""
        for name, (_, recipe) in recipes(self.settings).items():
            check_resumable(name, self.training_splits(name), recipe, self.settings, self.seed, self.checkpoint_dir)

    def training_splits(self, name: str) -> Splits:
        return self.binary_splits() if name == "logistic-3v7" else self.splits

    def binary_splits(self) -> Splits:
        s = self.splits
        parts = [binary_subset(x, y) for x, y in ((s.train_x, s.train_y), (s.val_x, s.val_y), (s.test_x, s.test_y))]
        return Splits(*(t for pair in parts for t in pair), source=s.source + ", digits 3 and 7", label=s.label)

    def generator(self, *purpose: object) -> torch.Generator:
        return torch.Generator().manual_seed(derived_seed(self.seed, *purpose))


def attacked(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> AttackReport:
    """FGSM against ``model`` (eval mode) measured on ``x``, keeping the examples."""
    return evaluation.evaluate_attack(model, fgsm_attack(model, eps), x, y, eval_mode=True, keep_examples=True)


def pct(value: float) -> float:
    return 100.0 * float(value)


def softmax_regression(lab: Lab) -> list[Row]:
    """1. Softmax regression under FGSM (section 4)."""
    d = lab.splits
    fgsm = attacked(lab.model("softmax"), d.test_x, d.test_y, lab.settings.eps)
    name = "1. softmax regression"
    return [
        row(name, "clean test error", None, pct(fgsm.clean_error)),
        row(name, "FGSM error", 99.9, pct(fgsm.adversarial_error)),
        row(name, "confidence on FGSM mistakes", 79.3, pct(fgsm.confidence_on_adversarial_mistakes)),
    ]


def maxout_fgsm(lab: Lab) -> list[Row]:
    """2. The maxout network under FGSM (section 4)."""
    s, d = lab.settings, lab.splits
    fgsm = attacked(lab.model("maxout"), d.test_x, d.test_y, s.eps)
    name = f"2. maxout {s.hidden[0]}x{s.pieces}"
    return [
        row(name, "clean test error", 0.94, pct(fgsm.clean_error)),
        row(name, "FGSM error", 89.4, pct(fgsm.adversarial_error)),
        row(name, "confidence on FGSM mistakes", 97.6, pct(fgsm.confidence_on_adversarial_mistakes)),
    ]


def logistic_3v7(lab: Lab) -> list[Row]:
    """3. Logistic regression on 3s and 7s, and Figure 2 (section 5)."""
    model = lab.model("logistic-3v7")
    b = lab.binary_splits()
    fgsm = attacked(model, b.test_x, b.test_y, lab.settings.eps)
    weight = model.linear.weight.detach().reshape(28, 28)
    lab.figures["figure2"] = {"weights": weight, "sign": weight.sign(),
                              "clean": b.test_x[:10, 0], "adversarial": fgsm.examples[:10, 0]}
    name = "3. logistic regression, 3 vs 7"
    return [
        row(name, "clean test error", 1.6, pct(fgsm.clean_error)),
        row(name, "FGSM error", 99, pct(fgsm.adversarial_error),
            "the step eps * sign(w) towards the other class, clipped to [0, 1], which cancels it wherever "
            "it would take a pixel at 0 or 1 out of range (the paper does not say it clipped): Figure 2"),
    ]


# Section 6 of the paper trains its 240-unit maxout network adversarially (0.94% -> 0.84% clean
# error) but reports FGSM error, confidence and transfer only for the 1600-unit one, and compares
# it with the 240-unit network's 89.4% from section 4. Rows borrowing a number say so.
FROM_LARGE = "the paper's number is for its 1600x5 network"
FROM_ORIGINAL = "the paper's number is for its 240x5 network"


def _borrowed(note: str, units: int, pieces: int) -> str:
    """``note`` (FROM_LARGE or FROM_ORIGINAL) where this row's network is not the one the paper's
    number is for (a quick run's 480x5 beside the paper's 1600x5, say), else nothing."""
    return "" if note.endswith(f" its {units}x{pieces} network") else note


def _notes(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


def adversarial_training(lab: Lab) -> list[Row]:
    """4. Adversarial training of maxout, eq. (6), alpha .5, early stopping (section 6); Figure 3."""
    s = lab.settings
    rows = _adversarial_training(lab, s.hidden[0], "maxout", 0.94, 0.84, large=False)
    lab.figures["figure3"] = {"plain": _first_layer(lab.model("maxout"), s.pieces),
                              "adversarial": _first_layer(lab.model("maxout-adversarial"), s.pieces)}
    return rows


def large_networks(lab: Lab) -> list[Row]:
    """4 and 5 with the larger maxout network (run last: it is the most expensive to train)."""
    s = lab.settings
    return (_adversarial_training(lab, s.large_hidden[0], "maxout-large", 1.14, 0.782, large=True)
            + _transfer(lab, s.large_hidden[0], "maxout-large"))



def _adversarial_training(lab: Lab, size: int, base: str, paper_plain: float, paper_adv: float, *,
                          large: bool) -> list[Row]:
    s, d = lab.settings, lab.splits
    plain = attacked(lab.model(base), d.test_x, d.test_y, s.eps)
    robust = attacked(lab.model(base + "-adversarial"), d.test_x, d.test_y, s.eps)
    kept = f"kept epoch {lab.trained[base + '-adversarial'].best_epoch}"
    name = f"4. adversarial training, maxout {size}x{s.pieces}"
    from_large = _borrowed(FROM_LARGE, size, s.pieces)
    own = _borrowed(FROM_LARGE if large else FROM_ORIGINAL, size, s.pieces)  # the clean errors' network
    return [
        row(name, "clean test error, plain training", paper_plain, pct(plain.clean_error),
            _notes(f"kept epoch {lab.trained[base].best_epoch}", own)),
        row(name, "clean test error, adversarial training", paper_adv, pct(robust.clean_error), _notes(kept, own)),
        row(name, "FGSM error, plain training", 89.4, pct(plain.adversarial_error),
            _borrowed(FROM_ORIGINAL, size, s.pieces)),
        row(name, "FGSM error, adversarial training", 17.9, pct(robust.adversarial_error), from_large),
        row(name, "confidence on FGSM mistakes, adversarial training", 81.4,
            pct(robust.confidence_on_adversarial_mistakes), from_large),
    ]


def _first_layer(model: nn.Module, pieces: int, units: int = 10) -> Tensor:
    """The first maxout layer's filters, ``(units, pieces, 28, 28)``."""
    weight = next(m.weight for m in model.modules() if isinstance(m, nn.Linear)).detach()
    return weight[: units * pieces].reshape(units, pieces, 28, 28)


def transfer(lab: Lab) -> list[Row]:
    """5. Examples made on the plain maxout fool the adversarially trained one, and back (section 6)."""
    return _transfer(lab, lab.settings.hidden[0], "maxout")


def _transfer(lab: Lab, size: int, base: str) -> list[Row]:
    s, d = lab.settings, lab.splits
    plain, robust = lab.model(base), lab.model(base + "-adversarial")
    from_plain = attacked(plain, d.test_x, d.test_y, s.eps).examples
    from_robust = attacked(robust, d.test_x, d.test_y, s.eps).examples
    name = f"5. transfer, maxout {size}x{s.pieces}"
    borrowed = _borrowed(FROM_LARGE, size, s.pieces)
    return [
        row(name, "plain model's examples, adversarially trained model's error", 19.6,
            pct(evaluation.error_rate(robust, from_plain, d.test_y, eval_mode=True)), borrowed),
        row(name, "adversarially trained model's examples, plain model's error", 40.9,
            pct(evaluation.error_rate(plain, from_robust, d.test_y, eval_mode=True)), borrowed),
    ]


def controls(lab: Lab) -> list[Row]:
    """6. Training on random noise instead of FGSM (section 6), and L1 weight decay (section 5)."""
    s, d = lab.settings, lab.splits
    rows = []
    for key, label, paper_error, paper_conf in (("sign-noise", "random +/-eps noise", 86.2, 97.3),
                                                ("uniform-noise", "U(-eps, eps) noise", 90.4, 97.8)):
        fgsm = attacked(lab.model(f"maxout-{key}"), d.test_x, d.test_y, s.eps)
        rows += [
            row("6. controls", f"FGSM error, trained with {label}", paper_error, pct(fgsm.adversarial_error)),
            row("6. controls", f"confidence on FGSM mistakes, trained with {label}", paper_conf,
                pct(fgsm.confidence_on_adversarial_mistakes)),
        ]
    l1 = lab.model("maxout-l1")
    kept = lab.trained["maxout-l1"]
    # The kept epoch, as for every model: the trained model, which the paper finds stuck above 5%.
    rows.append(row("6. controls", f"training error with L1 weight decay {s.l1} on the first layer", "> 5%",
                    pct(evaluation.error_rate(l1, d.train_x, d.train_y, eval_mode=True)),
                    f"kept epoch {kept.best_epoch} of {len(kept.history)} (lowest validation error, as for "
                    "every model): the trained model the paper finds stuck above 5%"))
    return rows


def rbf_network(lab: Lab) -> list[Row]:
    """7. The shallow RBF network resists FGSM, and is unsure of its mistakes (section 7)."""
    s, d = lab.settings, lab.splits
    model = lab.model("rbf")
    fgsm = attacked(model, d.test_x, d.test_y, s.eps)
    name = "7. RBF network"
    return [
        row(name, "clean test error", None, pct(fgsm.clean_error)),
        row(name, "FGSM error", 55.4, pct(fgsm.adversarial_error)),
        row(name, "confidence on FGSM mistakes", 1.2, pct(fgsm.confidence_on_adversarial_mistakes),
            "the detectors' own probabilities, not renormalised"),
        row(name, "mean confidence on clean test examples", 60.6,
            pct(evaluation.mean_confidence(model, d.test_x, eval_mode=True))),
    ]


def agreement(lab: Lab) -> list[Row]:
    """8. Other models misclassify maxout's adversarial examples, often as the same class (section 8)."""
    s, d = lab.settings, lab.splits
    maxout, softmax, rbf = lab.model("maxout"), lab.model("softmax"), lab.model("rbf")
    x_adv = attacked(maxout, d.test_x, d.test_y, s.eps).examples
    name = "8. agreement on maxout's FGSM examples"
    rows = []
    for other, label, paper_mistakes, paper_both in ((softmax, "softmax", 54.6, 84.6), (rbf, "RBF", 16.0, 54.3)):
        agree = evaluation.agreement_on_mistakes(maxout, other, x_adv, d.test_y, eval_mode=True)
        rows += [
            row(name, f"{label} predicts maxout's class, over maxout's mistakes", paper_mistakes,
                pct(agree["agreement_on_a_mistakes"]), f"{agree['a_mistakes']} mistakes"),
            row(name, f"{label} predicts maxout's class, where both err", paper_both,
                pct(agree["agreement_when_both_err"]), f"{agree['both_mistakes']} shared mistakes"),
        ]
    agree = evaluation.agreement_on_mistakes(rbf, softmax, x_adv, d.test_y, eval_mode=True)
    rows.append(row(name, "RBF and softmax predict the same class, where both err", 53.6,
                    pct(agree["agreement_when_both_err"]), f"{agree['both_mistakes']} shared mistakes"))
    return rows


def ensemble(lab: Lab) -> list[Row]:
    """9. An ensemble of maxout networks is barely more robust (section 9)."""
    s, d = lab.settings, lab.splits
    members = [lab.model(f"ensemble-{i}") for i in range(s.ensemble_size)]
    team = Ensemble(members).eval()
    whole = attacked(team, d.test_x, d.test_y, s.eps)
    one = attacked(members[0], d.test_x, d.test_y, s.eps).examples
    name = f"9. ensemble of {s.ensemble_size} maxout networks"
    note = f"the paper's ensemble has 12 networks; ours {s.ensemble_size}"
    return [
        row(name, "clean test error of the ensemble", None, pct(whole.clean_error)),
        row(name, "FGSM error, attacking the whole ensemble", 91.1, pct(whole.adversarial_error), note),
        row(name, "ensemble's error, attacking one member", 87.9,
            pct(evaluation.error_rate(team, one, d.test_y, eval_mode=True)), note),
    ]


def rubbish(lab: Lab) -> list[Row]:
    """10. Gaussian noise called a digit with confidence (Appendix A)."""
    s = lab.settings
    name = "10. rubbish inputs, N(0, I)"
    rows = []
    for key, label, paper_rate, paper_conf in (("maxout", "maxout", 98.35, 92.8),
                                               ("softmax", "softmax regression", 59.8, 70.8),
                                               ("rbf", "RBF network", 0, None)):
        # The same noise for every model: a fresh generator with the same seed.
        rate, confidence = evaluation.rubbish_rate(lab.model(key), s.rubbish_samples, (1, 28, 28),
                                                   generator=lab.generator("rubbish"), eval_mode=True)
        rows.append(row(name, f"{label}: classified with p > .5", paper_rate, pct(rate),
                        f"{s.rubbish_samples} samples, not clipped to [0, 1]"))
        if paper_conf is not None:
            rows.append(row(name, f"{label}: mean confidence of those", paper_conf, pct(confidence)))
    return rows


def logits_along_fgsm(lab: Lab) -> list[Row]:
    """11. Figure 4: a maxout network's logits are piecewise linear along the FGSM direction."""
    d = lab.splits
    model = lab.model("maxout")
    x, y = d.test_x[:1], d.test_y[:1]
    direction = fk.fgsm(model, x, y, eps=1.0, clip=None, eval_mode=True) - x
    eps = torch.linspace(-15.0, 15.0, 301)
    with torch.no_grad():
        logits = model(x + eps.view(-1, 1, 1, 1) * direction)
    straight = _linear_fit_r2(eps, logits)
    left, right = eps <= 0, eps >= 0
    two_pieces = (_linear_fit_r2(eps[left], logits[left]) + _linear_fit_r2(eps[right], logits[right])) / 2
    strip_eps = torch.linspace(-15.0, 15.0, 7)
    lab.figures["figure4"] = {"eps": eps, "logits": logits, "label": int(y), "strip_eps": strip_eps.tolist(),
                              "strip": (x + strip_eps.view(-1, 1, 1, 1) * direction)[:, 0]}
    name = "11. logits along the FGSM direction (Figure 4)"
    note = "eps from -15 to 15, inputs not clipped; 100% is exactly linear"
    return [
        row(name, "R^2 of one straight line per logit, mean over the 10 logits", "piecewise linear (figure)",
            pct(straight), note),
        row(name, "R^2 of two lines per logit (eps <= 0, eps >= 0), mean", "piecewise linear (figure)",
            pct(two_pieces), note),
    ]


def _linear_fit_r2(t: Tensor, values: Tensor) -> float:
    t = (t - t.mean()).unsqueeze(1)
    centred = values - values.mean(dim=0)
    slope = (t * centred).sum(dim=0) / (t * t).sum()
    residual = centred - t * slope
    return float((1 - residual.pow(2).sum(dim=0) / centred.pow(2).sum(dim=0).clamp_min(1e-12)).mean())


EXPERIMENTS: tuple[Callable[[Lab], list[Row]], ...] = (
    softmax_regression, maxout_fgsm, logistic_3v7, adversarial_training, transfer, controls,
    rbf_network, agreement, ensemble, rubbish, logits_along_fgsm, large_networks,
)
