"""The main job as a user runs it: wall time and final held-out Dice of
`python -m experiments.unet_segment --workdir DIR` with the default config (target:
<= 10 minutes on 2 CPU cores, held-out foreground Dice >= 0.90). Prints one JSON line.

    python -m benchmarks.unet_default_run [--tfds_dir DIR] [extra --config.x=y ...]

The dataset is prepared in a fresh temporary TFDS folder unless --tfds_dir is given, so the
time includes preparing it, as on a fresh machine.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tfds_dir", default="")
    a, extra = p.parse_known_args()
    workdir = Path(tempfile.mkdtemp(prefix="unet_default_"))
    tfds_dir = a.tfds_dir or str(workdir / "tfds")
    cmd = [sys.executable, "-m", "experiments.unet_segment", "--workdir", str(workdir / "run"),
           f"--config.data.tfds_dir={tfds_dir}", "--config.progress=False", *extra]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    wall = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"run failed:\n{proc.stderr[-3000:]}")
    s = json.loads((workdir / "run" / "summary.json").read_text())
    print(json.dumps({"benchmark": "unet_default_run", "cpu_count": os.cpu_count(),
                      "wall_time_s": round(wall, 1), "train_time_s": s["train_time_s"], "steps": s["step"],
                      "val_dice": round(s["val_dice"], 4), "val_pixel_error": round(s["val_pixel_error"], 4),
                      "val_rand_error": round(s["val_rand_error"], 4), "target_wall_s": 600,
                      "target_dice": 0.90, "meets_target": wall <= 600 and s["val_dice"] >= 0.90,
                      "workdir": str(workdir / "run")}))


if __name__ == "__main__":
    main()
