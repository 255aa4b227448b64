"""Nuclei models per kind of image: DSB 2018 mean AP (IoU 0.5 ... 0.95) on the held-out images
named in each model's config, split into fluorescence and brightfield (colour H&E / stained and
grey brightfield, the kinds of :mod:`benchmarks.dsb_modalities`), with predicted / true object
counts. One JSON line per model; every model must hold out the same images. ``--split train``
measures the training images instead: the figures to choose between candidates by, since the
held-out ones are reported.

    python -m benchmarks.nuclei_modalities --data_dir ../shared/data/dsb2018_train \
        --model before=runs/nuclei_grey --model after=runs/nuclei
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import dsb_modalities, jsonl

TARGETS = {"fluorescence": 0.52, "brightfield": 0.40, "overall": 0.50}


def modality(kind: str) -> str:
    return "fluorescence" if kind == "fluorescence" else "brightfield"


def kinds(data_dir: str, names: list[str]) -> list[str]:
    """The :func:`benchmarks.dsb_modalities.kind` of each named DSB sample in ``data_dir``."""
    return [dsb_modalities.kind(Path(data_dir) / n / "images" / f"{n}.png") for n in names]


def per_kind(rows: list[dict], kinds: list[str]) -> dict:
    """{group: {"images", "dsb_map", "n_pred", "n_true"}} over ``rows`` (one per image, in the
    order of ``kinds``) for the overall set and each modality."""
    groups = {"overall": range(len(rows))}
    for m in ("fluorescence", "brightfield"):
        groups[m] = [i for i, k in enumerate(kinds) if modality(k) == m]
    return {g: {"images": len(idx), "dsb_map": round(float(np.mean([rows[i]["dsb_map"] for i in idx])), 4),
                "n_pred": int(sum(rows[i]["n_pred"] for i in idx)),
                "n_true": int(sum(rows[i]["n_true"] for i in idx))}
            for g, idx in groups.items() if idx}


def load(spec: str, data_dir: str):
    """(run, config, {split: (source, names)}) of one model (a shipped name, a workdir or a model
    folder) on ``data_dir``: its held-out images, named in its config, and its training images,
    the other sample folders in the builder's order (sorted by name)."""
    from unet_jax import pretrained
    from unet_jax.data import builders

    run = pretrained.resolve(spec)
    config = run.config.copy_and_resolve_references()
    names = list(config.data.get("held_out") or ())
    if not names or config.data.eval_split != "held_out":
        raise ValueError(f"{spec}: its config names no held-out images (data.held_out, eval_split 'held_out')")
    with config.unlocked():
        config.data.data_dir = data_dir
        config.data.tfds_dir = os.path.join(tempfile.gettempdir(), "unet_jax_nuclei_modalities_tfds")
    train, held_out = builders.load_train_eval(config)
    trained_on = sorted(d.name for d in Path(data_dir).iterdir() if (d / "images").is_dir() and d.name not in names)
    assert len(trained_on) == len(train), (len(trained_on), len(train))
    return run, config, {"train": (train, trained_on), "held_out": (held_out, names)}


def evaluate(spec: str, data_dir: str, split: str = "held_out", tta: bool = False) -> tuple[list[str], dict]:
    """(held-out names, JSON line) of one model (a shipped name, a workdir or a model folder) on
    its held-out images or (``split="train"``) its training images; ``tta`` averages the
    probabilities over the 8 flips / rotations before the objects are cut."""
    from unet_jax import evaluation

    run, config, splits = load(spec, data_dir)
    names = splits["held_out"][1]
    source, evaluated = splits[split]
    rows: list[dict] = []
    evaluation.evaluate(config, run.predict, source, tta=tta, warping=False,
                        workers=len(os.sched_getaffinity(0)), rows_out=rows)
    kind_of = kinds(data_dir, evaluated)
    figures = per_kind(rows, kind_of)
    met = {g: figures[g]["dsb_map"] >= t for g, t in TARGETS.items() if g in figures}
    recipe = {"contrast": config.data.get("contrast", "as_is"), "depth": config.model.depth,
              "features": config.model.features, "zoom": config.augment.get("scale", 0.0), "step": run.step}
    return names, {"split": split, "tta": tta, **recipe, "kinds": {k: kind_of.count(k) for k in sorted(set(kind_of))},
                   **figures, **({"targets": TARGETS, "targets_met": met} if split == "held_out" else {})}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True, help="the DSB 2018 training folder")
    p.add_argument("--model", action="append", required=True, help="LABEL=shipped name | workdir | folder")
    p.add_argument("--split", choices=("held_out", "train"), default="held_out")
    p.add_argument("--tta", action="store_true", help="average over the 8 flips / rotations")
    p.add_argument("--output", default="", help="also append the JSON lines to this file")
    a = p.parse_args(argv)

    from unet_jax import runtime

    runtime.setup(0)
    out = jsonl.Lines(a.output)
    first = None
    for item in a.model:
        label, _, spec = item.rpartition("=")
        names, line = evaluate(spec, a.data_dir, a.split, a.tta)
        if first is not None and names != first:
            raise SystemExit(f"--model {item}: holds out other images than the first model")
        first = names
        out.emit({"benchmark": "nuclei_modalities", "model": label or spec, "source": spec, **line})


if __name__ == "__main__":
    main()
