"""Figures 2, 3 and 4 of the paper, drawn with matplotlib (the optional ``figures`` extra)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fgsmkit._atomic import replaced_atomically


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
        Without matplotlib (``pip install matplotlib``, or ``pip install -e ".[figures]"`` in the checkout).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    drawers = {"figure2": _figure2, "figure3": _figure3, "figure4": _figure4}
    names = []
    for key, draw in drawers.items():
        if key in figures:
            name = f"{key}.png"
            fig = draw(figures[key])
            try:
                # Whole or not at all, like the report: a run killed while saving keeps the old figure.
                with replaced_atomically(out / name) as (handle, _):
                    fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
            finally:
                plt.close(fig)
            names.append(name)
    return names


def tile(images: Tensor, columns: int, pad: int = 2, fill: float = 1.0) -> Tensor:
    """Lay ``images`` ``(n, h, w)`` out in a grid of ``columns``, ``pad`` pixels of ``fill`` between them.

    One image per panel draws much faster than one matplotlib axis per small image.
    """
    n, h, w = images.shape
    rows = -(-n // columns)
    grid = torch.full((rows * (h + pad) - pad, columns * (w + pad) - pad), fill, dtype=images.dtype)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = image
    return grid


def scaled_filters(weights: Tensor) -> Tensor:
    """Each filter scaled by its own largest magnitude into [0, 1] (0.5 is a zero weight)."""
    flat = weights.flatten(1)
    bound = flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    return (0.5 + 0.5 * flat / bound).reshape(weights.shape)


def _image(ax: Any, image: Tensor, symmetric: bool = False) -> None:
    image = image.detach().cpu()
    if symmetric:
        bound = float(image.abs().max()) or 1.0
        ax.imshow(image.numpy(), cmap="gray", vmin=-bound, vmax=bound)
    else:
        ax.imshow(image.numpy(), cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])


def _figure2(data: dict[str, Any]) -> Any:
    """Logistic regression on 3 vs 7: weights, their sign, clean digits, FGSM digits."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(13, 2.6), gridspec_kw={"width_ratios": [1, 1, 2.6, 2.6]},
                             layout="constrained")
    _image(axes[0], data["weights"], symmetric=True)
    _image(axes[1], data["sign"], symmetric=True)
    _image(axes[2], tile(data["clean"], columns=5))
    _image(axes[3], tile(data["adversarial"], columns=5))
    for ax, title in zip(axes, ("(a) weights w", "(b) sign(w)", "(c) clean 3s and 7s", "(d) FGSM, eps = .25")):
        ax.set_title(title, fontsize=9)
    fig.suptitle("Figure 2: logistic regression on MNIST 3 vs 7", fontsize=10)
    return fig


def _figure3(data: dict[str, Any]) -> Any:
    """First-layer maxout filters: plain training (left) and adversarial training (right)."""
    import matplotlib.pyplot as plt

    units, pieces = data["plain"].shape[:2]
    fig, axes = plt.subplots(1, 2, figsize=(1.6 * pieces + 1, 0.8 * units + 1), layout="constrained")
    for ax, key, title in zip(axes, ("plain", "adversarial"), ("naive (plain) training", "adversarial training")):
        filters = scaled_filters(data[key].flatten(0, 1))
        _image(ax, tile(filters, columns=pieces))
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"Figure 3: first-layer maxout weights of {units} units\n(rows: units, columns: their {pieces} "
                 "pieces; each filter scaled to its own range, grey = 0)", fontsize=9)
    return fig


def _figure4(data: dict[str, Any]) -> Any:
    """The ten logits of one example along the FGSM direction, and the inputs along the way."""
    import matplotlib.pyplot as plt

    fig, (ax, strip) = plt.subplots(2, 1, figsize=(8, 5.8), gridspec_kw={"height_ratios": [4, 1]},
                                    layout="constrained")
    eps, logits = data["eps"].numpy(), data["logits"].numpy()
    for c in range(logits.shape[1]):
        ax.plot(eps, logits[:, c], label=str(c), linewidth=2.5 if c == data["label"] else 1.2)
    ax.set_xlabel("eps")
    ax.set_ylabel("argument to the softmax")
    ax.legend(ncol=5, fontsize=8, title=f"class (true: {data['label']})", title_fontsize=8)
    images = data["strip"]
    _image(strip, tile(images.clamp(0, 1), columns=len(images)))
    strip.set_title(f"inputs at eps = {', '.join(f'{e:g}' for e in data['strip_eps'])} (shown clipped to [0, 1])",
                    fontsize=8)
    fig.suptitle("Figure 4: logits of a maxout network along x + eps * sign(grad x J)", fontsize=10)
    return fig
