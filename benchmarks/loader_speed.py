"""Loader and augmentation throughput at 512x512 next to the default model's train-step
consumption (target: loader >= 3x the step's rate). Prints one JSON line.

    python -m benchmarks.loader_speed
"""
import functools
import json
import os
import tempfile
import time

import jax
import numpy as np

from experiments.configs import default
from unet_jax import runtime, train
from unet_jax.data import augment, builders, loader


def main():
    runtime.setup()
    tmp = tempfile.mkdtemp(prefix="loader_bench_")
    src = builders.load("synthetic_cells", tmp, size=512, num_train=8, num_test=1)["train"]
    # host loader: read + random 512x512 tile (+ mirrored context of a depth-4 valid U-Net)
    it = iter(loader.make_train_loader(src, loader.TileConfig(out_size=512 - 2 * 92, context=92), 4,
                                       seed=0, num_threads=2))
    next(it)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < 10:
        n += len(next(it)["index"])
    loader_rate = n / (time.perf_counter() - t)
    # on-device augmentation (elastic + flips/rotations + grey values) of 512x512 batches
    batch = next(it)
    aug = jax.jit(functools.partial(augment.augment_batch, cfg=augment.AugmentConfig()))
    jax.block_until_ready(aug(jax.random.key(0), batch))
    reps, t = 5, time.perf_counter()
    for i in range(reps):
        jax.block_until_ready(aug(jax.random.key(i), batch))
    aug_rate = reps * len(batch["index"]) / (time.perf_counter() - t)
    # the default model's train step (128x128 tiles, batch 8), in 512x512-image equivalents
    c = default.get_config()
    state = train.create_state(c, jax.random.key(0, impl="rbg"))
    s = train.tile_sizes(c)[0]
    rng = np.random.default_rng(0)
    b = {"image": rng.random((8, s, s, 1), np.float32), "labels": rng.integers(0, 2, (8, s, s)).astype(np.int32),
         "weights": np.ones((8, s, s), np.float32), "index": np.arange(8, dtype=np.int32)}
    step = jax.jit(functools.partial(train.train_step, cfg=train.step_config(c)))
    state, m = step(state, b, jax.random.key(0, impl="rbg"))
    jax.block_until_ready(m)
    t = time.perf_counter()
    for i in range(3):
        state, m = step(state, b, jax.random.key(i, impl="rbg"))
        jax.block_until_ready(m)
    step_tiles = 3 * 8 / (time.perf_counter() - t)
    step_equiv_512 = step_tiles * (s * s) / (512 * 512)
    print(json.dumps({"benchmark": "loader_speed", "cpu_count": os.cpu_count(),
                      "loader_images_per_s_512": round(loader_rate, 1),
                      "augment_images_per_s_512": round(aug_rate, 1),
                      "train_step_tiles_per_s_128": round(step_tiles, 2),
                      "train_step_512_equivalent_per_s": round(step_equiv_512, 3),
                      "loader_over_step": round(loader_rate / step_equiv_512, 1),
                      "meets_target": loader_rate >= 3 * step_equiv_512}))


if __name__ == "__main__":
    main()
