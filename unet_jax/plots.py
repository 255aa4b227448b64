"""Figures written to the workdir (matplotlib, Agg backend)."""
from __future__ import annotations

import os

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def weight_map_figure(image, instances, weights, path: str | os.PathLike, title: str = "") -> None:
    """Ronneberger et al. 2015, Fig. 3 in spirit: raw image, ground truth (instances in
    colour), the pixel-wise loss weight map."""
    plt = pyplot()
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


def prediction_overlays(samples, path: str | os.PathLike) -> None:
    """Rows of (image, ground truth, prediction overlay): the predicted foreground contour
    in red and the ground truth in green on the image. ``samples``: (image, labels, fg_prob)."""
    plt = pyplot()
    n = max(len(samples), 1)
    fig, axes = plt.subplots(n, 3, figsize=(12, 4 * n), squeeze=False)
    for row, (image, labels, prob) in zip(axes, samples):
        img = np.asarray(image)[..., 0] if np.asarray(image).ndim == 3 else np.asarray(image)
        row[0].imshow(img, cmap="gray")
        row[0].set_title("image")
        row[1].imshow(prob, cmap="magma", vmin=0, vmax=1)
        row[1].set_title("foreground probability")
        row[2].imshow(img, cmap="gray")
        row[2].contour(np.asarray(labels) > 0, levels=[0.5], colors="lime", linewidths=0.7)
        row[2].contour(prob > 0.5, levels=[0.5], colors="red", linewidths=0.7)
        row[2].set_title("truth (green) / prediction (red)")
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def training_curves(history: list[dict], path: str | os.PathLike) -> None:
    """Training loss and (when present) validation Dice / pixel error against the step."""
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    steps = [h["step"] for h in history]
    ax[0].plot(steps, [h["train_loss"] for h in history], label="train loss")
    ax[0].set_yscale("log")
    ax[0].set_xlabel("step")
    ax[0].legend()
    for key in ("val_dice", "val_pixel_error", "val_rand_error", "train_dice"):
        pts = [(h["step"], h[key]) for h in history if key in h]
        if pts:
            ax[1].plot(*zip(*pts), marker="o", ms=3, label=key)
    ax[1].set_xlabel("step")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
