"""Procedural microscopy-like images of touching, irregular cells (the embedded default dataset).

Each image is a deterministic function of (seed, size). Cells are Voronoi regions of random
seed points, cut to a per-cell radius and warped by a smooth random displacement field, so
they are irregular and many of them touch. The ground truth separates touching cells by a
background line about 2 pixels wide; in the image that line is only a faint darker seam, so
a network must learn the seams -- which the U-Net weight map emphasises. Interiors are
textured, the illumination is uneven and the noise is Gaussian plus shot noise.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


def _smooth_field(rng, shape, sigma, amplitude):
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    f = f - f.mean()  # a wide filter leaves a random offset far larger than the variation
    return amplitude * f / (f.std() + 1e-12)


def _seed_points(rng, size, min_dist, count):
    pts = []
    tries = 0
    while len(pts) < count and tries < count * 60:
        tries += 1
        p = rng.uniform(-min_dist / 2, size + min_dist / 2, 2)
        if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= min_dist ** 2 for q in pts):
            pts.append(p)
    return np.asarray(pts)


def generate(seed: int, size: int = 256, cell_radius: float | None = None, seam: float = 1.0):
    """One synthetic image.

    Args:
      seed: any int; equal seeds give equal images.
      size: height = width in pixels (>= 32).
      cell_radius: typical cell radius in pixels (default size / 14).
      seam: half-width in pixels of the background line that separates touching cells.

    Returns:
      dict with ``image`` [size, size] float32 in [0, 1], ``instances`` [size, size] int32
      (0 background, cells 1..N) and ``labels`` [size, size] uint8 (1 = cell).
    """
    if size < 32:
        raise ValueError(f"synthetic cells need size >= 32, got {size}")
    rng = np.random.default_rng([int(seed), int(size)])
    r_mean = cell_radius or size / 14.0
    count = int(0.62 * size * size / (np.pi * r_mean ** 2))
    pts = _seed_points(rng, size, 1.1 * r_mean, count)
    radii = r_mean * rng.uniform(0.75, 1.35, len(pts))

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    warp_y = _smooth_field(rng, (size, size), size / 16, r_mean * 0.22)
    warp_x = _smooth_field(rng, (size, size), size / 16, r_mean * 0.22)
    coords = np.stack([yy + warp_y, xx + warp_x], -1).reshape(-1, 2)
    dist, idx = cKDTree(pts).query(coords, k=2)
    d1, d2 = dist[:, 0].reshape(size, size), dist[:, 1].reshape(size, size)
    nearest = idx[:, 0].reshape(size, size)
    second = idx[:, 1].reshape(size, size)
    r1 = radii[nearest]
    inside = d1 < r1
    # Distance to the Voronoi edge (half the difference of the two squared distances over
    # the seeds' separation), in pixels.
    sep = np.linalg.norm(pts[nearest] - pts[second], axis=-1)
    edge = (d2 ** 2 - d1 ** 2) / (2 * np.maximum(sep, 1e-6))
    touching = inside & (d2 < radii[second] + 1.0)
    on_seam = touching & (edge < seam)

    instances = np.where(inside & ~on_seam, nearest + 1, 0)
    # Keep the largest piece of every cell; drop slivers; renumber 1..N.
    lab, _ = ndimage.label(instances > 0)
    out = np.zeros((size, size), np.int32)
    n = 0
    for i in np.unique(instances[instances > 0]):
        pieces = lab * (instances == i)
        ids, counts = np.unique(pieces[pieces > 0], return_counts=True)
        if counts.max() < 12:
            continue
        n += 1
        out[pieces == ids[np.argmax(counts)]] = n
    instances = out

    # ---- the image
    cell_mask = instances > 0
    level = rng.uniform(0.5, 0.8, len(pts) + 1)
    interior = np.zeros((size, size))
    interior[inside] = level[nearest[inside] + 1]
    texture = _smooth_field(rng, (size, size), 1.5, 0.06) + _smooth_field(rng, (size, size), 4.0, 0.05)
    # A brighter nucleus-like core and a soft fall-off towards each cell's rim.
    rel = np.clip(d1 / r1, 0, 1)
    shape_profile = 0.85 + 0.25 * np.exp(-(rel / 0.35) ** 2) - 0.15 * rel ** 4
    body = np.where(inside, interior * shape_profile + texture, 0.0)
    seam_dark = np.where(touching, 0.2 * np.exp(-(edge / (0.9 * seam + 0.4)) ** 2), 0.0)
    background = 0.18 + _smooth_field(rng, (size, size), 6.0, 0.03)
    img = np.where(inside, body - seam_dark, background)
    img = ndimage.gaussian_filter(img, 0.9)
    illumination = 1.0 + _smooth_field(rng, (size, size), size / 3, 0.15)
    img = img * illumination
    img = rng.poisson(np.clip(img, 0, None) * 200.0) / 200.0 + rng.normal(0, 0.04, img.shape)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    return {"image": img, "instances": instances, "labels": cell_mask.astype(np.uint8)}
