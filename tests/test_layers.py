"""The matrix-product kernel gradient against lax's autodiff, alone and inside a U-Net."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from unet_jax import layers, unet


@pytest.mark.parametrize("kernel,padding", [((3, 3), "SAME"), ((3, 3), "VALID"), ((1, 1), "SAME"),
                                            ((2, 4), "SAME"), ((3, 3), ((2, 0), (1, 1)))])
def test_matmul_kernel_gradient_equals_lax(kernel, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 9, 10, 3)), jnp.float32)
    w = jnp.asarray(rng.standard_normal(kernel + (3, 5)), jnp.float32)
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


def test_unet_gradients_agree_between_conv_implementations():
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
    grads = {}
    for impl in ("xla", "matmul"):
        model = unet._UNetTiny(padding="same", conv=impl)
        params = model.init(jax.random.key(1), x)
        grads[impl] = jax.grad(lambda p: jnp.mean(model.apply(p, x) ** 2))(params)
    for a, b in zip(jax.tree.leaves(grads["xla"]), jax.tree.leaves(grads["matmul"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_strided_or_grouped_convolutions_fall_back_to_lax():
    x = jnp.ones((1, 8, 8, 4))
    w = jnp.ones((3, 3, 2, 4))
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    a = layers.fast_conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=dn, feature_group_count=2)
    b = lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=dn, feature_group_count=2)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="conv_impl must be"):
        layers.conv_impl("cudnn")
