"""Instance labels from predicted probabilities (host numpy / scipy / scikit-image).

Three ways to turn a U-Net's output into objects, each returning an ``[H, W]`` int32 label
image (0 background, objects 1..N):

- ``components``: connected components of the foreground (touching objects merge);
- ``watershed``: the foreground split by a seeded watershed. Seeds are the interior maxima of
  the foreground's distance transform (at least ``min_distance`` apart); the flood runs over
  ``1 - p`` plus the normalised negative distance, so boundaries follow low probability and
  necks between objects;
- ``interior``: for a 3-class model (background / interior / border, as the 2018 Data Science
  Bowl winners trained), the interior class's components (above ``seed_threshold``) are the
  seeds and grow over the foreground (interior + border above ``threshold``) by a watershed of
  the interior probability. Seeds smaller than ``min_seed_size`` pixels are dropped first: a
  speck of interior inside a large nucleus would otherwise split it.

The foreground is the probability above ``threshold`` (0.5 by default) in every mode. Objects
smaller than ``min_size`` pixels are removed in every mode.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

MODES = ("components", "watershed", "interior")


def relabel(labels: np.ndarray, min_size: int = 0) -> np.ndarray:
    """``labels`` with objects under ``min_size`` pixels removed and the rest numbered 1..N."""
    labels = np.asarray(labels)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    new = np.zeros(len(sizes), np.int32)
    new[keep] = np.arange(1, int(keep.sum()) + 1)
    return new[labels]


def components(fg: np.ndarray, min_size: int = 0) -> np.ndarray:
    """4-connected components of the boolean foreground ``fg``."""
    return relabel(ndimage.label(np.asarray(fg, bool))[0], min_size)


def watershed(prob: np.ndarray, threshold: float = 0.5, min_distance: int = 4,
              min_size: int = 0) -> np.ndarray:
    """The foreground ``prob > threshold`` split into objects by a seeded watershed (see the
    module docstring); each connected component keeps at least one seed."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed as flood

    prob = np.asarray(prob, np.float64)
    fg = prob > threshold
    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    comps = ndimage.label(fg)[0]
    dist = ndimage.distance_transform_edt(fg)
    peaks = peak_local_max(dist, min_distance=max(int(min_distance), 1), labels=comps, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    unseeded = np.setdiff1d(np.unique(comps[fg]), np.unique(comps[markers > 0]))
    for c in unseeded:  # a component without a peak (a plateau): seeded at its deepest pixel
        ys, xs = np.nonzero(comps == c)
        i = int(np.argmax(dist[ys, xs]))
        markers[ys[i], xs[i]] = markers.max() + 1
    surface = (1.0 - prob) - dist / max(dist.max(), 1e-12)
    return relabel(flood(surface, markers, mask=fg), min_size)


def from_interior(interior: np.ndarray, foreground: np.ndarray, threshold: float = 0.5,
                  min_size: int = 0, seed_threshold: float | None = None,
                  min_seed_size: int = 0) -> np.ndarray:
    """3-class mode: components of ``interior > seed_threshold`` (default: ``threshold``) of at
    least ``min_seed_size`` pixels, grown over ``foreground > threshold`` (interior + border
    probability) along decreasing interior probability. A higher seed threshold splits objects
    that touch; a higher ``threshold`` tightens their outlines; a larger ``min_seed_size`` keeps
    specks of interior from splitting a large object (foreground that no seed reaches stays
    background)."""
    from skimage.segmentation import watershed as flood

    interior, foreground = np.asarray(interior, np.float64), np.asarray(foreground, np.float64)
    seeds = ndimage.label(interior > (threshold if seed_threshold is None else seed_threshold))[0]
    seeds = relabel(seeds, min_seed_size)
    mask = (foreground > threshold) | (seeds > 0)
    return relabel(flood(1.0 - interior, seeds, mask=mask), min_size)


def from_probs(probs: np.ndarray, mode: str = "watershed", min_size: int = 0, min_distance: int = 4,
               threshold: float = 0.5, seed_threshold: float | None = None,
               min_seed_size: int = 0) -> np.ndarray:
    """Instances of one image's class probabilities ``[H, W, K]``: the foreground is classes
    1..K-1 (``components`` / ``watershed``); ``interior`` needs K = 3 with class 1 the interior
    and class 2 the border (``seed_threshold`` and ``min_seed_size`` apply to it alone)."""
    if mode not in MODES:
        raise ValueError(f"instances mode must be one of {MODES}, got {mode!r}")
    for name, t in (("threshold", threshold), ("seed_threshold", seed_threshold)):
        if t is not None and not 0.0 <= t < 1.0:
            raise ValueError(f"instances {name} must be in [0, 1), got {t!r}")
    if min_seed_size < 0:
        raise ValueError(f"instances min_seed_size must be >= 0, got {min_seed_size!r}")
    probs = np.asarray(probs)
    fg = probs[..., 1:].sum(-1)
    if mode == "components":
        return components(fg > threshold, min_size)
    if mode == "watershed":
        return watershed(fg, threshold, min_distance, min_size)
    if probs.shape[-1] != 3:
        raise ValueError(f"instances mode 'interior' needs 3 classes (background, interior, border), "
                         f"the model has {probs.shape[-1]}")
    return from_interior(probs[..., 1], fg, threshold, min_size, seed_threshold, min_seed_size)
