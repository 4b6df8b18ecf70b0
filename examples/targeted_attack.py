"""Targeted attacks: make a trained network read every digit as the digit you choose.

Trains a maxout network on the MNIST sample shipped with fgsmkit, then asks it to read each
test digit as the next digit (0 as 1, 1 as 2, ..., 9 as 0), first with a single targeted FGSM
step and then with the targeted basic iterative method:

    python examples/targeted_attack.py
    python examples/targeted_attack.py --small    # a quick check

A targeted attack takes the target classes as ``y`` and ``targeted=True``; it steps *down* the
loss of the target class instead of up the loss of the true one.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import fgsmkit as fk
from fgsmkit.datasets import mnist_sample


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="fewer digits and epochs, for a quick check")
    parser.add_argument("--eps", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=20, help="steps of the iterative attack")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be >= 1; got {args.steps}")
    return args


def train(x: torch.Tensor, y: torch.Tensor, epochs: int) -> torch.nn.Module:
    model = fk.models.MaxoutMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(100):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    x_train, y_train = mnist_sample("train")
    x_test, y_test = mnist_sample("test")
    if args.small:
        x_train, y_train, x_test, y_test = x_train[:2000], y_train[:2000], x_test[:500], y_test[:500]
    model = train(x_train, y_train, epochs=2 if args.small else 3)

    target = (y_test + 1) % 10
    attacks = {
        "targeted FGSM": fk.fgsm(model, x_test, target, eps=args.eps, targeted=True),
        f"targeted iterative FGSM ({args.steps} steps)": fk.iterative_fgsm(
            model, x_test, target, eps=args.eps, step_size=2.5 * args.eps / args.steps, steps=args.steps,
            targeted=True,
        ),
    }
    with torch.no_grad():
        print(f"read as the target before any attack: {(model(x_test).argmax(dim=1) == target).float().mean():.1%}")
        for name, x_adv in attacks.items():
            prediction = model(x_adv).argmax(dim=1)
            print(f"{name}: read as the target {(prediction == target).float().mean():.1%}, "
                  f"target loss {F.cross_entropy(model(x_adv), target):.3f} "
                  f"(clean {F.cross_entropy(model(x_test), target):.3f})")

    # Per target class: how often the iterative attack reaches it.
    prediction = model(attacks[f"targeted iterative FGSM ({args.steps} steps)"]).argmax(dim=1)
    reached = [(prediction[target == c] == c).float().mean().item() for c in range(10)]
    print("reached, per target digit: " + ", ".join(f"{c}: {r:.0%}" for c, r in enumerate(reached)))


if __name__ == "__main__":
    main()
