"""MNIST: the standard IDX files (LeCun et al.), gzipped or not, and TFDS when it can download.

IDX layout: a big-endian magic number 0x00000803 (images, 3 dims) or 0x00000801 (labels,
1 dim), the dimension sizes as big-endian uint32, then the uint8 data.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Reads one IDX file (``.gz`` or raw) into a uint8 array.

    Raises:
      ValueError: naming the file, for a bad magic number or a truncated file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read IDX file ({e})") from None
    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(data)} bytes, expected a 4-byte magic)")
    magic = int.from_bytes(data[:4], "big")
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise ValueError(f"{path}: bad IDX magic number {magic:#010x}, expected 0x0000080N (uint8)")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{path}: IDX magic number {magic:#010x}, expected {expected_magic:#010x}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape))
    if len(data) - header != size:
        raise ValueError(f"{path}: truncated IDX file: {len(data) - header} data bytes, "
                         f"expected {size} for shape {shape}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def find_idx_pair(data_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Finds ``*images-idx3-ubyte[.gz]`` and ``*labels-idx1-ubyte[.gz]`` in ``data_dir``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data_dir {data_dir} is not a directory of MNIST IDX files")
    images = sorted(data_dir.glob("*images-idx3-ubyte*")) + sorted(data_dir.glob("*images.idx3-ubyte*"))
    labels = sorted(data_dir.glob("*labels-idx1-ubyte*")) + sorted(data_dir.glob("*labels.idx1-ubyte*"))
    if len(images) != 1 or len(labels) != 1:
        raise ValueError(f"data_dir {data_dir}: expected exactly one '*images-idx3-ubyte[.gz]' and one "
                         f"'*labels-idx1-ubyte[.gz]' file, found {[p.name for p in images + labels]}")
    return images[0], labels[0]


def load_idx_dir(data_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 28, 28]`` uint8 and labels ``[N]`` from a folder of IDX files."""
    ipath, lpath = find_idx_pair(data_dir)
    images = read_idx(ipath, IMAGES_MAGIC)
    labels = read_idx(lpath, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{ipath} has {images.shape[0]} images but {lpath} has "
                         f"{labels.shape[0]} labels")
    if labels.max(initial=0) > 9:
        raise ValueError(f"{lpath}: labels must be digits 0-9, found {labels.max()}")
    return images, labels


def load_tfds(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST through ``tfds.data_source`` (needs the internet the first time)."""
    try:
        import tensorflow_datasets as tfds

        source = tfds.data_source("mnist", split=split)
        images = np.stack([np.asarray(ex["image"])[..., 0] for ex in source])
        labels = np.asarray([ex["label"] for ex in source], np.uint8)
    except Exception as e:  # noqa: BLE001 - any failure means: no usable TFDS copy
        raise ValueError(f"MNIST could not be loaded through TFDS ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); offline, pass "
                         f"--config.data_dir=DIR holding the IDX files") from None
    return images, labels


def load_mnist(data_dir: str | None, num_train: int = 7000, num_test: int = 1000):
    """Returns ``((x_train, y_train), (x_test, y_test))``, images float32 in [0, 1], [N, 28, 28, 1].

    With ``data_dir`` the IDX files there are split: the first ``num_train`` digits for
    training, the next ``num_test`` held out. Without it, TFDS's train and test splits
    (truncated to the same sizes when they are given as > 0).
    """
    if data_dir:
        images, labels = load_idx_dir(data_dir)
        if num_train + num_test > images.shape[0]:
            raise ValueError(f"data_dir {data_dir} holds {images.shape[0]} digits, fewer than "
                             f"num_train + num_test = {num_train + num_test}")
        train = images[:num_train], labels[:num_train]
        test = images[num_train:num_train + num_test], labels[num_train:num_train + num_test]
    else:
        train = load_tfds("train")
        test = load_tfds("test")
        if num_train > 0:
            train = train[0][:num_train], train[1][:num_train]
        if num_test > 0:
            test = test[0][:num_test], test[1][:num_test]
    norm = lambda x: (x.astype(np.float32) / 255.0)[..., None]
    return (norm(train[0]), train[1].astype(np.int32)), (norm(test[0]), test[1].astype(np.int32))
