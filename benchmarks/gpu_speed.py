"""Paper-size U-Net speed on an accelerator: training images/s and model-FLOPs utilisation (MFU)
of the library's own train step at several batch sizes and compute dtypes, inference images/s,
and the card's measured matrix-product rate, as JSON lines.

The step is ``unet_jax.train.train_step`` (weighted cross-entropy with a weight map, valid
U-Net, 572x572 input tiles, 388x388 outputs, SGD with momentum 0.99 after the paper config's
warm-up) on synthetic cells, run through ``parallel.Runner`` with donated state and batches
already on the device; time is the wall time of ``--steps`` consecutive steps with one
synchronisation at the end (no per-step host sync), after a warm-up step. The whole training
loop (``train.train_and_evaluate`` with the loader, device copies and logs) is timed at the
first two batch sizes too (``gpu_loop``, ``loop_over_step``). Model FLOPs are
counted from the network's convolutions (2 x multiply-adds; a training step is 3x the forward
pass: forward, input gradient, kernel gradient) and checked against XLA's cost analysis on CPU
by tests/test_benchmarks.py. MFU = model FLOP/s / ``--peak_tflops`` (dense bf16 of the H100 /
H200 SXM datasheet by default).

    python -m benchmarks.gpu_speed                       # batches 1, 8 and the largest that fits
    python -m benchmarks.gpu_speed --batches 1,8 --dtypes bfloat16,float32 --steps 10
    python -m benchmarks.gpu_speed --size 188 --features 8 --batches 1 --steps 2   # CPU smoke run
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import jsonl
from experiments.configs import isbi2012
from unet_jax import layers, losses, parallel, runtime, train, unet
from unet_jax.data import augment, synthetic


def model_flops(model: nn.Module, input_shape) -> float:
    """Forward-pass FLOPs (2 x multiply-adds) of every convolution and up-convolution in
    ``model`` for an input of ``input_shape`` [B, H, W, C], found by intercepting the modules'
    calls while tracing the shapes only."""
    macs = []

    def count(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        m = context.module
        if context.method_name == "__call__":
            if isinstance(m, nn.Conv):
                macs.append(np.prod(out.shape) * np.prod(m.kernel_size) * args[0].shape[-1])
            elif isinstance(m, layers.ConvTranspose2x2):
                macs.append(np.prod(out.shape) * args[0].shape[-1])  # one input pixel per output
        return out

    with nn.intercept_methods(count):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(input_shape, jnp.float32))
    return 2.0 * float(sum(macs))


def matmul_tflops(dtype, n: int = 8192, reps: int = 10) -> float:
    """Rate of an n x n x n matrix product on the default device (random operands)."""
    a = jax.random.normal(jax.random.key(1), (n, n), dtype)
    b = jax.random.normal(jax.random.key(2), (n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        out = f(a, b)
    out.block_until_ready()
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


def make_batch(batch: int, size: int, seed: int = 0) -> dict:
    """``batch`` synthetic-cell images (unet_jax.data.synthetic) with their labels and border
    weight maps (eq. 2): structure a step can learn, so the timed loss falls."""
    cells = [synthetic.generate(seed * 1000 + i, size) for i in range(batch)]
    return {"image": np.stack([c["image"][..., None] for c in cells]).astype(np.float32),
            "labels": np.stack([c["labels"] for c in cells]).astype(np.int32),
            "weights": np.stack([losses.weight_map(c["instances"]) for c in cells]).astype(np.float32),
            "index": np.arange(batch, dtype=np.int32)}


def is_oom(err: Exception) -> bool:
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def bytes_of(analysis) -> int:
    """Argument + output + temporary bytes of a compiled executable (aliased ones once)."""
    if analysis is None:
        return 0
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes - getattr(analysis, "alias_size_in_bytes", 0))


def augmentation(args) -> augment.AugmentConfig | None:
    """The paper config's on-device augmentation with ``--augment``, else none (model FLOPs
    only, as MFU counts them)."""
    return train.step_config(isbi2012.get_config()).augment if args.augment else None


def train_speed(args, dtype: str, batch: int) -> dict:
    model = unet.UNet(features=args.features, depth=args.depth, padding="valid", norm="none",
                      dtype=jnp.dtype(dtype))
    size_out = unet.output_size(args.size, args.depth, "valid")
    crop = (args.size - size_out) // 2
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, args.size, args.size, 1)))["params"]
    # the paper's optimiser with the isbi2012 config's warm-up (100 steps to 1e-2)
    schedule = optax.linear_schedule(0.0, 1e-2, 100)
    state = train.TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(schedule, momentum=0.99))
    step = functools.partial(train.train_step, cfg=train.StepConfig(loss="weighted_ce", crop=crop,
                                                                    augment=augmentation(args)))
    runner = parallel.Runner(step, "jit")
    batches = [jax.device_put(make_batch(batch, args.size, seed)) for seed in range(2)]
    rng = jax.random.key(0)
    t = time.perf_counter()
    compiled = runner.fn.lower(state, batches[0], rng).compile()
    compile_s = time.perf_counter() - t
    mem = bytes_of(compiled.memory_analysis())
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    state, m = compiled(state, batches[0], rng)  # warm-up
    m["loss"][0].block_until_ready()
    t = time.perf_counter()
    losses = []
    for i in range(args.steps):
        state, m = compiled(state, batches[i % 2], rng)
        losses.append(m["loss"])
    jax.block_until_ready(losses)
    dt = (time.perf_counter() - t) / args.steps
    flops = 3 * model_flops(model, (batch, args.size, args.size, 1))
    loss = [float(s) / float(c) for s, c in losses]
    return {"benchmark": "gpu_train", "device": jax.devices()[0].device_kind, "dtype": dtype, "batch": batch,
            "input": args.size, "output": size_out, "features": args.features, "depth": args.depth,
            "step_ms": round(dt * 1e3, 2), "images_per_s": round(batch / dt, 1),
            "model_gflop_per_image": round(flops / batch / 1e9, 1),
            "xla_gflop_per_step": round(float(cost.get("flops", 0.0)) / 1e9, 1) if cost else None,
            "model_tflops_per_s": round(flops / dt / 1e12, 1),
            "mfu": round(flops / dt / 1e12 / args.peak_tflops, 3),
            "compiled_gib": round(mem / 2 ** 30, 3), "compile_s": round(compile_s, 1),
            "loss_first_last": [round(loss[0], 4), round(loss[-1], 4)], "finite": bool(np.isfinite(loss).all())}


def inference_speed(args, dtype: str, batch: int) -> dict:
    model = unet.UNet(features=args.features, depth=args.depth, padding="valid", dtype=jnp.dtype(dtype))
    x = jax.device_put(make_batch(batch, args.size)["image"])
    params = jax.jit(model.init)(jax.random.key(0), x[:1])["params"]
    f = jax.jit(lambda p, x: jax.nn.softmax(model.apply({"params": p}, x), -1))
    f(params, x).block_until_ready()
    t = time.perf_counter()
    outs = [f(params, x) for _ in range(args.steps)]
    jax.block_until_ready(outs)
    dt = (time.perf_counter() - t) / args.steps
    flops = model_flops(model, x.shape)
    return {"benchmark": "gpu_inference", "device": jax.devices()[0].device_kind, "dtype": dtype,
            "batch": batch, "input": args.size, "step_ms": round(dt * 1e3, 2),
            "images_per_s": round(batch / dt, 1), "model_gflop_per_image": round(flops / batch / 1e9, 1),
            "mfu": round(flops / dt / 1e12 / args.peak_tflops, 3)}


def bf16_agreement(args, batch: int = 2) -> dict:
    """Loss and gradient of bfloat16 compute against float32 on one batch (same parameters).
    The batch is an argument of the compiled function, not a constant folded into it."""
    out = {}
    x = jax.device_put(make_batch(batch, args.size))
    size_out = unet.output_size(args.size, args.depth, "valid")
    c = (args.size - size_out) // 2
    for dtype in ("float32", "bfloat16"):
        model = unet.UNet(features=args.features, depth=args.depth, padding="valid", dtype=jnp.dtype(dtype))
        params = jax.jit(model.init)(jax.random.key(0), x["image"][:1])["params"]

        @jax.jit
        def loss_grad(p, x):
            def f(p):
                logits = model.apply({"params": p}, x["image"])
                return train.compute_loss(logits, x["labels"][:, c:-c, c:-c], x["weights"][:, c:-c, c:-c],
                                          "weighted_ce")[0]
            return jax.value_and_grad(f)(p)

        out[dtype] = loss_grad(params, x)
    (l32, g32), (l16, g16) = out["float32"], out["bfloat16"]
    g32, g16 = (jnp.concatenate([v.ravel() for v in jax.tree.leaves(g)]) for g in (g32, g16))
    return {"benchmark": "bf16_vs_f32", "loss_f32": float(l32), "loss_bf16": float(l16),
            "loss_rel_diff": float(abs(l16 - l32) / abs(l32)),
            "grad_rel_diff": float(jnp.linalg.norm(g16 - g32) / jnp.linalg.norm(g32)),
            "grad_cosine": float(g16 @ g32 / jnp.linalg.norm(g16) / jnp.linalg.norm(g32))}


def loop_config(args, dtype: str, batch: int, steps: int, tfds_dir: str):
    """The paper configuration (isbi2012.py) at this benchmark's model size, on synthetic cells
    whose images are the input tile's size less the context (ISBI's 512 for 572)."""
    c = isbi2012.get_config()
    c.model.features, c.model.depth, c.model.dtype = args.features, args.depth, dtype
    size_out = unet.output_size(args.size, args.depth, "valid")
    c.data.dataset, c.data.tfds_dir = "synthetic_cells", tfds_dir
    c.data.synthetic_size = max(size_out + 124, 32)  # 512 for the paper's tile
    c.data.synthetic_train, c.data.synthetic_test = 8, 1
    c.data.tile_size, c.data.eval_tile_size = size_out, args.size
    c.data.eval_split = "test"
    c.data.train_split = "train"
    c.batch_size, c.num_steps = batch, steps
    c.log_every, c.eval_every, c.checkpoint_every = max(steps // 4, 1), 0, 10 ** 6
    c.eval_tta, c.progress = False, False
    c.augment.enabled = args.augment  # the same step as the bare one
    c.loader_threads = args.loader_threads
    return c


def loop_speed(args, dtype: str, batch: int, bare: dict | None = None) -> dict:
    """``train.train_and_evaluate`` as a user runs it (loader, device copies, logs, progress
    checks), timed after its first step; next to the bare step's rate when given."""
    with tempfile.TemporaryDirectory(prefix="gpu_loop_") as tmp, contextlib.redirect_stdout(io.StringIO()):
        config = loop_config(args, dtype, batch, args.loop_steps, os.path.join(tmp, "tfds"))
        summary = train.train_and_evaluate(config, os.path.join(tmp, "run"))
    rate = (summary["step"] - 1) * batch / summary["train_time_s"]
    out = {"benchmark": "gpu_loop", "device": jax.devices()[0].device_kind, "dtype": dtype, "batch": batch,
           "input": args.size, "steps": summary["step"], "compile_s": summary["compile_s"],
           "images_per_s": round(rate, 1)}
    if bare:
        out["loop_over_step"] = round(rate / bare["images_per_s"], 3)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=572, help="input tile (572 -> 388 for depth 4)")
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--batches", default="1,8,max", help="comma list; 'max' adds the largest power "
                   "of two whose compiled step fits 90 %% of the device memory (by the listed sizes' "
                   "compiled bytes; halved on an out-of-memory error)")
    p.add_argument("--dtypes", default="bfloat16,float32", help="float32 runs only the first two batches")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--peak_tflops", type=float, default=989.4, help="dense bf16 peak of the card")
    p.add_argument("--max_batch", type=int, default=256)
    p.add_argument("--inference_batch", type=int, default=8, help="0 skips inference")
    p.add_argument("--loop_steps", type=int, default=60, help="steps of the whole training loop "
                   "(train_and_evaluate) at the first two batches of the first dtype; 0 skips it")
    p.add_argument("--loader_threads", type=int, default=2, help="the loop's loader read threads")
    p.add_argument("--no_agreement", dest="agreement", action="store_false",
                   help="skip the bf16-against-float32 loss and gradient comparison")
    p.add_argument("--augment", action="store_true", help="the paper config's augmentation in the "
                   "step and the loop (MFU still counts the model's FLOPs only)")
    p.add_argument("--output", default="", help="also append the JSON lines to this file")
    a = p.parse_args(argv)
    runtime.setup()
    lines = jsonl.Lines(a.output)
    emit = lines.emit

    dev = jax.devices()[0]
    stats = dev.memory_stats() or {}
    emit({"benchmark": "device", "backend": jax.default_backend(), "device": dev.device_kind,
          "jax": jax.__version__, "memory_gib": round(stats.get("bytes_limit", 0) / 2 ** 30, 1)})
    if jax.default_backend() != "cpu":
        emit({"benchmark": "matmul", "bf16_tflops": round(matmul_tflops(jnp.bfloat16), 1),
              "f32_tflops": round(matmul_tflops(jnp.float32), 1)})
    fixed = [int(b) for b in a.batches.split(",") if b != "max"]
    for i, dtype in enumerate(a.dtypes.split(",")):
        sizes = fixed if i == 0 else fixed[:2]
        results = []  # (batch, compiled bytes)
        for b in sizes:
            r = train_speed(a, dtype, b)
            emit(r)
            results.append((b, r["compiled_gib"] * 2 ** 30))
            if i == 0 and a.loop_steps and b in fixed[:2]:
                emit(loop_speed(a, dtype, b, bare=r))
        if i == 0 and "max" in a.batches.split(",") and len(results) >= 2:
            # bytes grow linearly with the batch: aim at the largest power of two that fits
            # 90 % of the device memory, and halve on an out-of-memory error
            (b0, m0), (b1, m1) = results[0], results[-1]
            per_image = max((m1 - m0) / max(b1 - b0, 1), 1.0)
            limit = (stats.get("bytes_limit", 0) or a.max_batch * per_image) * 0.9
            b = int(2 ** np.floor(np.log2(max((limit - m0) / per_image + b0, 1))))
            b = min(b, a.max_batch)
            best = None
            for _ in range(3):
                if b <= b1:
                    break
                try:
                    best = train_speed(a, dtype, b)
                    emit(best)
                    break
                except Exception as e:  # out of device memory: try half
                    if not is_oom(e):
                        raise
                    emit({"benchmark": "gpu_train", "dtype": dtype, "batch": b, "fits": False,
                          "error": str(e).splitlines()[0][:200]})
                    b //= 2
            if best is not None:
                emit({"benchmark": "largest_batch", "dtype": dtype, "batch": best["batch"],
                      "images_per_s": best["images_per_s"], "mfu": best["mfu"],
                      "compiled_gib": best["compiled_gib"]})
    if a.inference_batch:
        for dtype in a.dtypes.split(","):
            emit(inference_speed(a, dtype, a.inference_batch))
    if a.agreement:
        emit(bf16_agreement(a))
    return lines


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
