"""The interior mode's settings for a nuclei model, chosen on its training images: DSB 2018 mean
AP (fluorescence / brightfield / all, as :mod:`benchmarks.nuclei_modalities` groups them) for
each foreground threshold (``instances.threshold``), seed threshold (``instances.seed_threshold``)
and, with ``--min_seed_sizes``, smallest seed (``instances.min_seed_size``). One JSON line per
setting, then the best by the mean over all training images. The held-out images are not looked
at: the setting chosen here goes into the config, and the held-out figures are then measured
with it. ``--tta`` cuts the objects from the probabilities averaged over 8 flips / rotations, as
a model shipped with ``eval_tta`` runs.

    python -m benchmarks.instance_thresholds --data_dir ../shared/data/dsb2018_train --model runs/nuclei
"""
from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import multiprocessing
import os

import numpy as np

from benchmarks import jsonl, nuclei_modalities

THRESHOLDS = (0.5, 0.6, 0.7, 0.8)
SETTINGS = {"threshold": float, "seed_threshold": float, "min_size": int, "min_seed_size": int}


def settings(items) -> dict:
    """``["threshold=0.8", "seed_threshold=0.7"]`` (a CLI's ``--instances``) as a dict to update
    ``config.instances`` with; other keys or values are a one-line error."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in SETTINGS:
            raise ValueError(f"--instances {item}: expected threshold=, seed_threshold=, min_size= "
                             "or min_seed_size=")
        try:
            out[key] = SETTINGS[key](value)
        except ValueError:
            raise ValueError(f"--instances {item}: {value!r} is not a number") from None
    return out


def image_rows(probs: np.ndarray, truth: np.ndarray, grid, min_size: int) -> list[dict]:
    """One image's instance metrics for each (threshold, seed threshold, smallest seed)."""
    from unet_jax import instances, metrics

    probs = probs.astype(np.float32)
    return [metrics.instance_metrics(truth, instances.from_probs(probs, "interior", min_size, threshold=t,
                                                                 seed_threshold=s, min_seed_size=m))
            for t, s, m in grid]


def sweep(spec: str, data_dir: str, thresholds=THRESHOLDS, min_seed_sizes=(0,), tta: bool = False,
          workers: int = 1) -> list[dict]:
    """{"threshold", "seed_threshold", "min_seed_size", per-kind figures} for every setting, over
    the training images (those the model's config does not hold out) of ``data_dir``."""
    from unet_jax import inference

    run, config, splits = nuclei_modalities.load(spec, data_dir)
    if config.instances.mode != "interior" or config.model.num_classes != 3:
        raise ValueError(f"{spec}: needs a 3-class model with instances.mode 'interior'")
    train, names = splits["train"]
    grid = list(itertools.product(thresholds, thresholds, min_seed_sizes))
    min_size = config.instances.get("min_size", 0)
    context = multiprocessing.get_context("spawn")  # no fork of a process running JAX
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = []
        for i in range(len(train)):
            ex = train[i]
            probs = inference.predict_probs(config, run.predict, ex["image"], tta)
            futures.append(pool.submit(image_rows, probs.astype(np.float16), ex["instances"], grid, min_size))
        per_image = [f.result() for f in futures]
    kinds = nuclei_modalities.kinds(data_dir, names)
    return [{"threshold": t, "seed_threshold": s, "min_seed_size": m,
             **nuclei_modalities.per_kind([rows[j] for rows in per_image], kinds)}
            for j, (t, s, m) in enumerate(grid)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True, help="the DSB 2018 training folder")
    p.add_argument("--model", required=True, help="a shipped name, a workdir or a model folder")
    p.add_argument("--thresholds", default=",".join(map(str, THRESHOLDS)),
                   help="comma-separated values to try for both thresholds")
    p.add_argument("--min_seed_sizes", default="0", help="comma-separated smallest seeds (pixels) to try")
    p.add_argument("--tta", action="store_true", help="average over the 8 flips / rotations")
    p.add_argument("--output", default="", help="also append the JSON lines to this file")
    a = p.parse_args(argv)
    try:
        thresholds = tuple(float(v) for v in a.thresholds.split(","))
        sizes = tuple(int(v) for v in a.min_seed_sizes.split(","))
    except ValueError:
        raise SystemExit(f"--thresholds {a.thresholds!r} / --min_seed_sizes {a.min_seed_sizes!r}: expected "
                         "numbers separated by commas (sizes: integers)") from None

    from unet_jax import runtime

    runtime.setup(0)
    out = jsonl.Lines(a.output, benchmark="instance_thresholds", model=a.model, split="train", tta=a.tta)
    lines = [out.emit(line) for line in sweep(a.model, a.data_dir, thresholds, sizes, a.tta,
                                              workers=len(os.sched_getaffinity(0)))]
    best = max(lines, key=lambda line: line["overall"]["dsb_map"])
    out.emit({"best": {k: best[k] for k in ("threshold", "seed_threshold", "min_seed_size")},
              "chosen_by": "overall dsb_map on the training images"})


if __name__ == "__main__":
    main()
