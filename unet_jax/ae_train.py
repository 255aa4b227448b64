"""Training and evaluation of the autoencoders and the VAE on MNIST digits."""
from __future__ import annotations

import functools
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from unet_jax import autoencoders as ae
from unet_jax import checkpoint, plots
from unet_jax.data import mnist
from unet_jax.writers import MetricWriter, batch_indices, write_json

MODELS = ("ae", "sparse", "denoising", "contractive", "vae")


def get_config(model: str = "ae") -> ml_collections.ConfigDict:
    """Defaults for one of ``MODELS``."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    c = ml_collections.ConfigDict()
    c.model = model  # ae | sparse | denoising | contractive | vae
    c.data_dir = ""  # folder of MNIST IDX files; empty: TFDS (downloads once)
    c.num_train = 7000  # training digits
    c.num_test = 1000  # held-out digits
    c.latent = 20 if model == "vae" else 32  # latent units
    c.hidden = (512, 256)  # MLP widths of the encoder (mirrored in the decoder)
    c.kind = "mlp"  # mlp | conv encoder/decoder (autoencoders only)
    c.sparsity = 1e-3 if model == "sparse" else 0.0  # lambda of sum |h_i|
    c.contractive = 0.1 if model == "contractive" else 0.0  # lambda of ||J_f||_F^2
    c.noise = "gaussian" if model == "denoising" else ""  # gaussian | masking | '' (none)
    c.noise_level = 0.4  # std (gaussian) or drop probability (masking)
    c.eval_noise_level = 0.4  # Gaussian noise of the held-out denoising evaluation
    c.beta = 1.0  # KL weight of the VAE
    c.batch_size = 128  # examples per step
    c.epochs = 100 if model == "vae" else 40  # passes over the training digits
    c.learning_rate = 1e-3  # Adam peak learning rate (cosine decay)
    c.iwae_k = 100  # importance samples for the VAE log-likelihood estimate
    c.seed = 0  # init, shuffling and noise
    return c


def build(config):
    """(model, loss_fn) for a config."""
    if config.model == "vae":
        model = ae.VAE(latent=config.latent, hidden=tuple(config.hidden))
        return model, ae.vae_loss_fn(model, config.beta)
    model = ae.Autoencoder(latent=config.latent, hidden=tuple(config.hidden), kind=config.kind,
                           encoder_activation=nn.sigmoid if config.model == "contractive" else None)
    loss = ae.ae_loss_fn(model, sparsity=config.sparsity, contractive=config.contractive,
                         noise=config.noise or None, noise_level=config.noise_level)
    return model, loss


def make_train_step(loss_fn):
    """A jitted Adam step around a pure ``loss(params, batch, rng)``."""

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, batch, rng):
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
        return state.apply_gradients(grads=grads), metrics

    return step


def evaluate(loss_fn, params, images, rng, batch_size: int = 500) -> dict:
    """Per-example means of the loss metrics over ``images`` (exact with a partial last batch)."""
    fn = jax.jit(lambda p, b, r: loss_fn(p, b, r)[1])
    sums, n = {}, 0
    for i, idx in enumerate(batch_indices(len(images), batch_size, drop_remainder=False)):
        m = fn(params, {"image": images[idx]}, jax.random.fold_in(rng, i))
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
        n += len(idx)
    return {k: v / n for k, v in sums.items()}


def pca_reconstruction_mse(train, test, k: int) -> float:
    """Per-pixel MSE of reconstructing ``test`` from the top-k principal components of ``train``."""
    xtr = train.reshape(len(train), -1).astype(np.float64)
    xte = test.reshape(len(test), -1).astype(np.float64)
    mean = xtr.mean(0)
    _, _, vt = np.linalg.svd(xtr - mean, full_matrices=False)
    v = vt[:k].T
    rec = (xte - mean) @ v @ v.T + mean
    return float(np.mean((rec - xte) ** 2))


def reconstruct(model, params, x, rng=None):
    """sigmoid(g(f(x))) for an AE, or the decoded mean of q(z|x) for the VAE."""
    if isinstance(model, ae.VAE):
        mu, _ = model.apply({"params": params}, x, method=ae.VAE.encode)
        return jax.nn.sigmoid(model.apply({"params": params}, mu, method=ae.VAE.decode))
    del rng
    return jax.nn.sigmoid(model.apply({"params": params}, x)[0])


def latents(model, params, x):
    if isinstance(model, ae.VAE):
        return model.apply({"params": params}, x, method=ae.VAE.encode)[0]
    return model.apply({"params": params}, x, method=ae.Autoencoder.encode)


def denoising_mse(model, params, clean, rng, level: float) -> float:
    """MSE between reconstructions of Gaussian-noised digits and the clean digits."""
    noisy = np.asarray(ae.corrupt(rng, jnp.asarray(clean), "gaussian", level))
    rec = np.concatenate([np.asarray(reconstruct(model, params, noisy[idx]))
                          for idx in batch_indices(len(noisy), 500, drop_remainder=False)])
    return float(np.mean((rec - clean) ** 2))


def save_figures(workdir: Path, model, params, config, x_test, y_test, rng) -> None:
    plt = plots.pyplot()

    n = 10
    x = x_test[:n]
    rows = [("original", x)]
    if config.noise:
        noisy = np.asarray(ae.corrupt(rng, jnp.asarray(x), config.noise, config.noise_level))
        rows = [("clean", x), ("noisy", noisy), ("denoised", np.asarray(reconstruct(model, params, noisy)))]
    else:
        rows.append(("reconstruction", np.asarray(reconstruct(model, params, x))))
    fig, axes = plt.subplots(len(rows), n, figsize=(n, 1.1 * len(rows) + 0.3))
    for r, (name, imgs) in enumerate(rows):
        for c in range(n):
            axes[r, c].imshow(imgs[c, ..., 0], cmap="gray", vmin=0, vmax=1)
            axes[r, c].axis("off")
        axes[r, 0].set_title(name, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(workdir / ("denoising.png" if config.noise else "reconstructions.png"), dpi=90)
    plt.close(fig)

    z = np.asarray(latents(model, params, x_test))
    if z.shape[1] > 2:
        zc = z - z.mean(0)
        z2 = zc @ np.linalg.svd(zc, full_matrices=False)[2][:2].T
        axis_name = "latent PC"
    else:
        z2, axis_name = z, "z"
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(z2[:, 0], z2[:, 1], c=y_test, cmap="tab10", s=6)
    fig.colorbar(sc, ax=ax, ticks=range(10))
    ax.set_xlabel(f"{axis_name} 1")
    ax.set_ylabel(f"{axis_name} 2")
    ax.set_title(f"{config.model}: held-out latents coloured by digit")
    fig.tight_layout()
    fig.savefig(workdir / "latent_scatter.png", dpi=90)
    plt.close(fig)

    if isinstance(model, ae.VAE):
        zs = jax.random.normal(rng, (64, config.latent))
        samples = np.asarray(jax.nn.sigmoid(model.apply({"params": params}, zs, method=ae.VAE.decode)))
        grid = samples[..., 0].reshape(8, 8, 28, 28).transpose(0, 2, 1, 3).reshape(8 * 28, 8 * 28)
        plt.imsave(workdir / "vae_samples.png", grid, cmap="gray", vmin=0, vmax=1)
        if config.latent == 2:
            from scipy.stats import norm

            q = norm.ppf(np.linspace(0.05, 0.95, 15))
            zz = np.stack(np.meshgrid(q, q[::-1]), -1).reshape(-1, 2)
            dec = np.asarray(jax.nn.sigmoid(model.apply({"params": params}, jnp.asarray(zz),
                                                        method=ae.VAE.decode)))
            grid = dec[..., 0].reshape(15, 15, 28, 28).transpose(0, 2, 1, 3).reshape(15 * 28, 15 * 28)
            plt.imsave(workdir / "latent_manifold.png", grid, cmap="gray", vmin=0, vmax=1)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains one model; writes metrics.jsonl, an orbax checkpoint, PNGs and summary.json."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (x_train, _), (x_test, y_test) = mnist.load_mnist(config.data_dir or None, config.num_train,
                                                       config.num_test)
    model, loss_fn = build(config)
    rng = jax.random.key(config.seed, impl="rbg")
    init_rng, noise_rng, eval_rng = jax.random.split(rng, 3)
    dummy = jnp.zeros((1,) + x_train.shape[1:])
    params = (model.init(init_rng, dummy, init_rng) if config.model == "vae"
              else model.init(init_rng, dummy))["params"]
    steps_per_epoch = len(x_train) // config.batch_size
    tx = optax.adam(optax.cosine_decay_schedule(config.learning_rate, config.epochs * steps_per_epoch))
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    step_fn = make_train_step(loss_fn)
    writer = MetricWriter(workdir)
    start = time.perf_counter()
    step = 0
    for epoch in range(config.epochs):
        for idx in batch_indices(len(x_train), config.batch_size, config.seed, epoch):
            step += 1
            state, metrics = step_fn(state, {"image": x_train[idx]}, jax.random.fold_in(noise_rng, step))
        if epoch == config.epochs - 1 or (epoch + 1) % 5 == 0:
            held = evaluate(loss_fn, state.params, x_test, eval_rng)
            writer.write(step, {"epoch": epoch + 1, **{f"train_{k}": float(v) for k, v in metrics.items()},
                                **{f"test_{k}": v for k, v in held.items()},
                                "elapsed_s": time.perf_counter() - start})
    wall = time.perf_counter() - start
    summary = {"model": config.model, "latent": config.latent, "epochs": config.epochs,
               "steps": step, "wall_time_s": round(wall, 2)}
    if config.model == "vae":
        summary["test_neg_elbo_nats"] = held["neg_elbo"]
        bounds = [np.asarray(ae.iwae_bound(model, state.params, jnp.asarray(x_test[idx]),
                                           jax.random.fold_in(eval_rng, i), config.iwae_k))
                  for i, idx in enumerate(batch_indices(len(x_test), 250, drop_remainder=False))]
        summary[f"test_neg_iwae{config.iwae_k}_nats"] = float(-np.concatenate(bounds).mean())
    else:
        rec = np.concatenate([np.asarray(reconstruct(model, state.params, x_test[idx]))
                              for idx in batch_indices(len(x_test), 500, drop_remainder=False)])
        summary["test_mse"] = float(np.mean((rec - x_test) ** 2))
        summary[f"pca{config.latent}_test_mse"] = pca_reconstruction_mse(x_train, x_test, config.latent)
        summary["test_mean_abs_h"] = held["mean_abs_h"]
        summary["test_denoising_mse"] = denoising_mse(model, state.params, x_test, eval_rng,
                                                      config.eval_noise_level)
    ckpt = checkpoint.Checkpoints(workdir / "checkpoints", keep=1)
    ckpt.save(step, {"params": state.params, "opt_state": state.opt_state},
              {"config": config.to_dict(), "step": step})
    ckpt.close()
    save_figures(workdir, model, state.params, config, x_test, y_test, eval_rng)
    write_json(workdir / "summary.json", summary)
    write_json(workdir / "config.json", config.to_dict())
    with open(workdir / "comparison.md", "w") as f:
        f.write("| model | held-out metric | value |\n|---|---|---|\n")
        for k, v in summary.items():
            if k.startswith(("test_", "pca")):
                f.write(f"| {config.model} | {k} | {v:.5g} |\n")
    return summary
