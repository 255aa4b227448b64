"""A practitioner's own data, end to end: trains a config from ``experiments/configs`` with the
main job's CLI (its ``time_budget_s`` caps training), then evaluates the final step on the
held-out split as ``unet_evaluate`` does (not the "best" checkpoint, which periodic validation
on that same split chose). Prints one JSON line with per-class Dice / IoU,
instance metrics where the data has instances, and the config's targets.

    python -m benchmarks.own_data_quality --config wbc --data_dir ../shared/data/wbc_dataset1
    python -m benchmarks.own_data_quality --config nuclei --data_dir ../shared/data/dsb2018_train

Targets (held out, after at most 30 minutes of training on 2 CPU cores): wbc, Dice >= 0.90 for
both the nucleus and the cytoplasm; nuclei, DSB 2018 mean AP >= 0.45.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"wbc": {"dice_1": 0.90, "dice_2": 0.90}, "nuclei": {"dsb_map": 0.45}}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=sorted(TARGETS), required=True)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--workdir", default="")
    p.add_argument("--tfds_dir", default="")
    p.add_argument("--evaluate_only", action="store_true", help="evaluate a trained --workdir again")
    a, extra = p.parse_known_args()
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix=f"own_{a.config}_"))
    tfds_dir = a.tfds_dir or str(workdir.parent / f"{workdir.name}_tfds")
    cmd = [sys.executable, "-m", "experiments.unet_segment", "--workdir", str(workdir),
           "--config", f"experiments/configs/{a.config}.py", f"--config.data.data_dir={a.data_dir}",
           f"--config.data.tfds_dir={tfds_dir}", "--config.progress=False", *extra]
    t = time.perf_counter()
    if not a.evaluate_only:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"training failed:\n{proc.stderr[-3000:]}")
    wall = time.perf_counter() - t
    train_summary = json.loads((workdir / "summary.json").read_text())

    from unet_jax import evaluation, runtime
    from unet_jax.data import builders

    runtime.setup(0)
    run = evaluation.load_trained(workdir, step=train_summary["step"])
    _, held_out = builders.load_train_eval(run.config)
    t = time.perf_counter()
    results, _ = evaluation.evaluate(run.config, run.predict, held_out, warping=False,
                                     workers=len(os.sched_getaffinity(0)))
    eval_s = time.perf_counter() - t
    targets = TARGETS[a.config]
    keys = [k for k in results if k.startswith(("dice", "iou")) or k in
            ("pixel_error", "ap@0.5", "dsb_map", "pq", "f1@0.5", "n_true", "n_pred")]
    print(json.dumps({"benchmark": "own_data_quality", "config": a.config, "cpu_count": os.cpu_count(),
                      "train_time_s": train_summary["train_time_s"], "steps": train_summary["step"],
                      "wall_time_s": None if a.evaluate_only else round(wall, 1), "eval_time_s": round(eval_s, 1),
                      "checkpoint_step": run.step, "held_out_images": results["images"],
                      **{k: round(results[k], 4) for k in keys}, "targets": targets,
                      "meets_target": all(results.get(k, -1) >= v for k, v in targets.items()),
                      "workdir": str(workdir)}))


if __name__ == "__main__":
    main()
