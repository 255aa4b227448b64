"""Stride-1 NHWC convolutions for XLA's CPU backend: the same values as
``lax.conv_general_dilated``, with kernels that run faster on CPUs.

The interface is one function, :func:`conv_general_dilated`, a drop-in for
``lax.conv_general_dilated`` (``flax.linen.Conv(conv_general_dilated=...)``). Plain stride-1
NHWC/HWIO convolutions get

* the kernel gradient dK[i, j] = sum_{n,h,w} Xpad[n, h+i, w+j, :]^T g[n, h, w, :] as matrix
  products over cache-sized blocks of output rows (:func:`kernel_grad`); XLA's own kernel
  gradient of a 3x3 convolution runs several times slower on CPUs for large images;
* the forward pass and the input gradient as XLA convolutions steered to XLA's faster CPU
  kernel for the layer's channel counts (:func:`xla_conv`), and a one-channel first layer as
  nine shifted products;

anything else goes to ``lax.conv_general_dilated`` unchanged. Which layers use which form, and
what each measured, is in ``docs/performance.md``. GPUs keep cuDNN's kernels: the choice of this
module is made once, when a model is built (:func:`unet_jax.ops.conv_kernel`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")
STRATEGIES = ("auto", "xla", "offsets", "rows")  # kernel-gradient strategies

ROW_BLOCK_BYTES = 3e6  # patch bytes of one row block (fits L2 and a share of L3)
ROWS_MIN_PIXELS = 4096  # n * h * w from which ``rows`` beats XLA's own kernel gradient
ROWS_MIN_PIXELS_WIDE = 16384  # the same for layers whose patch rows fill half a block or more
MAX_FUSED_CONCAT = 8  # XLA's CPU fusion leaves a concatenation of more operands unfused
GROUP_BY_ROW_CIN = 64  # from this many input channels, one offset group per kernel row
EIGEN_MAX_CIN = 32  # convolutions of <= this many input (and >= 32 output) channels use Eigen


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None,
                         strategy: str = "auto", **kwargs):
    """``lax.conv_general_dilated`` with this module's CPU kernels for plain stride-1 NHWC
    convolutions; ``strategy`` picks the kernel gradient (see :func:`kernel_grad`)."""
    plain = (lhs.ndim == 4 and all(s == 1 for s in window_strides) and feature_group_count == 1
             and not kwargs and precision is None
             and all(d == 1 for d in (lhs_dilation or (1, 1)))
             and all(d == 1 for d in (rhs_dilation or (1, 1)))
             and dimension_numbers is not None
             and tuple(dimension_numbers) == tuple(lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)))
    if not plain:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision, **kwargs)
    return conv(lhs, rhs, explicit_padding(padding, rhs.shape[:2]), strategy)


def explicit_padding(padding, kernel) -> tuple:
    """``'VALID'`` / ``'SAME'`` (stride 1) or pairs -> ((lo, hi), ...) per spatial axis."""
    if isinstance(padding, str):
        if padding == "VALID":
            return tuple((0, 0) for _ in kernel)
        return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel)
    return tuple(tuple(p) for p in padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x, w, padding, strategy: str = "auto"):
    """Stride-1 NHWC/HWIO convolution with explicit ``padding``; its kernel gradient is
    :func:`kernel_grad` with ``strategy`` (``auto``: :func:`kernel_grad_strategy` per layer)."""
    return forward(x, w, padding)


def _conv_fwd(x, w, padding, strategy):
    return conv(x, w, padding, strategy), (x, w)


def _conv_bwd(padding, strategy, res, g):
    x, w = res
    if strategy == "auto":
        strategy = kernel_grad_strategy(x.shape, w.shape[:2])
    return input_grad(w, g, padding), kernel_grad(x, w, g, padding, strategy).astype(w.dtype)


conv.defvjp(_conv_fwd, _conv_bwd)


def forward(x, w, padding):
    """The convolution's value. A one-channel input of <= 32 output channels (a grey image's
    first layer) is a sum of kh*kw shifted products, one fused elementwise loop, far cheaper
    than XLA's convolution for a single input channel; anything else is :func:`xla_conv`."""
    kh, kw, cin, cout = w.shape
    if cin != 1 or cout > 32:
        return xla_conv(x, w, padding)
    xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    return sum(xp[:, i:i + ho, j:j + wo, :] * w[i, j, 0] for i in range(kh) for j in range(kw))


def xla_conv(x, w, padding):
    """``lax.conv_general_dilated`` (stride 1, NHWC/HWIO) steered to the faster CPU kernel.

    XLA's CPU backend gives 2-D float32 convolutions to YNNPACK unless both channel counts are
    <= 16 or an output axis is longer than the input's, and for few input channels YNNPACK is
    the slower kernel. A convolution of <= :data:`EIGEN_MAX_CIN` input and >= 32 output channels
    is therefore computed ``e`` columns wider on each side and cropped, which XLA runs with its
    Eigen kernel; the values are the same.
    """
    _, kw, cin, cout = w.shape
    if not (cin <= EIGEN_MAX_CIN and cout >= 32):
        return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=NHWC)
    (ph, (lo, hi)), width = padding, x.shape[2]
    wo = width + lo + hi - kw + 1
    e = max(0, (width - wo) // 2 + 1)
    y = lax.conv_general_dilated(x, w, (1, 1), (ph, (lo + e, hi + e)), dimension_numbers=NHWC)
    return y[:, :, e:e + wo, :]


def input_grad(w, g, padding):
    """dX of a stride-1 NHWC/HWIO convolution: the output gradient correlated with the flipped,
    in/out-swapped kernel, padded by k - 1 - pad (a stride-1 transposed convolution), written
    out so that :func:`xla_conv`'s kernel choice applies to it too."""
    kh, kw = w.shape[:2]
    pads = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), padding))
    return xla_conv(g, jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2)), pads)


def patch_row_bytes(n: int, wo: int, cin: int, kh: int, kw: int) -> int:
    """Bytes of one output row's float32 patches ``[kh * kw * cin, n * wo]``."""
    return n * wo * kh * kw * cin * 4


def kernel_grad_strategy(x_shape, kernel=(3, 3)) -> str:
    """``rows`` for layers of >= :data:`ROWS_MIN_PIXELS` input pixels (batch x height x width),
    or of >= :data:`ROWS_MIN_PIXELS_WIDE` when one output row's patches take half of
    :data:`ROW_BLOCK_BYTES` or more; else ``xla``, which is as fast or faster for small images
    of many channels."""
    n, h, w, c = x_shape
    wide = 2 * patch_row_bytes(n, w, c, *kernel) >= ROW_BLOCK_BYTES
    return "rows" if n * h * w >= (ROWS_MIN_PIXELS_WIDE if wide else ROWS_MIN_PIXELS) else "xla"


def row_block(n: int, ho: int, wo: int, cin: int, kh: int, kw: int) -> int:
    """The largest divisor of ``ho`` whose block of patches fits ``ROW_BLOCK_BYTES`` (at least 1)."""
    per_row = patch_row_bytes(n, wo, cin, kh, kw)
    fits = [r for r in range(1, ho + 1) if ho % r == 0 and r * per_row <= ROW_BLOCK_BYTES]
    return max(fits, default=1)


def kernel_grad(x, w, g, padding, strategy: str):
    """dK of a stride-1 NHWC/HWIO convolution with output gradient ``g``:
    dK[i, j] = sum_{n,h,w} Xpad[n, h+i, w+j, :]^T g[n, h, w, :].

    ``xla``: XLA's own (autodiff of ``lax.conv_general_dilated``). ``offsets``: one matrix
    product per kernel offset over the whole image. ``rows``: the padded input is transposed
    once to channel-major ``[cin, n, h, w]``, then a loop runs over blocks of output rows of
    about :data:`ROW_BLOCK_BYTES` of patches, so that they stay in cache. Per block the kernel
    offsets go in groups of at most :data:`MAX_FUSED_CONCAT` (XLA fuses a concatenation that
    small with its slices into one copy): as few groups as that allows below
    :data:`GROUP_BY_ROW_CIN` input channels, one group per kernel row from there on. Each
    group's patches ``[len(group) * cin, pixels]`` times the block's output gradient
    ``[pixels, cout]`` is one matrix product. Each loop step takes two blocks, one from each
    half of the image, into separate accumulators: XLA's CPU dot gains little from a second core
    on products this small, while independent products in one loop step run side by side.
    """
    if strategy == "xla":
        return jax.vjp(lambda v: lax.conv_general_dilated(x, v, (1, 1), padding, dimension_numbers=NHWC),
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
    ways = 2 if blocks % 2 == 0 else 1  # independent chains per loop step
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
