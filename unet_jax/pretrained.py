"""Trained models that ship with unet_jax, loaded by name and offline, and the one way
``unet_predict`` and ``unet_evaluate`` find a model: a shipped name, a training workdir, a
folder written by :func:`save`, or a BioImage Model Zoo package (``NAME.zip``).

A shipped model is a folder ``unet_jax/models/NAME/`` of four files: ``config.json`` (what
inference needs of the run's config), ``variables.npz`` (parameters and batch statistics, one
array per leaf, read without pickle), ``card.md`` (data, source and licence, the command that
trains it, held-out figures, the input it expects) and ``SHA256SUMS``, checked on every load.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from unet_jax import evaluation, inference, unet

MODELS_DIR = Path(__file__).resolve().parent / "models"
FILES = ("config.json", "variables.npz", "card.md")
# what is kept of a run's config: all but the local folders and what only training reads
KEPT = ("model", "data", "instances", "augment", "eval_batch_tiles", "seed")
LOCAL = ("data_dir", "tfds_dir")  # blanked: the trainer's own folders


def names() -> list[str]:
    """The shipped models."""
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "SHA256SUMS").is_file()) \
        if MODELS_DIR.is_dir() else []


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(run: evaluation.Trained, folder: str | os.PathLike, card: str) -> Path:
    """Writes ``run`` as a model folder (see the module docstring); returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = run.config.to_dict()
    kept = {k: c[k] for k in KEPT if k in c}
    kept["data"] = {**kept["data"], **dict.fromkeys(LOCAL, "")}
    (folder / "config.json").write_text(json.dumps({**kept, "step": run.step}, indent=1))
    flat = {"/".join(str(getattr(p, "key", p)) for p in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(run.variables)}
    np.savez_compressed(folder / "variables.npz", **flat)
    (folder / "card.md").write_text(card)
    (folder / "SHA256SUMS").write_text("".join(f"{_sha256(folder / f)}  {f}\n" for f in FILES))
    return folder


def load_folder(folder: str | os.PathLike) -> evaluation.Trained:
    """A folder written by :func:`save`, its checksums checked first.

    Raises:
      ValueError: a file missing or changed (naming it), or variables that do not fit the model.
    """
    folder = Path(folder)
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        raise ValueError(f"{folder}: not a model folder (no SHA256SUMS)")
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{path}: missing (listed in {sums})")
        if _sha256(path) != digest:
            raise ValueError(f"{path}: checksum mismatch (SHA256SUMS says {digest[:16]}...): the file was "
                             f"damaged or changed")
    saved = json.loads((folder / "config.json").read_text())
    step = saved.pop("step", -1)
    config = ml_collections.ConfigDict(saved)
    model = unet.from_config(config.model)
    with np.load(folder / "variables.npz", allow_pickle=False) as z:
        flat = {k: z[k] for k in z.files}
    size = inference.eval_tile_size(config)
    expected = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, config.model.in_channels)))
    paths = {"/".join(str(getattr(p, "key", p)) for p in path): leaf
             for path, leaf in jax.tree_util.tree_leaves_with_path(expected)}
    if set(paths) != set(flat) or any(flat[k].shape != paths[k].shape for k in paths):
        raise ValueError(f"{folder / 'variables.npz'}: does not fit the model of {folder / 'config.json'}")
    leaves = [jnp.asarray(flat[k]) for k in paths]
    variables = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(expected), leaves)
    predict = inference.make_predict(model.apply)
    return evaluation.Trained(config, variables, step, functools.partial(predict, variables))


def resolve(model: str, fallback: bool = False) -> evaluation.Trained:
    """The model called ``model``: a shipped name, a folder written by :func:`save`, a training
    workdir, or a bioimage.io package (``.zip``, run through ONNX Runtime).

    Raises:
      ValueError: one line naming ``model`` and the choices.
    """
    path = Path(model)
    if model in names():
        return load_folder(MODELS_DIR / model)
    if model.endswith(".zip") and path.is_file():
        from unet_jax import zoo

        return zoo.load_package(path)
    if (path / "SHA256SUMS").is_file():
        return load_folder(path)
    if (path / "config.json").is_file():
        return evaluation.load_trained(path, fallback=fallback)
    choices = ", ".join(names()) or "none shipped"
    raise ValueError(f"model {model!r} is neither a shipped model ({choices}) nor a workdir, a model "
                     f"folder or a .zip package")
