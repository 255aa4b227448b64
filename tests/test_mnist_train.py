"""The shared MNIST trainer: its (sum, count) step and evaluation against per-example numpy
means, and the digit CNN and autoencoder runs end to end."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from experiments.configs import autoencoder, cnn_mnist
from unet_jax import mnist_train
from unet_jax.data import mnist
from unet_jax.writers import read_jsonl


def _loss(params, batch, rng):
    """A linear model's squared error, with batch-mean metrics as the models' losses give."""
    del rng
    err = (batch["image"].reshape(len(batch["image"]), -1) @ params["w"] - batch["label"]) ** 2
    return jnp.mean(err), {"loss": jnp.mean(err), "max_part": jnp.mean(err > 1.0)}


def test_step_and_evaluation_give_exact_per_example_means():
    rng = np.random.default_rng(0)
    images = rng.random((23, 2, 2, 1)).astype(np.float32)  # batches of 10, 10 and 3
    labels = rng.random(23).astype(np.float32)
    w = rng.standard_normal(4).astype(np.float32)
    params = {"w": jnp.asarray(w)}
    err = (images.reshape(23, -1) @ w - labels) ** 2
    got = mnist_train.evaluate(_loss, params, images, jax.random.key(0), labels, batch_size=10)
    np.testing.assert_allclose(got["loss"], err.mean(), rtol=1e-6)  # not the mean of batch means
    np.testing.assert_allclose(got["max_part"], np.mean(err > 1.0), rtol=1e-6)
    # one step: the metrics are (sum, count) over the batch, computed before the update
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=optax.sgd(0.1))
    step = mnist_train.make_train_step(_loss)
    new, sums = step(state, {"image": images[:3], "label": labels[:3]}, jax.random.key(0))
    np.testing.assert_allclose(float(sums["loss"][0]), err[:3].sum(), rtol=1e-6)
    assert float(sums["loss"][1]) == 3 and int(new.step) == 1
    grad = 2 * ((images[:3].reshape(3, -1) @ w - labels[:3])[:, None] * images[:3].reshape(3, -1)).mean(0)
    np.testing.assert_allclose(new.params["w"], w - 0.1 * grad, rtol=1e-5)  # state was donated


def test_cnn_experiment_end_to_end(mnist_dir, tmp_path):
    """A short run learns (far above the 10 % chance level) and writes its outputs."""
    config = cnn_mnist.get_config()
    config.data_dir = str(mnist_dir)
    config.num_train, config.num_test = 1000, 200
    config.features, config.hidden = (8, 16), 32
    config.epochs = 2
    summary = mnist_train.train_cnn(config, str(tmp_path))
    assert summary["test_accuracy"] > 0.6
    lines = read_jsonl(tmp_path / "metrics.jsonl")
    assert [l["epoch"] for l in lines] == [1, 2]
    assert json.loads((tmp_path / "summary.json").read_text())["test_accuracy"] == summary["test_accuracy"]
    for name in ("predictions.png", "confusion_matrix.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"



@pytest.mark.parametrize("model,figure,epochs", [("ae", "reconstructions.png", 10),
                                                 ("denoising", "denoising.png", 30)])
def test_autoencoder_experiment_writes_its_outputs(mnist_dir, tmp_path, model, figure, epochs):
    config = autoencoder.get_config(model)
    config.data_dir = str(mnist_dir)
    config.num_train, config.num_test, config.epochs, config.hidden = 512, 128, epochs, (64,)
    config.learning_rate, config.batch_size, config.noise_level = 3e-3, 32, 0.2
    s = mnist_train.train_autoencoder(config, str(tmp_path))
    (train, _), (test, _) = mnist.load_mnist(str(mnist_dir), 512, 128)
    mean_digit_mse = float(np.mean((test - train.mean(0)) ** 2))
    assert 0 < s["test_mse"] < mean_digit_mse and s["pca32_test_mse"] < mean_digit_mse
    for name in (figure, "latent_scatter.png", "summary.json", "metrics.jsonl", "comparison.md"):
        assert (tmp_path / name).exists(), name
    assert any((tmp_path / "checkpoints").iterdir())


def test_batches_cover_each_example_once_per_epoch_and_reshuffle():
    a = list(mnist_train.batch_indices(23, 5, seed=1, epoch=0))
    assert [len(b) for b in a] == [5, 5, 5, 5]  # the remainder of 3 is dropped
    assert len(set(np.concatenate(a))) == 20
    full = np.concatenate(list(mnist_train.batch_indices(23, 5, drop_remainder=False)))
    np.testing.assert_array_equal(full, np.arange(23))  # unshuffled without a seed
    b = np.concatenate(list(mnist_train.batch_indices(23, 5, seed=1, epoch=1)))
    assert not np.array_equal(np.concatenate(a), b)
