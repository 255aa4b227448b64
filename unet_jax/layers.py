"""Flax linen building blocks shared by the digit CNN, the convolutional autoencoders and the U-Net.

All blocks are NHWC: ``[B, H, W, C]``.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

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
    conv: Callable = lax.conv_general_dilated  # or a kernel from unet_jax.ops.conv_kernel

    @nn.compact
    def __call__(self, x, train: bool = False):
        for _ in range(self.num_convs):
            x = nn.Conv(self.features, (self.kernel_size,) * 2, padding=self.padding,
                        kernel_init=he_normal(), use_bias=self.norm == "none", dtype=self.dtype,
                        param_dtype=self.param_dtype, conv_general_dilated=self.conv)(x)
            x = Norm(self.norm, dtype=self.dtype, param_dtype=self.param_dtype,
                     axis_name=self.axis_name)(x, train)
            x = nn.relu(x)
        return x


def max_pool2(x):
    """2x2 max-pooling, stride 2. [B, H, W, C] -> [B, floor(H/2), floor(W/2), C].

    The same values and gradients as ``nn.max_pool(x, (2, 2), strides=(2, 2))``, ties
    included: the gradient goes to the first maximum of each window in row-major order, as XLA's
    select-and-scatter does (ReLU outputs make ties of zeros common). Written as a selection:
    the maximum and the winning position are found on a ``stop_gradient`` copy, and the output
    selects the winner, so autodiff (reverse and forward mode) gives one elementwise pass
    instead of select-and-scatter, which is slow on CPUs.
    """
    b, h, w, c = x.shape
    x6 = x[:, :h - h % 2, :w - w % 2, :].reshape(b, h // 2, 2, w // 2, 2, c)
    window = [x6[:, :, i, :, j] for i in range(2) for j in range(2)]  # row-major
    fixed = [lax.stop_gradient(v) for v in window]
    top = jnp.maximum(jnp.maximum(fixed[0], fixed[1]), jnp.maximum(fixed[2], fixed[3]))
    taken = jnp.zeros(top.shape, bool)
    y = jnp.zeros_like(top)
    for v, v_fixed in zip(window, fixed):
        win = (v_fixed == top) & ~taken
        y = jnp.where(win, v, y)
        taken = taken | win
    return jnp.where(taken, y, top)  # no winner: a NaN in the window, passed on


def center_crop(x, height: int, width: int):
    """Crops the centre ``height x width`` of [B, H, W, C] (the paper's cropping of skip features)."""
    dh = x.shape[1] - height
    dw = x.shape[2] - width
    if dh < 0 or dw < 0:
        raise ValueError(f"cannot crop {x.shape[1]}x{x.shape[2]} to {height}x{width}")
    return x[:, dh // 2: dh // 2 + height, dw // 2: dw // 2 + width, :]


class ConvTranspose2x2(nn.Module):
    """2x2 transposed convolution with stride 2 ('VALID'): every input pixel becomes a 2x2 output
    block, ``y[2h+a, 2w+b] = x[h, w] @ K[1-a, 1-b] + bias``.

    The same parameters (``kernel`` [2, 2, C_in, C_out], ``bias``) and values as
    ``nn.ConvTranspose(features, (2, 2), strides=(2, 2), padding='VALID')``, written as one
    matrix product ``[pixels, C_in] @ [C_in, 4 C_out]`` on the NHWC rows as they lie, then an
    interleave of the 2x2 blocks: XLA's lhs-dilated convolution for it is an order of magnitude
    slower on CPUs, and an einsum lets XLA transpose the input to channel-major first.
    """

    features: int
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        kernel = self.param("kernel", self.kernel_init, (2, 2, c, self.features), self.param_dtype)
        x, kernel = x.astype(self.dtype), kernel[::-1, ::-1].astype(self.dtype)
        blocks = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(c, 4 * self.features)  # [C_in, (a, b, C_out)]
        y = jnp.matmul(x.reshape(b * h * w, c), blocks).reshape(b, h, w, 2, 2, self.features)
        y = jnp.transpose(y, (0, 1, 3, 2, 4, 5)).reshape(b, 2 * h, 2 * w, self.features)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


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
            return ConvTranspose2x2(self.features, kernel_init=he_normal(), dtype=self.dtype,
                                    param_dtype=self.param_dtype, name="ConvTranspose_0")(x)
        if self.mode == "bilinear":
            b, h, w, c = x.shape
            x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "bilinear")
            return nn.Conv(self.features, (3, 3), padding="SAME", kernel_init=he_normal(),
                           dtype=self.dtype, param_dtype=self.param_dtype)(x)
        raise ValueError(f"upsample must be 'transpose' or 'bilinear', got {self.mode!r}")
