"""Does the training loop keep up with the step? Two JSON lines:

* ``host_loader``: the training loader's rate at the paper's 572x572 input tiles (ISBI-sized
  512x512 images, batch 1), with one read thread (the rate per core) and with ``--threads``;
  ``tiles_per_s_16_cores`` is the per-core rate x 16, the cores of a typical GPU node (target
  >= 600: a GPU's batch-1 step takes about 4 ms).
* ``loop_vs_step``: a tiny U-Net on CPU whose step takes about a millisecond, so that per-step
  host work shows: the bare compiled step (batch on the device, donated state, one sync at the
  end) against ``train.train_and_evaluate`` at the same shapes (loader, device copies, metric
  log, progress bar, stop checks). Both are timed over windows of ``log_every`` (20) steps, each
  ended by a sync (the loop's metric lines; the first, which compiles, is left out); rounds
  alternate step and loop, and medians are reported. Target: overhead <= 0.3 ms per step. The
  overhead is split by two more runs: the loader replaced by one fixed batch (``loader_ms``),
  and that batch also placed on the device once (``device_copy_ms``); what is left is the
  loop's own work on its thread (``loop_itself_ms``). On a 2-core CPU the loader's and the
  copies' threads take cores from the step; on a GPU machine they run on cores of their own.

    python -m benchmarks.loop_speed [--rounds 5] [--output FILE]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import statistics
import tempfile
import time

import jax
import numpy as np

from benchmarks import jsonl
from experiments.configs import default
from unet_jax import parallel, runtime, train
from unet_jax.data import builders, loader
from unet_jax.writers import read_jsonl


def loader_rate(source, threads: int, seconds: float) -> float:
    """Tiles/s of the training loader at the paper's tile (388 output + 2 x 92 context)."""
    tile = loader.TileConfig(out_size=388, context=92, foreground_prob=0.0)
    it = iter(loader.make_train_loader(source, tile, 1, seed=0, num_threads=threads))
    for _ in range(2 * len(source)):  # past the first epoch (files read once)
        next(it)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        n += len(next(it)["index"])
    return n / (time.perf_counter() - t)


def tiny_config(tfds_dir: str, steps: int):
    c = default.get_config()
    c.model.features, c.model.depth = 4, 2
    c.data.tfds_dir = tfds_dir
    c.data.synthetic_size, c.data.synthetic_train, c.data.synthetic_test = 64, 8, 1
    c.data.tile_size, c.data.eval_tile_size = 16, 64
    c.augment.enabled = False
    c.optim.schedule, c.optim.warmup_steps = "constant", 0
    c.batch_size, c.num_steps = 1, steps
    c.eval_every, c.checkpoint_every, c.eval_max_images = 0, 10 ** 6, 1
    c.loader_threads = 1
    return c


def bare_step_ms(config, steps: int, window: int) -> float:
    """The compiled step alone, on one batch already on the device: the median time per step
    over windows of ``window`` steps, each ended by a sync as a log step is."""
    state = train.create_state(config, jax.random.key(0, impl="rbg"))
    runner = parallel.Runner(functools.partial(train.train_step, cfg=train.step_config(config)), "jit")
    s = train.tile_sizes(config)[0]
    rng = np.random.default_rng(0)
    batch = jax.device_put({"image": rng.random((1, s, s, 1), np.float32),
                            "labels": rng.integers(0, 2, (1, s, s)).astype(np.int32),
                            "weights": np.ones((1, s, s), np.float32), "index": np.zeros(1, np.int32)})
    key = jax.random.key(0, impl="rbg")
    state, m = runner(state, batch, key, placed=True)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps // window):
        t = time.perf_counter()
        for _ in range(window):
            state, m = runner(state, batch, key, placed=True)
        jax.block_until_ready(m)
        times.append((time.perf_counter() - t) / window)
    return statistics.median(times) * 1e3


def loop_ms(config) -> float:
    """A whole run's time per step: the median over its log windows (``log_every`` steps from
    one metric line to the next, all host work included) after the first."""
    workdir = tempfile.mkdtemp(prefix="loop_")
    with contextlib.redirect_stdout(io.StringIO()):
        train.train_and_evaluate(config, workdir)
    rates = [line["train_images_per_s"] for line in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
             if "train_images_per_s" in line][1:]
    return config.batch_size / statistics.median(rates) * 1e3


class _FixedBatches:
    """The loader's first batch, handed out again and again (the loader's own work left out)."""

    def __init__(self, it):
        self.it, self.batch = it, next(it)

    def __iter__(self):
        return self

    def __next__(self):
        return self.batch

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)


def loop_ms_without(config, placed: bool) -> float:
    """:func:`loop_ms` with the loader replaced by one fixed batch, still copied to the device
    every step; with ``placed`` the copy is left out too, which leaves the loop's own work."""
    batches, put = train._train_batches, parallel.Runner.put_device_batch
    placed_once = {}

    def put_once(runner, batch):
        if "batch" not in placed_once:
            placed_once["batch"] = put(runner, batch)
        return placed_once["batch"]

    train._train_batches = lambda c, source: _FixedBatches(batches(c, source))
    if placed:
        parallel.Runner.put_device_batch = put_once
    try:
        return loop_ms(config)
    finally:
        train._train_batches, parallel.Runner.put_device_batch = batches, put


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=5.0, help="per loader measurement")
    p.add_argument("--steps", type=int, default=2000, help="steps of each loop run and bare-step round")
    p.add_argument("--label", default="", help="a note stored in the JSON (e.g. before / after)")
    p.add_argument("--output", default="", help="also append the JSON lines to this file")
    a = p.parse_args(argv)
    runtime.setup()
    tmp = tempfile.mkdtemp(prefix="loop_speed_")
    lines = jsonl.Lines(a.output, **({"label": a.label} if a.label else {}))
    emit = lines.emit

    src = builders.load("synthetic_cells", os.path.join(tmp, "tfds512"), size=512, num_train=20,
                        num_test=1)["train"]
    one = statistics.median(loader_rate(src, 1, a.seconds) for _ in range(3))
    many = loader_rate(src, a.threads, a.seconds)
    emit({"benchmark": "host_loader", "tile": 572, "images": "20 x 512x512", "batch": 1,
          "tiles_per_s_per_core": round(one, 1), f"tiles_per_s_{a.threads}_threads": round(many, 1),
          "tiles_per_s_16_cores": round(16 * one, 1), "meets_target": 16 * one >= 600,
          "cpu": os.cpu_count()})

    config = tiny_config(os.path.join(tmp, "tfds64"), a.steps)
    builders.load_train_eval(config)  # prepared once, outside the timings
    step, loop, fixed, placed = [], [], [], []
    for _ in range(a.rounds):
        step.append(bare_step_ms(config, a.steps, config.log_every))
        loop.append(loop_ms(config))
        fixed.append(loop_ms_without(config, placed=False))
        placed.append(loop_ms_without(config, placed=True))
    s, lp = statistics.median(step), statistics.median(loop)
    breakdown = {"loader_ms": statistics.median(loop) - statistics.median(fixed),
                 "device_copy_ms": statistics.median(fixed) - statistics.median(placed),
                 "loop_itself_ms": statistics.median(placed) - s}
    emit({"benchmark": "loop_vs_step", "tile": train.tile_sizes(config)[0], "batch": 1, "features": 4,
          "depth": 2, "rounds": a.rounds, "step_ms": round(s, 3), "loop_ms": round(lp, 3),
          "overhead_ms": round(lp - s, 3), "step_over_loop": round(s / lp, 3),
          "overhead_breakdown_ms": {k: round(v, 3) for k, v in breakdown.items()},
          "step_ms_rounds": [round(v, 3) for v in step], "loop_ms_rounds": [round(v, 3) for v in loop],
          "meets_target": lp - s <= 0.3})
    return lines


if __name__ == "__main__":
    main()
