"""The prepared check for a lent GPU: one command that fits one 10-minute device call, each stage
under its own time limit, JSON lines written as it goes (a stage cut off still leaves the lines
before it).

Stages:
1. ``devices``: backend, devices, JAX / jaxlib / Python versions;
2. ``gpu_speed``: ``benchmarks.gpu_speed`` at batches 1 and 8 in bfloat16 (bare step, whole
   loop, inference);
3. ``train``: the paper configuration (``experiments/configs/isbi2012.py``: valid U-Net, 64
   features, w0 = 10, SGD with momentum 0.99, batch 1, 572x572 tiles) in bfloat16 for its
   20,000 steps on ISBI slices 00-19, by the main job's CLI; at its limit the run gets SIGTERM,
   saves a checkpoint and the check goes on;
4. ``evaluate``: ``unet_evaluate`` on slices 20-24 with test-time augmentation, the threshold
   calibrated on slices 00-19 (Table 1: pixel, Rand and warping error).

Every stage runs in its own process; the last line (``stage: done``) sums up. ``--smoke`` runs
every stage on tiny shapes on the CPU (tests/test_benchmarks.py does).

    python -m benchmarks.gpu_check --data_dir gpudata/isbi2012 --output $OUT/gpu_check.jsonl
    python -m benchmarks.gpu_check --smoke --data_dir ../shared/data/isbi2012 --output check.jsonl

``../shared/gpu/RUNBOOK.md`` says what to carry to a lent machine (packages, the ISBI slices).
"""
from __future__ import annotations

import argparse
import json
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import jsonl

ROOT = Path(__file__).resolve().parents[1]

# stage limits (s) of a full check; they add up to 9.5 minutes
LIMITS = {"devices": 60, "gpu_speed": 150, "train": 270, "evaluate": 90}

# the paper configuration as the check trains it
TRAIN_FLAGS = ["--config", "experiments/configs/isbi2012.py", "--config.model.dtype=bfloat16",
               "--config.progress=False"]
GPU_SPEED_FLAGS = ["--batches", "1,8", "--dtypes", "bfloat16", "--steps", "20", "--inference_batch", "8"]
# tiny shapes for --smoke: every stage's code path on the CPU in about a minute
SMOKE_TRAIN_FLAGS = ["--config.model.features=4", "--config.model.depth=2", "--config.model.dtype=float32",
                     "--config.data.tile_size=28", "--config.data.eval_tile_size=92", "--config.num_steps=3",
                     "--config.log_every=1", "--config.eval_tta=False"]
SMOKE_GPU_SPEED_FLAGS = ["--size", "92", "--features", "4", "--depth", "2", "--batches", "1", "--dtypes",
                         "float32", "--steps", "2", "--loop_steps", "3", "--inference_batch", "0",
                         "--no_agreement"]
SPLITS = {"eval": "train[20:]", "calibrate": "train[:20]"}  # slices 20-24; the training slices
SMOKE_SPLITS = {"eval": "train[20:21]", "calibrate": "train[:1]"}

VERSIONS = """
import json, platform, sys
import jax, jaxlib
d = jax.devices()
print(json.dumps({"backend": jax.default_backend(), "device": d[0].device_kind, "devices": len(d),
                  "jax": jax.__version__, "jaxlib": jaxlib.__version__, "python": platform.python_version()}))
"""


def run_stage(name: str, cmd: list[str], limit: float, log) -> dict:
    """Runs ``cmd`` from the project root with at most ``limit`` seconds; past it the command
    gets SIGTERM (a training run saves a checkpoint and exits), then SIGKILL 30 s later."""
    t = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=out, text=True)
        try:
            stdout, _ = proc.communicate(timeout=limit)
            cut = False
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                stdout, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, _ = proc.communicate()
            cut = True
        out.write(stdout)
    return {"stage": name, "rc": proc.returncode, "cut_at_limit": cut, "limit_s": limit,
            "wall_s": round(time.perf_counter() - t, 1), "stdout": stdout}


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True, help="ISBI 2012 slices (images/NN.png, labels/NN.png)")
    p.add_argument("--output", required=True, help="JSON lines, appended as each stage ends")
    p.add_argument("--workdir", default="", help="the training run's folder (default: a new temporary one)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the stages run")
    p.add_argument("--limits", default="", help="stage limits, e.g. train=300,evaluate=120")
    a = p.parse_args(argv)
    limits = dict(LIMITS)
    for item in filter(None, a.limits.split(",")):
        key, value = item.split("=")
        if key not in limits:
            p.error(f"--limits: unknown stage {key!r}; stages: {', '.join(limits)}")
        limits[key] = float(value)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "gpu_check.log"  # every stage's stderr and stdout
    lines = jsonl.Lines(a.output)
    emit = lines.emit

    py = sys.executable
    t0 = time.perf_counter()
    r = run_stage("devices", [py, "-c", VERSIONS], limits["devices"], log)
    emit({"stage": "devices", "rc": r["rc"], **(json_lines(r["stdout"]) or [{}])[-1],
          "smoke": a.smoke, "host": platform.node()})

    speed_out = work / "gpu_speed.jsonl"
    r = run_stage("gpu_speed", [py, "-m", "benchmarks.gpu_speed", "--output", str(speed_out),
                                *(SMOKE_GPU_SPEED_FLAGS if a.smoke else GPU_SPEED_FLAGS)], limits["gpu_speed"], log)
    speed = json_lines(speed_out.read_text()) if speed_out.exists() else []
    for d in speed:
        emit({"stage": "gpu_speed", **d})
    emit({"stage": "gpu_speed", "rc": r["rc"], "cut_at_limit": r["cut_at_limit"], "wall_s": r["wall_s"]})

    splits = SMOKE_SPLITS if a.smoke else SPLITS
    run = work / "isbi_paper"
    tfds = work / "tfds"
    common = [f"--config.data.data_dir={a.data_dir}", f"--config.data.tfds_dir={tfds}",
              f"--config.data.eval_split={splits['eval']}"]
    r = run_stage("train", [py, "-m", "experiments.unet_segment", "--workdir", str(run), *TRAIN_FLAGS, *common,
                            *(SMOKE_TRAIN_FLAGS if a.smoke else [])], limits["train"], log)
    train_wall = r["wall_s"]
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    emit({"stage": "train", "rc": r["rc"], "cut_at_limit": r["cut_at_limit"], "wall_s": r["wall_s"],
          **{k: summary.get(k) for k in ("step", "compile_s", "train_time_s", "val_dice", "val_pixel_error",
                                         "val_rand_error")},
          "images_per_s": round((summary["step"] - 1) / summary["train_time_s"], 1)
          if summary.get("train_time_s") else None})

    ev = work / "eval.json"
    r = run_stage("evaluate", [py, "-m", "experiments.unet_evaluate", "--workdir", str(run), "--dataset", "isbi2012",
                               "--data_dir", a.data_dir, "--tfds_dir", str(tfds), "--split", splits["eval"],
                               "--calibrate_split", splits["calibrate"], "--tta", "--output", str(ev)],
                  limits["evaluate"], log)
    res = json.loads(ev.read_text()) if ev.exists() else {}
    keys = ("rand_error", "pixel_error", "pixel_error_calibrated", "calibrated_threshold", "warping_error", "dice_1")
    emit({"stage": "evaluate", "rc": r["rc"], "cut_at_limit": r["cut_at_limit"], "wall_s": r["wall_s"],
          **{k: res.get(k) for k in keys}})

    ok = all(d.get("rc") == 0 for d in lines if "rc" in d)
    total = time.perf_counter() - t0
    done = {"stage": "done", "all_stages_ok": ok, "wall_s": round(total, 1), "log": str(log)}
    mfu8 = [d["mfu"] for d in speed if d.get("benchmark") == "gpu_train" and d.get("batch") == 8]
    done["targets"] = {"train_and_evaluate_s": 480, "rand_error": 0.06, "pixel_error": 0.08, "mfu_batch_8": 0.5}
    done["results"] = {"train_and_evaluate_s": round(train_wall + r["wall_s"], 1),
                       "rand_error": res.get("rand_error"), "pixel_error": res.get("pixel_error_calibrated"),
                       "mfu_batch_8": mfu8[0] if mfu8 else None}
    if not a.smoke:
        done["meets_targets"] = {k: v is not None and v <= t if k != "mfu_batch_8" else v is not None and v >= t
                                 for (k, t), v in zip(done["targets"].items(), done["results"].values())}
    emit(done)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
