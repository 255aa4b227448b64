"""Flax linen building blocks shared by the digit CNN, the convolutional autoencoders and the U-Net.

All blocks are NHWC: ``[B, H, W, C]``.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

NORMS = ("none", "batch", "group")


def he_normal() -> Callable:
    """Gaussian N(0, 2/N), N = fan-in (k*k*C_in): Ronneberger et al. 2015, sec. 3 (He et al. 2015).

    Untruncated, exactly as in the paper (flax's ``he_normal`` truncates).
    """
    return nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class Norm(nn.Module):
    """Normalisation by name: ``none`` (identity), ``batch`` or ``group``."""

    kind: str = "none"
    groups: int = 8
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    axis_name: str | None = None  # pmap axis for cross-device batch statistics

    @nn.compact
    def __call__(self, x, train: bool):
        if self.kind == "none":
            return x
        if self.kind == "batch":
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                                param_dtype=self.param_dtype, axis_name=self.axis_name)(x)
        if self.kind == "group":
            groups = min(self.groups, x.shape[-1])
            while x.shape[-1] % groups:
                groups -= 1
            return nn.GroupNorm(num_groups=groups, dtype=self.dtype, param_dtype=self.param_dtype)(x)
        raise ValueError(f"norm must be one of {NORMS}, got {self.kind!r}")


class ConvBlock(nn.Module):
    """``num_convs`` x (3x3 convolution -> normalisation -> ReLU). [B, H, W, C] -> [B, H', W', features].

    ``padding='VALID'`` shrinks each spatial axis by kernel_size - 1 per convolution (the paper's
    unpadded convolutions); ``'SAME'`` keeps it.
    """

    features: int
    num_convs: int = 2
    kernel_size: int = 3
    padding: str = "SAME"
    norm: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        for _ in range(self.num_convs):
            x = nn.Conv(self.features, (self.kernel_size,) * 2, padding=self.padding,
                        kernel_init=he_normal(), use_bias=self.norm == "none", dtype=self.dtype,
                        param_dtype=self.param_dtype)(x)
            x = Norm(self.norm, dtype=self.dtype, param_dtype=self.param_dtype,
                     axis_name=self.axis_name)(x, train)
            x = nn.relu(x)
        return x


def max_pool2(x):
    """2x2 max-pooling, stride 2. [B, H, W, C] -> [B, H/2, W/2, C]."""
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def center_crop(x, height: int, width: int):
    """Crops the centre ``height x width`` of [B, H, W, C] (the paper's cropping of skip features)."""
    dh = x.shape[1] - height
    dw = x.shape[2] - width
    if dh < 0 or dw < 0:
        raise ValueError(f"cannot crop {x.shape[1]}x{x.shape[2]} to {height}x{width}")
    return x[:, dh // 2: dh // 2 + height, dw // 2: dw // 2 + width, :]


class Up(nn.Module):
    """Up-sampling by 2 that halves the channels.

    ``mode='transpose'``: 2x2 transposed convolution, stride 2 (the paper's up-convolution).
    ``mode='bilinear'``: bilinear resize by 2, then a 3x3 'SAME' convolution.
    """

    features: int
    mode: str = "transpose"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.mode == "transpose":
            return nn.ConvTranspose(self.features, (2, 2), strides=(2, 2), padding="VALID",
                                    kernel_init=he_normal(), dtype=self.dtype,
                                    param_dtype=self.param_dtype)(x)
        if self.mode == "bilinear":
            b, h, w, c = x.shape
            x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "bilinear")
            return nn.Conv(self.features, (3, 3), padding="SAME", kernel_init=he_normal(),
                           dtype=self.dtype, param_dtype=self.param_dtype)(x)
        raise ValueError(f"upsample must be 'transpose' or 'bilinear', got {self.mode!r}")
