"""The lecture's handwritten-digit CNN and its training on MNIST.

conv block (32) -> 2x2 max-pool -> conv block (64) -> 2x2 max-pool -> dense 128 -> dense 10.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from unet_jax import layers, plots
from unet_jax.data import mnist
from unet_jax.writers import MetricWriter, batch_indices, write_json


class DigitCNN(nn.Module):
    """[B, 28, 28, 1] -> logits [B, num_classes]."""

    features: tuple[int, ...] = (32, 64)
    convs_per_block: int = 1
    hidden: int = 128
    num_classes: int = 10
    dropout: float = 0.25

    @nn.compact
    def __call__(self, x, train: bool = False):
        for f in self.features:
            x = layers.ConvBlock(f, num_convs=self.convs_per_block)(x, train)
            x = layers.max_pool2(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


def get_config() -> ml_collections.ConfigDict:
    """Default digit-CNN run: 7,000 training digits, 1,000 held out."""
    c = ml_collections.ConfigDict()
    c.data_dir = ""  # folder of MNIST IDX files; empty: TFDS (downloads once)
    c.num_train = 7000  # training digits (the first ones of data_dir)
    c.num_test = 1000  # held-out digits (the next ones)
    c.features = (32, 64)  # channels of the two conv blocks
    c.hidden = 128  # dense layer width
    c.dropout = 0.25  # dropout before the classifier
    c.batch_size = 64  # examples per step
    c.epochs = 8  # passes over the training digits
    c.learning_rate = 2e-3  # Adam peak learning rate (cosine decay to 0)
    c.seed = 0  # parameter init and shuffling
    return c


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy. logits [B, K], labels [B] int."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@functools.partial(jax.jit, donate_argnums=0)
def train_step(state: train_state.TrainState, batch: dict, rng):
    """One Adam step on a batch {'image': [B, 28, 28, 1], 'label': [B]}."""

    def loss_fn(params):
        logits = state.apply_fn({"params": params}, batch["image"], train=True, rngs={"dropout": rng})
        return cross_entropy(logits, batch["label"]), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return state.apply_gradients(grads=grads), {"loss": loss, "accuracy": acc}


@jax.jit
def predict(state: train_state.TrainState, images):
    """Logits [B, 10]."""
    return state.apply_fn({"params": state.params}, images, train=False)


def predict_all(state, images, batch_size: int = 500) -> np.ndarray:
    """Logits for every image, batch by batch (the last batch may be smaller)."""
    out = [np.asarray(predict(state, images[idx]))
           for idx in batch_indices(len(images), batch_size, drop_remainder=False)]
    return np.concatenate(out)


def confusion_matrix(labels, preds, num_classes: int = 10) -> np.ndarray:
    """[true, predicted] counts."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(preds)), 1)
    return cm


def save_figures(workdir: Path, images, labels, preds, cm) -> None:
    """PNGs of example predictions (errors first) and the confusion matrix."""
    plt = plots.pyplot()

    order = np.argsort(labels == preds, kind="stable")[:32]
    fig, axes = plt.subplots(4, 8, figsize=(10, 5.5))
    for ax, i in zip(axes.flat, order):
        ax.imshow(images[i, ..., 0], cmap="gray")
        ax.set_title(f"{preds[i]} (true {labels[i]})", fontsize=8,
                     color="black" if preds[i] == labels[i] else "red")
        ax.axis("off")
    fig.suptitle("Held-out digits: prediction (true label); mistakes first, in red")
    fig.tight_layout()
    fig.savefig(workdir / "predictions.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(cm, cmap="Blues")
    for (t, p), v in np.ndenumerate(cm):
        ax.text(p, t, str(v), ha="center", va="center", fontsize=7,
                color="white" if v > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_title("Confusion matrix (held-out digits)")
    fig.tight_layout()
    fig.savefig(workdir / "confusion_matrix.png", dpi=100)
    plt.close(fig)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains the digit CNN, writes metrics.jsonl, summary.json and PNGs to ``workdir``.

    Returns:
      the summary: held-out accuracy, wall time and the number of steps.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = mnist.load_mnist(
        config.data_dir or None, config.num_train, config.num_test)
    model = DigitCNN(features=tuple(config.features), hidden=config.hidden, dropout=config.dropout)
    rng = jax.random.key(config.seed, impl="rbg")  # compiles far faster than threefry on CPU
    params = model.init(rng, jnp.zeros((1, 28, 28, 1)))["params"]
    steps_per_epoch = len(x_train) // config.batch_size
    schedule = optax.cosine_decay_schedule(config.learning_rate, config.epochs * steps_per_epoch)
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(schedule))
    writer = MetricWriter(workdir)
    start = time.perf_counter()
    step = 0
    for epoch in range(config.epochs):
        sums = {"loss": 0.0, "accuracy": 0.0}
        for idx in batch_indices(len(x_train), config.batch_size, config.seed, epoch):
            step += 1
            batch = {"image": x_train[idx], "label": y_train[idx]}
            state, metrics = train_step(state, batch, jax.random.fold_in(rng, step))
            for k in sums:
                sums[k] += metrics[k]
        preds = predict_all(state, x_test).argmax(-1)
        test_acc = float(np.mean(preds == y_test))
        writer.write(step, {"train_loss": float(sums["loss"]) / steps_per_epoch,
                            "train_accuracy": float(sums["accuracy"]) / steps_per_epoch,
                            "test_accuracy": test_acc, "epoch": epoch + 1,
                            "elapsed_s": time.perf_counter() - start})
    wall = time.perf_counter() - start
    cm = confusion_matrix(y_test, preds)
    save_figures(workdir, x_test, y_test, preds, cm)
    summary = {"test_accuracy": test_acc, "wall_time_s": round(wall, 2), "steps": step,
               "num_train": len(x_train), "num_test": len(x_test)}
    write_json(workdir / "summary.json", summary)
    write_json(workdir / "config.json", config.to_dict())
    return summary
