"""Layers written for speed against their plain references: the matrix-product kernel gradient
against lax's autodiff (alone and inside a U-Net), the 2x2 transposed convolution against flax's
ConvTranspose, max_pool2 against the windowed max-pool; the XLA flags the package sets."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from unet_jax import layers, unet, xla_flags


@pytest.mark.parametrize("kernel,padding", [((3, 3), "SAME"), ((3, 3), "VALID"), ((1, 1), "SAME"),
                                            ((2, 4), "SAME"), ((3, 3), ((2, 0), (1, 1)))])
@pytest.mark.parametrize("cin", [3, 1])  # 1: the shifted-products forward pass
def test_matmul_kernel_gradient_equals_lax(kernel, padding, cin):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 9, 10, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal(kernel + (cin, 5)), jnp.float32)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

    def loss(x, w, conv):
        y = conv(x, w, (1, 1), padding, dimension_numbers=dn)
        return jnp.sum(jnp.sin(y))

    ref = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)(x, w, lax.conv_general_dilated)
    got = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)(x, w, layers.fast_conv_general_dilated)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layers.fast_conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn),
                               lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn), atol=1e-5)


@pytest.mark.parametrize("kernel,padding", [((3, 3), "SAME"), ((3, 3), "VALID"), ((2, 4), "SAME"),
                                            ((3, 3), ((2, 0), (0, 2))), ((1, 1), "VALID")])
@pytest.mark.parametrize("cin,cout", [(4, 32), (32, 4)])
def test_widened_eigen_convolution_equals_lax(kernel, padding, cin, cout):
    # 4 -> 32: the forward pass is computed wider and cropped (layers._xla_conv); 32 -> 4: the
    # input gradient (a 4 -> 32 convolution) is.
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 7, 6, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal(kernel + (cin, cout)), jnp.float32)
    pad = layers._explicit_padding(padding, kernel)
    conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=layers._NHWC)  # noqa: E731
    got = lambda x, w: layers.conv_matmul_grad(x, w, pad, "xla")  # noqa: E731
    np.testing.assert_allclose(got(x, w), conv(x, w), rtol=1e-5, atol=1e-5)
    g = jnp.asarray(rng.standard_normal(conv(x, w).shape), jnp.float32)
    ref_dx = jax.vjp(lambda v: conv(v, w), x)[1](g)[0]
    np.testing.assert_allclose(jax.vjp(lambda v: got(v, w), x)[1](g)[0], ref_dx, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strategy", ["xla", "offsets", "rows"])
@pytest.mark.parametrize("shape,kernel,padding", [((2, 13, 10, 8), (3, 3), "VALID"),
                                                  ((1, 12, 9, 8), (3, 3), "SAME"),
                                                  ((2, 9, 8, 4), (2, 4), ((2, 0), (1, 1))),
                                                  # two blocks per loop step; 18 offsets in groups of 6, 6, 6
                                                  ((1, 8, 12, 3), (2, 9), "SAME"),
                                                  ((1, 6, 5, 64), (3, 3), "SAME")])  # a group per kernel row
def test_kernel_gradient_strategies_equal_lax(strategy, shape, kernel, padding, monkeypatch):
    # small row blocks, so that "rows" loops over several blocks (and a last one of odd height)
    monkeypatch.setattr(layers, "ROW_BLOCK_BYTES", 2 * shape[0] * shape[2] * kernel[0] * kernel[1] * shape[3] * 4)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(kernel + (shape[3], 6)), jnp.float32)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    pad = layers._explicit_padding(padding, kernel)
    y, vjp = jax.vjp(lambda w: lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=dn), w)
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    ref = vjp(g)[0]
    got = jax.jit(layers.kernel_grad, static_argnums=(3, 4))(x, w, g, pad, strategy)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_row_block_is_the_largest_divisor_that_fits(monkeypatch):
    monkeypatch.setattr(layers, "ROW_BLOCK_BYTES", 1000)
    per_row = 1 * 10 * 3 * 3 * 2 * 4  # 720 bytes
    assert layers.row_block(1, 12, 10, 2, 3, 3) == 1
    monkeypatch.setattr(layers, "ROW_BLOCK_BYTES", 5 * per_row)
    assert layers.row_block(1, 12, 10, 2, 3, 3) == 4  # divisors of 12 up to 5 rows: 1, 2, 3, 4
    assert layers.row_block(1, 11, 10, 2, 3, 3) == 1  # 11 is prime
    with pytest.raises(ValueError, match="strategy must be"):
        layers.kernel_grad(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), jnp.ones((1, 2, 2, 2)),
                           ((0, 0), (0, 0)), "im2col")


def test_kernel_gradient_strategy_by_pixels_and_patch_row_bytes():
    assert layers.kernel_grad_strategy((1, 128, 128, 16)) == "rows"
    assert layers.kernel_grad_strategy((1, 64, 64, 1)) == "rows"
    assert layers.kernel_grad_strategy((2, 32, 32, 512)) == "xla"  # small image, many channels
    assert layers.kernel_grad_strategy((1, 32, 32, 16)) == "xla"
    assert layers.kernel_grad_strategy((2, 64, 64, 256)) == "rows"
    assert layers.kernel_grad_strategy((2, 64, 64, 512)) == "xla"  # one row of patches: 2.4 MB
    assert layers.kernel_grad_strategy((2, 128, 128, 512)) == "rows"
    assert layers.kernel_grad_strategy((2, 64, 64, 512), (1, 1)) == "rows"


def test_unet_gradients_agree_between_conv_implementations():
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
    grads = {}
    for impl in ("xla", "matmul", "rows", "auto"):
        model = unet._UNetTiny(padding="same", conv=impl)
        params = model.init(jax.random.key(1), x)
        grads[impl] = jax.grad(lambda p: jnp.mean(model.apply(p, x) ** 2))(params)
    for impl in ("matmul", "rows", "auto"):
        for a, b in zip(jax.tree.leaves(grads["xla"]), jax.tree.leaves(grads[impl])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=impl)


def test_strided_or_grouped_convolutions_fall_back_to_lax():
    x = jnp.ones((1, 8, 8, 4))
    w = jnp.ones((3, 3, 2, 4))
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    a = layers.fast_conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=dn, feature_group_count=2)
    b = lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=dn, feature_group_count=2)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="conv_impl must be"):
        layers.conv_impl("cudnn")


@pytest.mark.parametrize("shape", [(2, 5, 7, 6), (1, 1, 1, 3)])
def test_conv_transpose_2x2_equals_flax_conv_transpose(shape):
    x = jax.random.normal(jax.random.key(1), shape)
    ref = nn.ConvTranspose(4, (2, 2), strides=(2, 2), padding="VALID")
    mine = layers.ConvTranspose2x2(4)
    params = ref.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, mine.init(jax.random.key(0), x))
    params = jax.tree.map(lambda a: a + jax.random.normal(jax.random.key(3), a.shape), params)  # bias != 0
    np.testing.assert_allclose(mine.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)

    def loss(model, p, x):
        return jnp.sum(jnp.sin(model.apply(p, x)))

    g_ref = jax.grad(lambda p, x: loss(ref, p, x), (0, 1))(params, x)
    g_mine = jax.grad(lambda p, x: loss(mine, p, x), (0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(g_mine), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 9, 7, 2), (1, 1, 5, 1)])
def test_max_pool2_equals_windowed_max_pool(shape):
    # Distinct values (one maximum per window), then ReLU-like zeros and equal values (ties: the
    # windowed form's select-and-scatter gives the gradient to the first maximum in row-major order).
    distinct = np.random.default_rng(0).permutation(np.prod(shape)).reshape(shape)
    ties = np.maximum(np.random.default_rng(1).integers(-3, 2, shape), 0)
    ref = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))  # noqa: E731
    for values in (distinct, ties):
        x = jnp.asarray(values, jnp.float32)
        np.testing.assert_array_equal(layers.max_pool2(x), ref(x))
        w = jnp.arange(np.prod(ref(x).shape), dtype=jnp.float32).reshape(ref(x).shape) + 1
        np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(w * layers.max_pool2(v)))(x),
                                      jax.grad(lambda v: jnp.sum(w * ref(v)))(x))
        # forward mode too (jvp, jacfwd): the directional derivative picks the same positions
        np.testing.assert_array_equal(jax.jvp(layers.max_pool2, (x,), (x * 0.5 + 1,))[1],
                                      jax.jvp(ref, (x,), (x * 0.5 + 1,))[1])
    nan = jnp.zeros(shape).at[0, 0, 0, 0].set(jnp.nan)
    np.testing.assert_array_equal(layers.max_pool2(nan), ref(nan))  # a NaN is passed on


def test_xla_flags_opt_in_added_once_and_never_override_the_user():
    value, added = xla_flags.merged("")
    assert added and value == " ".join(added)
    assert xla_flags.merged(value) == (value, [])
    user = "--xla_cpu_experimental_ynn_fusion_type=dot --xla_force_host_platform_device_count=8"
    assert xla_flags.merged(user) == (user, [])
    for env in ({"XLA_FLAGS": "--foo=1"}, {"UNET_JAX_XLA_FLAGS": "0", "XLA_FLAGS": "--foo=1"}):
        assert xla_flags.apply(env) == [] and env["XLA_FLAGS"] == "--foo=1"  # off by default
    show = [sys.executable, "-c", "import os, unet_jax; print(os.environ['XLA_FLAGS'])"]
    base = {k: v for k, v in os.environ.items() if k != "UNET_JAX_XLA_FLAGS"}
    base["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    off = subprocess.run(show, env=base, capture_output=True, text=True, check=True).stdout.split()
    on = subprocess.run(show, env={**base, "UNET_JAX_XLA_FLAGS": "1"}, capture_output=True, text=True,
                        check=True).stdout.split()
    assert off == ["--xla_force_host_platform_device_count=1"]
    assert on == ["--xla_force_host_platform_device_count=1", *added]
    # several simulated devices: never added (it deadlocked their all-reduces)
    for flags, devices in (("--xla_force_host_platform_device_count=4", 4), ("--foo=1", 1),
                           ("--xla_force_host_platform_device_count=8 --xla_force_host_platform_device_count=1", 1)):
        assert xla_flags.simulated_devices(flags) == devices
    many = {**base, "UNET_JAX_XLA_FLAGS": "1", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    out = subprocess.run(show, env=many, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["--xla_force_host_platform_device_count=4"]
