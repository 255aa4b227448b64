"""TFDS builders (array_record files, read through ``tfds`` data sources; TensorFlow is NOT
needed to prepare or read them).

Every example holds:
  ``image``     [H, W, C] float32 in [0, 1]
  ``labels``    [H, W] uint8 class ids (0 = background)
  ``instances`` [H, W] int32 cell ids (0 = none; all zero where instances are unknown)
  ``weights``   [H, W] float32, the U-Net weight map (Ronneberger et al. 2015, eq. 2)
  ``name``      the source file or seed

Builders: ``synthetic_cells`` (embedded default), ``isbi2012``, ``nuclei_dsb``,
``image_folder``. Local folders are given as ``source_dir``. Every input file is read and
checked before anything is written, and a failed preparation removes its partial output,
so a rerun after fixing the file succeeds.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from scipy import ndimage

from unet_jax import losses
from unet_jax.data import readers, synthetic

BUILDERS = ("synthetic_cells", "isbi2012", "nuclei_dsb", "image_folder")


def _features(channels: int) -> tfds.features.FeaturesDict:
    t = tfds.features.Tensor
    return tfds.features.FeaturesDict({
        "image": t(shape=(None, None, channels), dtype=np.float32, encoding="zlib"),
        "labels": t(shape=(None, None), dtype=np.uint8, encoding="zlib"),
        "instances": t(shape=(None, None), dtype=np.int32, encoding="zlib"),
        "weights": t(shape=(None, None), dtype=np.float32, encoding="zlib"),
        "name": tfds.features.Text(),
    })


def make_example(image, labels, instances, name: str, config: "CellsConfig", known: bool = True):
    """Assembles one example; the weight map (``config``'s w0, sigma, class_balance) comes from
    the instances (or each class's connected components where instances are unknown). With
    ``config.targets == "interior_border"`` the labels are :func:`interior_border` of the
    instances (borders ``config.border_width`` pixels wide)."""
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = image[..., None]
    k = config.num_classes
    if known and config.targets == "interior_border":
        labels = interior_border(instances, config.border_width)
    inst = instances if known else class_components(labels)
    return {"image": image, "labels": labels.astype(np.uint8),
            "instances": (instances if known else np.zeros_like(labels)).astype(np.int32),
            "weights": losses.weight_map(inst, config.w0, config.sigma,
                                         class_weights=None if config.class_balance else np.ones(k),
                                         classes=labels if k > 2 else None, num_classes=k),
            "name": name}


def interior_border(instances: np.ndarray, width: int = 1) -> np.ndarray:
    """3-class targets of an instance map, as the 2018 Data Science Bowl winners trained: 0
    background, 2 the pixels of an object within ``width`` pixels (city-block) of the background
    or another object, counted from its inner border, 1 the rest of it (its interior). Touching
    objects then have separate interiors, ``2 * width`` pixels apart."""
    from skimage.segmentation import find_boundaries

    if int(width) != width or width < 1:
        raise ValueError(f"data.border_width must be a whole number >= 1, got {width!r}")
    inst = np.asarray(instances)
    border = find_boundaries(inst, mode="inner") & (inst > 0)
    if width > 1:  # every object pixel within width - 1 steps of an inner-border pixel
        near = ndimage.binary_dilation(border, iterations=int(width) - 1)
        border |= near & (inst > 0)
    out = (inst > 0).astype(np.uint8)
    out[border] = 2
    return out


def class_components(labels: np.ndarray) -> np.ndarray:
    """Instances where only classes are known: the connected components of each class > 0,
    numbered 1..N over all classes (two touching objects of different classes stay two)."""
    out, offset = np.zeros(labels.shape, np.int32), 0
    for c in np.unique(labels):
        if c == 0:
            continue
        comp, n = ndimage.label(labels == c)
        out[comp > 0] = comp[comp > 0] + offset
        offset += n
    return out


def normalise(arr: np.ndarray) -> np.ndarray:
    """Intensities to [0, 1], each channel on its own: uint8 -> /255; other types (16-bit
    microscopy, float) -> that channel's 1st / 99.8th percentiles to 0 / 1, clipped (as
    ``csbdeep.normalize(x, 1, 99.8)``), so that one bright channel does not dim the others.
    Training, evaluation and ``unet_predict`` all read images through it."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    a = arr.astype(np.float64)
    axes = (0, 1) if a.ndim == 3 else None
    lo, hi = np.percentile(a, 1, axis=axes), np.percentile(a, 99.8, axis=axes)
    return np.clip((a - lo) / np.maximum(hi - lo, 1e-12), 0, 1).astype(np.float32)


def _without_opaque_alpha(arr: np.ndarray) -> np.ndarray:
    """[..., 4] with a constant alpha -> its [..., 3] colours; anything else as it is."""
    if arr.ndim == 3 and arr.shape[-1] == 4 and np.ptp(arr[..., 3]) == 0:
        return arr[..., :3]
    return arr


def to_channels(arr: np.ndarray, channels: int, path, to_grey: bool = False) -> np.ndarray:
    """[H, W] or [H, W, C] -> [H, W, channels] without losing data: a grey image fills every
    channel of an RGB model; a constant (opaque) alpha channel is dropped; RGB whose channels are
    equal is grey. Colour becomes grey (the channels' mean) only with ``to_grey``.

    Raises:
      ValueError: naming ``path`` and both channel counts when the image does not fit.
    """
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected a 2-D image (optionally with channels), got shape {arr.shape}")
    if channels != 4:
        arr = _without_opaque_alpha(arr)
    c = arr.shape[-1]
    if c == channels:
        return arr
    if c == 1 and channels == 3:
        return np.repeat(arr, 3, -1)
    if c == 3 and channels == 1 and readers.equal_channels(arr):
        return arr[..., :1]  # grey stored as RGB
    if c == 3 and channels == 1 and to_grey:
        return arr.mean(-1, keepdims=True)
    hint = " or --config.data.to_grey=True" if c == 3 and channels == 1 else ""
    raise ValueError(f"{path}: the image has {c} channels, the model expects {channels} "
                     f"(set --config.model.in_channels={c}{hint})")


CONTRASTS = ("as_is", "bright_objects")


def bright_objects(image: np.ndarray) -> np.ndarray:
    """[H, W, C] in [0, 1] -> the same image with bright objects on a dark background: each
    channel stretched from its 1st to its 99.8th percentile, and the whole image inverted where
    its median lies in the upper half of that range (a bright background: brightfield, H&E).
    Fluorescence and stained nuclei then look alike to one model; the median separates the
    two kinds in DSB 2018 by a wide margin (fluorescence <= 0.08, brightfield >= 0.6)."""
    a = np.asarray(image, np.float32)
    lo = np.percentile(a, 1, axis=(0, 1))
    hi = np.percentile(a, 99.8, axis=(0, 1))
    a = np.clip((a - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
    return (1.0 - a if np.median(a.mean(-1)) > 0.5 else a).astype(np.float32)


def model_input(raw: np.ndarray, path, channels: int, to_grey: bool = False,
                contrast: str = "as_is") -> np.ndarray:
    """A read image as a model sees it: :func:`normalise`, :func:`to_channels`, then with
    ``contrast="bright_objects"`` :func:`bright_objects`. Training data and ``unet_predict``
    read images through it, so that both agree (the export refuses ``bright_objects``)."""
    if contrast not in CONTRASTS:
        raise ValueError(f"data.contrast must be one of {CONTRASTS}, got {contrast!r}")
    image = to_channels(normalise(raw), channels, path, to_grey)
    return bright_objects(image) if contrast == "bright_objects" else image


def held_out_splits(examples: list, held_out, source_dir) -> dict:
    """{"train": every example not named in ``held_out``} (plus ``"held_out"``: the named ones,
    in ``held_out``'s order) when names are given, else {"train": all}.

    Raises:
      ValueError: naming the first name that no image has.
    """
    if not held_out:
        return {"train": examples}
    by_key = dict(examples)
    missing = [n for n in held_out if n not in by_key]
    if missing:
        raise ValueError(f"data.held_out: no image named {missing[0]!r} in {source_dir} "
                         f"({len(missing)} of {len(held_out)} names not found)")
    names = set(held_out)
    return {"train": [(k, ex) for k, ex in examples if k not in names],
            "held_out": [(n, by_key[n]) for n in held_out]}


@dataclasses.dataclass
class CellsConfig(tfds.core.BuilderConfig):
    """Options shared by the builders. ``source_dir``'s path is part of the config name."""

    source_dir: str = ""
    size: int = 256  # synthetic_cells: image size
    num_train: int = 48  # synthetic_cells: training images
    num_test: int = 16  # synthetic_cells: held-out images
    channels: int = 1  # nuclei_dsb / image_folder: the model's input channels
    to_grey: bool = False  # nuclei_dsb / image_folder: colour images become grey
    num_classes: int = 2  # nuclei_dsb / image_folder: the model's classes
    w0: float = 10.0  # weight map border weight
    sigma: float = 5.0  # weight map border width (pixels)
    class_balance: bool = True  # w_c balances the class frequencies (paper); False: w_c = 1
    mask_suffix: str = ""  # image_folder: NAME.tif pairs with NAME{mask_suffix}.* (e.g. "_mask")
    mask_kind: str = "auto"  # image_folder: auto | classes | binary | instances
    mask_values: tuple = ()  # image_folder: the mask value (or RGB colour) of each class 0..K-1
    targets: str = "classes"  # with instances: "interior_border" trains 3 classes (see below)
    border_width: int = 1  # interior_border: border pixels counted inwards
    contrast: str = "as_is"  # nuclei_dsb / image_folder: "bright_objects" (see bright_objects)
    held_out: tuple = ()  # nuclei_dsb / image_folder: these names form the "held_out" split


class _Base(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "synthetic_cells: illumination and texture fields centred (no dark images)."}
    BUILDER_CONFIG_CLASS = CellsConfig

    def _info(self):
        return self.dataset_info_from_configs(features=_features(self.builder_config.channels),
                                             disable_shuffling=True)  # keep file / slice order

    # TFDS prints these two notices to stdout; for local sources a log line is enough
    # (shown with --verbosity=1)
    def _log_download_bytes(self):
        logging.info("preparing dataset %s into %s", self.name, self.data_dir)

    def _log_download_done(self):
        logging.info("dataset %s prepared in %s", self.name, self.data_dir)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(examples)
                for split, examples in self._read_all().items()}

    def _generate_examples(self, examples):
        for key, ex in examples:
            yield key, ex

    def _read_all(self) -> dict:
        raise NotImplementedError


class SyntheticCells(_Base):
    """Procedural touching cells (see :mod:`unet_jax.data.synthetic`); deterministic per seed
    and split (train seeds 0.., test seeds 1_000_000..)."""

    def _read_all(self):
        c = self.builder_config

        def examples(first, n):
            for seed in range(first, first + n):
                s = synthetic.generate(seed, c.size)
                yield str(seed), make_example(s["image"], s["labels"], s["instances"],
                                              f"seed {seed}", c)

        return {"train": examples(0, c.num_train), "test": examples(1_000_000, c.num_test)}


class Isbi2012(_Base):
    """ISBI 2012 slices from ``train-volume.tif`` + ``train-labels.tif`` or ``images/`` +
    ``labels/`` PNGs (255 = cell, 0 = membrane). One ``train`` split in slice order: take
    slices with TFDS slicing, e.g. ``train[:20]`` and ``train[20:]``."""

    def _read_all(self):
        c = self.builder_config
        images, masks, names = readers.read_isbi2012(c.source_dir)
        exs = [(f"{i:04d}", make_example(img, m, None, n, c, known=False))
               for i, (img, m, n) in enumerate(zip(images, masks, names))]
        return {"train": exs}


class NucleiDsb(_Base):
    """2018 Data Science Bowl layout: ``<id>/images/<id>.png`` and ``<id>/masks/*.png`` (one
    binary mask per nucleus) -> image + instance map (nuclei 1..N, in mask-file order)."""

    def _read_all(self):
        c = self.builder_config
        root = Path(c.source_dir)
        if not root.is_dir():
            raise ValueError(f"source_dir {root} is not a directory (DSB 2018 layout expected)")
        exs = []
        for sample in sorted(p for p in root.iterdir() if p.is_dir()):
            img_path = sample / "images" / f"{sample.name}.png"
            image = model_input(readers.read_image(img_path), img_path, c.channels, c.to_grey, c.contrast)
            masks = sorted((sample / "masks").glob("*.png"))
            if not masks:
                raise ValueError(f"{sample / 'masks'}: no mask files for image {img_path.name}")
            inst = np.zeros(image.shape[:2], np.int32)
            for i, mp in enumerate(masks, start=1):
                m = readers.read_image(mp, indices=True)
                if m.ndim == 3:
                    m = m[..., 0]
                if m.shape != inst.shape:
                    raise ValueError(f"{mp}: mask is {m.shape[0]}x{m.shape[1]}, image "
                                     f"{img_path.name} is {inst.shape[0]}x{inst.shape[1]}")
                inst[(m > 0) & (inst == 0)] = i
            exs.append((sample.name, make_example(image, (inst > 0).astype(np.uint8), inst, sample.name, c)))
        if not exs:
            raise ValueError(f"source_dir {root}: no <id>/images/<id>.png samples found")
        return held_out_splits(exs, c.held_out, root)


class ImageFolder(_Base):
    """A user's images and masks, paired by file stem: ``images/NAME.*`` with ``masks/NAME.*``,
    or with ``mask_suffix`` ``NAME{suffix}.*`` in ``masks/`` or next to the image.

    Masks (``mask_kind``): class ids 0..K-1 (palette images give their indices), 0/255 for a
    binary mask, or an instance label image (0 background, 1..N objects). ``auto``: 0/255 is
    binary (K = 2), values < K are class ids, and with K = 2 a 16- or 32-bit image with larger
    values is instances (8-bit instance images need ``mask_kind="instances"``). ``mask_values``
    maps grey values or RGB colours to classes (class c = ``mask_values[c]``). An RGB mask needs
    equal channels or that map.
    Images of any size mix; a mismatch names the file.
    """

    def _read_all(self):
        c = self.builder_config
        root = Path(c.source_dir)
        idir = root / "images"
        mdir = root / "masks" if (root / "masks").is_dir() else idir if c.mask_suffix else None
        if not idir.is_dir() or mdir is None:
            raise ValueError(f"source_dir {root}: expected images/ and masks/ folders "
                             f"(or images/ holding NAME and NAME<mask_suffix> files)")
        files = [p for p in sorted(idir.iterdir()) if p.suffix.lower() in readers.IMAGE_SUFFIXES]
        suffix = c.mask_suffix
        masks = {p.stem[: len(p.stem) - len(suffix)] if suffix else p.stem: p
                 for p in sorted(mdir.iterdir()) if p.suffix.lower() in readers.IMAGE_SUFFIXES
                 and (not suffix or p.stem.endswith(suffix))}
        images = {p.stem: p for p in files if not (suffix and p.stem.endswith(suffix))}
        for stem, mp in masks.items():
            if stem not in images:
                raise ValueError(f"{mp}: mask has no image {stem}.* in {idir}")
        if not images:
            raise ValueError(f"{idir}: no images found")
        exs = []
        for stem, ip in images.items():
            if stem not in masks:
                raise ValueError(f"{ip}: image has no mask {stem}{suffix}.* in {mdir}")
            image = model_input(readers.read_image(ip), ip, c.channels, c.to_grey, c.contrast)
            mp = masks[stem]
            labels, inst = mask_to_classes(readers.read_image(mp, indices=True), mp, c.num_classes, c.mask_kind,
                                           c.mask_values)
            if labels.shape != image.shape[:2]:
                raise ValueError(f"{mp}: mask is {labels.shape[0]}x{labels.shape[1]}, image "
                                 f"{ip.name} is {image.shape[0]}x{image.shape[1]}")
            if c.targets == "interior_border" and inst is None:
                raise ValueError(f"{mp}: targets 'interior_border' need instance masks (mask_kind 'instances')")
            exs.append((stem, make_example(image, labels, inst, ip.name, c, known=inst is not None)))
        return held_out_splits(exs, c.held_out, root)


MASK_KINDS = ("auto", "classes", "binary", "instances")


def mask_to_classes(mask: np.ndarray, path, num_classes: int, kind: str = "auto", values=()):
    """A mask file's array -> (class ids [H, W] uint8, instances [H, W] or None).

    Raises:
      ValueError: naming ``path`` and the values found when they fit no reading.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"mask_kind must be one of {MASK_KINDS}, got {kind!r}")
    mask = _without_opaque_alpha(np.asarray(mask))
    colours = values and np.ndim(values[0]) == 1
    if mask.ndim == 3 and not colours:
        if not readers.equal_channels(mask):
            found = np.unique(mask.reshape(-1, mask.shape[-1]), axis=0)[:6].tolist()
            raise ValueError(f"{path}: an RGB mask with differing channels (colours {found}...); give "
                             f"--config.data.mask_values as one colour per class")
        mask = mask[..., 0]
    if mask.ndim != (3 if colours else 2):
        raise ValueError(f"{path}: expected a {'colour' if colours else '2-D'} mask, got shape {mask.shape}")
    if values:
        table = np.asarray(values).reshape(len(values), -1)
        flat = mask.reshape(mask.shape[0], mask.shape[1], -1)
        out = np.full(mask.shape[:2], -1, np.int64)
        for cls, v in enumerate(table):
            out[(flat == v).all(-1)] = cls
        if (out < 0).any():
            found = np.unique(flat[out < 0].reshape(-1, table.shape[1]), axis=0)[:6].tolist()
            raise ValueError(f"{path}: mask values {found} are not in mask_values {list(values)}")
        return _check_classes(out, path, num_classes), None
    found = np.unique(mask)
    if kind == "binary" or (kind == "auto" and num_classes == 2 and set(found.tolist()) <= {0, 255}):
        return (mask > 0).astype(np.uint8), None
    wide = np.issubdtype(mask.dtype, np.integer) and mask.dtype.itemsize > 1  # 16-bit label images
    if kind == "instances" or (kind == "auto" and num_classes == 2 and found.max() >= 2 and wide):
        return (mask > 0).astype(np.uint8), mask.astype(np.int32)
    return _check_classes(mask, path, num_classes), None


def _check_classes(mask, path, num_classes):
    lo, hi = int(mask.min()), int(mask.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{path}: mask values {lo}..{hi} outside the class range 0..{num_classes - 1} "
                         f"(give --config.data.mask_values, or --config.model.num_classes)")
    return mask.astype(np.uint8)


_CLASSES = {"synthetic_cells": SyntheticCells, "isbi2012": Isbi2012, "nuclei_dsb": NucleiDsb,
            "image_folder": ImageFolder}


def builder(name: str, data_dir: str | os.PathLike, source_dir: str = "", **options):
    """A TFDS builder for one of ``BUILDERS`` (not yet prepared)."""
    if name not in _CLASSES:
        raise ValueError(f"dataset must be one of {BUILDERS} (or a registered TFDS name), got {name!r}")
    cls = _CLASSES[name]
    if name != "synthetic_cells" and not source_dir:
        raise ValueError(f"dataset {name!r} needs a source_dir (the local folder to read)")
    key = "|".join([os.path.abspath(source_dir) if source_dir else ""] +
                   [f"{k}={v}" for k, v in sorted(options.items())])
    config = CellsConfig(name=f"c{hashlib.sha1(key.encode()).hexdigest()[:10]}",
                         source_dir=str(source_dir), **options)
    return cls(config=config, data_dir=str(data_dir), file_format="array_record")


def prepare(name: str, data_dir: str | os.PathLike, source_dir: str = "", splits=None, **options):
    """Prepares (once) and returns a dict of split -> TFDS data source.

    ``splits`` may use TFDS slicing, e.g. ``("train[:20]", "train[20:]")``; default: every split.

    Processes sharing ``data_dir`` (those of a multi-process run, or two runs) take turns on a
    file lock, so one prepares and the others find it prepared. On failure the partly written
    dataset folder is removed and the error re-raised.
    """
    b = builder(name, data_dir, source_dir, **options)
    out = Path(b.data_dir)
    if not (out / "dataset_info.json").exists():
        root = Path(data_dir)
        lock_path = root / f".{name}.lock"
        made = [d for d in (root, root / "downloads", root / "downloads" / "extracted", lock_path)
                if not d.exists()]
        root.mkdir(parents=True, exist_ok=True)
        try:
            with open(lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes or the process dies
                if not (out / "dataset_info.json").exists():
                    _prepare_or_clean(b, out)
        except BaseException:
            for p in reversed(made):  # what this call created, if still empty
                if p.is_file():
                    p.unlink(missing_ok=True)
                elif p.is_dir() and not any(p.iterdir()):
                    p.rmdir()
            raise
    if not b.info.splits:  # another process finished preparing after b was made: read its work
        b = builder(name, data_dir, source_dir, **options)
    if splits:
        return {s: b.as_data_source(split=s) for s in splits}
    return b.as_data_source()


def _prepare_or_clean(b, out: Path) -> None:
    try:
        b.download_and_prepare()
    except BaseException:
        parent = out.parent  # <data_dir>/<name>/<config>/ holds 1.0.0 or incomplete.*
        for p in list(parent.iterdir()) if parent.exists() else []:
            if p.name.startswith((out.name, "incomplete")):
                shutil.rmtree(p, ignore_errors=True)
        for d in (parent, parent.parent):
            if d.exists() and not any(d.iterdir()):
                d.rmdir()
        raise


def load(name: str, data_dir: str | os.PathLike, source_dir: str = "", splits=None, **options):
    """:func:`prepare` for this module's builders; any other name goes to ``tfds.data_source``
    (needs the internet to download and, for most datasets, TensorFlow to prepare)."""
    if name in _CLASSES:
        return prepare(name, data_dir, source_dir, splits, **options)
    try:
        names = splits or tfds.builder(name, data_dir=str(data_dir)).info.splits
        return {split: tfds.data_source(name, split=split, data_dir=str(data_dir)) for split in names}
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"dataset {name!r} is neither one of the built-in {BUILDERS} nor a registered "
                         f"TFDS dataset") from None


def dataset_options(config, dataset: str) -> dict:
    """The builder options of ``dataset`` for a run's ``config``: the synthetic set's sizes, the
    input channels, the classes and the weight map (options added later appear only when not
    at their default, so that datasets prepared before they existed keep their names)."""
    d = config.data
    options = {"w0": d.w0, "sigma": d.sigma}
    if not d.get("class_balance", True):
        options["class_balance"] = False
    if dataset == "synthetic_cells":
        options.update(size=d.synthetic_size, num_train=d.synthetic_train, num_test=d.synthetic_test)
    if dataset in ("nuclei_dsb", "image_folder"):
        options["channels"] = config.model.in_channels
        if config.model.num_classes != 2:
            options["num_classes"] = config.model.num_classes
        optional = [("targets", "classes"), ("border_width", 1), ("to_grey", False), ("contrast", "as_is"),
                    ("held_out", ())]
        if dataset == "image_folder":
            optional += [("mask_suffix", ""), ("mask_kind", "auto"), ("mask_values", ())]
        for key, default in optional:
            value = d.get(key, default)
            if value not in (default, None, []):
                options[key] = _hashable(value)
    return options


def _hashable(value):
    """Lists (a JSON-restored config) as tuples, nested ones too: ``mask_values`` colours."""
    return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


def tfds_dir(config) -> str:
    """Where a run keeps prepared datasets: ``config.data.tfds_dir`` or ~/tensorflow_datasets."""
    return config.data.tfds_dir or os.path.expanduser("~/tensorflow_datasets")


def load_train_eval(config) -> tuple:
    """(train source, validation source) of a run's ``config.data``, prepared once."""
    d = config.data
    sources = load(d.dataset, tfds_dir(config), d.data_dir, splits=(d.train_split, d.eval_split),
                   **dataset_options(config, d.dataset))
    return sources[d.train_split], sources[d.eval_split]
