"""Error under FGSM and iterative FGSM as eps grows, for a plainly and an adversarially trained maxout network.

Trains the same network twice on the MNIST sample shipped with fgsmkit, once with cross-entropy
and once with ``fk.AdversarialLoss(alpha=0.5, eps=0.25)``, then measures the test error of each
for eps from 0 to 0.3, under FGSM and under iterative FGSM (the basic iterative method: by
default 10 steps of 2.5 * eps / 10, or 5 of 2.5 * eps / 5 with ``--small``):

    python examples/robustness_curve.py            # 8,000 digits, 4 epochs each
    python examples/robustness_curve.py --small    # a quick check

FGSM alone overstates the robustness of a model trained on FGSM examples: it learns to resist
that one step (label leaking, gradient masking) far better than it resists a few smaller steps
in the same budget, and its FGSM error can even fall as eps grows. Judge it by the worse of the
two attacks, the iterative one (see the guide's page on label leaking).

It prints the table and, when matplotlib is installed, saves the curves to
``robustness_curve.png`` (solid: FGSM, dashed: iterative FGSM).
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
    parser.add_argument("--steps", type=int, default=None,
                        help="steps of iterative FGSM (default: 10, or 5 with --small)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="robustness_curve.png", help="where to save the plot")
    args = parser.parse_args()
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1; got {args.epochs}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1; got {args.steps}")
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


def errors(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int) -> tuple[float, float]:
    """Test error under FGSM and under iterative FGSM with budget ``eps``."""
    fgsm = functools.partial(fk.fgsm, eps=eps)
    iterative = functools.partial(fk.iterative_fgsm, eps=eps, step_size=2.5 * eps / steps, steps=steps)
    return (evaluate_attack(model, fgsm, x, y).adversarial_error,
            evaluate_attack(model, iterative, x, y).adversarial_error)


def save_plot(path: str, curves: dict[str, dict[str, list[float]]], train_eps: float, steps: int) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for color, (name, by_attack) in zip(["C0", "C1"], curves.items()):
        label = f"adversarially trained (eps={train_eps})" if name == "adversarial" else "plainly trained"
        ax.plot(EPSILONS, [100 * e for e in by_attack["fgsm"]], marker="o", color=color, label=f"{label}, FGSM")
        ax.plot(EPSILONS, [100 * e for e in by_attack["iterative"]], marker="s", color=color, linestyle="--",
                label=f"{label}, iterative ({steps} steps)")
    ax.axvline(train_eps, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("eps (pixel units)")
    ax.set_ylabel("test error (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def main() -> None:
    args = parse_args()
    epochs = args.epochs if args.epochs is not None else (3 if args.small else 4)
    steps = args.steps if args.steps is not None else (5 if args.small else 10)
    x_train, y_train = mnist_sample("train")
    x_test, y_test = mnist_sample("test")
    if args.small:
        x_train, y_train, x_test, y_test = x_train[:2000], y_train[:2000], x_test[:500], y_test[:500]

    models = {
        "plain": train(cross_entropy, x_train, y_train, epochs, args.seed),
        "adversarial": train(fk.AdversarialLoss(alpha=0.5, eps=args.train_eps), x_train, y_train, epochs, args.seed),
    }
    curves = {}
    for name, model in models.items():
        pairs = [errors(model, x_test, y_test, eps, steps) for eps in EPSILONS]
        curves[name] = {"fgsm": [f for f, _ in pairs], "iterative": [i for _, i in pairs]}

    print(f"test error under FGSM and under iterative FGSM ({steps} steps of 2.5 * eps / {steps})")
    print(f"{'':6}  {'plain':^20}  {'adversarial':^20}".rstrip())
    print(f"{'eps':>6}  {'FGSM':>8}  {'iterative':>10}  {'FGSM':>8}  {'iterative':>10}")
    for i, eps in enumerate(EPSILONS):
        row = [curves[name][attack][i] for name in ("plain", "adversarial") for attack in ("fgsm", "iterative")]
        print(f"{eps:6.2f}  {row[0]:8.1%}  {row[1]:10.1%}  {row[2]:8.1%}  {row[3]:10.1%}")
    at = EPSILONS.index(0.25)
    for name, label in [("plain", "plain"), ("adversarial", "adversarially trained")]:
        print(f"at eps=0.25, {label}: FGSM {curves[name]['fgsm'][at]:.1%}, "
              f"iterative {curves[name]['iterative'][at]:.1%}")
    print("FGSM alone overstates the robustness of a model trained on FGSM examples: "
          "judge it by the worse of the two.")
    if save_plot(args.out, curves, args.train_eps, steps):
        print(f"saved {args.out}")


if __name__ == "__main__":
    main()
