"""The U-Net of Ronneberger, Fischer & Brox 2015 ("U-Net: Convolutional Networks for Biomedical
Image Segmentation", MICCAI), in Flax linen.

Contracting path: ``depth`` levels of two 3x3 convolutions + ReLU then 2x2 max-pooling, the
channels doubling from ``features``; a bottom block at ``features * 2**depth`` channels
(dropout at its end, "at the end of the contracting path", sec. 3.1); an expanding path of 2x2
up-convolutions halving the channels, concatenated ``[skip, up]`` with the centre-cropped skip
features, then two 3x3 convolutions + ReLU; a final 1x1 convolution to ``num_classes``.

``padding='valid'``: unpadded convolutions, each 3x3 convolution loses a 1-pixel border; a
572x572 input gives a 388x388 output (Fig. 1). ``padding='same'``: output size = input size.
With ``depth=4, features=64, in_channels=1, num_classes=2`` and no normalisation the model has
31,030,658 parameters.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from unet_jax import layers, ops

PADDINGS = ("valid", "same")


def _check_padding(padding: str) -> None:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")


def _trace_sizes(size: int, depth: int, padding: str) -> tuple[int, bool]:
    """Follows one spatial axis through the network: (output size, valid?)."""
    shrink = 4 if padding == "valid" else 0
    s = size
    for _ in range(depth):
        s -= shrink
        if s < 2 or s % 2:
            return 0, False
        s //= 2
    s -= shrink
    if s < 1:
        return 0, False
    for _ in range(depth):
        s = 2 * s - shrink
        if s < 1:
            return 0, False
    return s, True


def is_valid_input_size(size: int, depth: int = 4, padding: str = "valid") -> bool:
    """True when every max-pool input is even and every feature map is non-empty."""
    _check_padding(padding)
    return _trace_sizes(int(size), depth, padding)[1]


def output_size(size: int, depth: int = 4, padding: str = "valid") -> int:
    """Output width for an input width (572 -> 388 for the paper's valid depth-4 U-Net).

    Raises:
      ValueError: for an input size the network cannot take without cropping; the message
        names the nearest valid sizes.
    """
    _check_padding(padding)
    out, ok = _trace_sizes(int(size), depth, padding)
    if not ok:
        lo, hi = nearest_valid_input_sizes(size, depth, padding)
        near = " or ".join(str(v) for v in (lo, hi) if v is not None)
        raise ValueError(f"input size {size} is invalid for a depth-{depth} {padding} U-Net "
                         f"(every max-pool input must be even and every feature map non-empty); "
                         f"nearest valid sizes: {near}")
    return out


def nearest_valid_input_sizes(size: int, depth: int = 4, padding: str = "valid"):
    """The valid input sizes closest to ``size``: ``(largest <= size or None, smallest >= size)``.

    Valid sizes are 2**depth * b + (2**(depth + 2) - 4) * [valid] for an integer bottom size b.
    """
    _check_padding(padding)
    below = next((s for s in range(int(size), 0, -1) if _trace_sizes(s, depth, padding)[1]), None)
    above = next(s for s in range(max(int(size), 1), int(size) + 2 ** (depth + 3) + 64)
                 if _trace_sizes(s, depth, padding)[1])
    return below, above


def input_size_for_output(out: int, depth: int = 4, padding: str = "valid") -> int:
    """The smallest valid input size whose output is at least ``out`` (for overlap-tiling)."""
    _check_padding(padding)
    s = max(int(out), 1)
    while True:
        o, ok = _trace_sizes(s, depth, padding)
        if ok and o >= out:
            return s
        s += 1


def context(depth: int = 4, padding: str = "valid") -> int:
    """Pixels lost on each side in valid mode: (input - output) / 2 (92 for depth 4)."""
    _check_padding(padding)
    if padding == "same":
        return 0
    size = input_size_for_output(1, depth, padding)
    return (size - output_size(size, depth, padding)) // 2


class UNet(nn.Module):
    """U-Net. [B, H, W, in_channels] -> logits [B, H', W', num_classes] (float32).

    Attributes:
      num_classes: K, channels of the final 1x1 convolution.
      features: channels of the first level (64 in the paper).
      depth: number of max-pooling steps (4 in the paper).
      in_channels: expected input channels (1 for grey, 3 for RGB).
      padding: ``valid`` (paper) or ``same``.
      norm: ``none`` (paper), ``batch`` or ``group``.
      dropout: rate at the end of the contracting path (0 disables).
      upsample: ``transpose`` (2x2 up-convolution, paper) or ``bilinear`` (resize + 3x3 conv).
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay ``param_dtype``.
      axis_name: pmap axis for cross-device batch statistics.
      conv: the convolution function (``lax.conv_general_dilated`` or a kernel from
        :func:`unet_jax.ops.conv_kernel`); every choice computes the same values.
    """

    num_classes: int = 2
    features: int = 64
    depth: int = 4
    in_channels: int = 1
    padding: str = "valid"
    norm: str = "none"
    dropout: float = 0.0
    upsample: str = "transpose"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    axis_name: str | None = None
    conv: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x, train: bool = False):
        _check_padding(self.padding)
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"UNet expects input [B, H, W, {self.in_channels}], got shape {x.shape}")
        for axis in (1, 2):
            output_size(x.shape[axis], self.depth, self.padding)  # raises for invalid sizes
        block = functools.partial(layers.ConvBlock, padding=self.padding.upper(), norm=self.norm,
                                  dtype=self.dtype, param_dtype=self.param_dtype,
                                  axis_name=self.axis_name, conv=self.conv)
        x = x.astype(self.dtype)
        skips = []
        for level in range(self.depth):
            x = block(self.features * 2 ** level, name=f"down_{level}")(x, train)
            skips.append(x)
            x = layers.max_pool2(x)
        x = block(self.features * 2 ** self.depth, name="bottom")(x, train)
        if self.dropout > 0:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        for level in reversed(range(self.depth)):
            f = self.features * 2 ** level
            x = layers.Up(f, self.upsample, dtype=self.dtype, param_dtype=self.param_dtype,
                          name=f"up_{level}")(x)
            skip = layers.center_crop(skips[level], x.shape[1], x.shape[2])
            x = jnp.concatenate([skip, x], axis=-1)
            x = block(f, name=f"up_block_{level}")(x, train)
        x = nn.Conv(self.num_classes, (1, 1), kernel_init=layers.he_normal(), dtype=self.dtype,
                    param_dtype=self.param_dtype, conv_general_dilated=self.conv,
                    name="head")(x)
        return x.astype(jnp.float32)


def from_config(m, axis_name: str | None = None) -> UNet:
    """The U-Net of a run's ``config.model``; its ``conv`` name picks the convolution kernel
    here, once, for the backend JAX runs on (:func:`unet_jax.ops.conv_kernel`)."""
    return UNet(num_classes=m.num_classes, features=m.features, depth=m.depth,
                in_channels=m.in_channels, padding=m.padding, norm=m.norm, dropout=m.dropout,
                upsample=m.upsample, dtype=jnp.dtype(m.dtype), axis_name=axis_name,
                conv=ops.conv_kernel(m.get("conv", "auto")))


def tile_sizes(out_tile: int, depth: int, padding: str) -> tuple[int, int]:
    """(input tile, output tile) of a training tile of ``out_tile`` output pixels: the same
    size in same mode; in valid mode the smallest valid input whose output covers it."""
    if padding == "same":
        output_size(out_tile, depth, "same")  # raises for sizes the network cannot take
        return out_tile, out_tile
    size_in = input_size_for_output(out_tile, depth, "valid")
    return size_in, output_size(size_in, depth, "valid")


# Model variants (functools.partial of the one module).
UNetPaper = functools.partial(UNet, features=64, depth=4, padding="valid")
UNetSame = functools.partial(UNet, features=64, depth=4, padding="same")
UNetCPU = functools.partial(UNet, features=16, depth=3, padding="same")
_UNetTiny = functools.partial(UNet, features=4, depth=2)
