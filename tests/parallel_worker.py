"""Runs 3 train steps of a tiny U-Net on fixed batches in one parallel mode and saves the params.

Started by tests/test_parallel.py in its own process so that the device count
(--devices, via XLA_FLAGS) and multi-host set-up happen before JAX starts:

    python tests/parallel_worker.py --mode pmap --devices 8 --out params.npz
    python tests/parallel_worker.py --mode mesh --num_processes 2 --process_id 0 --coordinator 127.0.0.1:PORT ...
"""
import argparse
import os
import sys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", required=True)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--coordinator", default="")
    p.add_argument("--norm", default="batch")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={a.devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    import jax
    import numpy as np

    from unet_jax import parallel, train, unet
    from tests.helpers import tiny_config

    if a.num_processes > 1:
        parallel.initialize_distributed(a.coordinator, a.num_processes, a.process_id)
    config = tiny_config("")
    config.model.norm = a.norm
    size = train.tile_sizes(config)[0]
    b = config.batch_size
    state = train.create_state(config, jax.random.key(0, impl="rbg"))
    traces = []

    def step(*args, **kwargs):  # counts the traces of the step (one per compilation)
        traces.append(1)
        return train.train_step(*args, cfg=train.step_config(config), **kwargs)

    init = {"init" + jax.tree_util.keystr(k): np.asarray(v)  # before the state is donated
            for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
    runner = parallel.Runner(step, a.mode)
    if runner.mode == "pmap":
        state = state.replace(apply_fn=unet.from_config(config.model, parallel.AXIS).apply)
    dstate = runner.put_state(state)
    rng = np.random.default_rng(123)
    per = b // a.num_processes
    lo = a.process_id * per
    for _ in range(3):
        # the second half of the global batch is 6x brighter: batch statistics taken per device
        # or per process instead of over the global batch would change the result visibly
        scale = np.repeat(np.array([1.0, 6.0], np.float32), b // 2)[:, None, None, None]
        batch = {"image": rng.random((b, size, size, 1), np.float32) * scale,
                 "labels": rng.integers(0, 2, (b, size, size)).astype(np.int32),
                 "weights": rng.uniform(0.5, 3, (b, size, size)).astype(np.float32),
                 "index": np.arange(b, dtype=np.int32)}
        local = {k: v[lo:lo + per] for k, v in batch.items()}
        # placed on the devices ahead of the step, as the training loop's DevicePrefetch does
        dstate, metrics = runner(dstate, runner.put_device_batch(local), jax.random.key(7, impl="rbg"),
                                 placed=True)
    final = runner.get_state(dstate)
    leaves = jax.tree_util.tree_leaves_with_path(final.params)
    flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}
    if final.batch_stats is not None:
        flat.update({"bs" + jax.tree_util.keystr(k): np.asarray(v)
                     for k, v in jax.tree_util.tree_leaves_with_path(final.batch_stats)})
    flat["loss"] = np.asarray(runner.metrics(metrics)["loss"][0]) / np.asarray(runner.metrics(metrics)["loss"][1])
    flat.update(init)
    flat["traces"] = np.asarray(len(traces))  # 1 in every mode: no recompilation after step 1
    if jax.process_index() == 0:
        np.savez(a.out, **flat)
    print("devices", jax.device_count(), "processes", jax.process_count(), "mode", runner.mode)


if __name__ == "__main__":
    main()
