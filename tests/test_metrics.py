"""Metrics against hand-made cases, skimage and brute force."""

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error as sk_adapted_rand

from unet_jax import metrics


def _box(shape, *boxes):
    m = np.zeros(shape, bool)
    for y0, y1, x0, x1 in boxes:
        m[y0:y1, x0:x1] = True
    return m


def test_identical_inputs_give_zero_errors():
    truth = _box((30, 30), (3, 12, 3, 12), (15, 27, 14, 25))
    assert metrics.pixel_error(truth, truth) == 0
    assert metrics.rand_error(truth.astype(float), truth)[0] == 0
    w = metrics.warping_error(truth.astype(float), truth)
    assert w["error"] == 0 and w["pixel_mismatches"] == 0
    assert metrics.instance_metrics(metrics.segments(truth), metrics.segments(truth))["dsb_map"] == 1.0


def test_one_pixel_boundary_shift_is_no_warping_error():
    truth = _box((30, 30), (5, 20, 5, 20))
    pred = _box((30, 30), (6, 21, 5, 20))  # shifted down by one pixel
    assert metrics.pixel_error(pred, truth) > 0
    w = metrics.warping_error(pred.astype(float), truth)
    assert w["error"] == 0 and w["pixel_mismatches"] == 0


def test_split_merge_and_hole_are_counted():
    shape = (30, 40)
    one = _box(shape, (5, 25, 5, 35))
    two = _box(shape, (5, 25, 5, 19), (5, 25, 20, 35))  # the same with a 1-pixel cut
    split = metrics.warping_error(two.astype(float), one)
    assert split["splits"] == 1 and split["error"] > 0 and split["mergers"] == 0
    merge = metrics.warping_error(one.astype(float), two)
    assert merge["mergers"] == 1 and merge["error"] > 0 and merge["splits"] == 0
    holed = one.copy()
    holed[14:17, 18:21] = False
    hole = metrics.warping_error(holed.astype(float), one)
    assert hole["holes_added"] == 1 and hole["error"] > 0
    extra = one | _box(shape, (27, 29, 37, 39))
    added = metrics.warping_error(extra.astype(float), one)
    assert added["objects_added"] == 1
    removed = metrics.warping_error(one.astype(float), extra)
    assert removed["objects_removed"] == 1


def test_warping_keeps_topology():
    rng = np.random.default_rng(0)
    truth = _box((40, 40), (5, 18, 5, 18), (22, 35, 20, 36))
    pred = truth ^ (rng.random((40, 40)) < 0.08)
    warped = metrics.warp_to(truth, pred)
    from scipy import ndimage
    four = ndimage.generate_binary_structure(2, 1)
    eight = ndimage.generate_binary_structure(2, 2)
    assert ndimage.label(warped, four)[1] == ndimage.label(truth, four)[1]
    assert ndimage.label(~warped, eight)[1] == ndimage.label(~truth, eight)[1]
    assert np.sum(warped != pred) < np.sum(truth != pred)


@pytest.mark.parametrize("seed", range(4))
def test_rand_error_equals_skimage(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, (40, 50))
    b = rng.integers(0, 9, (40, 50))
    err, p, r = metrics.adapted_rand_error(a, b)
    sk_err, sk_p, sk_r = sk_adapted_rand(a, b)
    assert err == pytest.approx(sk_err, abs=1e-12)
    assert {round(p, 12), round(r, 12)} == {round(sk_p, 12), round(sk_r, 12)}


def test_rand_error_over_thresholds_matches_skimage_on_components():
    rng = np.random.default_rng(1)
    truth = _box((40, 40), (2, 15, 2, 15), (20, 38, 5, 30))
    prob = np.clip(truth * 0.8 + rng.normal(0, 0.25, truth.shape), 0, 1)
    err, t = metrics.rand_error(prob, truth)
    ref = sk_adapted_rand(metrics.segments(truth), metrics.segments(prob > t))[0]
    assert err == pytest.approx(ref)
    for other in (0.2, 0.5, 0.8):
        assert err <= sk_adapted_rand(metrics.segments(truth), metrics.segments(prob > other))[0] + 1e-12


def test_dice_iou_and_empty_masks():
    a = np.array([[0, 1, 1], [0, 1, 2]])
    b = np.array([[0, 1, 0], [1, 1, 2]])
    dice, iou = metrics.dice_iou(a, b, 4)
    assert dice[1] == pytest.approx(2 * 2 / (3 + 3)) and iou[1] == pytest.approx(2 / 4)
    assert dice[3] == 1.0 and iou[3] == 1.0  # class 3 absent from both: defined as 1


def _brute_matches(t, p, thr):
    tp = 0
    for i in range(1, t.max() + 1):
        for j in range(1, p.max() + 1):
            inter = np.sum((t == i) & (p == j))
            union = np.sum((t == i) | (p == j))
            tp += union > 0 and inter / union > thr
    return tp, p.max() - tp, t.max() - tp


@pytest.mark.parametrize("seed", range(3))
def test_instance_metrics_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    t = np.zeros((40, 40), int)
    p = np.zeros((40, 40), int)
    for i in range(1, 7):
        y, x = rng.integers(0, 32, 2)
        t[y:y + 7, x:x + 7] = i
        dy, dx = rng.integers(-2, 3, 2)
        p[max(y + dy, 0):y + dy + 7, max(x + dx, 0):x + dx + 7] = i
    p[35:39, 35:39] = 7  # a false positive
    t = np.unique(t, return_inverse=True)[1].reshape(t.shape)
    p = np.unique(p, return_inverse=True)[1].reshape(p.shape)
    got = metrics.instance_metrics(t, p)
    scores = []
    for thr in np.arange(0.5, 1.0, 0.05):
        tp, fp, fn = _brute_matches(t, p, thr)
        scores.append(tp / (tp + fp + fn))
    assert got["dsb_map"] == pytest.approx(np.mean(scores))
    tp, fp, fn = _brute_matches(t, p, 0.5)
    assert got["precision@0.5"] == pytest.approx(tp / (tp + fp))
    assert got["recall@0.5"] == pytest.approx(tp / (tp + fn))


def test_bad_input():
    with pytest.raises(ValueError, match="prediction shape"):
        metrics.pixel_error(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="threshold must be >= 0.5"):
        metrics.match_counts(np.zeros((1, 1)), 0.3)
