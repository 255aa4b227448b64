"""The ONNX graph of a U-Net against the JAX model: ONNX Runtime's probabilities equal
softmax(model.apply) within 1e-4, for valid and same padding, batch normalisation with
non-trivial statistics, several channels and classes, two tile sizes and a non-square one."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax import onnx_graph, unet

ort = pytest.importorskip("onnxruntime")


def _random_stats(variables, seed=0):
    """Batch statistics and affine parameters away from their initial values (mean 0, var 1,
    scale 1, shift 0), so that a wrong fold shows."""
    rng = np.random.default_rng(seed)
    stats = jax.tree.map(lambda v: jnp.asarray(rng.uniform(-0.5, 0.5, v.shape)), variables["batch_stats"])
    stats = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.abs(v) + 0.5 if path[-1].key == "var" else v, stats)
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: v * rng.uniform(0.5, 1.5, v.shape) if path[-1].key in ("scale", "bias") else v,
        variables["params"])
    return {"params": params, "batch_stats": stats}


def _max_diff(model, variables, shapes):
    session = ort.InferenceSession(onnx_graph.unet_to_onnx(model, variables).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    diffs = []
    for i, (h, w) in enumerate(shapes):
        x = np.random.default_rng(i).random((2, h, w, model.in_channels), np.float32)
        want = np.asarray(jax.nn.softmax(model.apply(variables, jnp.asarray(x)), -1))
        got = session.run(["output"], {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
        assert got.shape == (2, model.num_classes) + want.shape[1:3]
        diffs.append(float(np.abs(got.transpose(0, 2, 3, 1) - want).max()))
    return max(diffs)


def test_a_valid_unet_equals_jax_at_two_tile_sizes_and_a_non_square_one():
    model = unet.UNet(features=4, depth=2, padding="valid")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 44, 44, 1)))
    assert _max_diff(model, variables, [(44, 44), (60, 60), (44, 76)]) < 1e-4


def test_batch_norm_folded_three_channels_three_classes_equals_jax():
    model = unet.UNet(features=4, depth=2, padding="same", norm="batch", in_channels=3, num_classes=3)
    variables = _random_stats(model.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3))))
    assert _max_diff(model, variables, [(32, 32), (48, 48), (32, 64)]) < 1e-4


def test_a_deeper_valid_unet_with_batch_norm_equals_jax():
    model = unet.UNet(features=4, depth=3, padding="valid", norm="batch", num_classes=3)
    size = unet.input_size_for_output(20, 3, "valid")
    variables = _random_stats(model.init(jax.random.key(2), jnp.zeros((1, size, size, 1))), seed=2)
    assert _max_diff(model, variables, [(size, size), (size + 8, size)]) < 1e-4


@pytest.mark.parametrize("kwargs,layer", [({"norm": "group"}, "'group' normalisation"),
                                          ({"upsample": "bilinear"}, "'bilinear' up-sampling")])
def test_layers_the_builder_does_not_cover_are_named(kwargs, layer):
    model = unet.UNet(features=4, depth=2, padding="same", **kwargs)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    with pytest.raises(ValueError, match=f"does not cover the layer {layer}"):
        onnx_graph.unet_to_onnx(model, variables)
