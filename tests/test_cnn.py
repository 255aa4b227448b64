"""The digit CNN and the MNIST IDX reader."""
import gzip

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax import cnn
from unet_jax.data import mnist


def _write_idx(path, magic, arr, truncate=0):
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(data[: len(data) - truncate])


def test_read_idx_roundtrip_against_struct_layout(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "a-images-idx3-ubyte", 2051, arr)
    np.testing.assert_array_equal(mnist.read_idx(tmp_path / "a-images-idx3-ubyte", 2051), arr)
    raw = (tmp_path / "a-images-idx3-ubyte").read_bytes()
    (tmp_path / "b.gz").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(mnist.read_idx(tmp_path / "b.gz"), arr)


@pytest.mark.parametrize("magic,truncate,match", [
    (0x12345678, 0, "bad IDX magic"),
    (2049, 0, "expected 0x00000803"),
    (2051, 7, "truncated"),
])
def test_read_idx_bad_files_name_the_file(tmp_path, magic, truncate, match):
    path = tmp_path / "bad-images-idx3-ubyte"
    _write_idx(path, magic, np.zeros((2, 28, 28)), truncate)
    with pytest.raises(ValueError, match=match) as info:
        mnist.read_idx(path, 2051)
    assert str(path) in str(info.value)


def test_shared_mnist_reads(mnist_dir):
    images, labels = mnist.load_idx_dir(mnist_dir)
    chex.assert_shape(images, (8000, 28, 28))
    chex.assert_shape(labels, (8000,))
    # Class frequencies of MNIST test digits are within 8-12 % each.
    freq = np.bincount(labels, minlength=10) / len(labels)
    assert freq.min() > 0.08 and freq.max() < 0.13


def test_cnn_shapes_and_dropout():
    model = cnn.DigitCNN(features=(4, 8), hidden=16)
    x = jnp.ones((3, 28, 28, 1))
    params = model.init(jax.random.key(0), x)["params"]
    out = jax.jit(lambda p, z: model.apply({"params": p}, z))(params, x)
    chex.assert_shape(out, (3, 10))
    a = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(1)})
    b = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)


def test_confusion_matrix_against_loop():
    rng = np.random.default_rng(1)
    t, p = rng.integers(0, 10, 200), rng.integers(0, 10, 200)
    cm = cnn.confusion_matrix(t, p)
    for i in range(10):
        for j in range(10):
            assert cm[i, j] == np.sum((t == i) & (p == j))


def test_mnist_bad_data_dir(tmp_path):
    with pytest.raises(ValueError, match="expected exactly one"):
        mnist.load_idx_dir(tmp_path)
