"""TFDS builders without TensorFlow, the grain loader and on-device augmentation."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.helpers import tiny_config
from unet_jax.data import augment, builders, loader

ROOT = Path(__file__).resolve().parents[1]


def _write_image_folder(root: Path):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    img16 = rng.integers(0, 4000, (40, 48), dtype=np.uint16)
    tifffile.imwrite(root / "images" / "a.tif", img16)
    mask = np.zeros((40, 48), np.uint8)
    mask[5:20, 5:20] = 255
    mask[22:35, 25:40] = 255
    Image.fromarray(mask).save(root / "masks" / "a.png")
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "images" / "b.jpg")
    Image.fromarray((mask > 0).astype(np.uint8)).save(root / "masks" / "b.png")


def test_every_builder_prepares_and_reads_without_tensorflow(tmp_path, isbi_dir, dsb_dir):
    folder = tmp_path / "folder"
    _write_image_folder(folder)
    script = textwrap.dedent(f"""
        import importlib.abc, json, sys

        class Hide(importlib.abc.MetaPathFinder):  # TensorFlow is invisible even if installed
            def __init__(self, inner):
                self.inner = inner
            def find_spec(self, name, path=None, target=None):
                if name == "tensorflow" or name.startswith("tensorflow."):
                    return None
                return self.inner.find_spec(name, path, target)

        sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
        try:
            import tensorflow
            raise SystemExit("tensorflow importable")
        except ImportError:
            pass
        from unet_jax.data import builders
        out = {{}}
        for name, src, opts in [("synthetic_cells", "", dict(size=64, num_train=3, num_test=2)),
                                ("isbi2012", {str(isbi_dir)!r}, {{}}),
                                ("nuclei_dsb", {str(dsb_dir)!r}, dict(channels=3)),
                                ("image_folder", {str(folder)!r}, dict(to_grey=True))]:
            ds = builders.load(name, {str(tmp_path / 'tfds')!r}, src, **opts)
            ex = ds["train"][0]
            out[name] = {{"len": {{k: len(v) for k, v in ds.items()}},
                         "image": list(ex["image"].shape), "labels": list(ex["labels"].shape),
                         "weights_max": float(ex["weights"].max()), "inst_max": int(ex["instances"].max()),
                         "image_range": [float(ex["image"].min()), float(ex["image"].max())],
                         "label_values": sorted(set(ex["labels"].ravel().tolist()))}}
        print("RESULT" + json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT")[1])
    assert out["synthetic_cells"]["len"] == {"train": 3, "test": 2}
    assert out["synthetic_cells"]["image"] == [64, 64, 1] and out["synthetic_cells"]["inst_max"] > 3
    assert out["isbi2012"]["len"] == {"train": 25} and out["isbi2012"]["image"] == [512, 512, 1]
    assert out["isbi2012"]["weights_max"] > 5  # borders between touching cells
    assert out["nuclei_dsb"]["len"] == {"train": 12} and out["nuclei_dsb"]["image"][2] == 3
    assert out["nuclei_dsb"]["inst_max"] > 1
    assert out["image_folder"]["len"] == {"train": 2} and out["image_folder"]["label_values"] == [0, 1]
    for v in out.values():
        assert 0 <= v["image_range"][0] <= v["image_range"][1] <= 1


def test_isbi_split_keeps_slice_order(tmp_path, isbi_dir):
    sources = builders.load("isbi2012", tmp_path, str(isbi_dir), splits=("train[:20]", "train[20:]"))
    assert len(sources["train[:20]"]) == 20 and len(sources["train[20:]"]) == 5
    assert sources["train[20:]"][0]["name"] in (b"20.png", "20.png")


def test_class_balance_option_sets_w_c(tmp_path):
    """class_balance=False: w_c = 1 on both classes, the same border term; the default gives
    background / cell pixels N / (2 n_c) (each class the same total weight)."""
    opts = dict(size=64, num_train=2, num_test=1)
    balanced = builders.load("synthetic_cells", tmp_path, **opts)["train"][0]
    plain = builders.load("synthetic_cells", tmp_path, class_balance=False, **opts)["train"][0]
    cell = balanced["labels"] > 0
    n = cell.size
    np.testing.assert_allclose(balanced["weights"][cell], n / (2 * cell.sum()), rtol=1e-6)
    np.testing.assert_allclose(plain["weights"][cell], 1.0)
    border_b = balanced["weights"][~cell] - n / (2 * (~cell).sum())
    border_p = plain["weights"][~cell] - 1.0
    np.testing.assert_allclose(border_p, border_b, atol=1e-5)
    assert border_p.max() > 1  # the border term is there
    assert len(list((tmp_path / "synthetic_cells").iterdir())) == 2  # two configs, two datasets


@pytest.mark.parametrize("breakage,match", [
    ("size", "masks/a.png: mask is 40x47, image a.tif is 40x48"),
    ("channels", "a.tif: the image has 2 channels, the model expects 1"),
    ("orphan_mask", "c.png: mask has no image"),
    ("empty", "a.tif: empty file"),
    ("garbage", "a.tif: not a readable image"),
    ("classes", "a.png: mask values 0..7 outside the class range"),
    ("rgb_mask", "a.png: an RGB mask with differing channels"),
    ("mask_values", r"a.png: mask values \[\[255\]\] are not in mask_values \[0, 128\]"),
])
def test_bad_input_names_the_file_and_leaves_nothing(tmp_path, breakage, match):
    folder = tmp_path / "folder"
    _write_image_folder(folder)
    good_tif = (folder / "images" / "a.tif").read_bytes()
    good_mask = (folder / "masks" / "a.png").read_bytes()
    if breakage == "size":
        Image.fromarray(np.zeros((40, 47), np.uint8)).save(folder / "masks" / "a.png")
    elif breakage == "orphan_mask":
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(folder / "masks" / "c.png")
    elif breakage == "channels":
        tifffile.imwrite(folder / "images" / "a.tif", np.zeros((2, 40, 48), np.uint16))
    elif breakage == "empty":
        (folder / "images" / "a.tif").write_bytes(b"")
    elif breakage == "garbage":
        (folder / "images" / "a.tif").write_bytes(b"not a tiff at all")
    elif breakage == "rgb_mask":
        colour = np.zeros((40, 48, 3), np.uint8)
        colour[5:20, 5:20] = (255, 0, 0)
        Image.fromarray(colour).save(folder / "masks" / "a.png")
    elif breakage == "classes":
        bad = np.full((40, 48), 7, np.uint8)
        bad[:5] = 0
        Image.fromarray(bad).save(folder / "masks" / "a.png")
    data_dir = tmp_path / "tfds"
    options = {"mask_values": (0, 128)} if breakage == "mask_values" else {}
    with pytest.raises(ValueError, match=match):
        builders.load("image_folder", data_dir, str(folder), **options)
    assert not data_dir.exists()  # nothing prepared, not even the folder
    # fix the file and prepare again
    (folder / "images" / "a.tif").write_bytes(good_tif)
    (folder / "masks" / "a.png").write_bytes(good_mask)
    (folder / "masks" / "c.png").unlink(missing_ok=True)
    assert len(builders.load("image_folder", data_dir, str(folder), to_grey=True)["train"]) == 2


def _discs(background: float, nucleus: float, shape=(48, 64)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, background, np.float32)
    for cy, cx in [(12, 14), (30, 40), (36, 12)]:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = nucleus
    return img + np.random.default_rng(0).normal(0, 0.01, shape).astype(np.float32), \
        ((yy - 12) ** 2 + (xx - 14) ** 2 < 36)


def test_bright_objects_stretches_each_channel_and_inverts_only_bright_backgrounds():
    from skimage import exposure

    for background, nucleus in [(0.1, 0.35), (0.8, 0.3)]:  # fluorescence-like, brightfield-like
        grey, disc = _discs(background, nucleus)
        rgb = np.stack([grey, grey * 0.5, np.clip(grey * 1.2, 0, 1)], -1)
        out = builders.bright_objects(rgb)
        ref = np.stack([exposure.rescale_intensity(rgb[..., c], tuple(np.percentile(rgb[..., c], (1, 99.8))),
                                                   (0.0, 1.0)) for c in range(3)], -1)
        expected = 1 - ref if background > nucleus else ref
        np.testing.assert_allclose(out, expected, atol=1e-6)
        assert out[disc].mean() > 0.8 and out[~disc].mean() < 0.3  # nuclei bright either way
    image = builders.model_input((_discs(0.8, 0.3)[0] * 255).astype(np.uint8), "x.png", 1,
                                 contrast="bright_objects")
    assert image.shape == (48, 64, 1) and image[12, 14, 0] > 0.8
    with pytest.raises(ValueError, match=r"data.contrast must be one of \('as_is', 'bright_objects'\), got 'dark'"):
        builders.model_input(np.zeros((4, 4), np.uint8), "x.png", 1, contrast="dark")


@pytest.mark.parametrize("width", [1, 2, 3])
def test_interior_border_targets_equal_a_brute_force_distance_to_the_nearest_edge(width):
    rng = np.random.default_rng(width)
    inst = np.zeros((24, 28), np.int32)
    inst[3:12, 2:14] = 1
    inst[3:12, 14:20] = 2  # touches object 1
    inst[14:22, 5:25] = 3
    inst[16:19, 9:12] = 0  # a hole
    inst[rng.random(inst.shape) < 0.02] = 0
    # edge pixels: an object's pixels with a 4-neighbour (inside the image) of another label
    edge = np.zeros(inst.shape, bool)
    for y, x in zip(*np.nonzero(inst)):
        edge[y, x] = any(0 <= y + dy < 24 and 0 <= x + dx < 28 and inst[y + dy, x + dx] != inst[y, x]
                         for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)))
    ey, ex = np.nonzero(edge)
    expected = np.zeros(inst.shape, np.uint8)
    for y, x in zip(*np.nonzero(inst)):  # border: within width - 1 city-block steps of an edge pixel
        expected[y, x] = 2 if (np.abs(ey - y) + np.abs(ex - x)).min() <= width - 1 else 1
    np.testing.assert_array_equal(builders.interior_border(inst, width), expected)
    assert (expected == 1).any()
    config = builders.CellsConfig(name="x", num_classes=3, targets="interior_border", border_width=width)
    example = builders.make_example(np.zeros(inst.shape), (inst > 0).astype(np.uint8), inst, "x", config)
    np.testing.assert_array_equal(example["labels"], expected)  # what a prepared dataset holds
    run = tiny_config("")
    with run.unlocked():
        run.data.border_width = width
    assert builders.dataset_options(run, "nuclei_dsb").get("border_width", 1) == width  # its own name
    with pytest.raises(ValueError, match=r"data.border_width must be a whole number >= 1, got 0"):
        builders.interior_border(inst, 0)


def test_images_named_in_held_out_form_their_own_split_and_an_unknown_name_is_named(tmp_path):
    folder = tmp_path / "own"
    _write_image_folder(folder)
    for stem in ("c", "d"):
        Image.fromarray(np.full((40, 48), ord(stem), np.uint8)).save(folder / "images" / f"{stem}.png")
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(folder / "masks" / f"{stem}.png")
    splits = builders.load("image_folder", tmp_path / "tfds", str(folder), to_grey=True, held_out=("d", "c"),
                           splits=("train", "held_out"))
    assert len(splits["train"]) == 2
    held = [float(np.asarray(ex["image"]).max()) * 255 for ex in splits["held_out"]]
    np.testing.assert_allclose(held, [ord("d"), ord("c")], atol=1e-3)  # the named images, in that order
    with pytest.raises(ValueError, match=r"data.held_out: no image named 'e' in .*own \(1 of 2 names"):
        builders.load("image_folder", tmp_path / "tfds2", str(folder), to_grey=True, held_out=("c", "e"))
    assert not (tmp_path / "tfds2").exists()


# ------------------------------------------------------------------ loader
def _id_source(n, size=8):
    """Examples whose image is constant = their id (so a tile identifies its example)."""
    return [{"image": np.full((size, size, 1), i, np.float32), "labels": np.zeros((size, size), np.uint8),
             "weights": np.ones((size, size), np.float32)} for i in range(n)]


def _ids(it, batches):
    return [int(v) for _ in range(batches) for v in next(it)["image"][:, 0, 0, 0]]


def test_loader_deterministic_with_a_new_order_every_epoch():
    src = _id_source(12)
    tile = loader.TileConfig(out_size=8)
    first = _ids(iter(loader.make_train_loader(src, tile, 4, seed=5)), 6)  # two epochs
    again = _ids(iter(loader.make_train_loader(src, tile, 4, seed=5)), 6)
    other = _ids(iter(loader.make_train_loader(src, tile, 4, seed=6)), 3)
    assert first == again
    assert sorted(first[:12]) == sorted(first[12:]) == list(range(12))
    assert first[:12] != first[12:]
    assert other != first[:12]


def test_oversampled_images_come_that_many_times_an_epoch():
    """Examples 1 and 4 named 3 times: every epoch of 6 + 2 * 2 = 10 draws holds each of them 3
    times and the rest once (counted from the tiles, which carry their example's id)."""
    names = [f"img{i}" for i in range(6)]
    epoch = loader.repeated_indices(names, {"img1": 3, "img4": 3})
    np.testing.assert_array_equal(np.bincount(epoch), [1, 3, 1, 1, 3, 1])
    it = iter(loader.make_train_loader(_id_source(6), loader.TileConfig(out_size=8), 5, seed=2, epoch=epoch))
    seen = _ids(it, 4)  # two epochs
    for part in (seen[:10], seen[10:]):
        np.testing.assert_array_equal(np.bincount(part, minlength=6), [1, 3, 1, 1, 3, 1])
    assert seen[:10] != seen[10:]
    with pytest.raises(ValueError, match="no training image named 'img9'"):
        loader.repeated_indices(names, {"img9": 2})
    with pytest.raises(ValueError, match="whole number >= 1 for 'img1'"):
        loader.repeated_indices(names, {"img1": 0})


@pytest.mark.parametrize("processes", [2, 3])
def test_processes_share_out_the_global_batches_of_one_process(processes):
    """Any number of processes sees the same global batches as one process (tiles included):
    a run requeued on another number of nodes continues the same run."""
    src = _id_source(10, size=16)
    tile = loader.TileConfig(out_size=8, foreground_prob=0.0)
    one = iter(loader.make_train_loader(src, tile, 2 * processes, seed=0))
    shares = [iter(loader.make_train_loader(src, tile, 2, seed=0, process_index=p, process_count=processes))
              for p in range(processes)]
    for _ in range(7):  # past an epoch of 10 examples
        whole = next(one)
        parts = [next(it) for it in shares]
        for p, part in enumerate(parts):
            assert list(part["index"]) == [2 * p, 2 * p + 1]
        for k in ("image", "labels", "weights", "index"):
            np.testing.assert_array_equal(np.concatenate([part[k] for part in parts]), whole[k])
    with pytest.raises(ValueError, match="process_index 2 not in"):
        loader.make_train_loader(src, tile, 2, seed=0, process_index=2, process_count=2)


def test_restored_iterator_state_continues_with_the_next_batches():
    src = _id_source(9, size=16)
    tile = loader.TileConfig(out_size=8, context=2, foreground_prob=0.0)
    it = iter(loader.make_train_loader(src, tile, 2, seed=1))
    for _ in range(4):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # saved as JSON in checkpoints
    expected = [next(it) for _ in range(3)]
    it2 = iter(loader.make_train_loader(src, tile, 2, seed=1))
    it2.set_state(state)
    for e in expected:
        got = next(it2)
        for k in e:
            np.testing.assert_array_equal(got[k], e[k])


@pytest.mark.parametrize("mode", ["reflect", "symmetric"])
@pytest.mark.parametrize("c", [3, 10, 25])
def test_mirrored_context_matches_numpy_pad(mode, c):
    a = np.random.default_rng(0).normal(size=(12, 9, 2))
    np.testing.assert_array_equal(loader.mirror_pad(a, c, mode), np.pad(a, ((c, c), (c, c), (0, 0)), mode=mode))
    ex = {"image": a[:9, :9, :1].astype(np.float32), "labels": (a[:9, :9, 0] > 0).astype(np.uint8),
          "weights": a[:9, :9, 1].astype(np.float32)}
    tile = loader.random_tile(ex, np.random.default_rng(0), loader.TileConfig(out_size=9, context=c, mirror=mode))
    np.testing.assert_array_equal(tile["image"], np.pad(ex["image"], ((c, c), (c, c), (0, 0)), mode=mode))
    np.testing.assert_array_equal(tile["labels"], np.pad(ex["labels"], c, mode=mode))


@pytest.mark.parametrize("mode", ["reflect", "symmetric"])
@pytest.mark.parametrize("shape,out,c", [((40, 31), 20, 6), ((40, 31), 8, 30), ((12, 50), 12, 11),
                                           ((10, 10), 8, 23)])
def test_tiles_anywhere_in_an_image_equal_a_window_of_the_whole_padded_image(mode, shape, out, c):
    """Every tile position (edges, corners, middle; contexts shorter and longer than the image)
    against the window of the whole image padded by numpy."""
    rng = np.random.default_rng(1)
    ex = {"image": rng.random(shape + (2,), np.float32), "labels": rng.integers(0, 3, shape).astype(np.uint8),
          "weights": rng.random(shape, np.float32)}
    cfg = loader.TileConfig(out_size=out, context=c, foreground_prob=0.0, mirror=mode)
    padded = {k: np.pad(v, [(c, c), (c, c)] + [(0, 0)] * (v.ndim - 2), mode=mode) for k, v in ex.items()}
    seen = set()
    for seed in range(60):
        tile = loader.random_tile(ex, np.random.default_rng(seed), cfg)
        # the tile's offset: where its image window sits in the padded image
        hits = [(y, x) for y in range(shape[0] - out + 1) for x in range(shape[1] - out + 1)
                if np.array_equal(padded["image"][y:y + out + 2 * c, x:x + out + 2 * c], tile["image"])]
        assert hits, seed
        y, x = hits[0]
        seen.add((y in (0, shape[0] - out), x in (0, shape[1] - out)))
        for k in ("labels", "weights"):
            np.testing.assert_array_equal(tile[k], padded[k][y:y + out + 2 * c, x:x + out + 2 * c])
    assert len(seen) >= 2, seen  # tiles at edges and corners and (where there is room) inside


def test_an_image_smaller_than_the_tile_is_mirrored_out_with_zero_weight():
    rng = np.random.default_rng(0)
    ex = {"image": rng.random((8, 10, 2), np.float32), "labels": rng.integers(0, 3, (8, 10)).astype(np.uint8),
          "weights": rng.random((8, 10), np.float32)}
    tile = loader.random_tile(ex, rng, loader.TileConfig(out_size=16))
    pads = ((4, 4), (3, 3))
    np.testing.assert_array_equal(tile["image"], np.pad(ex["image"], pads + ((0, 0),), mode="reflect"))
    np.testing.assert_array_equal(tile["labels"], np.pad(ex["labels"], pads, mode="reflect"))
    np.testing.assert_array_equal(tile["weights"], np.pad(ex["weights"], pads))  # the added pixels count 0


# ------------------------------------------------------------------ augmentation
def test_zero_displacement_is_the_identity():
    rng = np.random.default_rng(0)
    image = jnp.asarray(rng.random((20, 20, 2)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, (20, 20)), jnp.int32)
    weights = jnp.asarray(rng.random((20, 20)), jnp.float32)
    zero = jnp.zeros((20, 20, 2))
    np.testing.assert_allclose(augment.warp(image, zero, 1), image, atol=1e-6)
    np.testing.assert_array_equal(augment.warp(labels.astype(jnp.float32), zero, 0), labels)
    out = augment.elastic(jax.random.key(0), image, labels, weights, sigma=0.0)
    np.testing.assert_allclose(out[0], image, atol=1e-6)
    np.testing.assert_array_equal(out[1], labels)
    np.testing.assert_allclose(out[2], weights, atol=1e-6)


def test_deformed_labels_follow_the_deformed_image():
    """Label = a function of the image value (so of position). Sampling the image at the
    deformed positions with the same (nearest) rule must give exactly the warped labels, and
    the bilinear image output must be the image sampled at those positions."""
    n = 64
    yy, xx = np.mgrid[0:n, 0:n] / n
    image = (0.5 + 0.45 * np.sin(2 * np.pi * yy) * np.cos(2 * np.pi * xx)).astype(np.float32)
    labels = np.floor(image * 4).astype(np.int32)
    key = jax.random.key(3)
    img2, lab2, w2 = jax.jit(augment.elastic, static_argnums=(4, 5))(
        key, jnp.asarray(image[..., None]), jnp.asarray(labels), jnp.asarray(image), 3, 10.0)
    disp = augment.displacement_field(key, (n, n), 3, 10.0)
    assert float(jnp.abs(disp).max()) > 3  # a real deformation
    nearest_image = np.asarray(augment.warp(jnp.asarray(image), disp, 0))
    np.testing.assert_array_equal(np.asarray(lab2), np.floor(nearest_image * 4).astype(np.int32))
    assert np.mean(np.asarray(lab2) != labels) > 0.05
    # the image and the weight map (here the same array) follow the same bilinear sampling
    from scipy.ndimage import map_coordinates
    coords = [np.mgrid[0:n, 0:n][0] + np.asarray(disp[..., 0]), np.mgrid[0:n, 0:n][1] + np.asarray(disp[..., 1])]
    ref = map_coordinates(image, coords, order=1, mode="mirror")
    np.testing.assert_allclose(np.asarray(img2)[..., 0], ref, atol=1e-4)
    np.testing.assert_allclose(np.asarray(w2), ref, atol=1e-4)


def test_augmentation_is_keyed_by_example_index():
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((4, 16, 16, 1)).astype(np.float32),
             "labels": rng.integers(0, 2, (4, 16, 16)).astype(np.int32),
             "weights": rng.random((4, 16, 16)).astype(np.float32), "index": np.arange(4, dtype=np.int32)}
    f = jax.jit(augment.augment_batch)
    whole = f(jax.random.key(1), batch)
    half = f(jax.random.key(1), {k: v[2:] for k, v in batch.items()})
    for k in ("image", "labels", "weights"):
        np.testing.assert_allclose(whole[k][2:], half[k], atol=1e-6)
    assert not np.allclose(whole["image"], batch["image"])
    # geometric transforms keep labels valid and weights positive
    assert set(np.unique(whole["labels"])) <= {0, 1} and float(whole["weights"].min()) >= 0


def test_every_example_gets_its_own_geometry_and_its_labels_follow_its_image():
    """Flips / rotations only (exact permutations): each example's labels stay a function of its
    own image; identical examples at different batch positions get different transforms."""
    n = 16
    yy, xx = np.mgrid[0:n, 0:n]
    image = ((yy * n + xx) / n ** 2).astype(np.float32)  # every pixel a distinct value
    labels = (yy * n + xx).astype(np.int32)  # = image * n^2: labels follow positions exactly
    batch = {"image": np.repeat(image[None, ..., None], 8, 0), "labels": np.repeat(labels[None], 8, 0),
             "weights": np.repeat(image[None], 8, 0), "index": np.arange(8, dtype=np.int32)}
    cfg = augment.AugmentConfig(elastic_sigma=0.0, brightness=0.0, contrast=0.0, gamma=0.0)
    out = jax.jit(augment.augment_batch, static_argnums=2)(jax.random.key(0), batch, cfg)
    img, lab, w = (np.asarray(out[k]) for k in ("image", "labels", "weights"))
    np.testing.assert_array_equal(lab, np.rint(img[..., 0] * n ** 2).astype(np.int32))  # same transform
    np.testing.assert_array_equal(w, img[..., 0])
    distinct = {lab[i].tobytes() for i in range(8)}
    assert len(distinct) >= 3  # one transform shared by the batch would give 1 (8 of 8 dihedral)


def test_foreground_tiles_are_oversampled():
    labels = np.zeros((256, 256), np.uint8)
    labels[200:210, 30:40] = 1  # 0.15 % of the image
    ex = {"image": np.zeros((256, 256, 1), np.float32), "labels": labels,
          "weights": np.ones((256, 256), np.float32)}
    rng = np.random.default_rng(0)

    def hit_rate(p):
        cfg = loader.TileConfig(out_size=32, foreground_prob=p)
        return np.mean([loader.random_tile(ex, rng, cfg)["labels"].any() for _ in range(200)])

    assert hit_rate(1.0) == 1.0  # every tile centred on a foreground pixel
    uniform = hit_rate(0.0)
    assert uniform < 0.1 and 0.3 < hit_rate(0.33) < 0.5  # the uniform chance is ~ 41^2 / 225^2


def test_an_unknown_dataset_names_the_built_in_ones(tmp_path):
    with pytest.raises(ValueError, match=r"^dataset 'my_cells' is neither one of the built-in \('synthetic_cells'"):
        builders.load("my_cells", tmp_path)


def test_processes_preparing_one_dataset_at_once_take_turns(tmp_path):
    """Two processes on a fresh data_dir (a multi-process run's first start): one prepares, the
    other waits for it and reads the same examples, instead of both writing one folder."""
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from unet_jax.data import builders
        src = builders.load("synthetic_cells", {str(tmp_path)!r}, size=64, num_train=3, num_test=2)["train"]
        np.save(sys.argv[1], np.stack([src[i]["image"] for i in range(3)]))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"{i}.npy")], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-2000:]
    np.testing.assert_array_equal(np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy"))
    assert not [p for p in (tmp_path / "synthetic_cells").rglob("incomplete*")]


def test_hed_conversions_equal_skimage_and_stain_jitter_moves_each_stain_as_drawn():
    from skimage import color

    rgb = np.random.default_rng(0).uniform(0.05, 1.0, (16, 16, 3)).astype(np.float32)
    hed = np.asarray(augment.rgb_to_hed(jnp.asarray(rgb)))
    np.testing.assert_allclose(hed, color.rgb2hed(rgb), atol=1e-5)
    np.testing.assert_allclose(np.asarray(augment.hed_to_rgb(jnp.asarray(hed))), color.hed2rgb(hed), atol=1e-5)
    # the jittered image is hed2rgb of the concentrations scaled and shifted by the drawn values
    key = jax.random.key(3, impl="threefry2x32")
    out = np.asarray(augment.stain_jitter(key, jnp.asarray(rgb), 0.1, 0.02))
    ka, kb = jax.random.split(key)
    alpha = np.asarray(jax.random.uniform(ka, (3,), minval=0.9, maxval=1.1))
    beta = np.asarray(jax.random.uniform(kb, (3,), minval=-0.02, maxval=0.02))
    np.testing.assert_allclose(out, color.hed2rgb(color.rgb2hed(rgb) * alpha + beta), atol=1e-5)
    assert np.abs(out - rgb).mean() > 1e-3
    with pytest.raises(ValueError, match="needs RGB images, got 1 channels"):
        augment.stain_jitter(key, jnp.ones((4, 4, 1)), 0.1)


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_the_zoom_scales_an_object_about_the_centre(factor):
    """A disc at the centre of a tile: zoomed by f its area is f^2 times its own, in the image,
    the labels and the weights alike (the elastic part switched off; zooming out brings in the
    mirrored surroundings, so the central object is measured)."""
    from scipy import ndimage
    from skimage import draw

    labels = np.zeros((64, 64), np.int32)
    labels[draw.disk((31.5, 31.5), 10, shape=labels.shape)] = 1
    image = labels[..., None].astype(np.float32)
    disp = augment.zoom_field(labels.shape, factor)
    warped_image, warped_labels, warped_weights = augment.elastic(
        jax.random.key(0, impl="threefry2x32"), jnp.asarray(image), jnp.asarray(labels),
        jnp.asarray(labels, jnp.float32), sigma=0.0, extra=disp)
    area = labels.sum()
    parts = ndimage.label(np.asarray(warped_labels) > 0)[0]
    centre = parts == parts[32, 32]
    assert abs(centre.sum() / area - factor ** 2) < 0.08 * factor ** 2
    assert abs(float(np.asarray(warped_image)[..., 0][centre].sum()) / area - factor ** 2) < 0.08 * factor ** 2
    assert abs(float(np.asarray(warped_weights)[centre].sum()) / area - factor ** 2) < 0.08 * factor ** 2


def test_zoom_and_stain_run_in_the_batched_step_and_stain_needs_rgb():
    from tests.helpers import tiny_config
    from unet_jax import train

    rng = np.random.default_rng(0)
    batch = {"image": rng.random((2, 32, 32, 3), np.float32), "labels": rng.integers(0, 3, (2, 32, 32)).astype(np.int32),
             "weights": np.ones((2, 32, 32), np.float32), "index": np.arange(2, dtype=np.int32)}
    cfg = augment.AugmentConfig(scale=0.3, stain=0.05)
    out = jax.jit(augment.augment_batch, static_argnames="cfg")(jax.random.key(0), batch, cfg=cfg)
    assert out["image"].shape == (2, 32, 32, 3) and bool(jnp.isfinite(out["image"]).all())
    assert set(np.unique(np.asarray(out["labels"]))) <= {0, 1, 2}
    config = tiny_config("")
    config.augment.stain = 0.05
    with pytest.raises(ValueError, match="augment.stain needs RGB images"):
        train.step_config(config)
