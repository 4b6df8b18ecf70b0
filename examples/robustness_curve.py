"""Error under FGSM as the budget grows, for a plainly and an adversarially trained maxout network.

Trains the same network twice on the MNIST sample shipped with fgsmkit, once with cross-entropy
and once with ``fk.AdversarialLoss(alpha=0.5, eps=0.25)``, then measures the test error of each
on FGSM examples for eps from 0 to 0.3:

    python examples/robustness_curve.py            # 8,000 digits, 4 epochs each
    python examples/robustness_curve.py --small    # a quick check

It prints the table and, when matplotlib is installed, saves the curves to
``robustness_curve.png``.
"""

from __future__ import annotations

import argparse
import functools

import torch
import torch.nn.functional as F

import fgsmkit as fk
from fgsmkit.datasets import mnist_sample
from fgsmkit.evaluation import evaluate_attack

EPSILONS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="fewer digits and epochs, for a quick check")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per model (default: 4, or 3 with --small)")
    parser.add_argument("--train-eps", type=float, default=0.25, help="eps of adversarial training (default: 0.25)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="robustness_curve.png", help="where to save the plot")
    args = parser.parse_args()
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1; got {args.epochs}")
    return args


def cross_entropy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def train(criterion, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> torch.nn.Module:
    """The same loop and the same initial weights for both models; only the criterion differs."""
    torch.manual_seed(seed)
    model = fk.models.MaxoutMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(100):
            loss = criterion(model, x[batch], y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def error_under_fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    return evaluate_attack(model, functools.partial(fk.fgsm, eps=eps), x, y).adversarial_error


def save_plot(path: str, curves: dict[str, list[float]], train_eps: float) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, errors in curves.items():
        label = f"adversarially trained (eps={train_eps})" if name == "adversarial" else "plainly trained"
        ax.plot(EPSILONS, [100 * e for e in errors], marker="o", label=label)
    ax.axvline(train_eps, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("FGSM eps (pixel units)")
    ax.set_ylabel("test error (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> None:
    args = parse_args()
    epochs = args.epochs if args.epochs is not None else (3 if args.small else 4)
    x_train, y_train = mnist_sample("train")
    x_test, y_test = mnist_sample("test")
    if args.small:
        x_train, y_train, x_test, y_test = x_train[:2000], y_train[:2000], x_test[:500], y_test[:500]

    models = {
        "plain": train(cross_entropy, x_train, y_train, epochs, args.seed),
        "adversarial": train(fk.AdversarialLoss(alpha=0.5, eps=args.train_eps), x_train, y_train, epochs, args.seed),
    }
    curves = {name: [error_under_fgsm(model, x_test, y_test, eps) for eps in EPSILONS]
              for name, model in models.items()}

    print("test error under FGSM")
    print(f"{'eps':>6}  {'plain':>8}  {'adversarial':>11}")
    for i, eps in enumerate(EPSILONS):
        print(f"{eps:6.2f}  {curves['plain'][i]:8.1%}  {curves['adversarial'][i]:11.1%}")
    at = EPSILONS.index(0.25)
    print(f"at eps=0.25: plain {curves['plain'][at]:.1%}, adversarially trained {curves['adversarial'][at]:.1%}")
    if save_plot(args.out, curves, args.train_eps):
        print(f"saved {args.out}")


if __name__ == "__main__":
    main()
