"""One small trainer for the MNIST models: the digit CNN, the autoencoders and the VAE.

Every model brings a pure ``loss(params, batch, rng) -> (loss, metrics)`` whose metrics are
means over the batch. :func:`make_train_step` wraps it in one jitted Adam step that returns the
metrics as (sum, count) pairs, so that epoch and held-out means are exact per-example means,
also over a smaller last batch; :func:`fit` is the one epoch loop.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from unet_jax import autoencoders as ae
from unet_jax import checkpoint, cnn, ops, plots, safety
from unet_jax.data import mnist
from unet_jax.writers import MetricWriter, write_json

AUTOENCODERS = ("ae", "sparse", "denoising", "contractive", "vae")


# ------------------------------------------------------------------ the shared step and loop
def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """A deterministic permutation of range(n), different for every (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, batch_size: int, seed: int | None = None, epoch: int = 0,
                  drop_remainder: bool = True):
    """Index arrays of batches over ``n`` examples: shuffled by (seed, epoch) when seed is given."""
    order = np.arange(n) if seed is None else epoch_permutation(n, seed, epoch)
    stop = n - n % batch_size if drop_remainder else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def make_train_step(loss_fn: Callable) -> Callable:
    """A jitted ``step(state, batch, rng) -> (state, {name: (sum, count)})``: one optimiser step
    on ``loss_fn``'s loss, its batch-mean metrics as sums over the batch's examples."""

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, batch, rng):
        (_, means), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
        n = jnp.float32(batch["image"].shape[0])
        return state.apply_gradients(grads=grads), {k: (v * n, n) for k, v in means.items()}

    return step


def means(sums: dict) -> dict:
    """{name: (sum, count)} -> {name: sum / count} as floats."""
    return {k: float(s) / float(c) for k, (s, c) in sums.items()}


def _add(a, b):
    return b if a is None else jax.tree.map(jnp.add, a, b)


def evaluate(loss_fn: Callable, params, images, rng, labels=None, batch_size: int = 500) -> dict:
    """Per-example means of ``loss_fn``'s metrics over ``images`` (and ``labels``), batch ``i``
    keyed by ``fold_in(rng, i)``; exact with a smaller last batch."""
    fn = jax.jit(loss_fn)  # jit's cache is keyed by loss_fn: compiled once over repeated evaluations
    sums = None
    for i, idx in enumerate(batch_indices(len(images), batch_size, drop_remainder=False)):
        batch = {"image": images[idx], **({"label": labels[idx]} if labels is not None else {})}
        n = jnp.float32(len(idx))
        _, batch_means = fn(params, batch, jax.random.fold_in(rng, i))
        sums = _add(sums, {k: (v * n, n) for k, v in batch_means.items()})
    return means(sums)


def fit(config, apply_fn, params, loss_fn, images, labels, rng, held_out: Callable, writer: MetricWriter,
        eval_every: int = 1):
    """Adam with a cosine-decayed learning rate over ``config.epochs`` shuffled passes of
    ``config.batch_size`` (step ``s`` keyed by ``fold_in(rng, s)``). After every ``eval_every``
    epochs and the last, writes the epoch's train means and ``held_out(state)``'s metrics.

    Returns:
      (state, steps, wall seconds).
    """
    steps_per_epoch = len(images) // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"--config.batch_size {config.batch_size} is larger than the {len(images)} "
                         f"training digits")
    schedule = optax.cosine_decay_schedule(config.learning_rate, config.epochs * steps_per_epoch)
    state = train_state.TrainState.create(apply_fn=apply_fn, params=params, tx=optax.adam(schedule))
    step_fn = make_train_step(loss_fn)
    start, step = time.perf_counter(), 0
    for epoch in range(config.epochs):
        sums = None
        for idx in batch_indices(len(images), config.batch_size, config.seed, epoch):
            step += 1
            batch = {"image": images[idx], **({"label": labels[idx]} if labels is not None else {})}
            state, m = step_fn(state, batch, jax.random.fold_in(rng, step))
            sums = _add(sums, m)
        if (epoch + 1) % eval_every == 0 or epoch == config.epochs - 1:
            writer.write(step, {"epoch": epoch + 1, **{f"train_{k}": v for k, v in means(sums).items()},
                                **held_out(state), "elapsed_s": time.perf_counter() - start})
    return state, step, time.perf_counter() - start


# ------------------------------------------------------------------ the digit CNN
def check_counts(config) -> None:
    """One-line errors for counts that must be positive (before any data is read)."""
    for name in ("epochs", "batch_size"):
        if config[name] < 1:
            raise ValueError(f"--config.{name} must be >= 1, got {config[name]}")


@safety.removes_unfinished
def train_cnn(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains the digit CNN (``experiments/configs/cnn_mnist.py``); writes metrics.jsonl,
    summary.json, config.json and PNGs of predictions and the confusion matrix.

    Returns:
      the summary: held-out accuracy, wall time and the number of steps.
    """
    check_counts(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = mnist.load_mnist(
        config.data_dir or None, config.num_train, config.num_test)
    model = cnn.DigitCNN(features=tuple(config.features), hidden=config.hidden, dropout=config.dropout,
                         conv=ops.conv_kernel(config.get("conv", "auto")))
    rng = jax.random.key(config.seed, impl="rbg")  # compiles far faster than threefry on CPU
    params = model.init(rng, jnp.zeros((1, 28, 28, 1)))["params"]
    logits = jax.jit(lambda p, x: model.apply({"params": p}, x))

    def predict_all(params):
        return np.concatenate([np.asarray(logits(params, x_test[idx])).argmax(-1)
                               for idx in batch_indices(len(x_test), 500, drop_remainder=False)])

    last = {}  # the latest held-out predictions: the final ones once fit returns

    def held_out(state):
        last["preds"] = predict_all(state.params)
        return {"test_accuracy": float(np.mean(last["preds"] == y_test))}

    _, steps, wall = fit(config, model.apply, params, cnn.loss_fn(model), x_train, y_train, rng,
                         held_out, MetricWriter(workdir))
    preds = last["preds"]
    plots.digit_predictions(x_test, y_test, preds, workdir / "predictions.png")
    plots.confusion_matrix(cnn.confusion_matrix(y_test, preds), workdir / "confusion_matrix.png")
    summary = {"test_accuracy": float(np.mean(preds == y_test)), "wall_time_s": round(wall, 2),
               "steps": steps, "num_train": len(x_train), "num_test": len(x_test)}
    write_json(workdir / "summary.json", summary)
    write_json(workdir / "config.json", config.to_dict())
    return summary


# ------------------------------------------------------------------ autoencoders and the VAE
def build_autoencoder(config):
    """(model, loss_fn) for ``config.model``, one of :data:`AUTOENCODERS`."""
    if config.model not in AUTOENCODERS:
        raise ValueError(f"model must be one of {AUTOENCODERS}, got {config.model!r}")
    if config.model == "vae":
        model = ae.VAE(latent=config.latent, hidden=tuple(config.hidden))
        return model, ae.vae_loss_fn(model, config.beta)
    model = ae.Autoencoder(latent=config.latent, hidden=tuple(config.hidden), kind=config.kind,
                           encoder_activation=nn.sigmoid if config.model == "contractive" else None)
    loss = ae.ae_loss_fn(model, sparsity=config.sparsity, contractive=config.contractive,
                         noise=config.noise or None, noise_level=config.noise_level)
    return model, loss


def pca_reconstruction_mse(train, test, k: int) -> float:
    """Per-pixel MSE of reconstructing ``test`` from the top-k principal components of ``train``."""
    xtr = train.reshape(len(train), -1).astype(np.float64)
    xte = test.reshape(len(test), -1).astype(np.float64)
    mean = xtr.mean(0)
    _, _, vt = np.linalg.svd(xtr - mean, full_matrices=False)
    v = vt[:k].T
    rec = (xte - mean) @ v @ v.T + mean
    return float(np.mean((rec - xte) ** 2))


def reconstruct(model, params, x):
    """sigmoid(g(f(x))) for an AE, or the decoded mean of q(z|x) for the VAE."""
    if isinstance(model, ae.VAE):
        mu, _ = model.apply({"params": params}, x, method=ae.VAE.encode)
        return jax.nn.sigmoid(model.apply({"params": params}, mu, method=ae.VAE.decode))
    return jax.nn.sigmoid(model.apply({"params": params}, x)[0])


def reconstruct_all(model, params, x, batch_size: int = 500) -> np.ndarray:
    return np.concatenate([np.asarray(reconstruct(model, params, x[idx]))
                           for idx in batch_indices(len(x), batch_size, drop_remainder=False)])


def latents(model, params, x):
    """The latent code of ``x``: the mean of q(z|x) for the VAE, f(x) for an AE."""
    if isinstance(model, ae.VAE):
        return model.apply({"params": params}, x, method=ae.VAE.encode)[0]
    return model.apply({"params": params}, x, method=ae.Autoencoder.encode)


def denoising_mse(model, params, clean, rng, level: float) -> float:
    """MSE between reconstructions of Gaussian-noised digits and the clean digits."""
    noisy = np.asarray(ae.corrupt(rng, jnp.asarray(clean), "gaussian", level))
    return float(np.mean((reconstruct_all(model, params, noisy) - clean) ** 2))


@safety.removes_unfinished
def train_autoencoder(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains one autoencoder or the VAE (``experiments/configs/autoencoder.py``); writes
    metrics.jsonl, an orbax checkpoint, PNGs, comparison.md and summary.json. Autoencoders are
    compared with PCA of as many components as latents; the VAE reports its negative ELBO and
    the importance-weighted bound."""
    check_counts(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (x_train, _), (x_test, y_test) = mnist.load_mnist(config.data_dir or None, config.num_train,
                                                       config.num_test)
    model, loss_fn = build_autoencoder(config)
    rng = jax.random.key(config.seed, impl="rbg")
    init_rng, noise_rng, eval_rng = jax.random.split(rng, 3)
    dummy = jnp.zeros((1,) + x_train.shape[1:])
    params = (model.init(init_rng, dummy, init_rng) if config.model == "vae"
              else model.init(init_rng, dummy))["params"]
    held = {}  # the latest held-out means: the final ones once fit returns

    def held_out(state):
        held.update(evaluate(loss_fn, state.params, x_test, eval_rng))
        return {f"test_{k}": v for k, v in held.items()}

    state, steps, wall = fit(config, model.apply, params, loss_fn, x_train, None, noise_rng, held_out,
                             MetricWriter(workdir), eval_every=5)
    summary = {"model": config.model, "latent": config.latent, "epochs": config.epochs,
               "steps": steps, "wall_time_s": round(wall, 2)}
    if config.model == "vae":
        summary["test_neg_elbo_nats"] = held["neg_elbo"]
        bounds = [np.asarray(ae.iwae_bound(model, state.params, jnp.asarray(x_test[idx]),
                                           jax.random.fold_in(eval_rng, i), config.iwae_k))
                  for i, idx in enumerate(batch_indices(len(x_test), 250, drop_remainder=False))]
        summary[f"test_neg_iwae{config.iwae_k}_nats"] = float(-np.concatenate(bounds).mean())
    else:
        summary["test_mse"] = float(np.mean((reconstruct_all(model, state.params, x_test) - x_test) ** 2))
        summary[f"pca{config.latent}_test_mse"] = pca_reconstruction_mse(x_train, x_test, config.latent)
        summary["test_mean_abs_h"] = held["mean_abs_h"]
        summary["test_denoising_mse"] = denoising_mse(model, state.params, x_test, eval_rng,
                                                      config.eval_noise_level)
    ckpt = checkpoint.Checkpoints(workdir / "checkpoints", keep=1)
    ckpt.save(steps, {"params": state.params, "opt_state": state.opt_state},
              {"config": config.to_dict(), "step": steps})
    ckpt.close()
    _autoencoder_figures(workdir, model, state.params, config, x_test, y_test, eval_rng)
    write_json(workdir / "summary.json", summary)
    write_json(workdir / "config.json", config.to_dict())
    with open(workdir / "comparison.md", "w") as f:
        f.write("| model | held-out metric | value |\n|---|---|---|\n")
        for k, v in summary.items():
            if k.startswith(("test_", "pca")):
                f.write(f"| {config.model} | {k} | {v:.5g} |\n")
    return summary


def _autoencoder_figures(workdir: Path, model, params, config, x_test, y_test, rng) -> None:
    x = x_test[:10]
    if config.noise:
        noisy = np.asarray(ae.corrupt(rng, jnp.asarray(x), config.noise, config.noise_level))
        plots.image_rows([("clean", x), ("noisy", noisy),
                          ("denoised", np.asarray(reconstruct(model, params, noisy)))], workdir / "denoising.png")
    else:
        plots.image_rows([("original", x), ("reconstruction", np.asarray(reconstruct(model, params, x)))],
                         workdir / "reconstructions.png")
    plots.latent_scatter(latents(model, params, x_test), y_test,
                         f"{config.model}: held-out latents coloured by digit", workdir / "latent_scatter.png")
    if isinstance(model, ae.VAE):
        decode = lambda z: np.asarray(jax.nn.sigmoid(model.apply({"params": params}, z, method=ae.VAE.decode)))
        plots.image_grid(decode(jax.random.normal(rng, (64, config.latent))), 8, workdir / "vae_samples.png")
        if config.latent == 2:
            from scipy.stats import norm

            q = norm.ppf(np.linspace(0.05, 0.95, 15))
            zz = np.stack(np.meshgrid(q, q[::-1]), -1).reshape(-1, 2)
            plots.image_grid(decode(jnp.asarray(zz)), 15, workdir / "latent_manifold.png")
