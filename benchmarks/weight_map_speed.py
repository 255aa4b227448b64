"""Weight-map speed: 512x512 instance map with >= 100 cells, pinned to one CPU core
(target: <= 1 s). Prints one JSON line.

    python -m benchmarks.weight_map_speed
"""
import json
import os
import time

import numpy as np


def main():
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from unet_jax import losses
    from unet_jax.data import synthetic

    sample = synthetic.generate(0, 512, cell_radius=20)
    instances = sample["instances"]
    times = []
    for _ in range(6):
        t = time.perf_counter()
        w = losses.weight_map(instances, w0=10, sigma=5)
        times.append(time.perf_counter() - t)
    exact_t = time.perf_counter()
    exact = losses.weight_map(instances, w0=10, sigma=5, tol=0)
    exact_t = time.perf_counter() - exact_t
    med = float(np.median(times[1:]))
    print(json.dumps({
        "benchmark": "weight_map_speed", "size": list(instances.shape),
        "cells": int(instances.max()), "cores": 1, "median_s": round(med, 4),
        "exact_tol0_s": round(exact_t, 4), "max_abs_diff_vs_exact": float(np.abs(w - exact).max()),
        "target_s": 1.0, "meets_target": med <= 1.0 and int(instances.max()) >= 100}))


if __name__ == "__main__":
    main()
