"""An ordinary training loop, trained adversarially by swapping its criterion, with checkpoints.

The loop is the one you already have; two lines change: the criterion becomes
``fk.AdversarialLoss(alpha=0.5, eps=0.25)`` (the paper's objective) and it is called with the
model, ``criterion(model, x, y)``. The clean logits it keeps give the training accuracy without
another forward pass.

After every epoch the model, the optimizer, the epoch and the settings of the run are saved with
``fk.save_checkpoint`` (atomically: a run killed while saving keeps the previous checkpoint).
Run it again with more epochs and it resumes from the checkpoint:

    python examples/adversarial_training_loop.py --epochs 2
    python examples/adversarial_training_loop.py --epochs 4      # resumes at epoch 3
    python examples/adversarial_training_loop.py --small          # a quick check

After every epoch it reports the held-out error, clean, under FGSM and under iterative FGSM (the
basic iterative method: ``--steps`` steps of 2.5 * eps / steps, in the same budget). FGSM alone
overstates the robustness of a model trained on FGSM examples: it learns to resist that one
step (label leaking, gradient masking) far better than the iterative attack, whose error is
the one to judge it by.

It resumes only a run of the same settings (``--small``, ``--eps``, ``--alpha``, ``--seed``):
a checkpoint of other ones is refused, since continuing it would train on other data or towards
another objective. ``--small`` has a checkpoint of its own, ``adversarial_training-small.pt``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import torch

import fgsmkit as fk
from fgsmkit.datasets import mnist_sample
from fgsmkit.evaluation import evaluate_attack


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="fewer digits, for a quick check")
    parser.add_argument("--epochs", type=int, default=None, help="total epochs (default: 4, or 2 with --small)")
    parser.add_argument("--eps", type=float, default=0.25)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint file, resumed if present (default: adversarial_training.pt, "
                             "or adversarial_training-small.pt with --small)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=10,
                        help="steps of the iterative attack in the evaluation (default: 10)")
    args = parser.parse_args()
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1; got {args.epochs}")
    if args.steps < 1:
        parser.error(f"--steps must be >= 1; got {args.steps}")
    if args.checkpoint is None:
        args.checkpoint = "adversarial_training-small.pt" if args.small else "adversarial_training.pt"
    return args


def run_settings(args: argparse.Namespace) -> dict:
    """What defines the run (its data, objective and initial weights): a checkpoint continues
    only a run of the same. The number of epochs is not one of them."""
    return {"small": args.small, "eps": args.eps, "alpha": args.alpha, "seed": args.seed}


def check_resumable(state: dict, settings: dict, path: str) -> None:
    """Refuse, naming the differences, a checkpoint written with other settings."""
    saved = state.get("settings")
    if saved == settings:
        return
    if saved is None:
        reason = f"{path} does not record the settings it was trained with, so it cannot be told from another run"
    else:
        differences = "; ".join(
            f"--{name} {saved.get(name)!r} there, {value!r} here"
            for name, value in settings.items() if saved.get(name) != value
        )
        reason = f"{path} was trained with other settings ({differences}); resuming it would continue that other run"
    sys.exit(f"{reason}. Pass another --checkpoint, or delete {path} to start over.")


def main() -> None:
    args = parse_args()
    epochs = args.epochs if args.epochs is not None else (2 if args.small else 4)
    settings = run_settings(args)
    state = None
    if os.path.exists(args.checkpoint):
        state = fk.load_checkpoint(args.checkpoint)   # weights_only=True: loading runs no code
        check_resumable(state, settings, args.checkpoint)

    torch.manual_seed(args.seed)
    x_train, y_train = mnist_sample("train")
    x_test, y_test = mnist_sample("test")
    if args.small:
        x_train, y_train, x_test, y_test = x_train[:2000], y_train[:2000], x_test[:500], y_test[:500]

    model = fk.models.MaxoutMLP(max_norm=1.9365)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    criterion = fk.AdversarialLoss(alpha=args.alpha, eps=args.eps)   # was: torch.nn.CrossEntropyLoss()

    # The attacks of the evaluation, with the budget of the training.
    fgsm = functools.partial(fk.fgsm, eps=args.eps)
    iterative = functools.partial(fk.iterative_fgsm, eps=args.eps, step_size=2.5 * args.eps / args.steps,
                                  steps=args.steps)

    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start = state["epoch"]
        print(f"resumed from {args.checkpoint} after epoch {start}")

    for epoch in range(start, epochs):
        model.train()
        clean_correct = adversarial_correct = seen = 0
        for batch in torch.randperm(len(x_train)).split(100):
            x, y = x_train[batch], y_train[batch]
            loss = criterion(model, x, y)                              # was: criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.apply_max_norm()
            # Accuracy logging from the passes the loss already made: no extra forward.
            clean_correct += (criterion.clean_logits.argmax(dim=1) == y).sum().item()
            adversarial_correct += (criterion.adversarial_logits.argmax(dim=1) == y).sum().item()
            seen += len(y)

        # Held-out error, clean, under FGSM and under iterative FGSM, with the model in eval mode.
        # FGSM alone would overstate the robustness of a model trained on FGSM examples.
        report = evaluate_attack(model, fgsm, x_test, y_test, eval_mode=True)
        iterative_report = evaluate_attack(model, iterative, x_test, y_test, eval_mode=True)
        print(
            f"epoch {epoch + 1}/{epochs}: train accuracy clean {clean_correct / seen:.1%}, "
            f"adversarial {adversarial_correct / seen:.1%} | test error clean {report.clean_error:.1%}, "
            f"FGSM {report.adversarial_error:.1%}, iterative FGSM {iterative_report.adversarial_error:.1%}"
        )
        fk.save_checkpoint(
            {"epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "rng": torch.get_rng_state(), "settings": settings},
            args.checkpoint,
        )
        print(f"saved checkpoint {args.checkpoint}")

    if start >= epochs:
        print(f"nothing to do: the checkpoint already holds {start} epochs")


if __name__ == "__main__":
    main()
