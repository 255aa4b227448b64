"""Flax linen building blocks shared by the digit CNN, the convolutional autoencoders and the U-Net.

All blocks are NHWC: ``[B, H, W, C]``.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any

NORMS = ("none", "batch", "group")
_NHWC = ("NHWC", "HWIO", "NHWC")


def _explicit_padding(padding, kernel):
    if isinstance(padding, str):
        if padding == "VALID":
            return tuple((0, 0) for _ in kernel)
        return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel)  # SAME, stride 1
    return tuple(tuple(p) for p in padding)


ROW_BLOCK_BYTES = 1.5e6  # patch bytes of one row block (about an L2 cache's worth)


def kernel_grad_strategy(x_shape) -> str:
    """How :func:`conv_matmul_grad` computes a kernel gradient on the CPU: ``rows`` for layers of
    >= 8 input channels, else ``xla``. Measured on a 2-core AVX-512 machine, whole train steps
    timed in turns (issue 8): depth-4 U-Net, 1x512x512, 16 features: xla 992 ms, offsets for
    >= 64 channels 1,067, rows 848; 2x256x256, 64 features: 4,467 / 6,712 / 4,261 ms."""
    return "rows" if x_shape[-1] >= 8 else "xla"


def row_block(n: int, ho: int, wo: int, cin: int, kh: int, kw: int) -> int:
    """The largest divisor of ``ho`` whose block of patches fits ``ROW_BLOCK_BYTES`` (at least 1)."""
    per_row = n * wo * kh * kw * cin * 4
    fits = [r for r in range(1, ho + 1) if ho % r == 0 and r * per_row <= ROW_BLOCK_BYTES]
    return max(fits, default=1)


def kernel_grad(x, w, g, padding, strategy: str):
    """dK of a stride-1 NHWC/HWIO convolution with output gradient ``g``:
    dK[i, j] = sum_{n,h,w} Xpad[n, h+i, w+j, :]^T g[n, h, w, :].

    ``xla``: XLA's own (autodiff of lax.conv_general_dilated). ``offsets``: one matrix product
    per kernel offset over the whole image. ``rows``: a loop over blocks of output rows, each
    one matrix product of its patches [pixels, kh*kw*cin] with its output gradient, so that the
    patches stay in cache. On 2 CPU cores ``rows`` is 2-2.5x faster than XLA for the U-Net's
    large layers (e.g. 2x256x256, 64 -> 64: 115 against 264 ms; 1x512x512, 16 -> 16: 31 against
    70 ms), and XLA's wins for small ones.
    """
    if strategy == "xla":
        return jax.vjp(lambda v: lax.conv_general_dilated(x, v, (1, 1), padding, dimension_numbers=_NHWC),
                       w)[1](g)[0]
    kh, kw, cin, cout = w.shape
    n, ho, wo, _ = g.shape
    xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
    if strategy == "offsets":
        g2 = g.reshape(-1, cout)
        return jnp.stack([jnp.stack([
            jnp.matmul(xp[:, i:i + ho, j:j + wo, :].reshape(-1, cin).T, g2,
                       preferred_element_type=jnp.float32)
            for j in range(kw)]) for i in range(kh)])
    if strategy != "rows":
        raise ValueError(f"kernel gradient strategy must be xla, offsets or rows, got {strategy!r}")
    rows = row_block(n, ho, wo, cin, kh, kw)

    def block(acc, b):
        xb = lax.dynamic_slice_in_dim(xp, b * rows, rows + kh - 1, axis=1)
        gb = lax.dynamic_slice_in_dim(g, b * rows, rows, axis=1).reshape(-1, cout)
        patches = jnp.concatenate([xb[:, i:i + rows, j:j + wo, :] for i in range(kh) for j in range(kw)], -1)
        return acc + lax.dot_general(patches.reshape(-1, kh * kw * cin), gb, (((0,), (0,)), ((), ())),
                                     preferred_element_type=jnp.float32), None

    acc, _ = lax.scan(block, jnp.zeros((kh * kw * cin, cout), jnp.float32), jnp.arange(ho // rows))
    return acc.reshape(kh, kw, cin, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_matmul_grad(x, w, padding, strategy: str = "auto"):
    """Stride-1 NHWC/HWIO convolution whose kernel gradient is :func:`kernel_grad` with
    ``strategy`` (``auto``: :func:`kernel_grad_strategy` by the layer's shape).

    The forward pass (but for one-channel inputs, :func:`_conv_forward`) and the input gradient
    are XLA's. On CPU, XLA's own kernel gradient of a 3x3 convolution runs several times slower
    than matrix products (issue 8: 1,011 ms against 163 ms for 128 -> 128 channels at 2x128x128).
    """
    return _conv_forward(x, w, padding)


def _conv_forward(x, w, padding):
    """One-channel inputs (a grey image's first layer) as a sum of kh*kw shifted products, one
    fused elementwise loop: 1.2 against XLA's 14.4 ms for 1 -> 16 channels at 1x512x512 on 2
    CPU cores, alone; in the 16-feature U-Net's inference pass 191 against 198 ms, its training
    step unchanged within noise (issue 8). Anything else is XLA's convolution."""
    kh, kw, cin, cout = w.shape
    if cin != 1 or cout > 32:
        return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC)
    xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    return sum(xp[:, i:i + ho, j:j + wo, :] * w[i, j, 0] for i in range(kh) for j in range(kw))


def _conv_fwd(x, w, padding, strategy):
    return conv_matmul_grad(x, w, padding, strategy), (x, w)


def _conv_bwd(padding, strategy, res, g):
    x, w = res
    dx = jax.vjp(lambda v: lax.conv_general_dilated(v, w, (1, 1), padding, dimension_numbers=_NHWC),
                 x)[1](g)[0]
    if strategy == "auto":
        strategy = kernel_grad_strategy(x.shape)
    return dx, kernel_grad(x, w, g, padding, strategy).astype(w.dtype)


conv_matmul_grad.defvjp(_conv_fwd, _conv_bwd)


def fast_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                              dimension_numbers=None, feature_group_count=1, precision=None,
                              strategy: str = "offsets", **kwargs):
    """Drop-in for ``lax.conv_general_dilated`` (flax ``nn.Conv(conv_general_dilated=...)``):
    plain stride-1 NHWC convolutions take :func:`conv_matmul_grad` with the kernel-gradient
    ``strategy``, anything else goes to lax."""
    plain = (lhs.ndim == 4 and all(s == 1 for s in window_strides) and feature_group_count == 1
             and not kwargs and precision is None
             and all(d == 1 for d in (lhs_dilation or (1, 1)))
             and all(d == 1 for d in (rhs_dilation or (1, 1)))
             and dimension_numbers is not None
             and tuple(dimension_numbers) == tuple(lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)))
    if not plain:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision, **kwargs)
    return conv_matmul_grad(lhs, rhs, _explicit_padding(padding, rhs.shape[:2]), strategy)


def conv_impl(name: str = "auto") -> Callable:
    """``xla``: lax.conv_general_dilated; ``matmul``: :func:`fast_conv_general_dilated` with one
    matrix product per kernel offset; ``rows``: with row-block matrix products; ``auto``: on CPU
    backends the kernel-gradient strategy chosen per layer (:func:`kernel_grad_strategy`), xla
    elsewhere (cuDNN's kernel gradient is fast)."""
    if name == "auto":
        if jax.default_backend() != "cpu":
            return lax.conv_general_dilated
        return functools.partial(fast_conv_general_dilated, strategy="auto")
    if name == "matmul":
        return functools.partial(fast_conv_general_dilated, strategy="offsets")
    if name == "rows":
        return functools.partial(fast_conv_general_dilated, strategy="rows")
    if name == "xla":
        return lax.conv_general_dilated
    raise ValueError(f"conv_impl must be auto, xla, matmul or rows, got {name!r}")


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
    conv: str = "auto"  # auto | xla | matmul (see conv_impl)

    @nn.compact
    def __call__(self, x, train: bool = False):
        for _ in range(self.num_convs):
            x = nn.Conv(self.features, (self.kernel_size,) * 2, padding=self.padding,
                        kernel_init=he_normal(), use_bias=self.norm == "none", dtype=self.dtype,
                        param_dtype=self.param_dtype, conv_general_dilated=conv_impl(self.conv))(x)
            x = Norm(self.norm, dtype=self.dtype, param_dtype=self.param_dtype,
                     axis_name=self.axis_name)(x, train)
            x = nn.relu(x)
        return x


def max_pool2(x):
    """2x2 max-pooling, stride 2. [B, H, W, C] -> [B, floor(H/2), floor(W/2), C].

    Written as a reshape and a max over the two window axes: the same values as
    ``nn.max_pool(x, (2, 2), strides=(2, 2))``, and its gradient is elementwise, where XLA's
    select-and-scatter gradient of the windowed form took 2-7x longer on CPU (issue 8).
    """
    b, h, w, c = x.shape
    x = x[:, :h - h % 2, :w - w % 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


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
    matrix product and a reshape: XLA's lhs-dilated convolution for it took 1.5-3.7 s forward
    and backward per layer of the 64-feature U-Net on CPU, this 0.07-0.17 s (issue 8).
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
        y = jnp.einsum("nhwc,ijcd->nhiwjd", x, kernel).reshape(b, 2 * h, 2 * w, self.features)
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
