"""Losses and the border weight map against numpy formulas and brute force."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from unet_jax import losses

RNG = np.random.default_rng(0)


def np_weighted_ce(logits, labels, weights):
    """E = -(1/N) sum_x w(x) log softmax(a(x))_{l(x)}, written out."""
    total = 0.0
    b, h, w, k = logits.shape
    for i, y, x in itertools.product(range(b), range(h), range(w)):
        a = logits[i, y, x].astype(np.float64)
        logp = a - np.log(np.sum(np.exp(a - a.max()))) - a.max()
        total += -weights[i, y, x] * logp[labels[i, y, x]]
    return total / (b * h * w)


def test_weighted_cross_entropy_matches_numpy():
    logits = RNG.normal(size=(2, 5, 6, 3)).astype(np.float32) * 3
    labels = RNG.integers(0, 3, size=(2, 5, 6))
    weights = RNG.uniform(0.5, 4, size=(2, 5, 6)).astype(np.float32)
    got = jax.jit(losses.weighted_cross_entropy)(logits, labels, weights)
    np.testing.assert_allclose(got, np_weighted_ce(logits, labels, weights), rtol=1e-5)
    ones = losses.weighted_cross_entropy(logits, labels)
    np.testing.assert_allclose(ones, np_weighted_ce(logits, labels, np.ones_like(weights)), rtol=1e-5)


def test_soft_dice_matches_numpy_and_empty_masks():
    logits = RNG.normal(size=(2, 4, 4, 3)).astype(np.float32)
    labels = RNG.integers(0, 2, size=(2, 4, 4))  # class 2 absent
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    y = np.eye(3)[labels]
    ref = [(2 * (p[..., c] * y[..., c]).sum() + 1) / (p[..., c].sum() + y[..., c].sum() + 1) for c in range(3)]
    np.testing.assert_allclose(losses.soft_dice(logits, labels), ref, rtol=1e-5)
    # A confident, correct prediction of an empty class scores ~1 instead of 0/0.
    sure = np.full((1, 4, 4, 2), -30.0, np.float32)
    sure[..., 0] = 30.0
    np.testing.assert_allclose(losses.soft_dice(sure, np.zeros((1, 4, 4), int)), [1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("fill", [0, 1])
def test_losses_and_gradients_finite_on_single_class_masks(fill):
    labels = np.full((2, 8, 8), fill)
    logits = RNG.normal(size=(2, 8, 8, 2)).astype(np.float32)
    w = losses.weight_map(labels[0])
    assert np.isfinite(w).all()
    for fn in (lambda z: losses.weighted_cross_entropy(z, labels, np.stack([w, w])),
               lambda z: losses.soft_dice_loss(z, labels),
               lambda z: losses.dice_ce_loss(z, labels)):
        value, grad = jax.value_and_grad(fn)(jnp.asarray(logits))
        assert np.isfinite(value) and np.isfinite(np.asarray(grad)).all()


def test_bad_input():
    logits = np.zeros((1, 4, 4, 2), np.float32)
    with pytest.raises(ValueError, match=r"label values must be in \[0, 1\]"):
        losses.weighted_cross_entropy(logits, np.full((1, 4, 4), 2))
    with pytest.raises(ValueError, match="weight map must have the labels' shape"):
        losses.weighted_cross_entropy(logits, np.zeros((1, 4, 4), int), np.ones((1, 4, 5)))
    with pytest.raises(ValueError, match="labels must have shape"):
        losses.weighted_cross_entropy(logits, np.zeros((1, 4, 5), int))
    with pytest.raises(ValueError, match="2-D label map"):
        losses.weight_map(np.zeros((1, 4, 4), int))


# ------------------------------------------------------------------ weight map
def brute_weight_map(instances, w0, sigma, wc, classes=None):
    """Per pixel: distances to every pixel of every cell, sorted per cell minima, eq. 2; w_c by
    ``classes`` (default: foreground / background) and the border term on class-0 pixels."""
    h, w = instances.shape
    ids = [i for i in np.unique(instances) if i > 0]
    out = np.zeros((h, w))
    coords = {i: np.argwhere(instances == i) for i in ids}
    classes = (instances > 0).astype(int) if classes is None else classes
    for y, x in itertools.product(range(h), range(w)):
        fg = int(classes[y, x])
        out[y, x] = wc[fg]
        if fg or len(ids) < 2:
            continue
        d = sorted(np.sqrt(((coords[i] - [y, x]) ** 2).sum(1)).min() for i in ids)
        out[y, x] += w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma ** 2))
    return out


def random_cells(shape, n, seed):
    rng = np.random.default_rng(seed)
    inst = np.zeros(shape, int)
    for i in range(1, n + 1):
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        r = rng.integers(2, 5)
        yy, xx = np.ogrid[: shape[0], : shape[1]]
        inst[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (inst == 0)] = i
    return inst


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weight_map_equals_brute_force(seed):
    inst = random_cells((20, 24), 5, seed)
    inst = np.unique(inst, return_inverse=True)[1].reshape(inst.shape)  # renumber 0..N
    wc = losses.class_balance_weights(inst > 0, 2)
    ref = brute_weight_map(inst, 10.0, 5.0, wc)
    np.testing.assert_allclose(losses.weight_map(inst, tol=0), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(losses.weight_map(inst), ref, atol=2e-6)  # truncated at 1e-6


def test_k_class_weight_map_equals_brute_force():
    """3 classes: w_c balances all three; touching objects of different classes are separated."""
    inst = random_cells((20, 24), 6, 3)
    inst = np.unique(inst, return_inverse=True)[1].reshape(inst.shape)
    classes = np.where(inst > 0, 1 + inst % 2, 0)  # odd objects class 2, even class 1
    wc = np.bincount(classes.ravel(), minlength=3)
    wc = classes.size / (3 * wc)
    ref = brute_weight_map(inst, 10.0, 5.0, wc, classes)
    got = losses.weight_map(inst, tol=0, classes=classes, num_classes=3)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    from unet_jax.data import builders  # instances from the classes alone: per-class components

    touching = np.zeros((8, 8), int)
    touching[1:4, 1:4], touching[1:4, 4:7], touching[5:7, 1:3] = 1, 2, 1
    assert ndimage.label(touching > 0)[1] == 2 and builders.class_components(touching).max() == 3


def test_weight_map_from_binary_mask_uses_connected_components():
    inst = random_cells((20, 24), 5, 3)
    comps = ndimage.label(inst > 0)[0]
    np.testing.assert_allclose(losses.weight_map(inst > 0, binary=True),
                               losses.weight_map(comps), atol=1e-6)


def test_weight_map_peaks_between_touching_cells_and_is_wc_far_away():
    inst = np.zeros((40, 60), int)
    inst[10:30, 5:20] = 1
    inst[10:30, 22:37] = 2  # 2-pixel gap between cells 1 and 2 (columns 20, 21)
    wc = losses.class_balance_weights(inst > 0, 2)
    w = losses.weight_map(inst, w0=10, sigma=5)
    gap = w[10:30, 20:22]
    # In the gap d1 + d2 = 1 + 2 (pixel centres): w = wc0 + 10 exp(-9/50).
    np.testing.assert_allclose(gap, wc[0] + 10 * np.exp(-9 / 50), rtol=1e-5)
    assert gap.min() > w[:, 40:].max() + 5
    np.testing.assert_allclose(w[:, 55:], wc[0], atol=1e-3)  # > 18 px from both cells
    np.testing.assert_allclose(w[inst > 0], wc[1])
    np.testing.assert_allclose(np.mean(wc[(inst > 0).astype(int)]), 1.0, rtol=1e-6)


def test_weight_map_figure_experiment(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "wm.png"
    proc = subprocess.run([sys.executable, "-m", "experiments.weight_map_figure", "--index", "3",
                           "--output", str(out)], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes()[:4] == b"\x89PNG"
