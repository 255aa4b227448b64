"""Overlap-tile inference, TTA, a run's prediction path, the predict CLI and its bad inputs."""
import functools
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tests.helpers import tiny_config
from unet_jax import inference, train, unet
from unet_jax.data.loader import mirror_pad

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def valid_model():
    model = unet._UNetTiny(depth=2, features=4, padding="valid", num_classes=3)
    params = model.init(jax.random.key(0), jnp.zeros((1, 44, 44, 1)))
    calls = []

    @jax.jit
    def fwd(x):
        return jax.nn.softmax(model.apply(params, x), -1)

    def predict(x):
        calls.append(x.shape)
        return fwd(x)

    return model, params, predict, calls


def test_valid_overlap_tile_equals_one_whole_image_pass(valid_model):
    model, params, predict, calls = valid_model
    img = np.random.default_rng(0).random((44, 44, 1)).astype(np.float32)
    c = unet.context(2, "valid")  # 20 for depth 2
    whole_in = mirror_pad(img, c, "reflect")  # 84x84: a valid input with a 44x44 output
    assert unet.output_size(whole_in.shape[0], 2, "valid") == 44
    whole = np.asarray(jax.nn.softmax(model.apply(params, whole_in[None]), -1))[0]
    outs = {}
    for tile in (44, 52, 60):  # outputs 4, 12, 20 = the tile steps
        calls.clear()
        outs[tile] = inference.predict_valid(predict, img, 2, tile, 3, batch_tiles=3)
        assert all(s[0] <= 3 for s in calls)  # memory bounded by the tile batch
        np.testing.assert_allclose(outs[tile], whole, atol=1e-5)


def test_valid_tiles_stay_on_the_pooling_grid_at_depth_3():
    """Depth 3: tile outputs of 12 and 20 pixels are not multiples of the 8-pixel pooling cell;
    tiles placed off that grid would see other pooling windows than one whole-image pass."""
    model = unet._UNetTiny(depth=3, features=2, padding="valid", num_classes=2)
    params = model.init(jax.random.key(0), jnp.zeros((1, 92, 92, 1)))
    predict = jax.jit(lambda x: jax.nn.softmax(model.apply(params, x), -1))
    img = np.random.default_rng(4).random((44, 44, 1)).astype(np.float32)
    c = unet.context(3, "valid")
    whole_in = mirror_pad(img, c, "reflect")
    assert unet.output_size(whole_in.shape[0], 3, "valid") == 44
    whole = np.asarray(predict(whole_in[None]))[0]
    for tile in (unet.input_size_for_output(12, 3, "valid"), unet.input_size_for_output(20, 3, "valid")):
        out = unet.output_size(tile, 3, "valid")
        assert out % 8, out  # a tile whose output is off the grid
        np.testing.assert_allclose(inference.predict_valid(predict, img, 3, tile, 2), whole, atol=1e-5)


def test_same_mode_blending_is_exact_for_a_pointwise_model():
    """A per-pixel model gives identical values in overlapping tiles, so any correctly
    normalised blend must return exactly the per-pixel result."""
    def predict(x):
        z = np.concatenate([x, 1 - x], -1)
        return np.exp(z) / np.exp(z).sum(-1, keepdims=True)

    img = np.random.default_rng(1).random((70, 90, 1)).astype(np.float32)
    out = inference.predict_same(predict, img, depth=2, tile_size=32, num_classes=2, batch_tiles=2)
    np.testing.assert_allclose(out, predict(img[None])[0], atol=1e-6)


def test_tta_of_a_flip_symmetric_function_is_the_identity(valid_model):
    def predict(x):  # pointwise: commutes with every flip and rotation
        z = np.concatenate([x, x ** 2, 1 - x], -1)
        return np.exp(z) / np.exp(z).sum(-1, keepdims=True)

    img = np.random.default_rng(2).random((40, 56, 1)).astype(np.float32)
    plain = inference.predict_image(predict, img, 2, "same", 32, 3)
    tta = inference.predict_image(predict, img, 2, "same", 32, 3, tta=True)
    np.testing.assert_allclose(tta, plain, atol=1e-6)
    # and for the (not symmetric) U-Net TTA changes the result
    _, _, unet_predict, _ = valid_model
    a = inference.predict_image(unet_predict, img, 2, "valid", 44, 3)
    b = inference.predict_image(unet_predict, img, 2, "valid", 44, 3, tta=True)
    assert a.shape == b.shape == (40, 56, 3) and not np.allclose(a, b)
    np.testing.assert_allclose(b.sum(-1), 1, atol=1e-5)


def test_invalid_tile_size_is_an_error(valid_model):
    with pytest.raises(ValueError, match="not a valid input size"):
        inference.predict_valid(valid_model[2], np.zeros((40, 40, 1), np.float32), 2, 30, 3)


def _predict_cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments.unet_predict", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_predict_cli_writes_masks_probabilities_and_overlays(trained, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray((np.random.default_rng(0).random((70, 80)) * 255).astype(np.uint8)).save(inp / "a.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "tiny.png")
    (tmp_path / "notes.png").write_text("not an image")
    proc = _predict_cli("--workdir", str(trained), "--input", str(inp), "--output", str(tmp_path / "out"),
                        "--instances", "--instances_mode=components")
    assert proc.returncode == 0, proc.stderr[-2000:]
    mask = np.asarray(Image.open(tmp_path / "out" / "a_mask.png"))
    import tifffile
    from scipy import ndimage

    objects = tifffile.imread(tmp_path / "out" / "a_instances.tif")  # as Fiji reads it
    assert objects.dtype == np.uint16 and objects.shape == (70, 80)
    ref = ndimage.label(mask > 0)[0]  # components of at least config.instances.min_size pixels
    sizes = np.bincount(ref.ravel())
    ref[np.isin(ref, np.nonzero(sizes < 10)[0])] = 0
    np.testing.assert_array_equal(objects > 0, ref > 0)
    assert len(np.unique(objects)) == len(np.unique(ref))
    assert mask.shape == (70, 80) and set(np.unique(mask)) <= {0, 255}
    prob = tifffile.imread(tmp_path / "out" / "a_prob.tif")
    assert prob.shape == (2, 70, 80)
    np.testing.assert_allclose(prob.sum(0), 1, atol=1e-5)
    np.testing.assert_array_equal(mask, prob.argmax(0).astype(np.uint8) * 255)  # the mask of those
    assert (tmp_path / "out" / "a_overlay.png").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_instances.tif", "a_mask.png", "a_overlay.png", "a_prob.tif"]
    # a higher foreground threshold: the components of prob > 0.7 (at least 10 pixels)
    proc = _predict_cli("--workdir", str(trained), "--input", str(inp), "--output", str(tmp_path / "out_07"),
                        "--instances", "--instances_mode=components", "--instances_threshold=0.7")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert np.sum(prob[1] > 0.7) < np.sum(prob[1] > 0.5)  # the threshold matters here
    ref = ndimage.label(prob[1] > 0.7)[0]
    sizes = np.bincount(ref.ravel())
    ref[np.isin(ref, np.nonzero(sizes < 10)[0])] = 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out_07" / "a_instances.tif") > 0, ref > 0)
    proc = _predict_cli("--workdir", str(trained), "--input", str(inp), "--output", str(tmp_path / "out_bad"),
                        "--instances", "--seed_threshold=1.5")
    assert proc.returncode == 1 and "--seed_threshold must be in [0, 1), got 1.5" in proc.stderr
    proc = _predict_cli("--workdir", str(trained), "--input", str(inp), "--output", str(tmp_path / "out_bad"),
                        "--instances", "--min_seed_size=-1")
    assert proc.returncode == 1 and "--min_seed_size must be >= 0, got -1" in proc.stderr
    assert not (tmp_path / "out_bad").exists()
    # an image smaller than one tile is mirror-padded, not refused
    proc = _predict_cli("--workdir", str(trained), "--input", str(tmp_path / "tiny.png"), "--output",
                        str(tmp_path / "out_tiny"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert np.asarray(Image.open(tmp_path / "out_tiny" / "tiny_mask.png")).shape == (10, 10)
    for bad, match in [("notes.png", "not a readable image")]:
        proc = _predict_cli("--workdir", str(trained), "--input", str(tmp_path / bad), "--output",
                            str(tmp_path / "out2"))
        assert proc.returncode == 1 and match in proc.stderr and str(tmp_path / bad) in proc.stderr


def test_a_runs_prediction_path_equals_the_model_and_checks_channels():
    config = tiny_config("")
    state = train.create_state(config, jax.random.key(0, impl="rbg"))
    variables = inference.model_variables(state)
    assert set(variables) == {"params", "batch_stats"}  # the tiny config uses batch norm
    predict = functools.partial(inference.make_predict(state.apply_fn), variables)
    image = np.random.default_rng(3).random((64, 64, 1)).astype(np.float32)
    want = jax.nn.softmax(state.apply_fn(variables, image[None], train=False), -1)[0]
    np.testing.assert_allclose(inference.predict_probs(config, predict, image), want, atol=1e-5)
    assert inference.eval_tile_size(config) == config.data.eval_tile_size == 64
    with pytest.raises(ValueError, match="image has 3 channels, the model expects 1"):
        inference.predict_probs(config, predict, np.zeros((64, 64, 3), np.float32))


def _one_size_model(min_area: int, max_area: int):
    """A stand-in for a model trained on one object size: the foreground is the bright objects
    of ``min_area`` to ``max_area`` pixels, so objects much smaller or larger than the ones it
    'learnt' are missed."""
    from scipy import ndimage

    def predict(tiles):  # [N, S, S, 1] -> [N, S, S, 2]
        out = []
        for t in np.asarray(tiles):
            labels, n = ndimage.label(t[..., 0] > 0.5)
            areas = np.bincount(labels.ravel(), minlength=n + 1)
            keep = (areas >= min_area) & (areas <= max_area)
            keep[0] = False
            fg = keep[labels].astype(np.float32)
            out.append(np.stack([1 - fg, fg], -1))
        return np.stack(out)

    return predict


def _matched(labels, reference) -> int:
    """Objects of ``reference`` with an object of ``labels`` overlapping it at IoU > 0.8."""
    hits = 0
    for i in range(1, reference.max() + 1):
        obj = reference == i
        ids, counts = np.unique(labels[obj], return_counts=True)
        j = ids[np.argmax(np.where(ids > 0, counts, -1))]
        hits += j > 0 and (obj & (labels == j)).sum() / (obj | (labels == j)).sum() > 0.8
    return hits


def test_objects_at_twice_and_half_the_size_come_out_as_the_same_objects_with_scale():
    from ml_collections import ConfigDict
    from skimage import draw, transform

    from unet_jax import instances

    base = np.zeros((160, 160), np.float32)
    centres = [(30, 30), (30, 90), (40, 135), (95, 50), (110, 115), (135, 30)]
    for y, x in centres:
        base[draw.disk((y, x), 10, shape=base.shape)] = 1.0
    config = ConfigDict({"model": {"in_channels": 1, "depth": 2, "padding": "same", "num_classes": 2},
                         "data": {"tile_size": 32, "eval_tile_size": 512}, "eval_batch_tiles": 1})
    predict = _one_size_model(150, 700)  # the discs: 317 pixels; at twice the size 1257, at half 81

    def objects(image, scale):
        probs = inference.predict_probs(config, predict, image, tile_size=512, scale=scale)
        assert probs.shape == image.shape + (2,)
        return instances.components(probs[..., 1] > 0.5)

    truth = objects(base, 1.0)
    assert truth.max() == len(centres)  # the model sees the objects of the size it knows
    for factor in (2.0, 0.5):
        image = transform.rescale(base, factor, order=1, anti_aliasing=factor < 1)
        assert objects(image, 1.0).max() == 0  # at another size it misses them all
        found = objects(image, 1 / factor)  # --scale 1 / factor brings them back
        back = transform.resize(found, base.shape, order=0, preserve_range=True, anti_aliasing=False).astype(int)
        assert found.max() == len(centres) and _matched(back, truth) == len(centres), factor
