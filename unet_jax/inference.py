"""Overlap-tile prediction of arbitrarily large images (Ronneberger et al. 2015, Fig. 2).

* valid mode: the image is extended by mirroring, every output tile gets its full context,
  and tiles are placed on the network's pooling grid (steps that are multiples of 2**depth),
  so the result equals one whole-image pass and does not depend on the tile size;
* same mode: overlapping tiles blended with a Gaussian weight (centre pixels count most).

Tiles go to the device ``batch_tiles`` at a time, so memory is bounded by the tile batch, not
the image. Test-time augmentation averages the 8 flips / 90 degree rotations.

:func:`predict_probs` is the one prediction path of a run's model, used by validation during
training, ``unet_evaluate`` and ``unet_predict`` alike.
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from skimage import transform

from unet_jax import unet
from unet_jax.data.loader import mirror_pad


def _run_tiles(predict, padded, corners, size_in, batch_tiles):
    """Yields (corner, probs) for input windows of ``padded`` at ``corners``."""
    for i in range(0, len(corners), batch_tiles):
        chunk = corners[i:i + batch_tiles]
        x = np.stack([padded[y:y + size_in, x:x + size_in] for y, x in chunk])
        n = len(chunk)
        if n < batch_tiles:  # keep one compiled shape
            x = np.concatenate([x, np.repeat(x[-1:], batch_tiles - n, 0)])
        out = np.asarray(predict(x))[:n]
        yield from zip(chunk, out)


def _grid(length: int, step: int) -> list[int]:
    return list(range(0, max(length - 1, 0) // step * step + 1, step)) if length > 0 else [0]


def predict_valid(predict: Callable, image, depth: int, tile_size: int, num_classes: int,
                  batch_tiles: int = 4, mirror: str = "reflect"):
    """Valid-mode overlap-tile prediction. image [H, W, C] -> probabilities [H, W, K]."""
    size_in = unet.input_size_for_output(1, depth, "valid") if tile_size <= 0 else tile_size
    if not unet.is_valid_input_size(size_in, depth, "valid"):
        lo, hi = unet.nearest_valid_input_sizes(size_in, depth, "valid")
        raise ValueError(f"tile_size {size_in} is not a valid input size for a depth-{depth} valid "
                         f"U-Net; nearest valid sizes: {lo} or {hi}")
    out = unet.output_size(size_in, depth, "valid")
    step = out // 2 ** depth * 2 ** depth
    if step == 0:
        raise ValueError(f"tile_size {size_in} gives a {out}-pixel output, less than one pooling "
                         f"cell ({2 ** depth}); use a larger tile")
    c = (size_in - out) // 2
    h, w = image.shape[:2]
    ys, xs = _grid(h, step), _grid(w, step)
    # mirror by the context, then extend the far sides so every tile is whole
    need_h, need_w = ys[-1] + size_in, xs[-1] + size_in
    padded = mirror_pad(image, c, mirror)
    extra_h, extra_w = max(need_h - padded.shape[0], 0), max(need_w - padded.shape[1], 0)
    if extra_h or extra_w:
        big = mirror_pad(padded, max(extra_h, extra_w), mirror)
        m = max(extra_h, extra_w)
        padded = big[m:m + padded.shape[0] + extra_h, m:m + padded.shape[1] + extra_w]
    probs = np.zeros((h, w, num_classes), np.float32)
    corners = [(y, x) for y in ys for x in xs]
    for (y, x), p in _run_tiles(predict, padded, corners, size_in, batch_tiles):
        hh, ww = min(step, h - y), min(step, w - x)
        probs[y:y + hh, x:x + ww] = p[:hh, :ww]
    return probs


def gaussian_window(size: int, sigma_scale: float = 0.125) -> np.ndarray:
    """[size, size] Gaussian importance map (nnU-Net style), sigma = size * sigma_scale."""
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r ** 2) / (2 * (size * sigma_scale) ** 2))
    w = np.outer(g, g)
    return np.maximum(w / w.max(), 1e-3).astype(np.float32)


def predict_same(predict: Callable, image, depth: int, tile_size: int, num_classes: int,
                 batch_tiles: int = 4, overlap: float = 0.5, mirror: str = "reflect"):
    """Same-mode prediction with Gaussian-blended overlapping tiles. [H, W, C] -> [H, W, K]."""
    cell = 2 ** depth
    h, w = image.shape[:2]
    size = max(tile_size // cell * cell, cell)
    if h <= size and w <= size and h % cell == 0 and w % cell == 0:
        return np.asarray(predict(image[None]))[0]  # one pass over the whole image
    size = min(size, -(-max(h, w) // cell) * cell)
    step = max(int(size * (1 - overlap)) // cell * cell, cell)
    ph, pw = max(h, size), max(w, size)
    ys = sorted(set(list(range(0, ph - size + 1, step)) + [ph - size]))
    xs = sorted(set(list(range(0, pw - size + 1, step)) + [pw - size]))
    padded = image
    if ph > h or pw > w:
        m = max(ph - h, pw - w)
        padded = mirror_pad(image, m, mirror)[m:m + ph, m:m + pw]
    acc = np.zeros((ph, pw, num_classes), np.float32)
    norm = np.zeros((ph, pw, 1), np.float32)
    g = gaussian_window(size)[..., None]
    for (y, x), p in _run_tiles(predict, padded, [(y, x) for y in ys for x in xs], size, batch_tiles):
        acc[y:y + size, x:x + size] += p * g
        norm[y:y + size, x:x + size] += g
    return (acc / norm)[:h, :w]


DIHEDRAL = [(k, f) for f in (False, True) for k in range(4)]


def predict_image(predict: Callable, image, depth: int, padding: str, tile_size: int,
                  num_classes: int, tta: bool = False, batch_tiles: int = 4):
    """Per-class probabilities [H, W, K] of an image [H, W, C] (or [H, W]) of any size.

    Args:
      predict: tiles [N, S, S, C] -> softmax [N, s, s, K] (s = S in same mode).
      depth, padding: the U-Net's.
      tile_size: input tile size S.
      num_classes: K.
      tta: average over the 8 flips / 90 degree rotations (the paper averaged rotations).
      batch_tiles: tiles per device call.
    """
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"image must be [H, W] or [H, W, C], got shape {image.shape}")
    fn = predict_valid if padding == "valid" else predict_same
    if not tta:
        return fn(predict, image, depth, tile_size, num_classes, batch_tiles)
    total = np.zeros(image.shape[:2] + (num_classes,), np.float32)
    for k, flip in DIHEDRAL:
        t = np.rot90(image[:, ::-1] if flip else image, k)
        p = np.rot90(fn(predict, np.ascontiguousarray(t), depth, tile_size, num_classes, batch_tiles), -k)
        total += p[:, ::-1] if flip else p
    return total / len(DIHEDRAL)


# ------------------------------------------------------------------ a trained run's model
def make_predict(apply_fn: Callable) -> Callable:
    """A jitted ``predict(variables, tiles [N, S, S, C]) -> softmax [N, s, s, K]`` (inference
    mode: batch norm uses its running statistics, no dropout). Build it once per model and bind
    the variables with ``functools.partial``: it compiles once per tile batch shape."""

    @jax.jit
    def predict(variables, x):
        return jax.nn.softmax(apply_fn(variables, x, train=False), -1)

    return predict


def model_variables(state) -> dict:
    """The variables ``apply_fn`` takes from a train state: params and, with batch norm, its
    statistics."""
    variables = {"params": state.params}
    if getattr(state, "batch_stats", None) is not None:
        variables["batch_stats"] = state.batch_stats
    return variables


def eval_tile_size(config) -> int:
    """The input tile size of a run's whole-image inference: the training tile's, or
    ``data.eval_tile_size`` when larger."""
    m = config.model
    return max(unet.tile_sizes(config.data.tile_size, m.depth, m.padding)[0], config.data.eval_tile_size)


def predict_probs(config, predict: Callable, image, tta: bool = False, tile_size: int = 0,
                  scale: float = 1.0) -> np.ndarray:
    """[H, W, K] probabilities of one image [H, W, C] with a run's model (``config.model``),
    tiles of ``tile_size`` (default :func:`eval_tile_size`) and ``config.eval_batch_tiles``.

    ``scale`` resizes the image by that factor before the model (bilinear; smoothed first when
    it shrinks) and the probabilities back to H x W: objects ``1 / scale`` times the size of
    the training data's come to the model at the size it learnt (as Cellpose's diameter does).

    Raises:
      ValueError: when the image's channels are not the model's, or ``scale`` is not positive.
    """
    m = config.model
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] != m.in_channels:
        raise ValueError(f"image has {image.shape[-1]} channels, the model expects {m.in_channels}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    h, w = image.shape[:2]
    if scale != 1.0:
        size = (max(round(h * scale), 1), max(round(w * scale), 1), image.shape[-1])
        image = transform.resize(image, size, order=1, anti_aliasing=scale < 1, preserve_range=True)
    probs = predict_image(predict, image.astype(np.float32), depth=m.depth, padding=m.padding,
                          tile_size=tile_size or eval_tile_size(config), num_classes=m.num_classes,
                          tta=tta, batch_tiles=config.eval_batch_tiles)
    if scale != 1.0:
        probs = transform.resize(probs, (h, w, m.num_classes), order=1, preserve_range=True)
        probs = (probs / np.maximum(probs.sum(-1, keepdims=True), 1e-12)).astype(np.float32)
    return probs
