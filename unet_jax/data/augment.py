"""Augmentation as pure JAX functions (jittable, per-example rng, run on the accelerator).

The paper's elastic deformation (Ronneberger et al. 2015, sec. 3.1): random displacement
vectors on a coarse 3x3 grid, drawn from a Gaussian with 10 pixels standard deviation, turned
into per-pixel displacements by bicubic interpolation, and applied identically to the image
(bilinear), the labels (nearest) and the weight map (bilinear). Plus random flips and 90 degree
rotations, and grey-value changes (brightness, contrast, gamma). Shifts and crops are the
loader's random tiles (:mod:`unet_jax.data.loader`).

For models meant to hold beyond their training images: a random zoom (objects of other sizes,
in the same warp as the elastic deformation) and, for RGB images of stained tissue or cells,
stain jitter in the haematoxylin-eosin-DAB optical-density space (Tellez et al. 2018, "Whole-
slide mitosis detection in H&E breast histology using PHH3 as a reference"; the colour
deconvolution of Ruifrok & Johnston 2001, as ``skimage.color.rgb2hed``).

One example: image [H, W, C], labels [H, W], weights [H, W] with H == W.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import ndimage as jndi


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    elastic_sigma: float = 10.0  # std of the coarse displacement vectors (pixels); 0 disables
    elastic_grid: int = 3  # coarse grid points per axis
    flips: bool = True  # random horizontal / vertical flips
    rot90: bool = True  # random multiples of 90 degrees (square tiles)
    brightness: float = 0.1  # additive shift ~ U(-b, b)
    contrast: float = 0.2  # factor ~ U(1 - c, 1 + c) around the mean
    gamma: float = 0.3  # exponent ~ exp(U(-g, g))
    scale: float = 0.0  # zoom factor ~ exp(U(-s, s)) about the tile's centre; 0 disables
    stain: float = 0.0  # HED jitter (RGB): each stain's concentration x U(1 - s, 1 + s); 0 disables
    stain_shift: float = 0.0  # and + U(-t, t) (concentrations are about 0-0.2: t of a few 0.01)


def displacement_field(rng, shape, grid: int = 3, sigma: float = 10.0):
    """Per-pixel displacements [H, W, 2]: Gaussian vectors on a ``grid`` x ``grid`` lattice,
    bicubically interpolated to the image."""
    coarse = sigma * jax.random.normal(rng, (grid, grid, 2))
    return jax.image.resize(coarse, (shape[0], shape[1], 2), "cubic")


def warp(x, disp, order: int):
    """Samples ``x`` [H, W] or [H, W, C] at (y + dy, x + dx), mirrored at the borders.

    order 0: nearest (labels); 1: bilinear (images, weights).
    """
    h, w = disp.shape[:2]
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    coords = [yy + disp[..., 0], xx + disp[..., 1]]
    if x.ndim == 2:
        return jndi.map_coordinates(x, coords, order=order, mode="mirror")
    return jnp.stack([jndi.map_coordinates(x[..., c], coords, order=order, mode="mirror")
                      for c in range(x.shape[-1])], -1)


def zoom_field(shape, factor):
    """Displacements [H, W, 2] that zoom by ``factor`` about the centre (> 1 enlarges)."""
    h, w = shape[0], shape[1]
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    centred = jnp.stack([yy - (h - 1) / 2, xx - (w - 1) / 2], -1)
    return centred * (1.0 / factor - 1.0)


# Ruifrok & Johnston 2001 (skimage.color): rows are the RGB optical densities of H, E and DAB
# (numpy, not jax: a jax computation at import would start the backend before a multi-process
# run's jax.distributed.initialize)
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)
_LOG_EPS = float(np.log(1e-6))  # skimage's log_adjust


def rgb_to_hed(rgb):
    """[..., 3] RGB in [0, 1] -> stain concentrations [..., 3] (``skimage.color.rgb2hed``)."""
    od = jnp.log(jnp.maximum(rgb, 1e-6)) / _LOG_EPS
    return jnp.maximum(od @ HED_FROM_RGB, 0.0)


def hed_to_rgb(hed):
    """Stain concentrations [..., 3] -> RGB in [0, 1] (``skimage.color.hed2rgb``)."""
    return jnp.clip(jnp.exp(-(hed * -_LOG_EPS) @ RGB_FROM_HED), 0.0, 1.0)


def stain_jitter(rng, image, amount: float, shift: float = 0.0):
    """Each stain's concentration x U(1 - amount, 1 + amount) + U(-shift, shift), one draw per
    stain and image. The concentrations (``rgb2hed``'s, optical density / 13.8) are mostly
    below 0.2, so a shift as large as the factor's range would re-colour the whole image."""
    if image.shape[-1] != 3:
        raise ValueError(f"stain augmentation needs RGB images, got {image.shape[-1]} channels")
    ka, kb = jax.random.split(rng)
    alpha = jax.random.uniform(ka, (3,), minval=1 - amount, maxval=1 + amount)
    beta = jax.random.uniform(kb, (3,), minval=-shift, maxval=shift)
    return hed_to_rgb(rgb_to_hed(image) * alpha + beta)


def elastic(rng, image, labels, weights, grid: int = 3, sigma: float = 10.0, extra=None):
    """The same smooth deformation (plus displacements ``extra`` [H, W, 2]) applied to image,
    labels (nearest) and weights."""
    disp = displacement_field(rng, labels.shape, grid, sigma)
    if extra is not None:
        disp = disp + extra
    warped_labels = warp(labels.astype(jnp.float32), disp, 0).astype(labels.dtype)
    return warp(image, disp, 1), warped_labels, warp(weights, disp, 1)


def _geometric(rng, arrays, flips: bool, rot90: bool):
    kf, kr = jax.random.split(rng)
    flip = jax.random.bernoulli(kf, 0.5, (2,)) & flips
    k = jax.random.randint(kr, (), 0, 4) * rot90

    def apply(a):
        a = jnp.where(flip[0], jnp.flip(a, 0), a)
        a = jnp.where(flip[1], jnp.flip(a, 1), a)
        return jax.lax.switch(k, [lambda z, r=r: jnp.rot90(z, r, axes=(0, 1)) for r in range(4)], a)

    return [apply(a) for a in arrays]


def grey_values(rng, image, brightness: float, contrast: float, gamma: float):
    """Brightness, contrast and gamma changes, clipped to [0, 1]."""
    kb, kc, kg = jax.random.split(rng, 3)
    b = jax.random.uniform(kb, (), minval=-brightness, maxval=brightness)
    c = jax.random.uniform(kc, (), minval=1 - contrast, maxval=1 + contrast)
    g = jnp.exp(jax.random.uniform(kg, (), minval=-gamma, maxval=gamma))
    mean = jnp.mean(image)
    image = jnp.clip((image - mean) * c + mean + b, 0.0, 1.0)
    return image ** g


def augment_example(rng, image, labels, weights, cfg: AugmentConfig = AugmentConfig()):
    """One example through elastic deformation and zoom, flips / rotations, stain jitter and
    grey-value changes."""
    ke, kg, kv = jax.random.split(rng, 3)
    zoom = None
    if cfg.scale > 0:
        log_zoom = jax.random.uniform(jax.random.fold_in(rng, 1), (), minval=-cfg.scale, maxval=cfg.scale)
        zoom = zoom_field(labels.shape, jnp.exp(log_zoom))
    if cfg.elastic_sigma > 0 or zoom is not None:
        image, labels, weights = elastic(ke, image, labels, weights, cfg.elastic_grid, cfg.elastic_sigma, zoom)
    if cfg.stain > 0 or cfg.stain_shift > 0:
        image = stain_jitter(jax.random.fold_in(rng, 2), image, cfg.stain, cfg.stain_shift)
    if cfg.flips or cfg.rot90:
        if image.shape[0] != image.shape[1] and cfg.rot90:
            raise ValueError(f"rot90 augmentation needs square tiles, got {image.shape[:2]}")
        image, labels, weights = _geometric(kg, [image, labels, weights], cfg.flips, cfg.rot90)
    if cfg.brightness or cfg.contrast or cfg.gamma:
        image = grey_values(kv, image, cfg.brightness, cfg.contrast, cfg.gamma)
    return image, labels, weights


def augment_batch(rng, batch: dict, cfg: AugmentConfig = AugmentConfig()) -> dict:
    """Augments every example of ``batch`` with key fold_in(rng, batch['index'][i]), so the
    result does not depend on how the batch is split over devices.

    Per-example keys are threefry keys (whose values under ``vmap`` do not depend on the batch
    size, unlike ``rbg``), seeded from ``rng``.
    """
    seed = jax.random.randint(rng, (), 0, jnp.iinfo(jnp.int32).max)
    base = jax.random.key(seed, impl="threefry2x32")
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(batch["index"])
    image, labels, weights = jax.vmap(lambda k, x, y, w: augment_example(k, x, y, w, cfg))(
        keys, batch["image"], batch["labels"], batch["weights"])
    return {**batch, "image": image, "labels": labels, "weights": weights}
