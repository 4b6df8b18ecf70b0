"""Figures 2, 3 and 4 of the paper, drawn with matplotlib (the optional ``figures`` extra)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_figures(figures: dict[str, dict[str, Any]], out: str | os.PathLike[str]) -> list[str]:
    """Draw the figures whose data the experiments left in ``figures``; returns the file names.

    Raises
    ------
    ImportError
        Without matplotlib (``pip install "fgsmkit[figures]"``).
    """
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    drawers = {"figure2": _figure2, "figure3": _figure3, "figure4": _figure4}
    names = []
    for key, draw in drawers.items():
        if key in figures:
            name = f"{key}.png"
            fig = draw(figures[key])
            fig.savefig(out / name, dpi=110, bbox_inches="tight")
            import matplotlib.pyplot as plt

            plt.close(fig)
            names.append(name)
    return names


def _image(ax: Any, image: Tensor, cmap: str = "gray", symmetric: bool = False) -> None:
    image = image.detach().cpu().numpy()
    if symmetric:
        bound = float(abs(image).max()) or 1.0
        ax.imshow(image, cmap=cmap, vmin=-bound, vmax=bound)
    else:
        ax.imshow(image, cmap=cmap, vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])


def _figure2(data: dict[str, Any]) -> Any:
    """Logistic regression on 3 vs 7: weights, their sign, clean digits, FGSM digits."""
    import matplotlib.pyplot as plt

    count = len(data["clean"])
    fig = plt.figure(figsize=(12, 3.4))
    grid = fig.add_gridspec(2, 2 + count, width_ratios=[2.2, 2.2] + [1] * count)
    for col, key, title in ((0, "weights", "(a) weights w"), (1, "sign", "(b) sign(w)")):
        ax = fig.add_subplot(grid[:, col])
        _image(ax, data[key], cmap="gray", symmetric=True)
        ax.set_title(title, fontsize=9)
    for i in range(count):
        _image(fig.add_subplot(grid[0, 2 + i]), data["clean"][i])
        _image(fig.add_subplot(grid[1, 2 + i]), data["adversarial"][i])
    fig.text(0.62, 0.97, "(c) clean 3s and 7s", ha="center", fontsize=9)
    fig.text(0.62, 0.49, "(d) FGSM, eps = .25", ha="center", fontsize=9)
    fig.suptitle("Figure 2: logistic regression on MNIST 3 vs 7", y=1.06, fontsize=10)
    return fig


def _figure3(data: dict[str, Any]) -> Any:
    """First-layer maxout filters: plain training (left) and adversarial training (right)."""
    import matplotlib.pyplot as plt

    units, pieces = data["plain"].shape[:2]
    fig, axes = plt.subplots(units, 2 * pieces + 1, figsize=(2 * pieces * 0.75 + 0.4, units * 0.75),
                             gridspec_kw={"width_ratios": [1] * pieces + [0.3] + [1] * pieces})
    for u in range(units):
        for k in range(pieces):
            _image(axes[u, k], data["plain"][u, k], symmetric=True)
            _image(axes[u, pieces + 1 + k], data["adversarial"][u, k], symmetric=True)
        axes[u, pieces].axis("off")
    axes[0, pieces // 2].set_title("naive (plain) training", fontsize=9)
    axes[0, pieces + 1 + pieces // 2].set_title("adversarial training", fontsize=9)
    fig.suptitle("Figure 3: first-layer maxout weights (rows: units, columns: pieces)", fontsize=10)
    return fig


def _figure4(data: dict[str, Any]) -> Any:
    """The ten logits of one example along the FGSM direction, and the inputs along the way."""
    import matplotlib.pyplot as plt

    strip = data["strip"]
    fig = plt.figure(figsize=(8, 5.2))
    grid = fig.add_gridspec(2, len(strip), height_ratios=[4, 1])
    ax = fig.add_subplot(grid[0, :])
    eps, logits = data["eps"].numpy(), data["logits"].numpy()
    for c in range(logits.shape[1]):
        ax.plot(eps, logits[:, c], label=str(c), linewidth=2.5 if c == data["label"] else 1.2)
    ax.set_xlabel("eps")
    ax.set_ylabel("argument to the softmax")
    ax.legend(ncol=5, fontsize=8, title=f"class (true: {data['label']})", title_fontsize=8)
    for i, image in enumerate(strip):
        _image(fig.add_subplot(grid[1, i]), image.clamp(0, 1))
    fig.suptitle("Figure 4: logits of a maxout network along x + eps * sign(grad); inputs below "
                 "(shown clipped to [0, 1])", fontsize=10)
    return fig
