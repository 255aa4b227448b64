"""The CPU convolution kernels against lax: kernel gradients of every strategy (alone and
inside a U-Net), the widened Eigen convolution, the fallback for convolutions they do not
cover, and the one-time choice of kernel by backend."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from experiments.configs import default
from unet_jax import ops, unet
from unet_jax.ops import cpu_conv


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
    got = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)(x, w, cpu_conv.conv_general_dilated)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cpu_conv.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn),
                               lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn), atol=1e-5)


@pytest.mark.parametrize("kernel,padding", [((3, 3), "SAME"), ((3, 3), "VALID"), ((2, 4), "SAME"),
                                            ((3, 3), ((2, 0), (0, 2))), ((1, 1), "VALID")])
@pytest.mark.parametrize("cin,cout", [(4, 32), (32, 4)])
def test_widened_eigen_convolution_equals_lax(kernel, padding, cin, cout):
    # 4 -> 32: the forward pass is computed wider and cropped (cpu_conv.xla_conv); 32 -> 4: the
    # input gradient (a 4 -> 32 convolution) is.
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 7, 6, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal(kernel + (cin, cout)), jnp.float32)
    pad = cpu_conv.explicit_padding(padding, kernel)
    conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=cpu_conv.NHWC)  # noqa: E731
    got = lambda x, w: cpu_conv.conv(x, w, pad, "xla")  # noqa: E731
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
    monkeypatch.setattr(cpu_conv, "ROW_BLOCK_BYTES", 2 * shape[0] * shape[2] * kernel[0] * kernel[1] * shape[3] * 4)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(kernel + (shape[3], 6)), jnp.float32)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    pad = cpu_conv.explicit_padding(padding, kernel)
    y, vjp = jax.vjp(lambda w: lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=dn), w)
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    ref = vjp(g)[0]
    got = jax.jit(cpu_conv.kernel_grad, static_argnums=(3, 4))(x, w, g, pad, strategy)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_row_block_is_the_largest_divisor_that_fits(monkeypatch):
    monkeypatch.setattr(cpu_conv, "ROW_BLOCK_BYTES", 1000)
    per_row = 1 * 10 * 3 * 3 * 2 * 4  # 720 bytes
    assert cpu_conv.row_block(1, 12, 10, 2, 3, 3) == 1
    monkeypatch.setattr(cpu_conv, "ROW_BLOCK_BYTES", 5 * per_row)
    assert cpu_conv.row_block(1, 12, 10, 2, 3, 3) == 4  # divisors of 12 up to 5 rows: 1, 2, 3, 4
    assert cpu_conv.row_block(1, 11, 10, 2, 3, 3) == 1  # 11 is prime
    with pytest.raises(ValueError, match="strategy must be"):
        cpu_conv.kernel_grad(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), jnp.ones((1, 2, 2, 2)),
                           ((0, 0), (0, 0)), "im2col")


def test_kernel_gradient_strategy_by_pixels_and_patch_row_bytes():
    assert cpu_conv.kernel_grad_strategy((1, 128, 128, 16)) == "rows"
    assert cpu_conv.kernel_grad_strategy((1, 64, 64, 1)) == "rows"
    assert cpu_conv.kernel_grad_strategy((2, 32, 32, 512)) == "xla"  # small image, many channels
    assert cpu_conv.kernel_grad_strategy((1, 32, 32, 16)) == "xla"
    assert cpu_conv.kernel_grad_strategy((2, 64, 64, 256)) == "rows"
    assert cpu_conv.kernel_grad_strategy((2, 64, 64, 512)) == "xla"  # one row of patches: 2.4 MB
    assert cpu_conv.kernel_grad_strategy((2, 128, 128, 512)) == "rows"
    assert cpu_conv.kernel_grad_strategy((2, 64, 64, 512), (1, 1)) == "rows"


def test_unet_gradients_agree_between_conv_implementations():
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
    grads = {}
    for impl in ("xla", "matmul", "rows", "auto"):
        model = unet._UNetTiny(padding="same", conv=ops.conv_kernel(impl))
        params = model.init(jax.random.key(1), x)
        grads[impl] = jax.grad(lambda p: jnp.mean(model.apply(p, x) ** 2))(params)
    for impl in ("matmul", "rows", "auto"):
        chex.assert_trees_all_close(grads[impl], grads["xla"], rtol=1e-4, atol=1e-5)


def test_strided_or_grouped_convolutions_fall_back_to_lax():
    x = jnp.ones((1, 8, 8, 4))
    w = jnp.ones((3, 3, 2, 4))
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    a = cpu_conv.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=dn, feature_group_count=2)
    b = lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=dn, feature_group_count=2)
    np.testing.assert_array_equal(a, b)


def test_conv_kernel_is_chosen_once_by_backend():
    assert ops.conv_kernel("xla") is lax.conv_general_dilated
    assert ops.conv_kernel("auto", backend="gpu") is lax.conv_general_dilated  # cuDNN's kernels
    cpu = ops.conv_kernel("auto", backend="cpu")
    assert cpu.func is cpu_conv.conv_general_dilated and cpu.keywords == {"strategy": "auto"}
    assert ops.conv_kernel("rows").keywords == {"strategy": "rows"}
    assert ops.conv_kernel("matmul").keywords == {"strategy": "offsets"}
    with pytest.raises(ValueError, match="model.conv must be one of"):
        ops.conv_kernel("cudnn")
    # the trainer's model gets the kernel of the backend it runs on (CPU here)
    config = default.get_config()
    assert unet.from_config(config.model).conv.func is cpu_conv.conv_general_dilated
    config.model.conv = "xla"
    assert unet.from_config(config.model).conv is lax.conv_general_dilated
