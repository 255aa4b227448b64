"""The linen blocks against their plain references: the 2x2 transposed convolution against
flax's ConvTranspose, max_pool2 against the windowed max-pool."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax import layers


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
    chex.assert_trees_all_close(g_mine, g_ref, rtol=1e-5, atol=1e-5)


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
