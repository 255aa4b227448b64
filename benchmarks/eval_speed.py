"""``unet_evaluate`` on 65 DSB 2018 images against the straightforward per-threshold reference.

Runs the CLI as a user would (default flags: all metrics but the thinned Rand error, one metric
process per CPU) and times it end to end. Then, in one process, predicts the same images and
recomputes every metric the direct way: each Rand variant labels every threshold itself and
counts pairs in a sparse contingency table (:func:`unet_jax.metrics.adapted_rand_error` on the
full label images), pixel errors by one comparison per threshold, and the warping error by
testing every mismatch in every pass. Prints one JSON line: both wall times and whether every
reported value is identical.

    python -m benchmarks.eval_speed --workdir runs/nuclei --data_dir ../shared/data/dsb2018_train

``--workdir``: a trained depth-3 run (e.g. ``benchmarks.own_data_quality --config nuclei``).
``--split train[137:]`` is 65 images of all of ``dsb2018_train``'s sizes (256x256 to 1040x1388).
``--thinned`` adds the thinned Rand error to both sides.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _reference_warp(truth, target, order):
    """The warp of :func:`unet_jax.metrics.warp_to`, testing every mismatch in every pass."""
    from unet_jax import metrics

    def simple(img, y, x):
        h, w = img.shape
        code = 0
        for i, (dy, dx) in enumerate(metrics._N8):
            yy, xx = y + dy, x + dx
            if 0 <= yy < h and 0 <= xx < w and img[yy, xx]:
                code |= 1 << i
        return metrics._T_FG[code] == 1 and metrics._T_BG[code] == 1

    warped = np.array(truth, bool)
    while True:
        ys, xs = np.nonzero(warped != target)
        idx = np.argsort(order[ys, xs], kind="stable")
        flipped = 0
        for y, x in zip(ys[idx].tolist(), xs[idx].tolist()):
            if simple(warped, y, x):
                warped[y, x] = target[y, x]
                flipped += 1
        if not flipped:
            return warped


def reference_row(probs, labels, true_instances, num_classes, to_instances, thinned):
    """One image's metrics, each computed the direct way (see the module docstring)."""
    from unet_jax import metrics

    fg = probs[..., 1:].sum(-1)
    truth = labels > 0
    true_seg = metrics.segments(truth)
    prob64 = fg.astype(np.float64)
    sweep = [0.5] if np.isin(fg, (0, 1)).all() else metrics.THRESHOLDS

    def rand(t, background, thin=False):
        seg = metrics.segments(prob64 > t)
        seg = metrics.thin_boundaries(prob64, seg) if thin else seg
        return metrics.adapted_rand_error(true_seg, metrics.with_singletons(seg) if background == "singletons"
                                          else seg)[0]

    singles = [rand(t, "singletons") for t in metrics.THRESHOLDS]
    dice, iou = metrics.dice_iou(probs.argmax(-1), labels, num_classes)
    warp = []
    for t in np.linspace(0.1, 0.9, 9):
        target = prob64 > t
        warp.append(int(np.sum(_reference_warp(truth, target, -np.abs(prob64 - t)) != target)))
    row = {"dice": float(np.mean(dice[1:])), "iou": float(np.mean(iou[1:])),
           "pixel_error": metrics.pixel_error(fg > 0.5, truth), "rand_error": float(min(singles)),
           "rand_error_coarse": float(min(e for e, t in zip(singles, metrics.THRESHOLDS)
                                          if t in metrics.COARSE_THRESHOLDS)),
           "rand_error_bg_segment": float(min(rand(t, "segment") for t in sweep)),
           "pixel_error_best_threshold": min(metrics.pixel_error(prob64 > t, truth) for t in metrics.THRESHOLDS),
           "warping_error": min(warp) / truth.size,
           **{f"dice_{c}": float(dice[c]) for c in range(num_classes)},
           **{f"iou_{c}": float(iou[c]) for c in range(num_classes)}}
    if thinned:
        row["rand_error_thinned"] = float(min(rand(t, "singletons", thin=True) for t in sweep))
    if true_instances.max() > 0:
        row.update(metrics.instance_metrics(true_instances, to_instances(probs)))
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a trained run")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--dataset", default="nuclei_dsb")
    p.add_argument("--split", default="train[137:]")
    p.add_argument("--thinned", action="store_true")
    a = p.parse_args()

    out = Path(tempfile.mkdtemp(prefix="eval_speed_")) / "eval.json"
    cmd = [sys.executable, "-m", "experiments.unet_evaluate", "--workdir", a.workdir, "--dataset", a.dataset,
           "--data_dir", a.data_dir, "--split", a.split, "--output", str(out)] + (["--thinned"] if a.thinned else [])
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    cli_s = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"unet_evaluate failed:\n{proc.stderr[-3000:]}")
    fast = json.loads(out.read_text())

    from unet_jax import evaluation, inference, runtime
    from unet_jax.data import builders

    runtime.setup(0)
    run = evaluation.load_trained(a.workdir)
    source = builders.load(a.dataset, builders.tfds_dir(run.config), a.data_dir, splits=(a.split,),
                           **builders.dataset_options(run.config, a.dataset))[a.split]
    to_instances = evaluation._instance_fn(run.config)
    t = time.perf_counter()
    rows, pixels = [], 0
    for i in range(len(source)):
        ex = source[i]
        probs = inference.predict_probs(run.config, run.predict, ex["image"])
        rows.append(reference_row(probs, ex["labels"], ex["instances"], run.config.model.num_classes,
                                  to_instances, a.thinned))
        pixels += ex["labels"].size
    reference_s = time.perf_counter() - t
    keys = sorted({k for r in rows for k in r})
    reference = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
    differ = {k: (fast.get(k), v) for k, v in reference.items() if fast.get(k) != v}
    print(json.dumps({"benchmark": "eval_speed", "cpu_count": os.cpu_count(), "images": len(rows),
                      "megapixels": round(pixels / 1e6, 2), "thinned": a.thinned, "depth": run.config.model.depth,
                      "unet_evaluate_wall_s": round(cli_s, 1), "reference_s": round(reference_s, 1),
                      "speedup": round(reference_s / cli_s, 1), "values_compared": len(reference),
                      "identical": not differ and fast["images"] == len(rows), "differ": differ,
                      "dsb_map": round(fast.get("dsb_map", float("nan")), 4)}))


if __name__ == "__main__":
    main()
