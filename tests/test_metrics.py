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


def _is_simple_brute_force(img, y, x):
    """Simple point by definition (Bertrand): in the 3x3 neighbourhood without the centre, one
    4-connected foreground component 4-adjacent to it and one 8-connected background one."""
    from scipy import ndimage
    patch = np.zeros((3, 3), bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            yy, xx = y + dy, x + dx
            patch[1 + dy, 1 + dx] = 0 <= yy < img.shape[0] and 0 <= xx < img.shape[1] and img[yy, xx]
    patch[1, 1] = False
    lab, _ = ndimage.label(patch, ndimage.generate_binary_structure(2, 1))
    fg = len({lab[0, 1], lab[1, 0], lab[1, 2], lab[2, 1]} - {0})
    bg = ~patch
    bg[1, 1] = False
    return fg == 1 and ndimage.label(bg, ndimage.generate_binary_structure(2, 2))[1] == 1


def _warp_brute_force(truth, target, order):
    """Every pass tests every mismatch, in ``order``, and flips it if it is simple at its turn."""
    warped = truth.copy()
    while True:
        ys, xs = np.nonzero(warped != target)
        idx = np.argsort(order[ys, xs], kind="stable")
        flipped = 0
        for y, x in zip(ys[idx], xs[idx]):
            if _is_simple_brute_force(warped, y, x):
                warped[y, x] = target[y, x]
                flipped += 1
        if not flipped:
            return warped


@pytest.mark.parametrize("seed", range(3))
def test_warp_to_equals_the_brute_force_warp(seed):
    rng = np.random.default_rng(seed)
    truth = _box((24, 30), (3, 12, 3, 14), (14, 22, 10, 27)) ^ (rng.random((24, 30)) < 0.05)
    target = rng.random((24, 30)) < 0.5 if seed == 0 else truth ^ (rng.random((24, 30)) < 0.2)
    order = rng.random((24, 30))
    want = _warp_brute_force(truth, target, order)
    np.testing.assert_array_equal(metrics.warp_to(truth, target, order), want)
    assert np.sum(want != target) > 0  # some mismatches cannot be flipped: the test has teeth


def test_rand_sweep_equals_skimage_at_every_threshold_with_few_and_many_labels():
    """One labelling per threshold and pair counts by bincount (or by the pairs that occur, when
    both sides have thousands of segments) give skimage's errors on the full label images."""
    rng = np.random.default_rng(3)
    truth = rng.random((120, 120)) < 0.55  # hundreds of small true segments
    prob = np.clip(0.6 * truth + rng.uniform(0, 0.5, truth.shape), 0, 1)
    thresholds = [0.05, 0.3, 0.55, 0.8, 0.95]
    got = metrics.rand_sweep(prob, truth, thresholds, thin=True)
    true_seg = metrics.segments(truth)
    # both ways of counting pairs run: a dense table where it is small, the pairs that occur
    # where (predicted labels x true labels) exceeds 8 x foreground pixels + 65536
    n_fg = int(truth.sum())
    sizes = [(len(np.unique(metrics.segments(prob > t)[truth])) + 1) * (true_seg.max() + 1) for t in thresholds]
    assert min(sizes) <= 8 * n_fg + 65536 < max(sizes)
    for k, t in enumerate(thresholds):
        pred = metrics.segments(prob > t)
        thin = metrics.thin_boundaries(prob, pred)
        singles = lambda seg: np.where(seg == 0, seg.max() + 1 + np.arange(seg.size).reshape(seg.shape), seg)  # noqa: E731
        assert got["segment"][k] == pytest.approx(sk_adapted_rand(true_seg, pred)[0], rel=1e-12, abs=1e-15)
        assert got["singletons"][k] == pytest.approx(sk_adapted_rand(true_seg, singles(pred))[0], rel=1e-12, abs=1e-15)
        assert got["thinned"][k] == pytest.approx(sk_adapted_rand(true_seg, singles(thin))[0], rel=1e-12, abs=1e-15)
    assert len(set(np.round(got["singletons"], 6))) == len(thresholds)  # the thresholds differ


def test_pixel_errors_at_every_threshold_equal_the_loop():
    rng = np.random.default_rng(4)
    truth = rng.random((30, 40)) < 0.4
    prob = np.round(rng.random((30, 40)), 2).astype(np.float32)  # values on the thresholds too
    want = [np.mean((prob.astype(np.float64) > t) != truth) for t in metrics.THRESHOLDS]
    np.testing.assert_array_equal(metrics.pixel_errors(prob, truth, metrics.THRESHOLDS), want)


@pytest.mark.parametrize("seed", range(4))
def test_rand_error_equals_skimage(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, (40, 50))
    b = rng.integers(0, 9, (40, 50))
    err, p, r = metrics.adapted_rand_error(a, b)
    sk_err, sk_p, sk_r = sk_adapted_rand(a, b)
    assert err == pytest.approx(sk_err, abs=1e-12)
    assert {round(p, 12), round(r, 12)} == {round(sk_p, 12), round(sk_r, 12)}


def test_rand_precision_and_recall_are_not_swapped():
    """A true segment of 4 pixels predicted as 2 + 2 (a split): every pair predicted together is
    together in the truth (precision 1), a third of the true pairs are found (recall 1/3)."""
    truth = np.array([[1, 1, 1, 1]])
    pred = np.array([[1, 1, 2, 2]])
    err, precision, recall = metrics.adapted_rand_error(truth, pred)
    assert (err, precision, recall) == pytest.approx((0.5, 1.0, 1 / 3))
    sk_err, sk_p, sk_r = sk_adapted_rand(truth, pred)  # skimage names them the other way round
    assert (err, precision, recall) == pytest.approx((sk_err, sk_r, sk_p))


@pytest.mark.parametrize("background", ["singletons", "segment"])
def test_rand_error_over_thresholds_matches_skimage_on_components(background):
    rng = np.random.default_rng(1)
    truth = _box((40, 40), (2, 15, 2, 15), (20, 38, 5, 30))
    prob = np.clip(truth * 0.8 + rng.normal(0, 0.25, truth.shape), 0, 1)
    err, t = metrics.rand_error(prob, truth, background=background)

    def sk(threshold):  # skimage on the label images: truth's components, the prediction's
        pred = metrics.segments(prob > threshold)  # components, its background as singletons
        if background == "singletons":  # (relabelled here independently of the library)
            pred = pred.copy()
            pred[pred == 0] = np.arange(1, np.sum(pred == 0) + 1) + pred.max()
        return sk_adapted_rand(metrics.segments(truth), pred)[0]

    assert err == pytest.approx(sk(t))
    for other in (0.2, 0.5, 0.8):
        assert err <= sk(other) + 1e-12


def _snemi3d_rand_error(true_seg, pred_seg):
    """The SNEMI3D / ISBI 2012 scoring formula (Arganda-Carreras et al.), written out from its
    definition: with n_ij the pixel counts of true segment i >= 1 and predicted segment j, the
    predicted background (j = 0) adds only c_i / n single-pixel terms to both sums."""
    n = true_seg.size
    table = np.zeros((true_seg.max() + 1, pred_seg.max() + 1))
    np.add.at(table, (true_seg.ravel(), pred_seg.ravel()), 1)
    fg = table[1:]
    sum_a = np.sum(fg.sum(1) ** 2)
    c = fg[:, 0].sum()
    sum_b = np.sum(fg[:, 1:].sum(0) ** 2) + c / n
    sum_ab = np.sum(fg[:, 1:] ** 2) + c / n
    p, r = sum_ab / sum_b, sum_ab / sum_a
    return 1 - 2 * p * r / (p + r)


def _cells_with_thick_borders(rng, size=192, cells=30, border=2):
    """Voronoi cells (truth: 1-pixel borders) and a prediction with thicker, wobbly borders."""
    seeds = rng.uniform(0, size, (cells, 2))
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(yy[..., None] - seeds[:, 0], xx[..., None] - seeds[:, 1])
    d.sort(-1)
    gap = d[..., 1] - d[..., 0]
    truth = gap > 1.0
    pred = gap > border + rng.uniform(-1, 1, gap.shape)
    return truth, pred


@pytest.mark.parametrize("seed", range(3))
def test_singleton_background_is_the_isbi_snemi3d_score(seed):
    truth, pred = _cells_with_thick_borders(np.random.default_rng(seed))
    true_seg = metrics.segments(truth)
    ours = metrics.rand_error(pred.astype(float), truth)[0]
    ref = _snemi3d_rand_error(true_seg, metrics.segments(pred))
    # the formulas differ only in counting each pixel's pair with itself (2e-5 apart here)
    assert ours == pytest.approx(ref, abs=2e-4)
    # counting all predicted border pixels as one segment is far from the challenge's score
    assert metrics.rand_error(pred.astype(float), truth, background="segment")[0] > ref + 0.05


def test_rand_error_sweeps_thresholds_in_steps_of_001():
    # two cells (probability 0.53) split by a 1-pixel border (0.51): only thresholds in
    # [0.51, 0.53) separate them, which the 0.05 grid steps over (0.50 merges, 0.55 erases)
    truth = np.zeros((20, 21), bool)
    truth[2:18, 2:10] = truth[2:18, 11:19] = True
    prob = np.where(truth, 0.53, 0.0)
    prob[2:18, 10] = 0.51
    err, t = metrics.rand_error(prob, truth)
    assert err == pytest.approx(0.0, abs=1e-12) and t in (0.51, 0.52)
    assert metrics.rand_error(prob, truth, metrics.COARSE_THRESHOLDS)[0] > 0.3
    assert len(metrics.THRESHOLDS) == 99 and 0.5 in metrics.THRESHOLDS


def test_border_thinning_puts_thin_lines_where_thick_predicted_borders_were():
    # two cells separated by a 1-pixel true border (column 20); the prediction has a 7-pixel
    # border (columns 17-23) whose probability dips symmetrically around column 20
    truth = np.ones((30, 41), bool)
    truth[:, 20] = False
    x = np.arange(41)
    prob = np.tile(np.clip(np.abs(x - 20) / 4.0, 0, 1), (30, 1))
    thick = metrics.rand_error(prob, truth, thresholds=[0.9])[0]
    assert thick > 0.1  # the 6 extra border columns are singletons inside the true cells
    assert metrics.rand_error(prob, truth, thresholds=[0.9], thin=True)[0] == pytest.approx(0.0, abs=1e-12)
    seeds = metrics.segments(prob > 0.9)
    lab = metrics.thin_boundaries(prob, seeds)
    np.testing.assert_array_equal(lab == 0, ~truth)  # the line lies on the ridge, 1 pixel wide
    assert set(np.unique(lab)) == {0, 1, 2}


def test_border_thinning_neither_adds_removes_nor_merges_segments():
    truth, pred = _cells_with_thick_borders(np.random.default_rng(5))
    rng = np.random.default_rng(6)
    prob = np.clip(pred * 0.7 + rng.uniform(0, 0.3, pred.shape), 0, 1)
    seeds = metrics.segments(prob > 0.5)
    lab = metrics.thin_boundaries(prob, seeds)
    assert np.all(lab[seeds > 0] == seeds[seeds > 0])  # seeds keep their labels
    assert set(np.unique(lab)) - {0} == set(np.unique(seeds)) - {0}
    # every remaining border pixel separates two segments: it touches (8-neighbourhood) 2 labels
    pad = np.pad(lab, 1)
    ys, xs = np.nonzero(lab == 0)
    for y, x in zip(ys[::97], xs[::97]):
        window = pad[y:y + 3, x:x + 3]
        assert len(set(window[window > 0].tolist())) >= 2, (y, x)
    assert np.mean(lab == 0) < np.mean(seeds == 0)
    # and thinning can only lower the Rand error of thick borders here
    assert (metrics.rand_error(prob, truth, thin=True)[0] < metrics.rand_error(prob, truth)[0])


def test_with_singletons_and_bad_background_name():
    seg = np.array([[0, 2, 2], [0, 0, 1]])
    out = metrics.with_singletons(seg)
    assert out[seg > 0].tolist() == [2, 2, 1] and sorted(out[seg == 0].tolist()) == [3, 4, 5]
    assert seg[0, 0] == 0  # the input is not changed
    with pytest.raises(ValueError, match="background must be"):
        metrics.rand_error(seg > 0, seg > 0, background="ignore")


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
    assert got["ap@0.5"] == pytest.approx(tp / (tp + fp + fn))
    pair_ious = [np.sum((t == i) & (p == j)) / np.sum((t == i) | (p == j))
                 for i in range(1, t.max() + 1) for j in range(1, p.max() + 1) if np.any((t == i) & (p == j))]
    matched = sum(v for v in pair_ious if v > 0.5)
    assert got["pq"] == pytest.approx(matched / (tp + fp / 2 + fn / 2))


def test_bad_input():
    with pytest.raises(ValueError, match="prediction shape"):
        metrics.pixel_error(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="threshold must be >= 0.5"):
        metrics.match_counts(np.zeros((1, 1)), 0.3)
