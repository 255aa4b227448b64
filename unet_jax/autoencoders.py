"""Autoencoders (the lecture's part 2) and the VAE of Kingma & Welling 2014.

An autoencoder is an encoder f: x -> h and a decoder g: h -> r trained to minimise
L(x, g(f(x))) (eq. 8). Variants:

* undercomplete / overcomplete: ``latent`` smaller / larger than the input;
* linear with MSE: spans the top principal subspace of the data (Baldi & Hornik 1989);
* sparse: L + Omega(h), Omega(h) = lambda sum_i |h_i| (a Laplace prior on h; the slide drops
  the absolute value);
* denoising: L(x, g(f(x~))) with x~ a corrupted copy (Gaussian or masking noise), the loss
  measured against the clean x;
* contractive: L + lambda sum_i ||grad_x h_i||^2 = lambda ||J_f(x)||_F^2 (eq. 9);
* VAE: Gaussian q_phi(z|x), Bernoulli or Gaussian p_theta(x|z), z = mu + sigma * eps,
  analytic KL to N(0, I), loss = -ELBO = -E_q[log p(x|z)] + beta KL, and the importance-weighted
  bound log (1/k) sum_i p(x, z_i) / q(z_i|x) (Burda et al. 2016) for evaluation.

Images are ``[B, H, W, C]`` in [0, 1]; latents ``[B, latent]``. Every loss is a pure function
``loss(params, batch, rng) -> (scalar, metrics)`` made by the ``*_loss_fn`` factories.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unet_jax import layers

LOG2PI = float(np.log(2 * np.pi))


def _check_latent(latent: int) -> None:
    if latent <= 0:
        raise ValueError(f"latent size must be > 0, got {latent}")


def _check_lambda(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def check_unit_interval(x, what: str = "images") -> None:
    """Bernoulli likelihoods need x in [0, 1]; checked when x is concrete."""
    if isinstance(x, jax.core.Tracer):
        return
    x = np.asarray(x)
    if x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{what} must be in [0, 1] for a Bernoulli decoder, found "
                         f"[{x.min():.3g}, {x.max():.3g}]")


# ----------------------------------------------------------------------------- modules
class MLPEncoder(nn.Module):
    """[B, ...] -> [B, latent]: flatten, hidden Dense + activation, linear Dense to latent.

    With ``hidden=()`` and ``out_activation`` it is the one-layer encoder h = s(W x + b).
    """

    latent: int
    hidden: Sequence[int] = (512, 256)
    activation: Callable = nn.relu
    out_activation: Callable | None = None

    @nn.compact
    def __call__(self, x):
        _check_latent(self.latent)
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = self.activation(nn.Dense(width)(x))
        h = nn.Dense(self.latent)(x)
        return self.out_activation(h) if self.out_activation else h


class MLPDecoder(nn.Module):
    """[B, latent] -> [B, *out_shape] (pre-activation: logits or means)."""

    out_shape: Sequence[int]
    hidden: Sequence[int] = (256, 512)
    activation: Callable = nn.relu

    @nn.compact
    def __call__(self, h):
        for width in self.hidden:
            h = self.activation(nn.Dense(width)(h))
        return nn.Dense(int(np.prod(self.out_shape)))(h).reshape((h.shape[0],) + tuple(self.out_shape))


class ConvEncoder(nn.Module):
    """[B, H, W, C] -> [B, latent]: conv blocks with 2x2 max-pooling, then Dense."""

    latent: int
    features: Sequence[int] = (32, 64)

    @nn.compact
    def __call__(self, x):
        _check_latent(self.latent)
        for f in self.features:
            x = layers.max_pool2(layers.ConvBlock(f, num_convs=1)(x))
        return nn.Dense(self.latent)(x.reshape(x.shape[0], -1))


class ConvDecoder(nn.Module):
    """[B, latent] -> [B, H, W, C]: Dense to a coarse grid, then 2x up-convolutions + conv blocks."""

    out_shape: Sequence[int]  # (H, W, C), H and W divisible by 2**len(features)
    features: Sequence[int] = (64, 32)

    @nn.compact
    def __call__(self, h):
        hh, ww, c = self.out_shape
        scale = 2 ** len(self.features)
        if hh % scale or ww % scale:
            raise ValueError(f"ConvDecoder out_shape {tuple(self.out_shape)} must be divisible by {scale}")
        x = nn.relu(nn.Dense(hh // scale * ww // scale * self.features[0])(h))
        x = x.reshape(h.shape[0], hh // scale, ww // scale, self.features[0])
        for f in self.features:
            x = nn.relu(layers.Up(f)(x))
            x = layers.ConvBlock(f, num_convs=1)(x)
        return nn.Conv(c, (1, 1))(x)


class Autoencoder(nn.Module):
    """f then g. ``__call__(x) -> (reconstruction logits or means, h)``.

    ``kind='mlp'`` or ``'conv'``; ``linear=True`` makes an MLP AE with no hidden layers and no
    non-linearity (the PCA case).
    """

    latent: int
    image_shape: Sequence[int] = (28, 28, 1)
    kind: str = "mlp"
    hidden: Sequence[int] = (512, 256)
    linear: bool = False
    encoder_activation: Callable | None = None  # e.g. nn.sigmoid on h (contractive AE)

    def setup(self):
        _check_latent(self.latent)
        if self.linear:
            self.encoder = MLPEncoder(self.latent, hidden=())
            self.decoder = MLPDecoder(self.image_shape, hidden=())
        elif self.kind == "mlp":
            self.encoder = MLPEncoder(self.latent, self.hidden, out_activation=self.encoder_activation)
            self.decoder = MLPDecoder(self.image_shape, tuple(reversed(self.hidden)))
        elif self.kind == "conv":
            self.encoder = ConvEncoder(self.latent)
            self.decoder = ConvDecoder(self.image_shape)
        else:
            raise ValueError(f"kind must be 'mlp' or 'conv', got {self.kind!r}")

    def encode(self, x):
        return self.encoder(x)

    def decode(self, h):
        return self.decoder(h)

    def __call__(self, x):
        h = self.encode(x)
        return self.decode(h), h


class VAE(nn.Module):
    """Gaussian encoder q(z|x) = N(mu, diag(sigma^2)); decoder p(x|z) Bernoulli (logits) or
    Gaussian (mean, with a learnt global log-variance)."""

    latent: int = 20
    image_shape: Sequence[int] = (28, 28, 1)
    hidden: Sequence[int] = (512, 256)
    likelihood: str = "bernoulli"

    def setup(self):
        _check_latent(self.latent)
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {self.likelihood!r}")
        self.encoder = MLPEncoder(2 * self.latent, self.hidden)
        self.decoder = MLPDecoder(self.image_shape, tuple(reversed(self.hidden)))
        self.log_var_x = self.param("log_var_x", nn.initializers.constant(-2.0), ())

    def encode(self, x):
        """(mu, log sigma^2), each [B, latent]."""
        out = self.encoder(x)
        return out[:, : self.latent], out[:, self.latent:]

    def decode(self, z):
        """Bernoulli logits or Gaussian means, [B, *image_shape]."""
        return self.decoder(z)

    def __call__(self, x, rng):
        mu, log_var = self.encode(x)
        z = reparameterize(rng, mu, log_var)
        return self.decode(z), mu, log_var

    def log_likelihood(self, x, out):
        """log p(x|z) summed over pixels, [B]."""
        axes = tuple(range(1, x.ndim))
        if self.likelihood == "bernoulli":
            return -jnp.sum(bernoulli_nll(out, x), axis=axes)
        return jnp.sum(gaussian_log_pdf(x, out, self.log_var_x), axis=axes)


# ----------------------------------------------------------------------------- maths
def reparameterize(rng, mu, log_var):
    """z = mu + sigma * eps, eps ~ N(0, I) (Kingma & Welling 2014, sec. 2.4)."""
    return mu + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mu.shape, mu.dtype)


def kl_to_standard_normal(mu, log_var):
    """KL(N(mu, sigma^2) || N(0, I)) = 1/2 sum (mu^2 + sigma^2 - 1 - log sigma^2), [B]."""
    return 0.5 * jnp.sum(mu ** 2 + jnp.exp(log_var) - 1.0 - log_var, axis=-1)


def gaussian_log_pdf(x, mean, log_var):
    """Elementwise log N(x; mean, exp(log_var))."""
    return -0.5 * (LOG2PI + log_var + (x - mean) ** 2 / jnp.exp(log_var))


def bernoulli_nll(logits, x):
    """Elementwise -[x log s(l) + (1 - x) log(1 - s(l))], stable in the logits."""
    return jnp.maximum(logits, 0) - logits * x + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def corrupt(rng, x, kind: str = "gaussian", level: float = 0.5):
    """The denoising AE's corruption C(x~|x): ``gaussian`` adds N(0, level^2) and clips to
    [0, 1]; ``masking`` zeroes each pixel with probability ``level``."""
    _check_lambda("noise level", level)
    if kind == "gaussian":
        return jnp.clip(x + level * jax.random.normal(rng, x.shape, x.dtype), 0.0, 1.0)
    if kind == "masking":
        return x * jax.random.bernoulli(rng, 1.0 - level, x.shape).astype(x.dtype)
    raise ValueError(f"noise kind must be 'gaussian' or 'masking', got {kind!r}")


def sparse_penalty(h, lam: float):
    """Omega(h) = lambda sum_i |h_i|, mean over the batch."""
    return lam * jnp.mean(jnp.sum(jnp.abs(h), axis=-1))


def jacobian_frobenius_sq(encode: Callable, x):
    """||J_f(x)||_F^2 = sum_i ||grad_x h_i||^2 per example, exact by autodiff, [B]."""
    def one(xi):
        jac = jax.jacrev(lambda v: encode(v[None])[0])(xi)
        return jnp.sum(jac ** 2)

    return jax.vmap(one)(x)


def sigmoid_encoder_jacobian_sq(h, kernel):
    """Closed form for h = sigmoid(W x + b) (Rifai et al. 2011, eq. 3):
    ||J||_F^2 = sum_i (h_i (1 - h_i))^2 sum_j W_ji^2.  h: [B, latent], kernel: [D, latent]."""
    return jnp.sum((h * (1 - h)) ** 2 * jnp.sum(kernel ** 2, axis=0), axis=-1)


# ----------------------------------------------------------------------------- losses
def ae_loss_fn(model: Autoencoder, *, sparsity: float = 0.0, contractive: float = 0.0,
               noise: str | None = None, noise_level: float = 0.5, output: str = "sigmoid"):
    """Loss of an (optionally sparse / denoising / contractive) autoencoder.

    L = mean squared error between x and r (per pixel), with r = sigmoid(g(h)) when
    ``output='sigmoid'`` or g(h) when ``'linear'``; plus the chosen penalty.

    Returns:
      ``loss(params, batch, rng) -> (loss, metrics)``, batch = {'image': [B, H, W, C]}.
    """
    _check_lambda("sparsity lambda", sparsity)
    _check_lambda("contractive lambda", contractive)
    if output not in ("sigmoid", "linear"):
        raise ValueError(f"output must be 'sigmoid' or 'linear', got {output!r}")
    one_layer_sigmoid = (model.kind == "mlp" and not model.linear and not model.hidden
                         and model.encoder_activation is nn.sigmoid)

    def loss(params, batch, rng):
        x = batch["image"]
        x_in = corrupt(rng, x, noise, noise_level) if noise else x
        out, h = model.apply({"params": params}, x_in)
        r = jax.nn.sigmoid(out) if output == "sigmoid" else out
        mse = jnp.mean((r - x) ** 2)
        total = mse
        metrics = {"mse": mse, "mean_abs_h": jnp.mean(jnp.abs(h))}
        if sparsity:
            total = total + sparse_penalty(h, sparsity)
        if contractive:
            if one_layer_sigmoid:
                kernel = params["encoder"]["Dense_0"]["kernel"]
                jac = sigmoid_encoder_jacobian_sq(h, kernel)
            else:
                jac = jacobian_frobenius_sq(lambda v: model.apply({"params": params}, v,
                                                                  method=Autoencoder.encode), x_in)
            metrics["jacobian_sq"] = jnp.mean(jac)
            total = total + contractive * jnp.mean(jac)
        metrics["loss"] = total
        return total, metrics

    return loss


def vae_loss_fn(model: VAE, beta: float = 1.0):
    """-ELBO per image in nats: -E_q[log p(x|z)] + beta KL(q(z|x) || N(0, I)), one sample of z.

    Returns:
      ``loss(params, batch, rng) -> (loss, metrics)``.
    """
    _check_lambda("beta", beta)

    def loss(params, batch, rng):
        x = batch["image"]
        if model.likelihood == "bernoulli":
            check_unit_interval(x)
        out, mu, log_var = model.apply({"params": params}, x, rng)
        rec = -model.apply({"params": params}, x, out, method=VAE.log_likelihood)
        kl = kl_to_standard_normal(mu, log_var)
        total = jnp.mean(rec + beta * kl)
        return total, {"loss": total, "neg_elbo": jnp.mean(rec + kl), "recon": jnp.mean(rec),
                       "kl": jnp.mean(kl)}

    return loss


def iwae_bound(model: VAE, params, x, rng, k: int):
    """log p(x) >= log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x), per image [B].

    k = 1 is the ELBO (in expectation); the bound tightens as k grows (Burda et al. 2016).
    """
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    if model.likelihood == "bernoulli":
        check_unit_interval(x)
    mu, log_var = model.apply({"params": params}, x, method=VAE.encode)

    def one(key):
        z = reparameterize(key, mu, log_var)
        out = model.apply({"params": params}, z, method=VAE.decode)
        log_px = model.apply({"params": params}, x, out, method=VAE.log_likelihood)
        log_pz = jnp.sum(gaussian_log_pdf(z, 0.0, 0.0), -1)
        log_qz = jnp.sum(gaussian_log_pdf(z, mu, log_var), -1)
        return log_px + log_pz - log_qz

    logw = jax.lax.map(one, jax.random.split(rng, k))  # [k, B]
    return jax.scipy.special.logsumexp(logw, axis=0) - jnp.log(k)
