"""Trained models that ship with unet_jax, loaded by name and offline, and the one way
``unet_predict`` and ``unet_evaluate`` find a model: a shipped name, a training workdir, a
folder written by :func:`save`, or a BioImage Model Zoo package (``NAME.zip``).

A shipped model is a folder ``unet_jax/models/NAME/`` of four files: ``config.json`` (what
inference needs of the run's config), ``variables.npz`` (parameters and batch statistics, one
array per leaf, read without pickle), ``card.md`` (data, source and licence, the command that
trains it, held-out figures, the input it expects) and ``SHA256SUMS``, checked on every load.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from unet_jax import evaluation

MODELS_DIR = Path(__file__).resolve().parent / "models"
FILES = ("config.json", "variables.npz", "card.md")
# what is kept of a run's config: all but the local folders and what only training reads
KEPT = ("model", "data", "instances", "augment", "eval_batch_tiles", "eval_tta", "seed")
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
    variables = {}
    with np.load(folder / "variables.npz", allow_pickle=False) as z:
        for key in z.files:  # "params/down_0/Conv_0/kernel" -> nested dicts
            *parents, leaf = key.split("/")
            node = variables
            for name in parents:
                node = node.setdefault(name, {})
            node[leaf] = jnp.asarray(z[key])
    return evaluation.trained_from(ml_collections.ConfigDict(saved), variables, step, folder / "variables.npz",
                                   folder / "config.json")


def one_of(model: str | None, workdir: str | None) -> str:
    """The CLIs' ``--model`` or ``--workdir`` (the same thing under its older name): exactly one.

    Raises:
      ValueError: both or neither given.
    """
    if (model is None) == (workdir is None):
        raise ValueError("give one of --model (a shipped name, a workdir, a model folder or a .zip) and --workdir")
    return model or workdir


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
