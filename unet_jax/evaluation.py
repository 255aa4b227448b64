"""The one evaluation loop (periodic validation in training, the final validation and
``unet_evaluate`` alike), and loading a trained run for it.

Metrics follow ISBI 2012 (pixel, Rand and warping error), plus per-class Dice / IoU and, where
the data has instances, instance metrics (DSB 2018).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import multiprocessing
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
    return trained_from(config, saved, step, f"checkpoint {where}", cfg_path)


def trained_from(config, saved: dict, step: int, what, model_source) -> Trained:
    """A :class:`Trained` of ``config``'s model with the variables ``saved`` ({"params": ...,
    "batch_stats": ...} as nested dicts), checked against the model's own shapes.

    Raises:
      ValueError: "``what`` does not fit the model of ``model_source``".
    """
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
        raise ValueError(f"{what} does not fit the model of {model_source}")
    predict = inference.make_predict(model.apply)
    return Trained(config, variables, step, functools.partial(predict, variables))


def calibrate_threshold(config, predict, source, tta: bool = False, scale: float = 1.0) -> float:
    """The foreground threshold (one of ``THRESHOLDS``) with the smallest pixel error summed over
    the images of ``source``: chosen on data other than the evaluated split (e.g. the training
    slices), it corrects the bias of a class-weighted loss without looking at the test set."""
    errors = np.zeros(len(THRESHOLDS))
    for i in range(len(source)):
        ex = source[i]
        fg = inference.predict_probs(config, predict, ex["image"], tta, scale=scale)[..., 1:].sum(-1)
        errors += metrics.pixel_errors(fg, ex["labels"] > 0, THRESHOLDS)
    return float(THRESHOLDS[int(np.argmin(errors))])


def evaluate(config, predict, source, *, tta: bool = False, quick: bool = False,
             max_images: int | None = None, warping: bool = True, thinned: bool = False,
             threshold: float | None = None, workers: int = 1, scale: float = 1.0,
             rows_out: list | None = None) -> tuple[dict, list]:
    """Whole-image predictions (:func:`unet_jax.inference.predict_probs`) of the first
    ``max_images`` images of ``source`` and their metrics (:func:`image_metrics`), averaged
    over the images.

    With ``workers`` > 1 the metrics of each image are computed in that many worker processes
    while the next images are predicted; the values are the same as with one. ``scale``
    resizes each image before the model (:func:`unet_jax.inference.predict_probs`);
    ``rows_out``, when given, receives each image's own metrics (with its ``index``).

    Returns:
      (metrics, samples): samples are (image, labels, foreground probability) of the first 4.
    """
    count = len(source) if max_images is None else min(len(source), max_images)
    options = dict(num_classes=config.model.num_classes, quick=quick, warping=warping, thinned=thinned,
                   threshold=threshold, to_instances=_instance_fn(config))
    workers = min(workers, count)
    pool = _pool(workers)
    pending, rows, samples = [], [], []
    try:
        for i in range(count):
            ex = source[i]
            probs = inference.predict_probs(config, predict, ex["image"], tta, scale=scale)
            pending.append(_submit(pool, image_metrics, probs, ex["labels"], ex["instances"], **options))
            if len(samples) < 4:
                samples.append((ex["image"], ex["labels"], probs[..., 1:].sum(-1)))
            while len(pending) - len(rows) > 2 * workers:  # bounded memory
                rows.append(pending[len(rows)].result())
        rows += [r.result() for r in pending[len(rows):]]
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    if rows_out is not None:
        rows_out.extend({"index": i, **r} for i, r in enumerate(rows))
    keys = sorted({key for r in rows for key in r})
    summary = {key: float(np.mean([r[key] for r in rows if key in r])) for key in keys}
    return {"images": len(rows), **summary}, samples


def image_metrics(probs, labels, true_instances, *, num_classes: int, quick: bool = False,
                  warping: bool = True, thinned: bool = False, threshold: float | None = None,
                  to_instances: Callable | None = None) -> dict:
    """One image's metrics from its class probabilities ``probs`` [H, W, K] and truth.

    Always ``dice`` / ``iou`` (the mean over the foreground classes), ``dice_c`` / ``iou_c`` per
    class c (of the argmax), ``pixel_error`` (foreground probability thresholded at 0.5) and
    ``rand_error``: the ISBI 2012 foreground-restricted Rand error with predicted border pixels
    as singletons, minimised over the thresholds 0.05 ... 0.95 when ``quick`` (validation during
    training) and over 0.01 ... 0.99 otherwise.

    A full evaluation (``quick=False``) adds ``rand_error_coarse`` (over 0.05 ... 0.95),
    ``rand_error_bg_segment`` (predicted borders as one segment), ``pixel_error_best_threshold``
    (the best of 0.01 ... 0.99), ``warping_error`` (unless ``warping=False``),
    ``rand_error_thinned`` (singletons after border thinning, one watershed per threshold: with
    ``thinned``), the instance metrics of ``to_instances(probs)`` where the truth has instances
    and, given ``threshold``, ``pixel_error_calibrated``.
    """
    fg = probs[..., 1:].sum(-1)
    truth = labels > 0
    dice, iou = metrics.dice_iou(probs.argmax(-1), labels, num_classes)
    row = {"dice": float(np.mean(dice[1:])), "iou": float(np.mean(iou[1:])),
           "pixel_error": metrics.pixel_error(fg > 0.5, truth),
           **{f"dice_{c}": float(dice[c]) for c in range(num_classes)},
           **{f"iou_{c}": float(iou[c]) for c in range(num_classes)}}
    thresholds = metrics.COARSE_THRESHOLDS if quick else THRESHOLDS
    # a binary map is the same mask at every threshold: 0.5 (on both grids) stands for them all
    sweep_at = np.asarray([0.5] if np.isin(fg, (0, 1)).all() else thresholds)
    rand = metrics.rand_sweep(fg, truth, sweep_at, thin=thinned and not quick)
    row["rand_error"] = float(rand["singletons"].min())
    if quick:
        return row
    row.update(rand_error_coarse=float(rand["singletons"][np.isin(sweep_at, metrics.COARSE_THRESHOLDS)].min()),
               rand_error_bg_segment=float(rand["segment"].min()),
               pixel_error_best_threshold=float(metrics.pixel_errors(fg, truth, thresholds).min()))
    if thinned:
        row["rand_error_thinned"] = float(rand["thinned"].min())
    if threshold is not None:
        row.update(pixel_error_calibrated=metrics.pixel_error(fg > threshold, truth),
                   calibrated_threshold=threshold)
    if warping:
        row["warping_error"] = metrics.warping_error(fg, truth)["error"]
    if to_instances is not None and true_instances.max() > 0:
        row.update(metrics.instance_metrics(true_instances, to_instances(probs)))
    return row


def _pool(workers: int):
    """A pool of ``workers`` fresh (spawned) processes, or None for one: a forked child of a
    process running JAX could deadlock on a lock one of its threads held."""
    if workers <= 1:
        return None
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _submit(pool, fn, *args, **kwargs) -> concurrent.futures.Future:
    """``fn(*args, **kwargs)`` in ``pool``, or at once (as a done future) without one."""
    if pool:
        return pool.submit(fn, *args, **kwargs)
    done = concurrent.futures.Future()
    done.set_result(fn(*args, **kwargs))
    return done


def _instance_fn(config) -> Callable:
    """:func:`predicted_instances` for ``config`` as a picklable function of the probabilities."""
    cfg = config.get("instances") or {}
    return functools.partial(instances.from_probs, mode=cfg.get("mode", "watershed"),
                             min_size=cfg.get("min_size", 0), min_distance=cfg.get("min_distance", 4),
                             threshold=cfg.get("threshold", 0.5), seed_threshold=cfg.get("seed_threshold"),
                             min_seed_size=cfg.get("min_seed_size", 0))


def predicted_instances(config, probs: np.ndarray) -> np.ndarray:
    """One image's instance labels by the run's ``config.instances`` (default: watershed)."""
    return _instance_fn(config)(probs)


def table1(results: dict, name: str = "unet_jax") -> str:
    """The paper's Table 1 layout (ISBI 2012, ranked by warping error)."""
    lines = ["| Name | Warping Error | Rand Error | Pixel Error |", "|---|---|---|---|",
             "| u-net (Ronneberger et al. 2015, official test set) | 0.000353 | 0.0382 | 0.0611 |",
             f"| {name} | {results.get('warping_error', float('nan')):.6f} | "
             f"{results['rand_error']:.4f} | {results['pixel_error']:.4f} |"]
    return "\n".join(lines)


def results_table(results: dict, dataset: str) -> str:
    """The printout of ``unet_evaluate``: the paper's Table 1 for ISBI 2012 (:func:`table1`);
    for other data Dice and IoU per class and, where there are instances, the instance metrics.
    (The ISBI errors of other data stay in the JSON: a Rand error of data with one object per
    image measures almost nothing.)"""
    if dataset == "isbi2012":
        return table1(results)
    classes = sorted(int(k[5:]) for k in results if k.startswith("dice_") and k[5:].isdigit())
    lines = ["| class | Dice | IoU |", "|---|---|---|"]
    lines += [f"| {c} | {results[f'dice_{c}']:.4f} | {results[f'iou_{c}']:.4f} |" for c in classes]
    lines.append(f"| mean of the foreground classes | {results['dice']:.4f} | {results['iou']:.4f} |")
    if "dsb_map" in results:
        names = [("dsb_map", "DSB 2018 mean AP"), ("ap@0.5", "AP@0.5"), ("f1@0.5", "F1@0.5"), ("pq", "PQ")]
        lines += ["", "| instances | |", "|---|---|"]
        lines += [f"| {label} | {results[k]:.4f} |" for k, label in names if k in results]
    return "\n".join(lines)


def write_report(config, predict, source, rows: list[dict], folder: str | Path, tta: bool = False,
                 scale: float = 1.0, count: int = 4) -> list[Path]:
    """Writes ``per_image.csv`` (each image's metrics, from :func:`evaluate`'s ``rows_out``) and
    ``contact_sheet.png``: the ``count`` worst and best images by DSB mean AP where the data has
    instances, else by Dice, each with the truth outlined in green and the prediction in
    magenta (predicted again: only these images). Returns the two paths."""
    import csv

    from skimage import segmentation

    from unet_jax import plots

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = "dsb_map" if any("dsb_map" in r for r in rows) else "dice"
    names = ["index"] + sorted({k for r in rows for k in r} - {"index"})
    table = folder / "per_image.csv"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    ranked = sorted((r for r in rows if key in r), key=lambda r: r[key])
    chosen = ranked[:count] + [r for r in ranked[-count:] if r not in ranked[:count]]
    panels = []
    for n, r in enumerate(chosen):
        ex = source[r["index"]]
        probs = inference.predict_probs(config, predict, ex["image"], tta, scale=scale)
        truth = ex["instances"] if ex["instances"].max() > 0 else ex["labels"]
        pred = predicted_instances(config, probs) if ex["instances"].max() > 0 else probs.argmax(-1)
        img = np.asarray(ex["image"], np.float32)
        rgb = img[..., :3] if img.shape[-1] >= 3 else np.repeat(img[..., :1], 3, -1)
        rgb = np.clip(rgb, 0, 1).copy()
        rgb[segmentation.find_boundaries(truth, mode="inner")] = (0.1, 0.9, 0.1)
        rgb[segmentation.find_boundaries(pred, mode="inner")] = (0.95, 0.1, 0.95)
        panels.append((rgb, f"{'worst' if n < count else 'best'}: image {r['index']}, {key} {r[key]:.3f}"))
    sheet = folder / "contact_sheet.png"
    plots.labelled_grid(panels, sheet, columns=count)
    return [table, sheet]
