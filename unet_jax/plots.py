"""Figures written to the workdir (matplotlib, Agg backend)."""
from __future__ import annotations

import os

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def weight_map_figure(image, instances, weights, path: str | os.PathLike, title: str = "") -> None:
    """Ronneberger et al. 2015, Fig. 3 in spirit: raw image, ground truth (instances in
    colour), the pixel-wise loss weight map."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2))
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("a  raw image")
    rng = np.random.default_rng(0)
    colours = np.concatenate([[[0, 0, 0]], rng.uniform(0.25, 1, (int(instances.max()) + 1, 3))])
    axes[1].imshow(colours[instances])
    axes[1].set_title(f"b  ground truth ({int(instances.max())} cells)")
    im = axes[2].imshow(weights, cmap="jet")
    axes[2].set_title("c  weight map w(x)")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
