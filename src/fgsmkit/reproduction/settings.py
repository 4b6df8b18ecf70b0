"""How big a run is: the full run, the ``--quick`` run of under a minute, and the tests' tiny run.

Every number the paper leaves open, and every place where we depart from it to fit the run on
two CPU cores, is written here once, with its reason; the report prints them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Settings:
    """Sizes and hyperparameters of one reproduction run.

    Parameters
    ----------
    name : str
        ``"full"``, ``"quick"`` or ``"smoke"`` (the tests' run); printed in the report.
    train_limit, val_size, test_limit : int or None
        Training examples used (None: all that remain after the validation split), examples
        held out of the training split for early stopping, test examples used (None: all).
    batch_size, lr, momentum_start, momentum_end : float
        Minibatch SGD as in the maxout paper's MNIST setup; the momentum grows linearly from
        ``momentum_start`` to ``momentum_end`` over the first half of each model's epochs.
    max_norm, input_dropout, dropout : float
        Max column norm and dropout probabilities of the maxout networks (maxout paper).
    eps, alpha : float
        The paper's FGSM size on [0, 1] pixels and the weight of the clean loss in eq. (6).
    hidden, large_hidden, pieces : tuple of int, int
        The paper's 240-unit maxout network and its larger 1600-unit one.
    maxout_epochs, large_epochs, control_epochs, l1_epochs, ensemble_epochs, linear_epochs,
    rbf_epochs : int
        Maximum epochs per model family; the best epoch on the validation split is kept.
    patience : int
        Stop a model when its validation error has not improved for this many epochs.
    ensemble_size : int
        Maxout networks in the ensemble of experiment 9 (the paper used 12).
    l1 : float
        L1 weight decay coefficient on the first layer (the paper's failing value, .0025).
    rbf_lr : float
        Adam's learning rate for the RBF network.
    rubbish_samples : int
        Gaussian noise inputs for experiment 10 (the paper used 10,000).
    notes : tuple of str
        What this run does differently from the paper, and why.
    """

    name: str
    train_limit: int | None
    val_size: int
    test_limit: int | None
    maxout_epochs: int
    large_epochs: int
    control_epochs: int
    l1_epochs: int
    ensemble_epochs: int
    ensemble_size: int
    linear_epochs: int
    rbf_epochs: int
    patience: int
    hidden: tuple[int, ...] = (240, 240)
    large_hidden: tuple[int, ...] = (1600, 1600)
    pieces: int = 5
    batch_size: int = 100
    lr: float = 0.1
    momentum_start: float = 0.5
    momentum_end: float = 0.7
    max_norm: float = 1.9365
    input_dropout: float = 0.2
    dropout: float = 0.5
    eps: float = 0.25
    alpha: float = 0.5
    l1: float = 0.0025
    rbf_lr: float = 0.01
    rubbish_samples: int = 10_000
    notes: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def training_fields(self) -> dict:
        """What changes how any one model trains; the per-family epochs travel in its recipe.

        A checkpoint records these, so that changing, say, the ensemble's size or the number of
        rubbish inputs keeps every trained model.
        """
        return training_fields(self.as_dict())


_NOT_TRAINING = frozenset({"name", "notes", "maxout_epochs", "large_epochs", "control_epochs", "l1_epochs",
                           "ensemble_epochs", "ensemble_size", "linear_epochs", "rbf_epochs", "rubbish_samples",
                           "test_limit"})


def training_fields(settings: dict) -> dict:
    """:meth:`Settings.training_fields` of settings as a dict (as a report records them)."""
    return {k: v for k, v in settings.items() if k not in _NOT_TRAINING}


COMMON_NOTES = (
    "Optimiser: minibatch SGD, batch 100, learning rate .1, momentum .5 growing linearly to .7 over "
    "the first half of each model's epochs (maxout paper, MNIST); no learning-rate decay.",
    "Maxout networks: 784-(240x5)-(240x5)-10, max column norm 1.9365, dropout .2 on the input and .5 on "
    "the hidden layers (maxout paper). The attacks see the network in eval mode (dropout off).",
    "Early stopping: the validation split is held out of the training split; each model keeps the epoch "
    "with the lowest validation error (adversarial validation error, FGSM eps .25, for the adversarially "
    "trained and noise-trained networks, clean validation error otherwise) and stops after `patience` "
    "epochs without improvement. The maxout paper then retrained on train+validation; we do not "
    "(it would double the training time).",
    "Adversarial training: fgsmkit.AdversarialLoss(alpha=.5, eps=.25), eq. (6), examples regenerated "
    "from the current weights at every step, clipped to [0, 1].",
    "Noise controls (experiment 6): the same eq. (6) mixture with the FGSM step replaced by random "
    "+/-eps per pixel or U(-eps, eps) noise, clipped to [0, 1].",
    "L1 control (experiment 6): mean cross-entropy + .0025 x sum |W| of the first maxout layer, on top "
    "of the plain maxout recipe; we report the training error of the epoch it keeps, as for every model "
    "(the paper: the trained model is stuck above 5% training error).",
    "Softmax regression and logistic regression (3 vs 7): the same SGD, no dropout, no max norm.",
    "RBF network: one-vs-rest detector log-likelihood (fgsmkit.models.rbf_detector_loss), trained with "
    "Adam at learning rate .01, because SGD at .1 (with or without centres started at the class means) "
    "left it above 30% validation error or made it diverge in a 15-epoch trial; the paper gives no "
    "RBF training details.",
    "All error rates are measured on the test split with FGSM at eps .25 in the L-inf norm, inputs "
    "clipped to [0, 1], the true labels used to build the examples.",
)

FULL = Settings(
    name="full",
    train_limit=None,
    val_size=1000,
    test_limit=None,
    maxout_epochs=100,
    large_epochs=10,
    control_epochs=50,
    l1_epochs=5,
    ensemble_epochs=20,
    ensemble_size=8,
    linear_epochs=30,
    rbf_epochs=30,
    patience=15,
    notes=COMMON_NOTES + (
        "Run sized for the embedded 8,000-image sample (1,000 held out for validation) to take about half "
        "an hour on two CPU cores. 240-unit maxout networks: at most 100 epochs (7,000 minibatches; the "
        "maxout paper trained for hundreds of epochs on 50,000 images); noise controls 50 epochs.",
        "1600-unit networks: 10 epochs each instead of training to convergence: one adversarial epoch of "
        "the 1600-unit network costs about 13x one of the 240-unit network on CPU. Their numbers show the "
        "trend, not the converged values.",
        "Ensemble (experiment 9): 8 independently seeded 240-unit maxout networks of at most 20 epochs each "
        "instead of the paper's 12, for time; the ensemble averages their softmax probabilities.",
        "L1 control: 5 epochs suffice to see whether the training error stays above 5%.",
        "On full MNIST (when it is on disk) the same settings take about 8x longer.",
    ),
)

QUICK = Settings(
    name="quick",
    train_limit=3000,
    val_size=500,
    test_limit=1000,
    maxout_epochs=6,
    large_epochs=2,
    control_epochs=4,
    l1_epochs=1,
    ensemble_epochs=3,
    ensemble_size=3,
    linear_epochs=10,
    rbf_epochs=10,
    patience=3,
    large_hidden=(480, 480),
    rubbish_samples=2000,
    notes=COMMON_NOTES + (
        "QUICK RUN (--quick): 3,000 training and 1,000 test images, 1-10 epochs per model, the large "
        "network shrunk to 480 units for 2 epochs, an ensemble of 3, 2,000 rubbish inputs. It checks "
        "that everything runs in under a minute (33 s on two CPU cores); its numbers are far from converged "
        "and are not a reproduction.",
    ),
)

SMOKE = Settings(
    name="smoke",
    train_limit=300,
    val_size=100,
    test_limit=200,
    maxout_epochs=3,
    large_epochs=2,
    control_epochs=2,
    l1_epochs=1,
    ensemble_epochs=1,
    ensemble_size=2,
    linear_epochs=2,
    rbf_epochs=2,
    patience=2,
    hidden=(24, 24),
    large_hidden=(40, 40),
    pieces=3,
    rubbish_samples=500,
    notes=COMMON_NOTES + ("SMOKE RUN: tiny networks on a few hundred images, for the tests only.",),
)

PRESETS = {s.name: s for s in (FULL, QUICK, SMOKE)}
