"""Loading a trained run, and the ISBI-2012-style evaluation of a dataset split."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np

from unet_jax import checkpoint, metrics, train


def load_trained(workdir: str | Path, step: int | None = None):
    """(config, state) of a run: its config.json and its best checkpoint (else the latest).

    Raises:
      ValueError: no run in ``workdir``, or a checkpoint that does not fit the config's model.
    """
    workdir = Path(workdir)
    cfg_path = workdir / "config.json"
    if not cfg_path.exists():
        raise ValueError(f"workdir {workdir} holds no trained run (no config.json)")
    config = ml_collections.ConfigDict(json.loads(cfg_path.read_text()))
    ck = checkpoint.Checkpoints(workdir / "checkpoints", best_metric="val_dice")
    step = step if step is not None else (ck.best_step() or ck.latest_step())
    if step is None:
        raise ValueError(f"workdir {workdir} holds no checkpoint")
    meta = ck.read_meta(step)
    if meta["config"]["model"] != config.model.to_dict():
        raise ValueError(f"checkpoint {workdir / 'checkpoints' / str(step)} was trained with model "
                         f"{meta['config']['model']}, config.json says {config.model.to_dict()}")
    target = train.create_state(config, jax.random.key(0, impl="rbg"))
    try:
        state, _ = ck.restore(step, target)
    except Exception as e:  # noqa: BLE001 - any mismatch of shapes or structure
        raise ValueError(f"checkpoint {workdir / 'checkpoints' / str(step)} does not fit the model "
                         f"of {cfg_path} ({type(e).__name__})") from None
    ck.close()
    return config, state


def predict_probs(config, state, image, tta: bool = False, tile_size: int = 0, predict=None):
    """[H, W, K] probabilities for one image [H, W, C]; pass ``predict`` (``train.predict_fn``)
    when predicting many images, so the model is compiled once."""
    return train.predict_probs(config, predict or train.predict_fn(state), image, tta, tile_size)


THRESHOLDS = metrics.THRESHOLDS  # 0.01 ... 0.99, 0.5 exactly among them


def calibrate_threshold(config, state, source, tta: bool = False) -> float:
    """The foreground threshold (one of ``THRESHOLDS``) with the smallest pixel error summed over
    the images of ``source`` — chosen on data other than the evaluated split (e.g. the training
    slices), it corrects the bias of a class-weighted loss without looking at the test set."""
    predict = train.predict_fn(state)
    errors = np.zeros(len(THRESHOLDS))
    for i in range(len(source)):
        ex = source[i]
        fg = predict_probs(config, state, ex["image"], tta, predict=predict)[..., 1:].sum(-1)
        errors += [metrics.pixel_error(fg > t, ex["labels"] > 0) for t in THRESHOLDS]
    return float(THRESHOLDS[int(np.argmin(errors))])


def evaluate_split(config, state, source, tta: bool = False, warping: bool = True,
                   threshold: float | None = None) -> dict:
    """Warping, Rand and pixel errors (ISBI 2012), Dice / IoU and, where the data has
    instances, instance metrics, averaged over the images of ``source``.

    ``pixel_error`` thresholds the foreground probability at 0.5; ``pixel_error_best_threshold``
    is the smallest over the thresholds 0.01, 0.02, ..., 0.99 (as the Rand error is;
    ``rand_error_coarse``: over 0.05, 0.10, ..., 0.95 only). ``rand_error`` counts predicted
    boundary pixels as singletons (ISBI 2012), ``rand_error_bg_segment`` as one segment,
    ``rand_error_thinned`` as singletons after border thinning (see
    :func:`unet_jax.metrics.rand_error`). With ``threshold`` (from
    :func:`calibrate_threshold`) also ``pixel_error_calibrated`` at that threshold."""
    rows = []
    predict = train.predict_fn(state)
    for i in range(len(source)):
        ex = source[i]
        probs = predict_probs(config, state, ex["image"], tta, predict=predict)
        fg = probs[..., 1:].sum(-1)
        truth = ex["labels"] > 0
        rand = metrics.rand_errors(fg, truth, THRESHOLDS)  # the coarse grid is a subset
        row = {"pixel_error": metrics.pixel_error(fg > 0.5, truth),
               "pixel_error_best_threshold": min(metrics.pixel_error(fg > t, truth) for t in THRESHOLDS),
               "rand_error": rand.min(),
               "rand_error_coarse": rand[np.isin(THRESHOLDS, metrics.COARSE_THRESHOLDS)].min(),
               "rand_error_bg_segment": metrics.rand_error(fg, truth, background="segment")[0],
               "rand_error_thinned": metrics.rand_error(fg, truth, thin=True)[0]}
        if threshold is not None:
            row.update(pixel_error_calibrated=metrics.pixel_error(fg > threshold, truth),
                       calibrated_threshold=threshold)
        if warping:
            row["warping_error"] = metrics.warping_error(fg, truth)["error"]
        dice, iou = metrics.dice_iou(probs.argmax(-1), ex["labels"], config.model.num_classes)
        row.update({f"dice_{c}": float(dice[c]) for c in range(len(dice))})
        row.update({f"iou_{c}": float(iou[c]) for c in range(len(iou))})
        if ex["instances"].max() > 0:
            row.update(metrics.instance_metrics(ex["instances"], metrics.segments(fg > 0.5)))
        rows.append(row)
    keys = sorted({k for r in rows for k in r})
    return {"images": len(rows),
            **{k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}}


def table1(results: dict, name: str = "unet_jax") -> str:
    """The paper's Table 1 layout (ISBI 2012, ranked by warping error)."""
    lines = ["| Name | Warping Error | Rand Error | Pixel Error |", "|---|---|---|---|",
             "| u-net (Ronneberger et al. 2015, official test set) | 0.000353 | 0.0382 | 0.0611 |",
             f"| {name} | {results.get('warping_error', float('nan')):.6f} | "
             f"{results['rand_error']:.4f} | {results['pixel_error']:.4f} |"]
    return "\n".join(lines)
