"""Segmentation losses and the U-Net border weight map (Ronneberger et al. 2015, sec. 3).

Shapes: logits ``[B, H, W, K]``, labels ``[B, H, W]`` int class ids, weights ``[B, H, W]``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check(logits, labels, weights=None) -> None:
    if logits.ndim < 2 or labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels must have shape {tuple(logits.shape[:-1])} (logits {tuple(logits.shape)} "
                         f"without the class axis), got {tuple(labels.shape)}")
    if weights is not None and tuple(weights.shape) != tuple(labels.shape):
        raise ValueError(f"weight map must have the labels' shape {tuple(labels.shape)}, "
                         f"got {tuple(weights.shape)}")
    if _is_concrete(labels):
        lab = np.asarray(labels)
        k = logits.shape[-1]
        if lab.size and (lab.min() < 0 or lab.max() >= k):
            raise ValueError(f"label values must be in [0, {k - 1}] for {k} classes, "
                             f"found [{lab.min()}, {lab.max()}]")


def weighted_cross_entropy_sum(logits, labels, weights=None):
    """(sum_x w(x) * -log p_{l(x)}(x), number of pixels): the energy of eq. 1 and its count.

    Returned as a (sum, count) pair so that means over padded or sharded batches stay exact.
    """
    _check(logits, labels, weights)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if weights is not None:
        nll = nll * weights
    return jnp.sum(nll), jnp.asarray(nll.size, jnp.float32)


def weighted_cross_entropy(logits, labels, weights=None):
    """E = -(1/N) sum_x w(x) log p_{l(x)}(x) (Ronneberger et al. 2015, eq. 1).

    The pixel-wise softmax p_k(x) = exp(a_k(x)) / sum_k' exp(a_k'(x)). The paper's energy is a
    sum; here it is divided by the number of pixels N (not by the sum of weights), so the loss
    scale does not depend on the tile size and a weight map of ones gives the mean
    cross-entropy. (The lecture's slide drops the minus sign.)
    """
    total, count = weighted_cross_entropy_sum(logits, labels, weights)
    return total / count


def soft_dice(logits, labels, eps: float = 1.0):
    """Per-class soft Dice (2 sum p y + eps) / (sum p + sum y + eps), [K], over all pixels.

    With eps > 0 a class absent from both prediction and labels scores 1 (defined on empty masks).
    """
    _check(logits, labels)
    k = logits.shape[-1]
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    y = jax.nn.one_hot(labels, k, dtype=jnp.float32)
    axes = tuple(range(p.ndim - 1))
    inter = jnp.sum(p * y, axis=axes)
    return (2 * inter + eps) / (jnp.sum(p, axis=axes) + jnp.sum(y, axis=axes) + eps)


def soft_dice_loss(logits, labels, eps: float = 1.0):
    """1 - mean over classes of :func:`soft_dice`."""
    return 1.0 - jnp.mean(soft_dice(logits, labels, eps))


def dice_ce_loss(logits, labels, weights=None, dice_weight: float = 1.0):
    """Weighted cross-entropy + dice_weight * soft Dice loss (as nnU-Net)."""
    return weighted_cross_entropy(logits, labels, weights) + dice_weight * soft_dice_loss(logits, labels)


# ------------------------------------------------------------------------- weight map
def class_balance_weights(labels, num_classes: int | None = None) -> np.ndarray:
    """w_c: per-class weights N / (K * n_c) (balanced: each class carries equal total weight).

    Args:
      labels: class ids, any shape.
      num_classes: K (default: max label + 1). Absent classes get weight 0.

    Returns:
      ``[K]`` float32.
    """
    labels = np.asarray(labels)
    k = int(labels.max()) + 1 if num_classes is None else num_classes
    counts = np.bincount(labels.ravel(), minlength=k).astype(np.float64)
    present = counts > 0
    w = np.zeros(k)
    w[present] = labels.size / (present.sum() * counts[present])
    return w.astype(np.float32)


def border_cutoff(w0: float, sigma: float, tol: float = 1e-6) -> float:
    """Distance d1 + d2 beyond which w0 exp(-(d1+d2)^2 / (2 sigma^2)) < tol."""
    if w0 <= tol:
        return 0.0
    return float(np.sqrt(2.0 * sigma ** 2 * np.log(w0 / tol)))


def two_nearest_distances(instances, cutoff: float = np.inf):
    """d1, d2: Euclidean distances from every pixel to the nearest and second-nearest instance.

    Each instance's distance transform is computed only inside its bounding box grown by
    ``cutoff`` pixels (farther distances are reported as inf), so the cost is proportional to
    the cells' area, not to (number of cells) x (image area).

    Args:
      instances: ``[H, W]`` int, 0 = background, 1..N = cells.
      cutoff: distances above this are not needed (inf: exact everywhere).

    Returns:
      d1, d2: ``[H, W]`` float64 (inf where fewer instances are within the cutoff).
    """
    instances = np.asarray(instances)
    h, w = instances.shape
    d1 = np.full((h, w), np.inf)
    d2 = np.full((h, w), np.inf)
    grow = int(np.ceil(cutoff)) if np.isfinite(cutoff) else max(h, w)
    for idx, box in enumerate(ndimage.find_objects(instances), start=1):
        if box is None:
            continue
        y0, y1 = max(box[0].start - grow, 0), min(box[0].stop + grow, h)
        x0, x1 = max(box[1].start - grow, 0), min(box[1].stop + grow, w)
        crop = instances[y0:y1, x0:x1] != idx
        d = ndimage.distance_transform_edt(crop)
        if np.isfinite(cutoff):
            d[d > cutoff] = np.inf
        a = d1[y0:y1, x0:x1]
        b = d2[y0:y1, x0:x1]
        b[...] = np.minimum(b, np.maximum(a, d))
        a[...] = np.minimum(a, d)
    return d1, d2


def weight_map(labels, w0: float = 10.0, sigma: float = 5.0, binary: bool = False,
               class_weights=None, background_only: bool = True, tol: float = 1e-6,
               classes=None, num_classes: int = 2) -> np.ndarray:
    """The U-Net weight map w(x) = w_c(x) + w0 exp(-(d1(x) + d2(x))^2 / (2 sigma^2)) (eq. 2).

    Args:
      labels: ``[H, W]`` instance map (0 background, cells 1..N), or with ``binary=True`` a
        foreground mask (non-zero = cell), split into cells by 4-connected components.
      w0, sigma: border weight and width (paper: 10 and about 5 pixels).
      binary: treat ``labels`` as a mask.
      class_weights: w_c for (background, cell), or for the K classes of ``classes``; default
        :func:`class_balance_weights` of this map.
      classes: ``[H, W]`` class ids 0..K-1 (0 background) for K > 2 classes; w_c then follows
        them, and the border term still separates touching instances of any class.
      num_classes: K (with ``classes``).
      background_only: add the border term on background pixels only (the separating
        borders the paper wants learnt; inside a cell d1 = 0). False applies eq. 2 everywhere.
      tol: border terms below ``tol`` are dropped (each cell's distances are computed within
        the cutoff of :func:`border_cutoff` only); 0 gives the exact formula.

    Returns:
      ``[H, W]`` float32.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"weight_map expects a 2-D label map [H, W], got shape {labels.shape}")
    if w0 < 0 or sigma <= 0:
        raise ValueError(f"weight_map needs w0 >= 0 and sigma > 0, got w0={w0}, sigma={sigma}")
    instances = ndimage.label(labels != 0)[0] if binary else labels.astype(np.int64)
    if instances.min(initial=0) < 0:
        raise ValueError("instance labels must be >= 0 (0 = background)")
    fg = (instances > 0).astype(np.int64)
    cls = fg if classes is None else np.asarray(classes, np.int64)
    k = 2 if classes is None else num_classes
    if cls.shape != instances.shape or cls.min(initial=0) < 0 or cls.max(initial=0) >= k:
        raise ValueError(f"classes must be a [H, W] map of ids 0..{k - 1} like the labels {instances.shape}")
    wc = class_balance_weights(cls, k) if class_weights is None else np.asarray(class_weights, np.float32)
    w = wc[cls].astype(np.float64)
    cutoff = border_cutoff(w0, sigma, tol) if tol > 0 else np.inf
    d1, d2 = two_nearest_distances(instances, cutoff)
    with np.errstate(invalid="ignore", over="ignore"):
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma ** 2))
    border = np.nan_to_num(border, nan=0.0)
    if background_only:
        border = border * (cls == 0)
    return (w + border).astype(np.float32)
