"""Instances from probabilities: touching objects split, small ones dropped, against geometry
and a brute-force relabelling."""
import numpy as np
import pytest

from unet_jax import instances, metrics

YY, XX = np.mgrid[:40, :64]
LEFT = (YY - 20) ** 2 + (XX - 20) ** 2 <= 12 ** 2
RIGHT = (YY - 20) ** 2 + (XX - 42) ** 2 <= 12 ** 2  # overlaps LEFT: one blob with a neck


def _each_disc_found(labels):
    ids = [i for i in np.unique(labels) if i]
    best = [max(np.sum((labels == i) & d) / np.sum((labels == i) | d) for i in ids) for d in (LEFT, RIGHT)]
    return len(ids), min(best)


def test_watershed_splits_two_touching_discs_into_exactly_two():
    prob = (LEFT | RIGHT).astype(np.float64)
    assert _each_disc_found(instances.components(prob > 0.5))[0] == 1  # merged
    n, iou = _each_disc_found(instances.watershed(prob))
    assert n == 2 and iou > 0.9
    soft = np.clip(prob - 0.3 * (LEFT & RIGHT), 0, 1)  # a lower probability along the contact
    n, iou = _each_disc_found(instances.from_probs(np.stack([1 - soft, soft], -1), "watershed"))
    assert n == 2 and iou > 0.9


def test_interior_mode_grows_interior_seeds_over_the_border_class():
    """3 classes: interior (eroded discs) and border; the border ring joins its own disc."""
    from scipy import ndimage

    interior = ndimage.binary_erosion(LEFT, iterations=3) | ndimage.binary_erosion(RIGHT, iterations=3)
    interior &= ~ndimage.binary_dilation(LEFT & RIGHT, iterations=3)
    border = (LEFT | RIGHT) & ~interior
    probs = np.stack([~(LEFT | RIGHT), interior, border], -1).astype(np.float64)
    n, iou = _each_disc_found(instances.from_probs(probs, "interior"))
    assert n == 2 and iou > 0.85
    with pytest.raises(ValueError, match="needs 3 classes"):
        instances.from_probs(probs[..., :2], "interior")


def test_interior_seed_and_foreground_thresholds():
    """Two interior peaks (0.9) joined by a saddle of 0.65: seeds above 0.6 merge them into one
    object, above 0.7 split them into two. The foreground threshold sets the outline: each
    object then covers exactly the pixels whose foreground probability exceeds it (brute-force
    count), so a higher threshold gives tighter objects."""
    d_left = np.hypot(YY - 20, XX - 20)
    d_right = np.hypot(YY - 20, XX - 42)
    near = np.minimum(d_left, d_right)
    fg = np.clip(1.0 - near / 16.0, 0.0, 1.0)  # 1 at the centres, 0.5 at radius 8
    interior = np.where(near < 6, 0.9, 0.0)
    interior[(np.abs(YY - 20) <= 2) & (XX > 20) & (XX < 42) & (near >= 6)] = 0.65  # the saddle
    fg = np.maximum(fg, interior)  # interior + border
    probs = np.stack([1 - fg, interior, fg - interior], -1)
    assert instances.from_probs(probs, "interior", threshold=0.5, seed_threshold=0.6).max() == 1
    for t in (0.5, 0.7):
        labels = instances.from_probs(probs, "interior", threshold=t, seed_threshold=0.7)
        assert labels.max() == 2
        assert np.sum(labels > 0) == np.sum(fg > t)
        assert set(np.unique(labels[(YY == 20) & (XX == 20)])) == {labels[20, 20]} != {labels[20, 42]}
    assert np.sum(instances.from_probs(probs, "interior", threshold=0.7) > 0) < np.sum(fg > 0.5)
    with pytest.raises(ValueError, match="seed_threshold must be in"):
        instances.from_probs(probs, "interior", seed_threshold=1.5)


def test_min_seed_size_drops_specks_of_interior():
    """A large disc whose interior has a 4-pixel speck apart from its main seed: kept, the speck
    splits the disc in two; dropped, the result equals the same image with the speck erased
    from the interior (one object). A small disc seeded only by such a speck becomes background."""
    from scipy import ndimage

    disc = (YY - 20) ** 2 + (XX - 24) ** 2 <= 15 ** 2
    small = (YY - 20) ** 2 + (XX - 54) ** 2 <= 4 ** 2
    interior = ((YY - 20) ** 2 + (XX - 20) ** 2 <= 7 ** 2).astype(np.float64)
    speck = (YY >= 19) & (YY <= 20) & (XX >= 33) & (XX <= 34)
    interior[speck] = 0.9
    interior[(YY >= 20) & (YY <= 21) & (XX >= 54) & (XX <= 55)] = 0.9
    fg = (disc | small).astype(np.float64)
    probs = np.stack([1 - fg, interior, fg - interior], -1)
    kept = instances.from_probs(probs, "interior", seed_threshold=0.7)
    assert kept.max() == 3 and len(np.unique(kept[disc])) == 2
    dropped = instances.from_probs(probs, "interior", seed_threshold=0.7, min_seed_size=5)
    erased = interior.copy()
    erased[speck | small] = 0.0
    ref = instances.from_interior(erased, fg, 0.5, seed_threshold=0.7)
    np.testing.assert_array_equal(dropped, ref)
    assert dropped.max() == 1 and np.all(dropped[disc] == 1) and not dropped[small].any()
    assert ndimage.label(dropped)[1] == 1
    with pytest.raises(ValueError, match="min_seed_size must be >= 0"):
        instances.from_probs(probs, "interior", min_seed_size=-1)


def test_min_size_and_relabel_against_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 9, (30, 30)) * (rng.uniform(size=(30, 30)) < 0.5)
    got = instances.relabel(labels, min_size=50)
    kept = [i for i in range(1, 9) if np.sum(labels == i) >= 50]
    ref = np.zeros_like(labels)
    for new, old in enumerate(kept, start=1):
        ref[labels == old] = new
    np.testing.assert_array_equal(got, ref)
    assert instances.components(np.pad(LEFT, 2), min_size=LEFT.sum() + 1).max() == 0


def test_perfect_instances_score_one():
    truth = metrics.segments(LEFT) + 2 * metrics.segments(RIGHT & ~LEFT)
    truth = instances.relabel(truth)
    got = metrics.instance_metrics(truth, truth)
    assert got["dsb_map"] == 1.0 and got["pq"] == 1.0 and got["ap@0.5"] == 1.0
