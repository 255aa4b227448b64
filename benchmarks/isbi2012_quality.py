"""ISBI 2012 quality: train with experiments/configs/isbi2012.py (the :cpu variant by default)
on slices 00-19 of ../shared/data/isbi2012, evaluate slices 20-24 with test-time augmentation,
and print the training wall time and the pixel, Rand and warping errors as one JSON line
(target within a 60-minute training budget on 2 CPU cores: pixel error <= 0.09, Rand
error <= 0.08). ``pixel_error`` thresholds at 0.5 (``pixel_error_best_threshold``: the best of
0.01 ... 0.99 on each test image; ``pixel_error_calibrated``: at the one threshold with the
smallest pixel error on the training slices 00-19); ``rand_error`` (minimised over thresholds
0.01 ... 0.99; ``rand_error_coarse``: over 0.05 ... 0.95) counts predicted boundary pixels as
singletons as the ISBI 2012 / SNEMI3D scoring does (``rand_error_bg_segment``: as one segment,
skimage on a label image with zeros; ``rand_error_thinned``: singletons after border thinning,
as the ISBI 2012 leaderboard's later scoring); see unet_jax/metrics.py.
``meets_target`` uses pixel_error (at 0.5) and rand_error; ``meets_target_calibrated`` uses
pixel_error_calibrated (threshold chosen on the training slices, not the test ones) and rand_error.

    python -m benchmarks.isbi2012_quality [--variant cpu] [--workdir DIR]
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "isbi2012"))
    p.add_argument("--variant", default="cpu")
    p.add_argument("--workdir", default="")
    a, extra = p.parse_known_args()
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="isbi_bench_"))
    tfds = workdir / "tfds"
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "experiments.unet_segment", "--workdir", str(workdir / "run"),
                          "--config", f"experiments/configs/isbi2012.py:{a.variant}",
                          f"--config.data.data_dir={a.data_dir}", f"--config.data.tfds_dir={tfds}",
                          "--config.progress=False", *extra], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if run.returncode:
        sys.exit(f"training failed:\n{run.stderr[-3000:]}")
    summary = json.loads((workdir / "run" / "summary.json").read_text())
    ev = subprocess.run([sys.executable, "-m", "experiments.unet_evaluate", "--workdir", str(workdir / "run"),
                         "--dataset", "isbi2012", "--data_dir", a.data_dir, "--split", "train[20:]",
                         "--tfds_dir", str(tfds), "--tta", "--output", str(workdir / "eval.json"),
                         "--calibrate_split", "train[:20]", "--thinned"],
                        cwd=ROOT, capture_output=True, text=True)
    if ev.returncode:
        sys.exit(f"evaluation failed:\n{ev.stderr[-3000:]}")
    res = json.loads((workdir / "eval.json").read_text())
    targets = {"pixel_error": 0.09, "rand_error": 0.08, "train_time_s": 3600}
    rand_and_time_met = (res["rand_error"] <= targets["rand_error"]
                         and summary["train_time_s"] <= targets["train_time_s"])
    print(json.dumps({"benchmark": "isbi2012_quality", "variant": a.variant, "train_time_s": summary["train_time_s"],
                      "run_wall_s": round(wall, 1), "steps": summary["step"],
                      "pixel_error": round(res["pixel_error"], 4),
                      "pixel_error_best_threshold": round(res["pixel_error_best_threshold"], 4),
                      "pixel_error_calibrated": round(res["pixel_error_calibrated"], 4),
                      "calibrated_threshold": res["calibrated_threshold"],
                      "rand_error": round(res["rand_error"], 4),
                      "rand_error_coarse": round(res["rand_error_coarse"], 4),
                      "rand_error_bg_segment": round(res["rand_error_bg_segment"], 4),
                      "rand_error_thinned": round(res["rand_error_thinned"], 4),
                      "warping_error": round(res["warping_error"], 6), "dice_cells": round(res["dice_1"], 4),
                      "targets": targets,
                      "meets_target": res["pixel_error"] <= targets["pixel_error"] and rand_and_time_met,
                      "meets_target_calibrated": res["pixel_error_calibrated"] <= targets["pixel_error"]
                      and rand_and_time_met,
                      "workdir": str(workdir)}))


if __name__ == "__main__":
    main()
