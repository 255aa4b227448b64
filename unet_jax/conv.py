"""The lecture's convolution and pooling, written from their definitions (eq. 1-7).

Every function here is pure, jittable and differentiable. They are written as sums of
shifted, strided slices of the padded input -- the definition, term by term -- rather than
through ``lax.conv_general_dilated``, so that the tests can use ``lax`` as an independent
reference. Flax layers (``unet_jax.layers``) use the fast library kernels.

Conventions
-----------
* ``correlate*`` is the cross-correlation of eq. 5, S(i, j) = sum_{m,n} I(i+m, j+n) K(m, n):
  what every deep-learning "convolution" layer computes.
* ``convolve*`` is the discrete convolution of eq. 2-4, S(i, j) = sum_{m,n} I(m, n) K(i-m, j-n):
  the kernel is flipped. It equals ``numpy.convolve`` / ``scipy.signal.convolve`` for
  ``valid`` / ``same`` / ``full`` at stride 1, and is commutative in ``full`` mode (eq. 3 = eq. 4).
* Zero padding (per spatial axis of input width m and kernel width k):
  ``valid`` pads nothing (output m - k + 1), ``same`` pads k - 1 in total (output m),
  ``full`` pads k - 1 on both sides (output m + k - 1). With stride s the output width is
  floor((m + pad_total - k) / s) + 1 (eq. 7), e.g. ceil(m / s) for ``same``.
  For ``same`` with an even kernel, correlation puts the extra zero on the high side (as
  ``lax`` ``'SAME'``) and convolution on the low side (as ``numpy.convolve``), so that
  ``convolve(x, k) == correlate(x, flip(k))`` for every padding.
* Padding modes: ``zeros``, ``reflect`` (mirror without repeating the edge, numpy
  ``reflect``), ``replicate`` (numpy ``edge``) and ``circular`` (numpy ``wrap``).
"""
from __future__ import annotations

import itertools
from typing import Sequence

import jax.numpy as jnp
import numpy as np

PADDINGS = ("valid", "same", "full")
PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
POOL_KINDS = ("max", "avg", "l2")


def _as_tuple(value, n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        value = (int(value),) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"{name} must be an int or {n} ints, got {value}")
    return value


def _check_stride(stride: tuple[int, ...]) -> None:
    if any(s <= 0 for s in stride):
        raise ValueError(f"stride must be >= 1, got {stride}")


def pad_amounts(k: int, padding: str, *, flipped: bool = False) -> tuple[int, int]:
    """(low, high) zero-padding of one axis for a kernel of width ``k``.

    Args:
      k: kernel width.
      padding: ``valid``, ``same`` or ``full``.
      flipped: True for convolution (kernel flipped): ``same`` then puts the extra zero of an
        even kernel on the low side, as ``numpy.convolve`` does.
    """
    if padding == "valid":
        return 0, 0
    if padding == "full":
        return k - 1, k - 1
    if padding == "same":
        lo, hi = (k - 1) // 2, k // 2
        return (hi, lo) if flipped else (lo, hi)
    raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")


def pad(x: jnp.ndarray, pads: Sequence[tuple[int, int]], mode: str = "zeros") -> jnp.ndarray:
    """Pads the trailing ``len(pads)`` axes of ``x`` with one of the lecture's padding modes."""
    if mode not in PAD_MODES:
        raise ValueError(f"mode must be one of {tuple(PAD_MODES)}, got {mode!r}")
    lead = x.ndim - len(pads)
    if mode == "reflect":
        for axis, (lo, hi) in zip(range(lead, x.ndim), pads):
            if max(lo, hi) >= x.shape[axis]:
                raise ValueError(f"mode='reflect' needs padding < input width {x.shape[axis]} "
                                 f"on axis {axis}, got {(lo, hi)}")
    widths = [(0, 0)] * lead + [tuple(p) for p in pads]
    return jnp.pad(x, widths, mode=PAD_MODES[mode])


def _out_size(m: int, k: int, s: int, lo: int, hi: int) -> int:
    return (m + lo + hi - k) // s + 1


def _shifted_slices(xp: jnp.ndarray, kshape: tuple[int, ...], out: tuple[int, ...],
                    stride: tuple[int, ...]):
    """Yields (offset, slice) with slice[..., i, j] = xp[..., i*s + m, j*s + n] (eq. 7)."""
    nd = len(kshape)
    for offset in itertools.product(*(range(k) for k in kshape)):
        index = tuple(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offset, stride, out))
        yield offset, xp[(Ellipsis,) + index] if nd else xp


def _prepare(x, kshape, stride, padding, mode, *, flipped, what):
    nd = len(kshape)
    if x.ndim < nd:
        raise ValueError(f"{what}: input must have at least {nd} dims, got shape {x.shape}")
    stride = _as_tuple(stride, nd, "stride")
    _check_stride(stride)
    spatial = x.shape[x.ndim - nd:]
    pads = [pad_amounts(k, padding, flipped=flipped) for k in kshape]
    for m, k, (lo, hi) in zip(spatial, kshape, pads):
        if m + lo + hi < k:
            raise ValueError(f"{what}: kernel {tuple(kshape)} is larger than the input "
                             f"{tuple(spatial)} with padding={padding!r}")
    out = tuple(_out_size(m, k, s, lo, hi) for m, k, s, (lo, hi) in zip(spatial, kshape, stride, pads))
    return pad(x, pads, mode), stride, out


def _correlate(x, k, stride, padding, mode, *, flipped, what):
    x = jnp.asarray(x)
    k = jnp.asarray(k)
    xp, stride, out = _prepare(x, k.shape, stride, padding, mode, flipped=flipped, what=what)
    acc = jnp.zeros(x.shape[: x.ndim - k.ndim] + out, jnp.result_type(x, k))
    for offset, window in _shifted_slices(xp, k.shape, out, stride):
        acc = acc + k[offset] * window
    return acc


def _check_rank(x, k, rank: int, what: str) -> None:
    if jnp.ndim(k) != rank:
        raise ValueError(f"{what}: kernel must have rank {rank}, got shape {jnp.shape(k)}")
    if jnp.ndim(x) < rank:
        raise ValueError(f"{what}: input must have rank >= {rank}, got shape {jnp.shape(x)}")


def correlate1d(x, k, stride: int = 1, padding: str = "valid", mode: str = "zeros"):
    """Cross-correlation (eq. 5) along the last axis. x: [..., m], k: [w] -> [..., m']."""
    _check_rank(x, k, 1, "correlate1d")
    return _correlate(x, k, stride, padding, mode, flipped=False, what="correlate1d")


def convolve1d(x, k, stride: int = 1, padding: str = "valid", mode: str = "zeros"):
    """Discrete convolution (eq. 2, kernel flipped) along the last axis. x: [..., m], k: [w]."""
    _check_rank(x, k, 1, "convolve1d")
    return _correlate(x, jnp.flip(k), stride, padding, mode, flipped=True, what="convolve1d")


def correlate2d(x, k, stride=1, padding: str = "valid", mode: str = "zeros"):
    """Cross-correlation (eq. 5) over the last two axes. x: [..., H, W], k: [kh, kw]."""
    _check_rank(x, k, 2, "correlate2d")
    return _correlate(x, k, stride, padding, mode, flipped=False, what="correlate2d")


def convolve2d(x, k, stride=1, padding: str = "valid", mode: str = "zeros"):
    """Discrete 2-D convolution (eq. 4, kernel flipped). x: [..., H, W], k: [kh, kw]."""
    _check_rank(x, k, 2, "convolve2d")
    return _correlate(x, jnp.flip(k), stride, padding, mode, flipped=True, what="convolve2d")


def conv_multichannel(v, k, stride=1, padding: str = "valid", mode: str = "zeros"):
    """The multichannel layer of eq. 6 / eq. 7 (channel-first, as in the lecture).

    Z[i, j, k] = sum_{l, m, n} V[l, (j-1) s + m, (k-1) s + n] K[i, l, m, n]

    Args:
      v: input ``[..., L, H, W]`` (L input channels, optional leading batch axes).
      k: kernel ``[I, L, kh, kw]`` (I output channels).
      stride: s, an int or (sh, sw).
      padding: ``valid``, ``same`` or ``full``.
      mode: padding mode.

    Returns:
      ``[..., I, H', W']``.
    """
    v = jnp.asarray(v)
    k = jnp.asarray(k)
    if k.ndim != 4:
        raise ValueError(f"conv_multichannel: kernel must be [I, L, kh, kw], got shape {k.shape}")
    if v.ndim < 3 or v.shape[-3] != k.shape[1]:
        raise ValueError(f"conv_multichannel: input must be [..., L={k.shape[1]}, H, W], "
                         f"got shape {v.shape}")
    vp, stride, out = _prepare(v, k.shape[2:], stride, padding, mode, flipped=False,
                               what="conv_multichannel")
    acc = jnp.zeros(v.shape[:-3] + (k.shape[0],) + out, jnp.result_type(v, k))
    for (m, n), window in _shifted_slices(vp, k.shape[2:], out, stride):
        # window: [..., L, H', W']; sum over l with K[:, :, m, n]: [I, L]
        acc = acc + jnp.einsum("...lhw,il->...ihw", window, k[:, :, m, n])
    return acc


def toeplitz1d(k, n: int, padding: str = "valid", stride: int = 1):
    """The matrix T of a 1-D convolution: ``T @ x == convolve1d(x, k, stride, padding)``.

    Row i holds the flipped kernel shifted by i * stride (a Toeplitz band; each row has at
    most ``len(k)`` non-zeros -- the sparse connectivity of a convolution).

    Args:
      k: kernel ``[w]``.
      n: input length.
      padding: zero padding ``valid`` / ``same`` / ``full``.
      stride: output stride.

    Returns:
      ``[n_out, n]``.
    """
    k = jnp.asarray(k)
    if k.ndim != 1:
        raise ValueError(f"toeplitz1d: kernel must have rank 1, got shape {k.shape}")
    if stride <= 0:
        raise ValueError(f"stride must be >= 1, got {stride}")
    w = k.shape[0]
    lo, hi = pad_amounts(w, padding, flipped=True)
    if n + lo + hi < w:
        raise ValueError(f"toeplitz1d: kernel width {w} is larger than the input {n} "
                         f"with padding={padding!r}")
    n_out = _out_size(n, w, stride, lo, hi)
    i = np.arange(n_out)[:, None]
    j = np.arange(n)[None, :]
    # correlation with the flipped kernel kf: y[i] = sum_m kf[m] x[i*s + m - lo]
    idx = j - i * stride + lo
    inside = (idx >= 0) & (idx < w)
    kf = jnp.flip(k)
    return jnp.where(inside, kf[np.clip(idx, 0, w - 1)], 0)


def pool(x, window, stride=None, padding="valid", kind: str = "max",
         count_include_pad: bool = False):
    """Max, average or L2-norm pooling over the trailing ``len(window)`` axes.

    Args:
      x: ``[..., *spatial]``.
      window: pooling window, an int for 1-D or a tuple (one entry per pooled axis).
      stride: defaults to the window (non-overlapping pooling).
      padding: ``valid``, ``same``, ``full`` or explicit ((lo, hi), ...) per axis. Padded
        positions never win a max, add nothing to an L2 norm, and are left out of an average
        unless ``count_include_pad``.
      kind: ``max``, ``avg`` or ``l2`` (sqrt of the sum of squares in the window).
      count_include_pad: average divides by the full window size.

    Returns:
      ``[..., *spatial_out]`` with the width rule of the convolutions above.
    """
    if kind not in POOL_KINDS:
        raise ValueError(f"kind must be one of {POOL_KINDS}, got {kind!r}")
    x = jnp.asarray(x)
    window = (int(window),) if isinstance(window, (int, np.integer)) else tuple(window)
    nd = len(window)
    if x.ndim < nd:
        raise ValueError(f"pool: input must have at least {nd} dims, got shape {x.shape}")
    stride = window if stride is None else _as_tuple(stride, nd, "stride")
    _check_stride(stride)
    spatial = x.shape[x.ndim - nd:]
    if isinstance(padding, str):
        pads = [pad_amounts(k, padding) for k in window]
    else:
        pads = [tuple(int(p) for p in pr) for pr in padding]
    for m, k, (lo, hi) in zip(spatial, window, pads):
        if m + lo + hi < k:
            raise ValueError(f"pool: window {window} is larger than the input {tuple(spatial)} "
                             f"with padding={padding!r}")
    out = tuple(_out_size(m, k, s, lo, hi) for m, k, s, (lo, hi) in zip(spatial, window, stride, pads))
    valid = pad(jnp.ones(spatial, x.dtype), pads, "zeros")
    fill = -jnp.inf if kind == "max" else 0.0
    xp = jnp.pad(x, [(0, 0)] * (x.ndim - nd) + pads, constant_values=fill)
    slices = [w for _, w in _shifted_slices(xp, window, out, stride)]
    if kind == "max":
        return jnp.max(jnp.stack(slices), axis=0)
    if kind == "l2":
        return jnp.sqrt(sum(w * w for w in slices))
    total = sum(slices)
    if count_include_pad:
        return total / np.prod(window)
    count = sum(w for _, w in _shifted_slices(valid, window, out, stride))
    return total / count


def max_pool(x, window, stride=None, padding="valid"):
    """Max pooling; see :func:`pool`."""
    return pool(x, window, stride, padding, "max")


def avg_pool(x, window, stride=None, padding="valid", count_include_pad: bool = False):
    """Average pooling; see :func:`pool`."""
    return pool(x, window, stride, padding, "avg", count_include_pad)


def l2_pool(x, window, stride=None, padding="valid"):
    """L2-norm pooling sqrt(sum x^2); see :func:`pool`."""
    return pool(x, window, stride, padding, "l2")


def output_size(m: int, k: int, stride: int = 1, padding: str = "valid") -> int:
    """Output width of a convolution or pooling along one axis (eq. 7)."""
    if stride <= 0:
        raise ValueError(f"stride must be >= 1, got {stride}")
    lo, hi = pad_amounts(k, padding)
    return _out_size(m, k, stride, lo, hi)
