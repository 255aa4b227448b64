"""The U-Net: sizes, parameter count, equivariance, variants and bad input."""
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax import unet


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_paper_configuration_shapes_and_parameter_count():
    model = unet.UNetPaper(num_classes=2, in_channels=1)
    x = jax.ShapeDtypeStruct((1, 572, 572, 1), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    # PyTorch's count for the identical architecture (torch_unet_reference.py, same padding,
    # has the same parameters): 31,030,658.
    assert _count(variables["params"]) == 31_030_658
    out = jax.eval_shape(model.apply, variables, x)
    chex.assert_shape(out, (1, 388, 388, 2))
    assert unet.output_size(572) == 388
    assert unet.context(4, "valid") == 92


def _brute_output(size, depth, padding):
    """Independent trace of the paper's size arithmetic, or None if a pool input is odd."""
    s = size
    for _ in range(depth):
        s -= 4 if padding == "valid" else 0
        if s <= 0 or s % 2:
            return None
        s //= 2
    s -= 4 if padding == "valid" else 0
    for _ in range(depth):
        if s <= 0:
            return None
        s = 2 * s - (4 if padding == "valid" else 0)
    return s if s > 0 else None


@pytest.mark.parametrize("padding,depth", [("valid", 2), ("valid", 3), ("same", 2)])
def test_size_helpers_agree_with_the_model(padding, depth):
    model = unet._UNetTiny(depth=depth, features=2, padding=padding)
    checked = 0
    for size in range(8, 140):
        expected = _brute_output(size, depth, padding)
        assert unet.is_valid_input_size(size, depth, padding) == (expected is not None)
        x = jax.ShapeDtypeStruct((1, size, size + 0, 1), jnp.float32)
        if expected is None:
            with pytest.raises(ValueError, match="nearest valid sizes"):
                unet.output_size(size, depth, padding)
            continue
        variables = jax.eval_shape(model.init, jax.random.key(0), x)
        out = jax.eval_shape(model.apply, variables, x)
        assert out.shape[1:3] == (unet.output_size(size, depth, padding),) * 2 == (expected,) * 2
        checked += 1
    assert checked > 3
    lo, hi = unet.nearest_valid_input_sizes(37, depth, padding)
    assert unet.is_valid_input_size(hi, depth, padding)
    assert lo is None or unet.is_valid_input_size(lo, depth, padding)
    assert not any(unet.is_valid_input_size(s, depth, padding) for s in range((lo or 0) + 1, hi))
    assert unet.output_size(unet.input_size_for_output(20, depth, padding), depth, padding) >= 20


@pytest.fixture(scope="module")
def tiny_valid():
    model = unet._UNetTiny(depth=2, features=4, padding="valid")
    params = model.init(jax.random.key(1), jnp.zeros((1, 44, 44, 1)))
    return model, params


def test_valid_unet_translation_equivariance(tiny_valid):
    """Shifts by multiples of 2**depth commute with the valid U-Net on the overlap."""
    model, params = tiny_valid
    x = jax.random.normal(jax.random.key(2), (1, 60, 60, 1))
    f = jax.jit(lambda z: model.apply(params, z))
    base = f(x[:, :44, :44])
    for dy, dx in [(4, 0), (0, 8), (4, 12)]:
        shifted = f(x[:, dy:dy + 44, dx:dx + 44])
        o = base.shape[1]
        np.testing.assert_allclose(shifted[:, : o - dy, : o - dx], base[:, dy:, dx:], atol=1e-5)
    # An odd shift is not an equivariance of the pooling grid.
    odd = f(x[:, 1:45, :44])
    assert not np.allclose(odd[:, :-1], base[:, 1:], atol=1e-3)


def test_jit_equals_eager(tiny_valid):
    model, params = tiny_valid
    x = jax.random.normal(jax.random.key(3), (2, 44, 44, 1))
    np.testing.assert_allclose(jax.jit(model.apply)(params, x), model.apply(params, x), atol=1e-5)


@pytest.mark.parametrize("norm,upsample", itertools.product(["none", "batch", "group"],
                                                            ["transpose", "bilinear"]))
def test_same_mode_variants_keep_the_size(norm, upsample):
    model = unet._UNetTiny(padding="same", norm=norm, upsample=upsample, in_channels=3,
                           num_classes=3, dropout=0.5)
    x = jnp.ones((2, 16, 24, 3))
    variables = model.init(jax.random.key(0), x)
    out, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)},
                         mutable=["batch_stats"])
    chex.assert_shape(out, (2, 16, 24, 3))
    assert ("batch_stats" in variables) == (norm == "batch")


def test_bfloat16_compute_with_float32_parameters():
    model32 = unet._UNetTiny(padding="same")
    model16 = unet._UNetTiny(padding="same", dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (1, 16, 16, 1))
    params = model32.init(jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(model16.init(jax.random.key(0), x)))
    a, b = model32.apply(params, x), model16.apply(params, x)
    assert b.dtype == jnp.float32
    np.testing.assert_allclose(a, b, atol=0.05 * float(jnp.abs(a).max()) + 1e-3)


def test_he_normal_initialisation_std():
    """Ronneberger et al. 2015: Gaussian with std sqrt(2/N), N = 9 * C_in."""
    model = unet.UNet(features=64, depth=1, padding="same")
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    k = np.asarray(params["up_block_0"]["Conv_1"]["kernel"])  # 3x3x64x64
    assert abs(k.std() / np.sqrt(2 / (9 * 64)) - 1) < 0.03
    assert abs(k.mean()) < 0.01


@pytest.mark.parametrize("shape,match", [
    ((1, 44, 44, 3), "expects input"),
    ((1, 46, 46, 1), "nearest valid sizes"),
    ((44, 44, 1), "expects input"),
])
def test_bad_input(tiny_valid, shape, match):
    model, params = tiny_valid
    with pytest.raises(ValueError, match=match):
        model.apply(params, jnp.zeros(shape))
