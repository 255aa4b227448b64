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


def _save(plt, fig, path, dpi: int) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


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
    _save(plt, fig, path, 90)


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
    _save(plt, fig, path, 80)


CLASS_COLOURS = ((0.9, 0.1, 0.1), (0.1, 0.7, 0.2), (0.15, 0.35, 0.95), (0.95, 0.75, 0.1),
                 (0.75, 0.2, 0.8), (0.1, 0.8, 0.8), (0.95, 0.5, 0.2))  # classes 1, 2, ... in turn


def class_colours(num_classes: int) -> np.ndarray:
    """[K, 3] RGB in [0, 1]: black for the background, then the colour cycle (never black)."""
    return np.asarray([(0.0, 0.0, 0.0)] + [CLASS_COLOURS[(c - 1) % len(CLASS_COLOURS)]
                                         for c in range(1, num_classes)])


def tinted(image, class_ids, num_classes: int, alpha: float = 0.45) -> np.ndarray:
    """[H, W, 3] in [0, 1]: the image in grey with each class 1..K-1 tinted in its colour."""
    img = np.asarray(image, np.float32)
    grey = img.mean(-1) if img.ndim == 3 else img
    rgb = np.repeat(grey[..., None], 3, -1)
    ids = np.asarray(class_ids)
    out = np.where((ids > 0)[..., None], (1 - alpha) * rgb + alpha * class_colours(num_classes)[ids], rgb)
    return np.clip(out, 0, 1)


def class_overlay(image, class_ids, num_classes: int, path: str | os.PathLike, alpha: float = 0.45) -> None:
    """The image with each predicted class (1..K-1) tinted in its own colour, and a legend
    naming the classes (background untinted)."""
    from matplotlib.patches import Patch

    plt = pyplot()
    ids = np.asarray(class_ids)
    colours = class_colours(num_classes)
    fig, ax = plt.subplots(1, 1, figsize=(8, 8 * ids.shape[0] / max(ids.shape[1], 1) + 0.6))
    ax.imshow(tinted(image, ids, num_classes, alpha))
    ax.legend(handles=[Patch(color=colours[c], label=f"class {c}") for c in range(1, num_classes)],
              loc="upper right", fontsize=8, framealpha=0.8)
    ax.axis("off")
    _save(plt, fig, path, 80)


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
    _save(plt, fig, path, 80)


def digit_predictions(images, labels, preds, path: str | os.PathLike) -> None:
    """32 held-out digits titled 'prediction (true label)', mistakes first and in red."""
    plt = pyplot()
    order = np.argsort(labels == preds, kind="stable")[:32]
    fig, axes = plt.subplots(4, 8, figsize=(10, 5.5))
    for ax, i in zip(axes.flat, order):
        ax.imshow(images[i, ..., 0], cmap="gray")
        ax.set_title(f"{preds[i]} (true {labels[i]})", fontsize=8,
                     color="black" if preds[i] == labels[i] else "red")
        ax.axis("off")
    fig.suptitle("Held-out digits: prediction (true label); mistakes first, in red")
    _save(plt, fig, path, 100)


def confusion_matrix(cm, path: str | os.PathLike) -> None:
    """A [true, predicted] count matrix with its counts written in."""
    plt = pyplot()
    k = len(cm)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(cm, cmap="Blues")
    for (t, p), v in np.ndenumerate(cm):
        ax.text(p, t, str(v), ha="center", va="center", fontsize=7,
                color="white" if v > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_title("Confusion matrix (held-out digits)")
    _save(plt, fig, path, 100)


def image_rows(rows, path: str | os.PathLike) -> None:
    """Named rows of [N, H, W, 1] images in [0, 1] (e.g. original / reconstruction)."""
    plt = pyplot()
    n = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), n, figsize=(n, 1.1 * len(rows) + 0.3), squeeze=False)
    for r, (name, imgs) in enumerate(rows):
        for c in range(n):
            axes[r, c].imshow(imgs[c, ..., 0], cmap="gray", vmin=0, vmax=1)
            axes[r, c].axis("off")
        axes[r, 0].set_title(name, fontsize=8, loc="left")
    _save(plt, fig, path, 90)


def latent_scatter(z, labels, title: str, path: str | os.PathLike) -> None:
    """Latents [N, D] coloured by digit: the two coordinates when D = 2, else the top two
    principal components."""
    plt = pyplot()
    z = np.asarray(z)
    if z.shape[1] > 2:
        zc = z - z.mean(0)
        z2, axis_name = zc @ np.linalg.svd(zc, full_matrices=False)[2][:2].T, "latent PC"
    else:
        z2, axis_name = z, "z"
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(z2[:, 0], z2[:, 1], c=labels, cmap="tab10", s=6)
    fig.colorbar(sc, ax=ax, ticks=range(10))
    ax.set_xlabel(f"{axis_name} 1")
    ax.set_ylabel(f"{axis_name} 2")
    ax.set_title(title)
    _save(plt, fig, path, 90)


def image_grid(images, rows: int, path: str | os.PathLike) -> None:
    """[rows * cols, H, W, 1] images in [0, 1] tiled row by row into one grey PNG."""
    plt = pyplot()
    images = np.asarray(images)[..., 0]
    n, h, w = images.shape
    grid = images.reshape(rows, n // rows, h, w).transpose(0, 2, 1, 3).reshape(rows * h, n // rows * w)
    plt.imsave(path, grid, cmap="gray", vmin=0, vmax=1)


def labelled_grid(panels, path: str | os.PathLike, columns: int = 4) -> None:
    """RGB images [H, W, 3] in [0, 1], each with its title, in rows of ``columns``."""
    plt = pyplot()
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (rgb, title) in zip(axes.ravel(), panels):
        ax.imshow(rgb)
        ax.set_title(title, fontsize=8)
    _save(plt, fig, path, 100)
