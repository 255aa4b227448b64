"""Data-parallel scaling on simulated CPU devices: train-step time for 1, 2, 4, 8 devices at a
fixed per-device batch, with pmap and with a device mesh, plus the correctness check that the
parallel step's parameters equal a single-device jit step on the same global batch.

A correctness-and-overhead table: the simulated devices share this machine's cores, so the
ideal step time grows in proportion to the device count (``ideal_ms`` = n x the 1-device time);
``overhead`` = measured / ideal - 1 is what the parallel step costs beyond its compute. Also
prints the bytes all-reduced per step (the gradients; batch statistics when batch norm is on),
the number the README's multi-GPU estimate starts from.

    python -m benchmarks.scaling [--devices 1,2,4,8] [--per_device_batch 2] [--tile 128]
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from unet_jax import runtime

ROOT = Path(__file__).resolve().parents[1]


def worker(a):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={a.n}").strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, str(ROOT))
    import functools
    import time

    import jax
    import numpy as np

    from experiments.configs import default
    from unet_jax import parallel, train, unet

    config = default.get_config()
    config.data.tile_size = a.tile
    config.batch_size = a.per_device_batch * a.n
    size = train.tile_sizes(config)[0]
    rng = np.random.default_rng(0)
    b = config.batch_size
    batch = {"image": rng.random((b, size, size, 1), np.float32),
             "labels": rng.integers(0, 2, (b, size, size)).astype(np.int32),
             "weights": rng.uniform(0.5, 3, (b, size, size)).astype(np.float32),
             "index": np.arange(b, dtype=np.int32)}
    key = jax.random.key(7, impl="rbg")
    state0 = jax.tree.map(np.asarray, train.create_state(config, jax.random.key(0, impl="rbg")))
    step = functools.partial(train.train_step, cfg=train.step_config(config))
    rows, reference = [], None
    for mode in ("jit", "pmap", "mesh") if a.n > 1 else ("jit",):
        runner = parallel.Runner(step, mode)
        state = jax.tree.map(np.array, state0)  # a fresh copy: the step donates its state
        if runner.mode == "pmap":
            state = state.replace(apply_fn=unet.from_config(config.model, parallel.AXIS).apply)
        dstate = runner.put_state(state)
        dstate, m = runner(dstate, batch, key)  # compile + first step
        times = []
        for _ in range(a.steps):
            t = time.perf_counter()
            dstate, m = runner(dstate, batch, key)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t)
        params = jax.tree.leaves(jax.tree.map(np.array, runner.get_state(dstate).params))  # after 1 + steps
        reference = reference or params  # "jit" runs first
        rows.append({"mode": mode if mode != "jit" else "jit_one_device",
                     "step_ms": round(float(np.median(times)) * 1e3, 1),
                     "max_abs_param_diff_vs_jit": float(max(np.max(np.abs(x - y))
                                                            for x, y in zip(params, reference)))})
    grad_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state0.params))
    stats_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state0.batch_stats or {}))
    print(json.dumps({"devices": a.n, "per_device_batch": a.per_device_batch, "tile": size,
                      "allreduce_bytes_per_step": grad_bytes + stats_bytes, "rows": rows}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", default="1,2,4,8")
    p.add_argument("--per_device_batch", type=int, default=2)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)  # worker process
    a = p.parse_args()
    runtime.setup()
    if a.n:
        return worker(a)
    base = None
    for n in [int(d) for d in a.devices.split(",")]:
        out = subprocess.run([sys.executable, "-m", "benchmarks.scaling", "--n", str(n),
                              "--per_device_batch", str(a.per_device_batch), "--tile", str(a.tile),
                              "--steps", str(a.steps)], cwd=ROOT, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{n} devices failed:\n{out.stderr[-2000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        if base is None:
            base = res["rows"][0]["step_ms"] / n
        for r in res["rows"]:
            ideal = base * n
            print(json.dumps({"benchmark": "scaling", "devices": n, "mode": r["mode"],
                              "global_batch": n * a.per_device_batch, "tile": res["tile"],
                              "step_ms": r["step_ms"], "ideal_ms": round(ideal, 1),
                              "overhead": round(r["step_ms"] / ideal - 1, 3),
                              "max_abs_param_diff_vs_jit": r["max_abs_param_diff_vs_jit"],
                              "allreduce_bytes_per_step": res["allreduce_bytes_per_step"]}))


if __name__ == "__main__":
    main()
