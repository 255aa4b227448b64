"""A practitioner's files: every format round-trips through the readers with its channels, and
every kind of mask becomes the classes (and instances) it stores, or an error naming the file."""
import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_jax.data import builders, readers

RNG = np.random.default_rng(0)
GREY = RNG.integers(0, 256, (20, 24), dtype=np.uint8)
CLASSES = RNG.integers(0, 3, (20, 24), dtype=np.uint8)


@pytest.mark.parametrize("suffix,mode", [(".png", "L"), (".bmp", "L"), (".gif", "L"), (".webp", "L"),
                                         (".png", "RGB"), (".bmp", "RGB"), (".webp", "RGB"), (".png", "RGBA")])
def test_pillow_formats_round_trip_with_their_channels(tmp_path, suffix, mode):
    arr = {"L": GREY, "RGB": RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8),
           "RGBA": RNG.integers(0, 256, (20, 24, 4), dtype=np.uint8)}[mode]
    path = tmp_path / f"x{suffix}"
    Image.fromarray(arr, mode).save(path, **({"lossless": True} if suffix == ".webp" else {}))
    np.testing.assert_array_equal(readers.read_image(path), arr)


@pytest.mark.parametrize("compression", [None, "lzw", "zlib", "zstd"])
def test_tiffs_keep_16_bits_and_channels_under_every_compression(tmp_path, compression):
    """Channel-first [C, H, W] TIFFs come back channels-last; stacks stay stacks."""
    two = RNG.integers(0, 65535, (2, 20, 24), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", two, compression=compression)
    np.testing.assert_array_equal(readers.read_image(tmp_path / "c.tif"), np.moveaxis(two, 0, -1))
    tifffile.imwrite(tmp_path / "ome.ome.tif", two, metadata={"axes": "CYX"}, compression=compression)
    np.testing.assert_array_equal(readers.read_image(tmp_path / "ome.ome.tif"), np.moveaxis(two, 0, -1))
    stack = RNG.integers(0, 65535, (7, 20, 24), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", stack, compression=compression)
    got = readers.read_image(tmp_path / "s.tif")
    np.testing.assert_array_equal(got, stack)
    assert readers.is_stack(got) and not readers.is_stack(np.moveaxis(two, 0, -1))


def test_channels_are_kept_and_normalised_each_on_its_own():
    """csbdeep-style: each channel's 1st / 99.8th percentiles go to 0 / 1."""
    dim = RNG.uniform(0, 100, (30, 30))
    bright = RNG.uniform(0, 60000, (30, 30))
    out = builders.normalise(np.stack([dim, bright], -1).astype(np.uint16))
    for c, ch in enumerate((dim.astype(np.uint16), bright.astype(np.uint16))):
        lo, hi = np.percentile(ch.astype(np.float64), (1, 99.8))
        np.testing.assert_allclose(out[..., c], np.clip((ch - lo) / (hi - lo), 0, 1), atol=1e-6)
    two = builders.to_channels(out, 2, "x.tif")
    assert two.shape == (30, 30, 2)
    with pytest.raises(ValueError, match=r"^x.tif: the image has 2 channels, the model expects 1"):
        builders.to_channels(out, 1, "x.tif")
    rgb = RNG.uniform(0, 1, (30, 30, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"x.png: the image has 3 channels.*to_grey=True"):
        builders.to_channels(rgb, 1, "x.png")
    np.testing.assert_allclose(builders.to_channels(rgb, 1, "x.png", to_grey=True)[..., 0], rgb.mean(-1))
    grey_as_rgb = np.repeat(rgb[..., :1], 3, -1)
    np.testing.assert_array_equal(builders.to_channels(grey_as_rgb, 1, "x.png"), rgb[..., :1])
    opaque = np.concatenate([rgb, np.ones((30, 30, 1), np.float32)], -1)
    np.testing.assert_array_equal(builders.to_channels(opaque, 3, "x.png"), rgb)


def test_every_mask_kind_becomes_its_classes(tmp_path):
    # class ids; 0/255; palette PNG (its indices); grey values mapped by mask_values
    labels, inst = builders.mask_to_classes(CLASSES, "m.png", 3)
    np.testing.assert_array_equal(labels, CLASSES)
    assert inst is None
    np.testing.assert_array_equal(builders.mask_to_classes((CLASSES > 0) * 255, "m.png", 2)[0], CLASSES > 0)
    palette = Image.fromarray(CLASSES, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(
        builders.mask_to_classes(readers.read_image(tmp_path / "p.png", indices=True), "p", 3)[0], CLASSES)
    grey = np.array([0, 128, 255], np.uint8)[CLASSES]
    Image.fromarray(grey).save(tmp_path / "wbc.bmp")
    np.testing.assert_array_equal(
        builders.mask_to_classes(readers.read_image(tmp_path / "wbc.bmp"), "wbc", 3, values=(0, 128, 255))[0], CLASSES)
    # 16-bit instance labels: instances kept, foreground as class 1
    objects = np.zeros((20, 24), np.uint16)
    objects[2:8, 2:8], objects[8:15, 3:9], objects[10:18, 12:20] = 1, 300, 2
    tifffile.imwrite(tmp_path / "inst.tif", objects, compression="zlib")
    labels, inst = builders.mask_to_classes(readers.read_image(tmp_path / "inst.tif"), "inst", 2)
    np.testing.assert_array_equal(inst, objects)
    np.testing.assert_array_equal(labels, objects > 0)
    # RGB masks: equal channels, or one colour per class
    np.testing.assert_array_equal(builders.mask_to_classes(np.repeat(CLASSES[..., None], 3, -1), "m", 3)[0], CLASSES)
    colours = ((0, 0, 0), (255, 0, 0), (0, 0, 255))
    rgb = np.asarray(colours, np.uint8)[CLASSES]
    np.testing.assert_array_equal(builders.mask_to_classes(rgb, "m", 3, values=colours)[0], CLASSES)


@pytest.mark.parametrize("mask,kwargs,match", [
    (np.asarray([(0, 0, 0), (255, 0, 0)], np.uint8)[CLASSES % 2], {}, r"^rgb.png: an RGB mask with differing channels"),
    (np.array([0, 128, 200], np.uint8)[CLASSES], {"values": (0, 128, 255)}, r"^v.png: mask values \[\[200\]\] are not in"),
    (CLASSES * 2, {}, r"^c.png: mask values 0..4 outside the class range 0..2"),
    (CLASSES, {"kind": "blobs"}, r"mask_kind must be one of"),
])
def test_masks_that_fit_no_reading_name_the_file_and_the_values(mask, kwargs, match):
    name = match.strip("^").split(":")[0] if ":" in match else "m.png"
    with pytest.raises(ValueError, match=match):
        builders.mask_to_classes(mask, name, 3, **kwargs)


def test_image_folder_pairs_by_stem_with_a_mask_suffix_and_mixes_sizes(tmp_path):
    """NAME.tif with NAME_mask.png next to it; two image sizes; 3 classes from grey values."""
    root = tmp_path / "own"
    (root / "images").mkdir(parents=True)
    for name, shape in (("a", (20, 24)), ("b", (33, 17))):
        img = RNG.integers(0, 4000, shape, dtype=np.uint16)
        tifffile.imwrite(root / "images" / f"{name}.tif", img, compression="lzw")
        Image.fromarray(np.array([0, 128, 255], np.uint8)[RNG.integers(0, 3, shape)]).save(
            root / "images" / f"{name}_mask.png")
    ds = builders.load("image_folder", tmp_path / "tfds", str(root), num_classes=3, mask_suffix="_mask",
                       mask_values=(0, 128, 255))["train"]
    assert sorted(ds[i]["image"].shape for i in range(len(ds))) == [(20, 24, 1), (33, 17, 1)]
    assert {int(v) for i in range(len(ds)) for v in np.unique(ds[i]["labels"])} == {0, 1, 2}
