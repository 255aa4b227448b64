"""The lecture's convolution and pooling against numpy loops, numpy/scipy and lax."""
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from unet_jax import conv

NP_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


# ---------------------------------------------------------------- independent references
def np_pads(k, padding, flipped=False):
    """Padding written out from the definitions in the module docstring."""
    if padding == "valid":
        return 0, 0
    if padding == "full":
        return k - 1, k - 1
    lo, hi = (k - 1) // 2, k - 1 - (k - 1) // 2
    return (hi, lo) if flipped else (lo, hi)


def np_correlate_nd(x, k, stride, padding, mode, flipped=False):
    """Plain loop: S[i, j] = sum_{m, n} Xpad[i*s + m, j*s + n] K[m, n] (eq. 5, 7)."""
    if flipped:
        k = k[(slice(None, None, -1),) * k.ndim]
    pads = [np_pads(w, padding, flipped) for w in k.shape]
    xp = np.pad(x, pads, mode=NP_MODES[mode])
    out_shape = [(xp.shape[a] - k.shape[a]) // stride + 1 for a in range(k.ndim)]
    out = np.zeros(out_shape)
    for idx in itertools.product(*(range(n) for n in out_shape)):
        acc = 0.0
        for off in itertools.product(*(range(w) for w in k.shape)):
            acc += xp[tuple(i * stride + o for i, o in zip(idx, off))] * k[off]
        out[idx] = acc
    return out


def np_multichannel(v, k, stride, padding):
    """Eq. 6/7 as a loop: Z[i,j,k] = sum_{l,m,n} V[l, j*s+m, k*s+n] K[i,l,m,n]."""
    pads = [np_pads(w, padding) for w in k.shape[2:]]
    vp = np.pad(v, [(0, 0)] + pads)
    ho = (vp.shape[1] - k.shape[2]) // stride + 1
    wo = (vp.shape[2] - k.shape[3]) // stride + 1
    z = np.zeros((k.shape[0], ho, wo))
    for i, j, q in itertools.product(range(k.shape[0]), range(ho), range(wo)):
        for l, m, n in itertools.product(range(k.shape[1]), range(k.shape[2]), range(k.shape[3])):
            z[i, j, q] += vp[l, j * stride + m, q * stride + n] * k[i, l, m, n]
    return z


def np_pool(x, window, stride, padding, kind):
    pads = [np_pads(w, padding) for w in window]
    xp = np.pad(x.astype(float), pads, constant_values=np.nan)
    out_shape = [(xp.shape[a] - window[a]) // stride[a] + 1 for a in range(len(window))]
    out = np.zeros(out_shape)
    for idx in itertools.product(*(range(n) for n in out_shape)):
        sl = tuple(slice(i * s, i * s + w) for i, s, w in zip(idx, stride, window))
        vals = xp[sl][~np.isnan(xp[sl])]
        out[idx] = {"max": np.max, "avg": np.mean, "l2": lambda v: np.sqrt(np.sum(v * v))}[kind](vals)
    return out


def lax_pads(kshape, padding, flipped=False):
    return [np_pads(w, padding, flipped) for w in kshape]


RNG = np.random.default_rng(0)
CASES_1D = list(itertools.product([1, 2, 3], [2, 3, 4, 5], ["valid", "same", "full"]))


# ---------------------------------------------------------------- 1-D
@pytest.mark.parametrize("stride,k,padding", CASES_1D)
def test_correlate1d_matches_loop_and_lax(stride, k, padding):
    x = RNG.normal(size=11)
    w = RNG.normal(size=k)
    got = jax.jit(conv.correlate1d, static_argnums=(2, 3))(x, w, stride, padding)
    ref = np_correlate_nd(x, w, stride, padding, "zeros")
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    via_lax = lax.conv_general_dilated(x[None, None], w[None, None], (stride,),
                                       lax_pads(w.shape, padding))[0, 0]
    np.testing.assert_allclose(got, via_lax, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride,k,padding", CASES_1D)
def test_convolve1d_matches_loop_lax_and_numpy(stride, k, padding):
    x = RNG.normal(size=11)
    w = RNG.normal(size=k)
    got = conv.convolve1d(x, w, stride, padding)
    np.testing.assert_allclose(got, np_correlate_nd(x, w, stride, padding, "zeros", flipped=True),
                               rtol=1e-5, atol=1e-5)
    via_lax = lax.conv_general_dilated(x[None, None], w[::-1][None, None].copy(), (stride,),
                                       lax_pads(w.shape, padding, flipped=True))[0, 0]
    np.testing.assert_allclose(got, via_lax, rtol=1e-5, atol=1e-5)
    # numpy.convolve is the textbook convolution (eq. 2); strided = every s-th output.
    np.testing.assert_allclose(got, np.convolve(x, w, padding)[::stride], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding,expected", [("valid", 11 - 4 + 1), ("same", 11), ("full", 11 + 4 - 1)])
def test_width_rules(padding, expected):
    x = jnp.ones((2, 11))
    chex.assert_shape(conv.correlate1d(x, jnp.ones(4), 1, padding), (2, expected))
    chex.assert_shape(conv.convolve1d(x, jnp.ones(4), 1, padding), (2, expected))
    chex.assert_shape(conv.correlate2d(jnp.ones((11, 11)), jnp.ones((4, 4)), 1, padding),
                      (expected, expected))
    chex.assert_shape(conv.max_pool(jnp.ones((11, 11)), (4, 4), 1, padding), (expected, expected))
    for s in (2, 3):
        out = conv.correlate1d(x, jnp.ones(4), s, padding)
        chex.assert_shape(out, (2, conv.output_size(11, 4, s, padding)))
        assert out.shape[-1] == (11 + sum(np_pads(4, padding)) - 4) // s + 1


def test_convolution_is_commutative():
    """Eq. 3 = eq. 4: sum_m I(m) K(i - m) = sum_m I(i - m) K(m) (full convolution)."""
    a = RNG.normal(size=9)
    b = RNG.normal(size=5)
    np.testing.assert_allclose(conv.convolve1d(a, b, 1, "full"), conv.convolve1d(b, a, 1, "full"),
                               rtol=1e-5, atol=1e-5)
    a2 = RNG.normal(size=(6, 7))
    b2 = RNG.normal(size=(3, 4))
    np.testing.assert_allclose(conv.convolve2d(a2, b2, 1, "full"), conv.convolve2d(b2, a2, 1, "full"),
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- 2-D
CASES_2D = list(itertools.product([1, 2, 3], [(3, 3), (2, 4)], ["valid", "same", "full"],
                                  ["zeros", "reflect", "replicate", "circular"]))


@pytest.mark.parametrize("stride,kshape,padding,mode", CASES_2D)
def test_2d_matches_loop(stride, kshape, padding, mode):
    x = RNG.normal(size=(8, 9))
    k = RNG.normal(size=kshape)
    got = conv.correlate2d(x, k, stride, padding, mode)
    np.testing.assert_allclose(got, np_correlate_nd(x, k, stride, padding, mode), rtol=1e-5, atol=1e-5)
    got = conv.convolve2d(x, k, stride, padding, mode)
    np.testing.assert_allclose(got, np_correlate_nd(x, k, stride, padding, mode, flipped=True),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride,kshape,padding", itertools.product([1, 2, 3], [(3, 3), (2, 2), (1, 4)],
                                                                    ["valid", "same", "full"]))
def test_multichannel_matches_loop_and_lax(stride, kshape, padding):
    v = RNG.normal(size=(3, 8, 7))  # [L, H, W]
    k = RNG.normal(size=(4, 3) + kshape)  # [I, L, kh, kw]
    got = jax.jit(conv.conv_multichannel, static_argnums=(2, 3))(v, k, stride, padding)
    np.testing.assert_allclose(got, np_multichannel(v, k, stride, padding), rtol=1e-4, atol=1e-4)
    via_lax = lax.conv_general_dilated(v[None], k, (stride, stride), lax_pads(kshape, padding),
                                       dimension_numbers=("NCHW", "OIHW", "NCHW"))[0]
    np.testing.assert_allclose(got, via_lax, rtol=1e-4, atol=1e-4)


def test_multichannel_batched():
    v = RNG.normal(size=(2, 3, 6, 6))
    k = RNG.normal(size=(5, 3, 3, 3))
    out = conv.conv_multichannel(v, k, 1, "same")
    chex.assert_shape(out, (2, 5, 6, 6))
    np.testing.assert_allclose(out[1], np_multichannel(v[1], k, 1, "same"), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- Toeplitz
@pytest.mark.parametrize("stride,k,padding", CASES_1D)
def test_toeplitz_times_x_is_the_convolution(stride, k, padding):
    x = RNG.normal(size=10)
    w = RNG.normal(size=k)
    t = conv.toeplitz1d(w, 10, padding, stride)
    np.testing.assert_allclose(t @ x, np.convolve(x, w, padding)[::stride], rtol=1e-5, atol=1e-5)
    # A band of the (flipped) kernel: T[i, j] depends only on j - i*stride.
    tn = np.asarray(t)
    for i in range(1, tn.shape[0]):
        if stride == 1:
            np.testing.assert_array_equal(tn[i, 1:], tn[i - 1, :-1])
    assert (np.count_nonzero(tn, axis=1) <= k).all()


# ---------------------------------------------------------------- properties
def test_translation_equivariance_circular_is_exact():
    x = RNG.normal(size=(12, 12))
    k = RNG.normal(size=(3, 3))
    f = lambda z: conv.correlate2d(z, k, 1, "same", "circular")
    for shift in [(1, 0), (0, 3), (-2, 5)]:
        np.testing.assert_allclose(f(np.roll(x, shift, (0, 1))), np.roll(f(x), shift, (0, 1)),
                                   rtol=1e-5, atol=1e-5)


def test_translation_equivariance_zeros_on_the_interior():
    x = RNG.normal(size=(16, 16))
    k = RNG.normal(size=(3, 3))
    f = lambda z: conv.correlate2d(z, k, 1, "same", "zeros")
    t = 2
    shifted = f(np.roll(x, t, axis=1))
    expected = np.roll(f(x), t, axis=1)
    # Away from the wrapped columns and the zero border, equal; at the border, not.
    np.testing.assert_allclose(shifted[:, t + 1:-1], expected[:, t + 1:-1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(shifted[:, :t + 1], expected[:, :t + 1])


def test_max_pooling_invariance_to_a_one_pixel_shift():
    """Derived count. Image x[i, j] = cos(2 pi (j + 0.3) / T) + 0.5 cos(2 pi i / 16), circular.

    Max pooling (window k, stride 1) separates: max over the window of f(j) + g(i). Shifting by
    one pixel along j replaces window [j, j+k-1] by [j-1, j+k-2]; the maximum is unchanged iff
    the largest sample of the union lies in the overlap [j, j+k-2]. On a cosine with a unique
    largest sample per period (the 0.3 phase breaks ties) that holds for exactly k - 1 window
    positions per period; everywhere else the window sits on a monotone flank or straddles a
    trough, whose maximum is an edge sample and changes. So exactly (k - 1) / T of the pooled
    outputs are unchanged, while no raw pixel is (the cosine takes distinct adjacent values).
    """
    T, k = 16, 5
    j = np.arange(4 * T)
    i = np.arange(32)
    x = np.cos(2 * np.pi * (j[None, :] + 0.3) / T) + 0.5 * np.cos(2 * np.pi * i[:, None] / 16)
    circ = lambda z: np.pad(z, ((0, 0), (0, k - 1)), mode="wrap")
    pooled = conv.max_pool(circ(x), (1, k), 1)
    pooled_shift = conv.max_pool(circ(np.roll(x, 1, axis=1)), (1, k), 1)
    unchanged = float(np.mean(np.isclose(pooled, pooled_shift, rtol=0, atol=1e-6)))
    raw_unchanged = float(np.mean(np.isclose(x, np.roll(x, 1, axis=1), rtol=0, atol=1e-6)))
    assert raw_unchanged == 0.0
    assert unchanged == pytest.approx((k - 1) / T, abs=1e-9)


@pytest.mark.parametrize("k,stride", [(3, 1), (4, 2)])
def test_sparse_connectivity(k, stride):
    x = RNG.normal(size=12)
    w = RNG.normal(size=k)
    jac = jax.jacfwd(lambda z: conv.correlate1d(z, w, stride, "same"))(x)
    assert (np.count_nonzero(np.asarray(jac), axis=1) <= k).all()
    jac2 = jax.jacfwd(lambda z: conv.correlate2d(z, w[:2, None] * w[None, :], 1, "valid"))(
        RNG.normal(size=(6, 6)))
    assert (np.count_nonzero(np.asarray(jac2).reshape(-1, 36), axis=1) <= 2 * k).all()


def test_gradients_match_finite_differences():
    x = jnp.asarray(RNG.normal(size=(2, 7, 6)))
    k = jnp.asarray(RNG.normal(size=(3, 2, 3, 2)))
    check_grads(lambda a, b: conv.conv_multichannel(a, b, 2, "same", "reflect"), (x, k), order=1,
                modes=["rev"], eps=1e-3, atol=1e-2, rtol=1e-2)
    check_grads(lambda a: conv.pool(a, (2, 2), 1, "same", "avg"), (x,), order=1, modes=["rev"],
                eps=1e-3, atol=1e-2, rtol=1e-2)
    check_grads(lambda a: conv.pool(a, (3, 2), 2, "valid", "l2"), (x + 5.0,), order=1,
                modes=["rev"], eps=1e-3, atol=1e-2, rtol=1e-2)


# ---------------------------------------------------------------- pooling
POOL_CASES = list(itertools.product(["max", "avg", "l2"], [(2, 2), (3, 3), (2, 3)], [1, 2, 3],
                                    ["valid", "same"]))


@pytest.mark.parametrize("kind,window,s,padding", POOL_CASES)
def test_pooling_matches_loop_and_reduce_window(kind, window, s, padding):
    x = RNG.normal(size=(9, 10))
    got = jax.jit(conv.pool, static_argnums=(1, 2, 3, 4))(x, window, (s, s), padding, kind)
    np.testing.assert_allclose(got, np_pool(x, window, (s, s), padding, kind), rtol=1e-5, atol=1e-5)
    pads = lax_pads(window, padding)
    if kind == "max":
        ref = lax.reduce_window(x, -np.inf, lax.max, window, (s, s), pads)
    elif kind == "l2":
        ref = np.sqrt(lax.reduce_window(x * x, 0.0, lax.add, window, (s, s), pads))
    else:
        total = lax.reduce_window(x, 0.0, lax.add, window, (s, s), pads)
        ref = total / lax.reduce_window(np.ones_like(x), 0.0, lax.add, window, (s, s), pads)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_avg_pool_count_include_pad():
    x = RNG.normal(size=(6, 6))
    got = conv.avg_pool(x, (3, 3), 1, "same", count_include_pad=True)
    ref = lax.reduce_window(x, 0.0, lax.add, (3, 3), (1, 1), [(1, 1), (1, 1)]) / 9
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("call,match", [
    (lambda: conv.correlate1d(np.ones(5), np.ones((2, 2))), "rank 1"),
    (lambda: conv.correlate2d(np.ones(5), np.ones((2, 2))), "rank >= 2"),
    (lambda: conv.correlate1d(np.ones(3), np.ones(5), padding="valid"), "larger than the input"),
    (lambda: conv.correlate1d(np.ones(5), np.ones(3), stride=0), "stride"),
    (lambda: conv.max_pool(np.ones((4, 4)), (2, 2), -1), "stride"),
    (lambda: conv.correlate1d(np.ones(5), np.ones(3), padding="half"), "padding"),
    (lambda: conv.correlate2d(np.ones((5, 5)), np.ones((3, 3)), 1, "same", "mirror"), "mode"),
    (lambda: conv.conv_multichannel(np.ones((2, 5, 5)), np.ones((4, 3, 3, 3))), "L=3"),
    (lambda: conv.pool(np.ones((4, 4)), (2, 2), kind="median"), "kind"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
