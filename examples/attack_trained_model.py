"""Train a maxout network on MNIST, attack it with FGSM, and look at the adversarial digits.

Runs offline on the MNIST sample shipped with fgsmkit, in well under a minute on a CPU:

    python examples/attack_trained_model.py            # 8,000 training digits, 3 epochs
    python examples/attack_trained_model.py --small    # a quick check: 2,000 digits, 2 epochs

It prints the clean and adversarial error and saves a picture of clean digits, the perturbation
and the adversarial digits (``attack_trained_model.png``) when matplotlib is installed; without
it, it draws one clean and one adversarial digit as text.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import fgsmkit as fk
from fgsmkit.datasets import mnist_sample
from fgsmkit.evaluation import confidence_on_mistakes, error_rate


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="fewer digits and epochs, for a quick check")
    parser.add_argument("--eps", type=float, default=0.25, help="FGSM budget in pixel units (default: 0.25)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: 3, or 2 with --small)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="attack_trained_model.png", help="where to save the picture")
    args = parser.parse_args()
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1; got {args.epochs}")
    return args


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> torch.nn.Module:
    """An ordinary training loop: SGD with momentum, cross-entropy, batches of 100."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for epoch in range(epochs):
        for batch in torch.randperm(len(x)).split(100):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.3f}")
    return model.eval()


def ascii_digit(image: torch.Tensor) -> list[str]:
    """A 28 x 28 image as 28 lines of text, darker pixels as denser characters."""
    shades = " .:-=+*#%@"
    levels = (image.reshape(28, 28).clamp(0, 1) * (len(shades) - 1)).round().long()
    return ["".join(shades[int(v)] for v in row) for row in levels]


def save_picture(path: str, x: torch.Tensor, x_adv: torch.Tensor, clean_pred: torch.Tensor,
                 adv_pred: torch.Tensor, eps: float) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    n = len(x)
    fig, axes = plt.subplots(3, n, figsize=(1.4 * n, 4.6))
    rows = [
        (x, [f"{int(p)}" for p in clean_pred], "clean"),
        ((x_adv - x) / (2 * eps) + 0.5, ["" for _ in range(n)], "perturbation"),
        (x_adv, [f"{int(p)}" for p in adv_pred], f"FGSM, eps={eps}"),
    ]
    for r, (images, titles, label) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            ax.imshow(images[i].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if titles[i]:
                ax.set_title(f"predicted {titles[i]}", fontsize=8)
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    epochs = args.epochs if args.epochs is not None else (2 if args.small else 3)
    x_train, y_train = mnist_sample("train")
    x_test, y_test = mnist_sample("test")
    if args.small:
        x_train, y_train, x_test, y_test = x_train[:2000], y_train[:2000], x_test[:500], y_test[:500]

    model = train(fk.models.MaxoutMLP(), x_train, y_train, epochs)

    # The attack: one call. The model is in eval mode, so the attack is made against it as deployed.
    x_adv = fk.fgsm(model, x_test, y_test, eps=args.eps)

    print(f"clean error: {error_rate(model, x_test, y_test):.1%}")
    print(f"adversarial error (FGSM, eps={args.eps}): {error_rate(model, x_adv, y_test):.1%}")
    print(f"mean confidence on adversarial mistakes: {confidence_on_mistakes(model, x_adv, y_test):.1%}")
    print(f"largest pixel change: {(x_adv - x_test).abs().max().item():.3f}")

    # Show the first digits the model reads correctly but gets wrong after the attack.
    with torch.no_grad():
        clean_pred, adv_pred = model(x_test).argmax(dim=1), model(x_adv).argmax(dim=1)
    fooled = ((clean_pred == y_test) & (adv_pred != y_test)).nonzero().flatten()[:8]
    if len(fooled) == 0:
        print("no digit was both classified correctly and fooled; nothing to show")
        return
    if save_picture(args.out, x_test[fooled], x_adv[fooled], clean_pred[fooled], adv_pred[fooled], args.eps):
        print(f"saved {args.out}")
    else:
        i = int(fooled[0])
        print(f"(install matplotlib for a picture) a {int(y_test[i])}, read as {int(adv_pred[i])} after the attack:")
        for left, right in zip(ascii_digit(x_test[i]), ascii_digit(x_adv[i])):
            print(f"{left}   {right}")


if __name__ == "__main__":
    main()
