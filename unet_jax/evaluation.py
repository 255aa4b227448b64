"""The one evaluation loop (periodic validation in training, the final validation and
``unet_evaluate`` alike), and loading a trained run for it.

Metrics follow ISBI 2012 (pixel, Rand and warping error), plus per-class Dice / IoU and, where
the data has instances, instance metrics (DSB 2018).
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from unet_jax import checkpoint, inference, instances, metrics, unet

THRESHOLDS = metrics.THRESHOLDS  # 0.01 ... 0.99, 0.5 exactly among them


@dataclasses.dataclass
class Trained:
    """A trained run: its config, the model's variables at ``step`` and ``predict`` (tiles ->
    probabilities, compiled once)."""

    config: ml_collections.ConfigDict
    variables: dict
    step: int
    predict: Callable


def load_trained(workdir: str | Path, step: int | None = None, fallback: bool = False) -> Trained:
    """A run's config.json and the model variables of its checkpoint ``step`` (default: the
    best by validation Dice, which is the latest when no step was validated).

    With ``fallback``, a checkpoint that cannot be read (truncated or corrupted files) gives way
    to the next older step.

    Raises:
      ValueError: no run in ``workdir``; an unreadable checkpoint (naming its folder) without
        ``fallback``, or no readable one with it; a checkpoint that does not fit the config's
        model.
    """
    workdir = Path(workdir)
    cfg_path = workdir / "config.json"
    if not cfg_path.exists():
        raise ValueError(f"workdir {workdir} holds no trained run (no config.json)")
    config = ml_collections.ConfigDict(json.loads(cfg_path.read_text()))
    ck = checkpoint.Checkpoints(workdir / "checkpoints", best_metric="val_dice")
    try:
        step = step if step is not None else ck.best_step()
        if step is None:
            raise ValueError(f"workdir {workdir} holds no checkpoint")
        older = sorted((s for s in ck.all_steps() if s < step), reverse=True)
        for candidate in [step] + (older if fallback else []):
            where = ck.directory / str(candidate)
            try:
                saved, meta = ck.restore_raw(candidate)
            except Exception as e:  # noqa: BLE001 - any read failure: a damaged checkpoint
                problem = f"checkpoint {where} cannot be read ({type(e).__name__})"
                if not fallback:
                    raise ValueError(f"{problem}; pass --fallback to use the next older step") from None
                continue
            return _trained(config, cfg_path, candidate, where, meta, saved)
        raise ValueError(f"no readable checkpoint at or before step {step} in {ck.directory}")
    finally:
        ck.close()


def _trained(config, cfg_path, step, where, meta, saved) -> Trained:
    if meta["config"]["model"] != config.model.to_dict():
        raise ValueError(f"checkpoint {where} was trained with model {meta['config']['model']}, "
                         f"config.json says {config.model.to_dict()}")
    model = unet.from_config(config.model)
    size = inference.eval_tile_size(config)
    expected = jax.eval_shape(model.init, jax.random.key(0, impl="rbg"),
                              jnp.zeros((1, size, size, config.model.in_channels)))
    variables = {k: saved.get(k) for k in expected}
    shapes = lambda tree: jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), tree)  # noqa: E731
    try:
        fits = shapes(variables) == shapes(expected)
    except (TypeError, ValueError, AttributeError):  # a missing item or another tree structure
        fits = False
    if not fits:
        raise ValueError(f"checkpoint {where} does not fit the model of {cfg_path}")
    predict = inference.make_predict(model.apply)
    return Trained(config, variables, step, functools.partial(predict, variables))


def calibrate_threshold(config, predict, source, tta: bool = False) -> float:
    """The foreground threshold (one of ``THRESHOLDS``) with the smallest pixel error summed over
    the images of ``source``: chosen on data other than the evaluated split (e.g. the training
    slices), it corrects the bias of a class-weighted loss without looking at the test set."""
    errors = np.zeros(len(THRESHOLDS))
    for i in range(len(source)):
        ex = source[i]
        fg = inference.predict_probs(config, predict, ex["image"], tta)[..., 1:].sum(-1)
        errors += [metrics.pixel_error(fg > t, ex["labels"] > 0) for t in THRESHOLDS]
    return float(THRESHOLDS[int(np.argmin(errors))])


def evaluate(config, predict, source, *, tta: bool = False, quick: bool = False,
             max_images: int | None = None, warping: bool = True,
             threshold: float | None = None) -> tuple[dict, list]:
    """Whole-image predictions (:func:`unet_jax.inference.predict_probs`) of the first
    ``max_images`` images of ``source`` and their metrics, averaged over the images.

    Every evaluation reports ``dice`` / ``iou`` (the mean over the foreground classes),
    ``dice_c`` / ``iou_c`` per class c (of the argmax), ``pixel_error`` (foreground probability
    thresholded at 0.5) and ``rand_error``: the ISBI 2012 foreground-restricted Rand error with
    predicted border pixels as singletons, minimised over the thresholds 0.05 ... 0.95 when
    ``quick`` (validation during training) and over 0.01 ... 0.99 otherwise.

    A full evaluation (``quick=False``) adds ``rand_error_coarse`` (over 0.05 ... 0.95),
    ``rand_error_bg_segment`` (predicted borders as one segment), ``rand_error_thinned``
    (singletons after border thinning), ``pixel_error_best_threshold`` (each image's best of
    0.01 ... 0.99), ``warping_error`` (unless ``warping=False``), instance metrics of
    :func:`predicted_instances` where the data has instances and, given ``threshold``
    (:func:`calibrate_threshold`), ``pixel_error_calibrated``.

    Returns:
      (metrics, samples): samples are (image, labels, foreground probability) of the first 4.
    """
    k = config.model.num_classes
    thresholds = metrics.COARSE_THRESHOLDS if quick else THRESHOLDS
    count = len(source) if max_images is None else min(len(source), max_images)
    rows, samples = [], []
    for i in range(count):
        ex = source[i]
        probs = inference.predict_probs(config, predict, ex["image"], tta)
        fg = probs[..., 1:].sum(-1)
        truth = ex["labels"] > 0
        rand = metrics.rand_errors(fg, truth, thresholds)
        dice, iou = metrics.dice_iou(probs.argmax(-1), ex["labels"], k)
        row = {"dice": float(np.mean(dice[1:])), "iou": float(np.mean(iou[1:])),
               "pixel_error": metrics.pixel_error(fg > 0.5, truth), "rand_error": float(rand.min()),
               **{f"dice_{c}": float(dice[c]) for c in range(k)},
               **{f"iou_{c}": float(iou[c]) for c in range(k)}}
        if not quick:
            row.update(
                rand_error_coarse=float(rand[np.isin(thresholds, metrics.COARSE_THRESHOLDS)].min()),
                rand_error_bg_segment=metrics.rand_error(fg, truth, background="segment")[0],
                rand_error_thinned=metrics.rand_error(fg, truth, thin=True)[0],
                pixel_error_best_threshold=min(metrics.pixel_error(fg > t, truth) for t in THRESHOLDS))
            if threshold is not None:
                row.update(pixel_error_calibrated=metrics.pixel_error(fg > threshold, truth),
                           calibrated_threshold=threshold)
            if warping:
                row["warping_error"] = metrics.warping_error(fg, truth)["error"]
            if ex["instances"].max() > 0:
                row.update(metrics.instance_metrics(ex["instances"], predicted_instances(config, probs)))
        rows.append(row)
        if len(samples) < 4:
            samples.append((ex["image"], ex["labels"], fg))
    keys = sorted({key for r in rows for key in r})
    summary = {key: float(np.mean([r[key] for r in rows if key in r])) for key in keys}
    return {"images": len(rows), **summary}, samples


def predicted_instances(config, probs: np.ndarray) -> np.ndarray:
    """One image's instance labels by the run's ``config.instances`` (default: watershed)."""
    cfg = config.get("instances") or {}
    return instances.from_probs(probs, cfg.get("mode", "watershed"), cfg.get("min_size", 0),
                                cfg.get("min_distance", 4))


def table1(results: dict, name: str = "unet_jax") -> str:
    """The paper's Table 1 layout (ISBI 2012, ranked by warping error)."""
    lines = ["| Name | Warping Error | Rand Error | Pixel Error |", "|---|---|---|---|",
             "| u-net (Ronneberger et al. 2015, official test set) | 0.000353 | 0.0382 | 0.0611 |",
             f"| {name} | {results.get('warping_error', float('nan')):.6f} | "
             f"{results['rand_error']:.4f} | {results['pixel_error']:.4f} |"]
    return "\n".join(lines)
