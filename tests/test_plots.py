"""Every figure function writes a PNG from plain arrays (Agg backend, no display)."""
import numpy as np

from unet_jax import plots

PNG = b"\x89PNG\r\n\x1a\n"


def test_every_figure_is_a_png(tmp_path):
    rng = np.random.default_rng(0)
    image, labels = rng.random((32, 32)), (rng.random((32, 32)) > 0.5).astype(np.uint8)
    digits = rng.random((40, 28, 28, 1))
    truth, preds = rng.integers(0, 10, 40), rng.integers(0, 10, 40)
    plots.weight_map_figure(image, labels, rng.random((32, 32)), tmp_path / "a.png", "title")
    plots.prediction_overlays([(image[..., None], labels, rng.random((32, 32)))], tmp_path / "b.png")
    plots.training_curves([{"step": 1, "train_loss": 1.0}, {"step": 2, "train_loss": 0.5, "val_dice": 0.9}],
                          tmp_path / "c.png")
    plots.digit_predictions(digits, truth, preds, tmp_path / "d.png")
    plots.confusion_matrix(np.eye(10, dtype=int) * 5, tmp_path / "e.png")
    plots.image_rows([("original", digits[:5]), ("reconstruction", digits[5:10])], tmp_path / "f.png")
    plots.latent_scatter(rng.standard_normal((40, 5)), truth, "latents", tmp_path / "g.png")
    plots.image_grid(digits[:16], 4, tmp_path / "h.png")
    for name in "abcdefgh":
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG, name
