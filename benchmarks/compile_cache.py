"""Time to the first finished step with JAX's persistent compilation cache cold and warm: the
main job's CLI run twice on one configuration, each time in a new workdir, first with an empty
cache folder, then with the one the first run filled. One JSON line per configuration: the
default main job and the ISBI 2012 CPU variant.

``compile_s`` is the run's own figure (summary.json: from the loaded dataset to the end of the
first step, so compiling, or loading compiled programs, and the first batch); ``wall_s`` is the
whole command (start-up, dataset, the steps, final validation).

    python -m benchmarks.compile_cache [--isbi_dir ../shared/data/isbi2012] [--output FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import jsonl

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {
    "default": [],
    "isbi2012_cpu": ["--config", "experiments/configs/isbi2012.py:cpu", "--config.eval_tta=False"],
}


def run(workdir: Path, cache: Path, tfds: Path, flags: list[str]) -> dict:
    env = {**os.environ, "UNET_JAX_COMPILATION_CACHE": str(cache)}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "experiments.unet_segment", "--workdir", str(workdir), *flags,
                           f"--config.data.tfds_dir={tfds}", "--config.num_steps=3", "--config.eval_every=0",
                           "--config.progress=False"], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"{' '.join(flags) or 'default'} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((workdir / "summary.json").read_text())
    return {"compile_s": summary["compile_s"], "wall_s": round(wall, 1),
            "cache_files": len(list(cache.iterdir())) if cache.exists() else 0}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--isbi_dir", default=str(ROOT.parent / "shared" / "data" / "isbi2012"))
    p.add_argument("--output", default="", help="also append the JSON lines to this file")
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="compile_cache_"))
    for name, flags in CONFIGS.items():
        if name.startswith("isbi"):
            flags = [*flags, f"--config.data.data_dir={a.isbi_dir}"]
        cache, tfds = tmp / name / "cache", tmp / name / "tfds"
        cold = run(tmp / name / "cold", cache, tfds, flags)
        warm = run(tmp / name / "warm", cache, tfds, flags)
        line = {"benchmark": "compile_cache", "config": name, "cold": cold, "warm": warm,
                "compile_speedup": round(cold["compile_s"] / warm["compile_s"], 1),
                "warm_compiled_nothing_new": warm["cache_files"] == cold["cache_files"],
                "cpu": os.cpu_count()}
        jsonl.Lines(a.output).emit(line)


if __name__ == "__main__":
    main()
