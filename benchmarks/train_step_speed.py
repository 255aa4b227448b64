"""U-Net train-step and inference speed on this machine, optionally side by side with the
PyTorch reference (../shared/bench/torch_unet_reference.py) in the same run. Prints one JSON
line per measurement and, with --vs-pytorch, the ratio.

The JAX model matches the reference: same padding, `--depth` levels, `--features` base
channels, 2x2 transposed-convolution up-sampling, [skip, up] concatenation, no normalisation,
mean softmax cross-entropy, Adam(1e-4).

    python -m benchmarks.train_step_speed --shapes 2x256x64,1x512x16 [--inference]
    python -m benchmarks.train_step_speed --vs-pytorch --torch_python /path/to/venv/bin/python
    python -m benchmarks.train_step_speed --vs-pytorch --rounds 3 ...   # JAX, PyTorch, JAX, ...

With ``--rounds R`` the two frameworks are timed in turns, R blocks of ``--steps`` steps each
(PyTorch in a fresh process per block, with its own warm-up), and each step time reported is the
median of the R block medians: a slow spell of this shared machine then hits both sides alike.

Like every entry point, this benchmark sets glibc's malloc for its process
(:func:`unet_jax.runtime.setup`). The PyTorch reference is run with glibc's defaults
(``--torch_malloc default``), with the same settings through ``GLIBC_TUNABLES`` (``same``: like
for like), or both (the default), one ratio each.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from unet_jax import runtime

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "bench" / "torch_unet_reference.py"


def sgemm_gflops(n: int = 2048, reps: int = 10) -> float:
    """numpy float32 matrix product rate, best of ``reps``: the practical ceiling of this CPU."""
    a = np.random.default_rng(0).random((n, n), np.float32)
    b = np.random.default_rng(1).random((n, n), np.float32)
    a @ b
    t = []
    for _ in range(reps):
        s = time.perf_counter()
        a @ b
        t.append(time.perf_counter() - s)
    return 2 * n ** 3 / np.min(t) / 1e9


def jax_step(batch: int, size: int, features: int, depth: int, inference: bool):
    """(run one step, XLA's FLOP count of it, its JSON fields); compiled and warmed up once."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax.training import train_state

    from unet_jax import ops, unet

    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 1)), jnp.float32)
    y = jnp.asarray(np.random.default_rng(1).integers(0, 2, (batch, size, size)), jnp.int32)

    def build(conv):
        """(jitted function, its arguments) for the model with kernel-gradient option ``conv``."""
        model = unet.UNet(features=features, depth=depth, padding="same", num_classes=2,
                          conv=ops.conv_kernel(conv))
        params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x[:1])["params"]
        if inference:
            return jax.jit(lambda p, x: model.apply({"params": p}, x).sum()), (params, x)
        state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(1e-4))

        def step(state, x, y):
            def loss_fn(p):
                logits = model.apply({"params": p}, x)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

            loss, grads = jax.value_and_grad(loss_fn)(state.params)
            return state.apply_gradients(grads=grads), loss

        return jax.jit(step, donate_argnums=0), (state, x, y)

    fn, args = build("auto")
    if inference:
        run = lambda: fn(*args).block_until_ready()
    else:
        holder = {"s": args[0]}

        def run():
            holder["s"], loss = fn(holder["s"], x, y)
            loss.block_until_ready()

    # FLOPs as XLA counts them for the same step with plain XLA convolutions: the row-block loop
    # of the CPU kernel gradients (unet_jax.ops.cpu_conv.kernel_grad) hides its products from the count.
    # Inference has no kernel gradients, so its own step is already plain.
    plain, plain_args = (fn, args) if inference else build("xla")
    cost = plain.lower(*plain_args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    run()
    return run, flops, {"framework": "jax", "jax": jax.__version__, "backend": jax.default_backend(),
                 "mode": "inference" if inference else "train", "batch": batch, "size": size,
                 "features": features, "depth": depth, "gflop_per_step": round(flops / 1e9, 1)}


def timed_median(run, steps: int) -> float:
    """Median seconds of ``steps`` calls of ``run``."""
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def torch_step(python: str, batch, size, features, depth, inference, steps, malloc: str):
    """The reference's JSON line; ``malloc='same'`` runs it with the glibc malloc settings that
    this process runs with (:data:`unet_jax.runtime.GLIBC_TUNABLES`)."""
    cmd = [python, str(REFERENCE), "--batch", str(batch), "--size", str(size), "--features", str(features),
           "--depth", str(depth), "--steps", str(steps)] + (["--inference"] if inference else [])
    env = dict(os.environ)
    if malloc == "same":
        env["GLIBC_TUNABLES"] = runtime.GLIBC_TUNABLES
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        lines = out.stderr.strip().splitlines()
        return {"framework": "pytorch", "error": lines[-1] if lines else f"exit status {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="2x256x64,1x512x16", help="BATCHxSIZExFEATURES,...")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--inference", action="store_true")
    p.add_argument("--vs-pytorch", action="store_true")
    p.add_argument("--torch_python", default=sys.executable, help="a Python with torch installed")
    p.add_argument("--rounds", type=int, default=1, help="blocks of --steps, JAX and PyTorch in turns")
    p.add_argument("--torch_malloc", choices=("default", "same", "both"), default="both",
                   help="run the PyTorch reference with glibc's default malloc, with the settings "
                        "this process runs with (unet_jax.runtime), or both")
    a = p.parse_args()
    if a.steps < 1 or a.rounds < 1:
        p.error(f"--steps and --rounds must be >= 1, got {a.steps} and {a.rounds}")
    malloc_applied = runtime.setup()
    mallocs = ("default", "same") if a.torch_malloc == "both" else (a.torch_malloc,)
    ceiling = sgemm_gflops()
    print(json.dumps({"benchmark": "sgemm", "gflops_per_s": round(ceiling, 1), "cpu_count": os.cpu_count(),
                      "jax_malloc": "unet_jax.runtime" if malloc_applied else "default"}))
    for shape in a.shapes.split(","):
        batch, size, features = (int(v) for v in shape.split("x"))
        run, flops, j = jax_step(batch, size, features, a.depth, a.inference)
        jax_ms = []
        torch_ms = {m: [] for m in mallocs}
        reply = {m: {} for m in mallocs}
        for _ in range(a.rounds):
            jax_ms.append(timed_median(run, a.steps) * 1000)
            for m in mallocs if a.vs_pytorch else ():
                if reply[m] and "step_ms_median" not in reply[m]:
                    continue  # failed before: not retried
                reply[m] = torch_step(a.torch_python, batch, size, features, a.depth, a.inference, a.steps, m)
                if "step_ms_median" in reply[m]:
                    torch_ms[m].append(reply[m]["step_ms_median"])
                else:
                    torch_ms[m] = []
        med = float(np.median(jax_ms)) / 1000
        j.update({"step_ms_median": round(med * 1000, 1), "images_per_s": round(batch / med, 3),
                  "gflops_per_s": round(flops / med / 1e9, 1),
                  "fraction_of_sgemm": round(flops / med / 1e9 / ceiling, 3),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
        if a.rounds > 1:
            j["round_ms"] = [round(v, 1) for v in jax_ms]
        print(json.dumps(j), flush=True)
        for m in mallocs if a.vs_pytorch else ():
            t = dict(reply[m], malloc=m, **({"glibc_tunables": runtime.GLIBC_TUNABLES} if m == "same" else {}))
            if torch_ms[m]:
                tmed = float(np.median(torch_ms[m]))
                t.update({"step_ms_median": round(tmed, 1), "images_per_s": round(batch / tmed * 1000, 3)})
                if a.rounds > 1:
                    t["round_ms"] = torch_ms[m]
            print(json.dumps(t), flush=True)
            if torch_ms[m]:
                print(json.dumps({"benchmark": "jax_vs_pytorch", "shape": shape, "mode": j["mode"],
                                  "torch_malloc": m,
                                  "throughput_ratio": round(j["images_per_s"] / t["images_per_s"], 3)}))


if __name__ == "__main__":
    main()
