"""Segmentation metrics (numpy, on the host).

* pixel error: the fraction of pixels whose thresholded prediction differs from the truth.
* Rand error (ISBI 2012): 1 - the maximal foreground-restricted Rand F-score over thresholds
  of the probability map, the segments being the connected components of the foreground
  (Arganda-Carreras et al. 2015); see :func:`adapted_rand_error`, which equals
  ``skimage.metrics.adapted_rand_error``.
* Dice and IoU per class; when both masks are empty a class scores 1 (perfect agreement).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage, sparse


def pixel_error(pred_mask, true_mask) -> float:
    """Fraction of pixels where the binary masks differ."""
    pred_mask, true_mask = np.asarray(pred_mask) > 0, np.asarray(true_mask) > 0
    _check_same_shape(pred_mask, true_mask)
    return float(np.mean(pred_mask != true_mask))


def _check_same_shape(a, b):
    if a.shape != b.shape:
        raise ValueError(f"prediction shape {a.shape} differs from ground truth shape {b.shape}")


def _contingency(true_seg, pred_seg):
    true_seg = np.asarray(true_seg).ravel().astype(np.int64)
    pred_seg = np.asarray(pred_seg).ravel().astype(np.int64)
    return sparse.coo_matrix((np.ones_like(true_seg), (true_seg, pred_seg))).tocsr()


def adapted_rand_error(true_seg, pred_seg) -> tuple[float, float, float]:
    """(error, precision, recall) of the adapted Rand index (ISBI 2012).

    Counted over the pixels whose ground-truth label is not 0 (the foreground), with
    n_ij = pixels of true segment i and predicted segment j (predicted label 0 is a segment
    like any other). Over pairs of such pixels:
      joint = sum n_ij^2 - N   (pairs together in both),
      true  = sum_i a_i^2 - N  (pairs together in the truth, a_i = sum_j n_ij),
      pred  = sum_j b_j^2 - N  (pairs together in the prediction, b_j = sum_i n_ij),
      precision = joint / pred, recall = joint / true, error = 1 - 2 joint / (true + pred)
    (skimage returns the same error with the names precision and recall swapped).
    """
    true_seg, pred_seg = np.asarray(true_seg), np.asarray(pred_seg)
    _check_same_shape(true_seg, pred_seg)
    fg = true_seg.ravel() != 0
    table = _contingency(true_seg.ravel()[fg], pred_seg.ravel()[fg])
    n = float(fg.sum())
    if n == 0:
        return 0.0, 1.0, 1.0
    nij = table.data.astype(np.float64)
    a = np.asarray(table.sum(axis=1), np.float64).ravel()
    b = np.asarray(table.sum(axis=0), np.float64).ravel()
    joint = nij @ nij - n
    true_pairs = a @ a - n
    pred_pairs = b @ b - n
    if true_pairs + pred_pairs == 0:
        return 0.0, 1.0, 1.0
    precision = joint / pred_pairs if pred_pairs else 1.0
    recall = joint / true_pairs if true_pairs else 1.0
    return float(1.0 - 2.0 * joint / (true_pairs + pred_pairs)), float(precision), float(recall)


def segments(mask, connectivity: int = 1) -> np.ndarray:
    """Connected components of a binary foreground mask (4-connected by default)."""
    structure = ndimage.generate_binary_structure(2, connectivity)
    return ndimage.label(np.asarray(mask) > 0, structure)[0]


def rand_error(prob, true_mask, thresholds=None) -> tuple[float, float]:
    """ISBI 2012 Rand error: min over thresholds of adapted_rand_error(components(truth),
    components(prob > t)). ``prob`` is the foreground probability (or a binary mask).

    Returns:
      (error, best threshold).
    """
    prob = np.asarray(prob, np.float64)
    true_seg = segments(true_mask)
    if thresholds is None:
        thresholds = np.linspace(0.05, 0.95, 19) if not np.isin(prob, (0, 1)).all() else [0.5]
    best = (np.inf, 0.5)
    for t in thresholds:
        err = adapted_rand_error(true_seg, segments(prob > t))[0]
        if err < best[0]:
            best = (err, float(t))
    return best


def dice_iou(pred, true, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class Dice 2|A n B| / (|A| + |B|) and IoU |A n B| / |A u B| of class-id maps.

    A class absent from both prediction and truth scores 1 in both (nothing to disagree on).
    """
    pred, true = np.asarray(pred), np.asarray(true)
    _check_same_shape(pred, true)
    dice, iou = np.ones(num_classes), np.ones(num_classes)
    for c in range(num_classes):
        a, b = pred == c, true == c
        inter, sa, sb = np.sum(a & b), np.sum(a), np.sum(b)
        if sa + sb:
            dice[c] = 2 * inter / (sa + sb)
            iou[c] = inter / (sa + sb - inter)
    return dice, iou
