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


ROW_BLOCK_BYTES = 3e6  # patch bytes of one row block (L2 and a share of L3)
ROWS_MIN_PIXELS = 4096  # n * h * w from which ``rows`` beats XLA's own kernel gradient
ROWS_MIN_PIXELS_WIDE = 16384  # the same for layers whose patch rows fill half a block or more
MAX_FUSED_CONCAT = 8  # XLA's CPU fusion leaves a concatenation of more operands unfused
GROUP_BY_ROW_CIN = 64  # from this many input channels, one offset group per kernel row


def kernel_grad_strategy(x_shape, kernel=(3, 3)) -> str:
    """How :func:`conv_matmul_grad` computes a kernel gradient on the CPU: ``rows`` for layers of
    >= :data:`ROWS_MIN_PIXELS` input pixels (batch x height x width), or of >=
    :data:`ROWS_MIN_PIXELS_WIDE` when one output row's patches (``n * w * kh * kw * c`` floats)
    take half of :data:`ROW_BLOCK_BYTES` or more, else ``xla``.

    Measured alone on a 2-core AVX-512 machine (issue 8), in turns in one process, rows
    (:func:`kernel_grad`'s grouped blocks) against xla: 1x64x64, 128 -> 128: 7.5-7.9 against
    10.1 ms; 256 -> 128: 15.7 against 19.8; 1x512x512, 1 -> 16: 3.7 against 5.3; 1x128x128,
    3 -> 16: 0.7 against 1.8; 2x64x64, 256 -> 256: 53 against 57; 2x128x128, 512 -> 256: 458
    against 1,646; but 2x64x64, 512 -> 256 (patches of one row 2.4 MB): 165 against 118, and
    equal at 1x64x64, 1024 -> 512 and 2x32x32, 512 -> 512 -- XLA's is as good or better for
    small images of many channels. Whole steps, in turns in one process, against the earlier
    rule (>= 16384 pixels and >= 8 channels), with rows from 4096 pixels for every layer:
    1x512x512, 16 features: 585 -> 575 ms; 2x256x256, 64 features: 3,295 -> 3,264 ms; keeping
    XLA's for the wide layers then left the 64-feature step unchanged within noise (3,274
    against 3,252 ms)."""
    n, h, w, c = x_shape
    wide = 2 * patch_row_bytes(n, w, c, *kernel) >= ROW_BLOCK_BYTES
    return "rows" if n * h * w >= (ROWS_MIN_PIXELS_WIDE if wide else ROWS_MIN_PIXELS) else "xla"


def patch_row_bytes(n: int, wo: int, cin: int, kh: int, kw: int) -> int:
    """Bytes of one output row's float32 patches ``[kh * kw * cin, n * wo]``."""
    return n * wo * kh * kw * cin * 4


def row_block(n: int, ho: int, wo: int, cin: int, kh: int, kw: int) -> int:
    """The largest divisor of ``ho`` whose block of patches fits ``ROW_BLOCK_BYTES`` (at least 1)."""
    per_row = patch_row_bytes(n, wo, cin, kh, kw)
    fits = [r for r in range(1, ho + 1) if ho % r == 0 and r * per_row <= ROW_BLOCK_BYTES]
    return max(fits, default=1)


def kernel_grad(x, w, g, padding, strategy: str):
    """dK of a stride-1 NHWC/HWIO convolution with output gradient ``g``:
    dK[i, j] = sum_{n,h,w} Xpad[n, h+i, w+j, :]^T g[n, h, w, :].

    ``xla``: XLA's own (autodiff of lax.conv_general_dilated). ``offsets``: one matrix product
    per kernel offset over the whole image. ``rows``: the padded input is transposed once to
    channel-major ``[cin, n, h, w]``; then a loop over blocks of output rows (about
    :data:`ROW_BLOCK_BYTES` of patches, so that they stay in cache). Per block, the kernel
    offsets go in groups of at most :data:`MAX_FUSED_CONCAT`: as few groups as that allows
    below :data:`GROUP_BY_ROW_CIN` input channels (two for 3x3, so that the products have 64-80
    rows for 16 channels), one group per kernel row from there on. Each group's patches
    ``[len(group)*cin, pixels]`` are one fused copy of its shifted slices, then one matrix
    product with the block's output gradient ``[pixels, cout]``. Each loop step takes two
    blocks, one from each half of the image, into separate accumulators.

    Why: XLA's CPU dot gains nothing from a second core on these small products (``[48, 4096]
    @ [4096, 16]``: 85 us with one core, 122 us with two), while independent products in one
    loop step run side by side, and a concatenation of <= 8 operands is fused with its slices
    (one copy instead of two). Alone on 2 CPU cores, in turns, this against one product of all nine
    offsets per block: 1x512x512, 16 -> 16: 17.8 against 22.2 ms; 32 -> 16: 30.1 against 42.1;
    1x256x256, 32 -> 32: 10.5 against 14.6; 64 -> 32: 20.1 against 24.8; 1x128x128, 128 -> 64:
    16.3 against 18.5 (XLA's own: 58.8 ms for 16 -> 16, 121.6 for 32 -> 16). Whole training
    steps in turns in one process: 1x512x512, 16 features: 612 -> 585 ms; 2x256x256, 64
    features: 3,340 -> 3,295 ms. Two groups against three (one per kernel row), alone: 1x512x512,
    16 -> 16: 13.2-13.6 against 17.8-18.3 ms; 1x256x256, 16 -> 32: 5.4-5.6 against 6.4-6.8; from
    64 channels on as fast or slower (2x256x256, 128 -> 64: 140.8 against 135.7); 16-feature
    step 567 -> 549 ms. PyTorch's oneDNN takes 8.9 and 17.0 ms for 16 -> 16 and 32 -> 16.
    Tried and slower: pixel-major patches with ``g^T @ patches`` (15.8 ms for 16 -> 16 but 31.3
    for 32 -> 16 and worse above), shifting ``g`` instead of ``x``, width-stacked patches with
    row-shifted gradients (``[3 cin, P] @ [P, 3 cout]``), transposing per block, padding
    columns inside the fused copy (2x slower), separate loops per half (XLA runs while loops
    one after the other), a fully unrolled loop (slower, 10-20 s to compile).
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
    blocks = ho // rows
    ways = 2 if blocks % 2 == 0 else 1  # independent chains per loop step (see the docstring)
    per_way = blocks // ways
    xt = jnp.transpose(xp, (3, 0, 1, 2))  # [cin, n, h, w]: patch rows are contiguous pixels
    offsets = [(i, j) for i in range(kh) for j in range(kw)]
    size = min(kw, MAX_FUSED_CONCAT) if cin >= GROUP_BY_ROW_CIN else MAX_FUSED_CONCAT
    count = -(-len(offsets) // size)  # groups of <= size offsets, sizes within one of each other
    bounds = [len(offsets) * k // count for k in range(count + 1)]
    groups = [offsets[a:b] for a, b in zip(bounds, bounds[1:])]

    def block(acc, b):
        acc = list(acc)
        for way in range(ways):
            r0 = (b + way * per_way) * rows
            gb = lax.dynamic_slice_in_dim(g, r0, rows, axis=1).reshape(-1, cout)
            for k, group in enumerate(groups):
                patches = jnp.concatenate([lax.dynamic_slice(xt, (0, 0, r0 + i, j), (cin, n, rows, wo))
                                           for i, j in group], 0)
                acc[k] = acc[k] + jnp.matmul(patches.reshape(len(group) * cin, -1), gb,
                                             preferred_element_type=jnp.float32)
        return tuple(acc), None

    zeros = tuple(jnp.zeros((len(group) * cin, cout), jnp.float32) for group in groups)
    acc, _ = lax.scan(block, zeros, jnp.arange(per_way))
    return jnp.concatenate(acc, 0).reshape(kh, kw, cin, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_matmul_grad(x, w, padding, strategy: str = "auto"):
    """Stride-1 NHWC/HWIO convolution whose kernel gradient is :func:`kernel_grad` with
    ``strategy`` (``auto``: :func:`kernel_grad_strategy` by the layer's shape).

    The forward pass (:func:`_conv_forward`) and the input gradient (:func:`_input_grad`) are
    XLA's convolutions, with the CPU kernel choice of :func:`_xla_conv`. On CPU, XLA's own
    kernel gradient of a 3x3 convolution runs several times slower than matrix products for
    large images (issue 8: 1,011 ms against 163 ms for 128 -> 128 channels at 2x128x128).
    """
    return _conv_forward(x, w, padding)


def _conv_forward(x, w, padding):
    """One-channel inputs (a grey image's first layer) as a sum of kh*kw shifted products, one
    fused elementwise loop: 1.2 against XLA's 14.4 ms for 1 -> 16 channels at 1x512x512 on 2
    CPU cores, alone; in the 16-feature U-Net's inference pass 191 against 198 ms, its training
    step unchanged within noise (issue 8). Anything else is :func:`_xla_conv`."""
    kh, kw, cin, cout = w.shape
    if cin != 1 or cout > 32:
        return _xla_conv(x, w, padding)
    xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    return sum(xp[:, i:i + ho, j:j + wo, :] * w[i, j, 0] for i in range(kh) for j in range(kw))


EIGEN_MAX_CIN = 32  # convolutions of <= this many input channels (and >= 32 output) use Eigen


def _xla_conv(x, w, padding):
    """``lax.conv_general_dilated`` (stride 1, NHWC/HWIO, explicit padding), with one CPU
    kernel choice: XLA's CPU backend hands 2-D float32 convolutions to YNNPACK unless both
    channel counts are <= 16 or an output axis is longer than the input's, and for few input
    channels YNNPACK's kernel is the slower one. A convolution of <= :data:`EIGEN_MAX_CIN`
    input and >= 32 output channels is therefore computed with ``e`` more zero columns on each
    side (output wider than input) and cropped, which XLA runs with its Eigen kernel. Alone on 2
    CPU cores (issue 8), YNNPACK against Eigen: 1x256x256, 32 -> 32: 12.4 against 8.1 ms;
    16 -> 32: 6.7 against 4.4; 1x128x128, 32 -> 64: 6.2 against 4.1; the input gradient of
    1x512x512, 32 -> 16 (a 16 -> 32 convolution): 41.8 against 28.0; but 32 -> 16 itself 14.4
    against 21.4 and 2x256x256, 64 -> 64: 59.9 against 74.4, hence the channel rule."""
    _, kw, cin, cout = w.shape
    if not (cin <= EIGEN_MAX_CIN and cout >= 32) or jax.default_backend() != "cpu":
        return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC)
    (ph, (lo, hi)), width = padding, x.shape[2]
    wo = width + lo + hi - kw + 1
    e = max(0, (width - wo) // 2 + 1)
    y = lax.conv_general_dilated(x, w, (1, 1), (ph, (lo + e, hi + e)), dimension_numbers=_NHWC)
    return y[:, :, e:e + wo, :]


def _input_grad(w, g, padding):
    """dX of a stride-1 NHWC/HWIO convolution: the output gradient correlated with the flipped,
    in/out-swapped kernel, padded by k - 1 - pad (a stride-1 transposed convolution)."""
    kh, kw = w.shape[:2]
    pads = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), padding))
    return _xla_conv(g, jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2)), pads)


def _conv_fwd(x, w, padding, strategy):
    return conv_matmul_grad(x, w, padding, strategy), (x, w)


def _conv_bwd(padding, strategy, res, g):
    x, w = res
    dx = _input_grad(w, g, padding)
    if strategy == "auto":
        strategy = kernel_grad_strategy(x.shape, w.shape[:2])
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

    The same values and gradients as ``nn.max_pool(x, (2, 2), strides=(2, 2))``, ties
    included: the gradient goes to the first maximum of each window in row-major order, as XLA's
    select-and-scatter does (ReLU outputs make ties of zeros common). Written as a selection:
    the maximum and the winning position are found on a ``stop_gradient`` copy, and the output
    selects the winner, so autodiff (reverse and forward mode) gives one elementwise pass.
    On 2 CPU cores, forward and backward at 2x256x256x64: 11.5 ms, against 56.7 ms for autodiff
    of a reshape and max (which splits a tie's gradient and needs a count per window) and 193 ms
    for the windowed form's select-and-scatter (issue 8).
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
    matrix product and a reshape: XLA's lhs-dilated convolution for it took 1.5-3.7 s forward
    and backward per layer of the 64-feature U-Net on CPU, this 0.07-0.17 s (issue 8).

    The product is ``[pixels, C_in] @ [C_in, 4 C_out]`` on the NHWC rows as they lie, then an
    interleave of the 2x2 blocks: an einsum ``nhwc,ijcd->nhiwjd`` let XLA transpose the input to
    channel-major first and write the product channel-major, which the interleave then gathers.
    In turns in one process on 2 CPU cores, einsum against this: 1x512x512, 16 features,
    inference 180 -> 169 ms (median of 30), training 770 -> 752 ms (median of 20).
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
