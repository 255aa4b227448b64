"""The lecture's handwritten-digit CNN.

conv block (32) -> 2x2 max-pool -> conv block (64) -> 2x2 max-pool -> dense 128 -> dense 10.
Trained by :mod:`unet_jax.mnist_train`.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from unet_jax import layers


class DigitCNN(nn.Module):
    """[B, 28, 28, 1] -> logits [B, num_classes]."""

    features: tuple[int, ...] = (32, 64)
    convs_per_block: int = 1
    hidden: int = 128
    num_classes: int = 10
    dropout: float = 0.25
    conv: Callable = lax.conv_general_dilated  # or a kernel from unet_jax.ops.conv_kernel

    @nn.compact
    def __call__(self, x, train: bool = False):
        for f in self.features:
            x = layers.ConvBlock(f, num_convs=self.convs_per_block, conv=self.conv)(x, train)
            x = layers.max_pool2(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy. logits [B, K], labels [B] int."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def loss_fn(model: DigitCNN):
    """``loss(params, batch, rng) -> (loss, metrics)`` of a training batch {'image': [B, 28, 28,
    1], 'label': [B]} with dropout keyed by ``rng``; metrics are batch means."""

    def loss(params, batch, rng):
        logits = model.apply({"params": params}, batch["image"], train=True, rngs={"dropout": rng})
        ce = cross_entropy(logits, batch["label"])
        return ce, {"loss": ce, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

    return loss


def confusion_matrix(labels, preds, num_classes: int = 10) -> np.ndarray:
    """[true, predicted] counts."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(preds)), 1)
    return cm
