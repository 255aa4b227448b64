"""Readers for images and masks on disk: everything Pillow and tifffile read (PNG, TIFF and
OME-TIFF incl. 16-bit, stacks and LZW / deflate / zstd compression through imagecodecs, JPEG,
GIF, BMP, WebP). No pickle.

Channel order: Pillow images are [H, W] or [H, W, C]. For a TIFF the axes tifffile reports
decide: ``C`` / ``S`` are channels and are moved last; ``Z`` / ``T`` / ``I`` make a stack. An
axis of unknown meaning (``Q``) of a 3-D TIFF is taken as channels when it has at most 4
entries and the other end has more (``[2, H, W]`` -> ``[H, W, 2]``); otherwise it is a stack.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
MAX_CHANNELS = 4  # an unnamed TIFF axis this short is a channel axis


def read_image(path: str | os.PathLike, indices: bool = False) -> np.ndarray:
    """Reads one image file: [H, W], [H, W, C] (channels last), or [N, H, W(, C)] for a TIFF
    stack. A palette image (PNG, GIF) gives its colours ([H, W] when they are greys), or with
    ``indices`` (masks) its palette indices.

    Raises:
      ValueError: naming the file when it is missing, empty or not a readable image.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file, expected an image")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            arr = _read_tiff(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                if im.mode in ("P", "PA") and not indices:
                    im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
                arr = np.asarray(im)
            if not indices and arr.ndim == 3 and arr.shape[-1] == 3 and equal_channels(arr):
                arr = arr[..., 0]  # a grey palette
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if arr.ndim < 2 or arr.size == 0:
        raise ValueError(f"{path}: expected a 2-D image, got shape {arr.shape}")
    return arr


def equal_channels(arr: np.ndarray) -> bool:
    """Whether every pixel of ``arr`` [..., C] has the same value in all C channels (grey
    stored as colour)."""
    return bool((np.ptp(arr, axis=-1) == 0).all())


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        arr, axes = series.asarray(), series.axes
    axes = axes[-arr.ndim:] if len(axes) >= arr.ndim else "Q" * (arr.ndim - len(axes)) + axes
    for c in ("C", "S"):
        if c in axes and axes.index(c) != arr.ndim - 1:
            i = axes.index(c)
            arr, axes = np.moveaxis(arr, i, -1), axes[:i] + axes[i + 1:] + c
    if arr.ndim == 3 and axes[0] == "Q" and arr.shape[0] <= MAX_CHANNELS < arr.shape[-1]:
        arr = np.moveaxis(arr, 0, -1)
    return arr


def is_stack(arr: np.ndarray) -> bool:
    """Whether a :func:`read_image` array is a stack of images rather than one image."""
    return arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] > MAX_CHANNELS)


def to_grey_float(arr: np.ndarray) -> np.ndarray:
    """[H, W] or [H, W, C] of any integer or float type -> [H, W] float32 in [0, 1]."""
    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(-1) if arr.shape[-1] >= 3 else arr[..., 0]
    if np.issubdtype(arr.dtype, np.integer):
        return (arr / np.iinfo(arr.dtype).max).astype(np.float32) if arr.dtype != np.uint8 \
            else (arr / 255.0).astype(np.float32)
    return arr.astype(np.float32)


def read_isbi2012(data_dir: str | os.PathLike):
    """ISBI 2012 slices from ``images/NN.png`` + ``labels/NN.png`` or ``train-volume.tif`` +
    ``train-labels.tif``.

    Returns:
      images ``[N, H, W]`` float32 in [0, 1] and cell masks ``[N, H, W]`` uint8 (1 = cell
      interior, 0 = membrane; the files store 255 / 0).
    """
    data_dir = Path(data_dir)
    vol, lab = data_dir / "train-volume.tif", data_dir / "train-labels.tif"
    if vol.exists() and lab.exists():
        images, labels = read_image(vol), read_image(lab)
        if images.ndim == 2:
            images, labels = images[None], labels[None]
        names = [f"{vol.name}[{i}]" for i in range(len(images))]
    elif (data_dir / "images").is_dir() and (data_dir / "labels").is_dir():
        files = sorted(p for p in (data_dir / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{data_dir / 'images'}: no images found")
        images, labels, names = [], [], []
        for f in files:
            lf = next((data_dir / "labels" / (f.stem + s) for s in IMAGE_SUFFIXES
                       if (data_dir / "labels" / (f.stem + s)).exists()), None)
            if lf is None:
                raise ValueError(f"{f}: no label file {f.stem}.* in {data_dir / 'labels'}")
            img, lbl = read_image(f), read_image(lf)
            if img.shape[:2] != lbl.shape[:2]:
                raise ValueError(f"{lf}: label is {lbl.shape[0]}x{lbl.shape[1]}, "
                                 f"image {f.name} is {img.shape[0]}x{img.shape[1]}")
            images.append(img)
            labels.append(lbl)
            names.append(f.name)
        images, labels = np.stack(images), np.stack(labels)
    else:
        raise ValueError(f"{data_dir}: expected train-volume.tif + train-labels.tif or "
                         f"images/ + labels/ folders (ISBI 2012 layout)")
    images = np.stack([to_grey_float(i) for i in images])
    labels = np.asarray(labels)
    if labels.ndim == 4:
        labels = labels[..., 0]
    return images, (labels > labels.max() / 2).astype(np.uint8), names
