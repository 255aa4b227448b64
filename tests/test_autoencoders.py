"""Autoencoders and the VAE against PCA, Monte Carlo, autodiff and their defining properties."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from scipy.linalg import subspace_angles

from experiments.configs import autoencoder
from unet_jax import autoencoders as ae
from unet_jax.data import mnist


def _fit(model, loss_fn, params, images, steps, lr=1e-3, batch=None, seed=0):
    """Adam on minibatches (or the full batch), the loop compiled as one lax.scan."""
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(lr))
    images = jnp.asarray(images)
    n = images.shape[0]

    def body(state, i):
        rng = jax.random.fold_in(jax.random.key(seed), i)
        if batch:
            idx = jax.random.choice(rng, n, (batch,), replace=False)
            x = images[idx]
        else:
            x = images
        (_, m), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params, {"image": x}, rng)
        return state.apply_gradients(grads=g), m["loss"]

    state, losses = jax.jit(lambda s: jax.lax.scan(body, s, jnp.arange(steps)))(state)
    return state.params, np.asarray(losses)


@pytest.fixture(scope="module")
def digits():
    from tests.conftest import require_shared

    images, _ = mnist.load_idx_dir(require_shared("mnist"))
    return (images[:1200].astype(np.float32) / 255.0)[..., None]


def test_linear_autoencoder_spans_the_pca_subspace():
    rng = np.random.default_rng(0)
    d, k, n = 8, 3, 400
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    scales = np.array([3.0, 2.5, 2.0, 0.6, 0.4, 0.3, 0.2, 0.1])
    x = (rng.normal(size=(n, d)) * scales) @ q.T + rng.normal(size=d)
    model = ae.Autoencoder(latent=k, image_shape=(d,), linear=True)
    params = model.init(jax.random.key(0), jnp.zeros((1, d)))["params"]
    loss = ae.ae_loss_fn(model, output="linear")
    params, losses = _fit(model, loss, params, x.astype(np.float32), steps=4000, lr=1e-2)
    xc = x - x.mean(0)
    top = np.linalg.svd(xc, full_matrices=False)[2][:k].T  # [d, k]
    decoder_span = np.asarray(params["decoder"]["Dense_0"]["kernel"]).T  # [d, k]
    angle = subspace_angles(decoder_span, top).max()
    assert angle < 0.05, angle
    # and its error equals PCA's k-component reconstruction error
    pca_err = np.mean((xc - xc @ top @ top.T) ** 2)
    assert losses[-1] == pytest.approx(pca_err, rel=1e-2)


def test_analytic_kl_matches_monte_carlo():
    mu = jnp.array([0.5, -1.0, 2.0])
    log_var = jnp.array([0.3, -0.7, 1.1])
    z = ae.reparameterize(jax.random.key(1), jnp.broadcast_to(mu, (200_000, 3)),
                          jnp.broadcast_to(log_var, (200_000, 3)))
    log_q = jnp.sum(ae.gaussian_log_pdf(z, mu, log_var), -1)
    log_p = jnp.sum(ae.gaussian_log_pdf(z, 0.0, 0.0), -1)
    samples = np.asarray(log_q - log_p, np.float64)
    se = samples.std() / np.sqrt(samples.size)
    analytic = float(ae.kl_to_standard_normal(mu, log_var))
    assert abs(samples.mean() - analytic) < 4 * se


def test_reparameterised_gradient_matches_analytic():
    """d/dmu E[z^2] = 2 mu and d/dlogvar E[z^2] = sigma^2, for z = mu + sigma eps."""
    mu, log_var = 0.7, -0.4
    keys = jax.random.split(jax.random.key(2), 100_000)
    per_sample = jax.vmap(jax.grad(lambda m, lv, k: ae.reparameterize(k, m, lv) ** 2, argnums=(0, 1)),
                          in_axes=(None, None, 0))(jnp.float32(mu), jnp.float32(log_var), keys)
    for g, exact in zip(per_sample, (2 * mu, np.exp(log_var))):
        g = np.asarray(g, np.float64)
        assert abs(g.mean() - exact) < 4 * g.std() / np.sqrt(g.size)


def test_contractive_penalty_is_the_jacobian_frobenius_norm():
    x = jax.random.uniform(jax.random.key(3), (5, 6, 6, 1))
    one = ae.Autoencoder(latent=7, image_shape=(6, 6, 1), hidden=(), encoder_activation=nn.sigmoid)
    params = one.init(jax.random.key(4), x)["params"]
    enc = lambda v: one.apply({"params": params}, v, method=ae.Autoencoder.encode)
    exact = np.array([np.sum(np.asarray(jax.jacobian(lambda v: enc(v[None])[0])(xi)) ** 2) for xi in x])
    closed = ae.sigmoid_encoder_jacobian_sq(enc(x), params["encoder"]["Dense_0"]["kernel"])
    np.testing.assert_allclose(closed, exact, rtol=1e-4)
    np.testing.assert_allclose(ae.jacobian_frobenius_sq(enc, x), exact, rtol=1e-4)
    # The loss's penalty term for a deep encoder is the same quantity.
    deep = ae.Autoencoder(latent=4, image_shape=(6, 6, 1), hidden=(16,), encoder_activation=nn.sigmoid)
    dp = deep.init(jax.random.key(5), x)["params"]
    denc = lambda v: deep.apply({"params": dp}, v, method=ae.Autoencoder.encode)
    exact = np.mean([np.sum(np.asarray(jax.jacobian(lambda v: denc(v[None])[0])(xi)) ** 2) for xi in x])
    _, m = ae.ae_loss_fn(deep, contractive=0.5)(dp, {"image": x}, jax.random.key(0))
    np.testing.assert_allclose(m["jacobian_sq"], exact, rtol=1e-4)
    np.testing.assert_allclose(m["loss"], m["mse"] + 0.5 * exact, rtol=1e-4)


def test_sparse_penalty_lowers_mean_abs_code(digits):
    model = ae.Autoencoder(latent=32, hidden=(64,))
    init = model.init(jax.random.key(0), digits[:1])["params"]
    held = {"image": jnp.asarray(digits[1000:])}
    codes = {}
    for lam in (0.0, 1e-2):
        params, _ = _fit(model, ae.ae_loss_fn(model, sparsity=lam), init, digits[:1000], steps=300,
                         batch=100)
        codes[lam] = float(ae.ae_loss_fn(model)(params, held, jax.random.key(0))[1]["mean_abs_h"])
    assert codes[1e-2] < 0.5 * codes[0.0], codes


def test_shapes_of_every_encoder_and_decoder():
    x = jnp.ones((3, 28, 28, 1))
    for kind in ("mlp", "conv"):
        model = ae.Autoencoder(latent=5, kind=kind, hidden=(16,))
        variables = model.init(jax.random.key(0), x)
        out, h = model.apply(variables, x)
        chex.assert_shape(out, (3, 28, 28, 1))
        chex.assert_shape(h, (3, 5))
    lin = ae.Autoencoder(latent=50, linear=True, image_shape=(10,))  # overcomplete
    out, h = lin.apply(lin.init(jax.random.key(0), jnp.ones((2, 10))), jnp.ones((2, 10)))
    chex.assert_shape([out, h], [(2, 10), (2, 50)])
    vae = ae.VAE(latent=4, hidden=(16,))
    v = vae.init(jax.random.key(0), x, jax.random.key(1))
    rec, mu, log_var = vae.apply(v, x, jax.random.key(2))
    chex.assert_shape([rec, mu, log_var], [(3, 28, 28, 1), (3, 4), (3, 4)])
    chex.assert_shape(ae.ConvDecoder((8, 12, 3)).apply(
        ae.ConvDecoder((8, 12, 3)).init(jax.random.key(0), jnp.ones((2, 6))), jnp.ones((2, 6))), (2, 8, 12, 3))


def test_iwae_bound_above_elbo_and_increasing_with_k(digits):
    model = ae.VAE(latent=8, hidden=(128,))
    params = model.init(jax.random.key(0), digits[:1], jax.random.key(1))["params"]
    params, _ = _fit(model, ae.vae_loss_fn(model), params, digits[:1000], steps=600, batch=100)
    x = jnp.asarray(digits[1000:1200])
    _, m = ae.vae_loss_fn(model)(params, {"image": x}, jax.random.key(7))
    elbo = -float(m["neg_elbo"])
    bounds = {k: float(jnp.mean(ae.iwae_bound(model, params, x, jax.random.key(9), k))) for k in (1, 10, 100)}
    assert abs(bounds[1] - elbo) < 2.0  # k = 1 estimates the ELBO (one-sample noise)
    assert bounds[1] < bounds[10] < bounds[100]
    assert bounds[100] > elbo


def test_denoising_corruption():
    x = jnp.full((2, 4, 4, 1), 0.5)
    masked = ae.corrupt(jax.random.key(0), jnp.ones((1000,)), "masking", 0.3)
    assert abs(float(1 - masked.mean()) - 0.3) < 0.05
    g = ae.corrupt(jax.random.key(0), x, "gaussian", 0.2)
    assert float(g.min()) >= 0 and float(g.max()) <= 1 and not np.allclose(g, x)


def test_bad_input():
    with pytest.raises(ValueError, match="latent size must be > 0"):
        ae.Autoencoder(latent=0).init(jax.random.key(0), jnp.ones((1, 28, 28, 1)))
    with pytest.raises(ValueError, match="sparsity lambda must be >= 0"):
        ae.ae_loss_fn(ae.Autoencoder(latent=2), sparsity=-1.0)
    model = ae.VAE(latent=2, hidden=(8,))
    params = model.init(jax.random.key(0), jnp.ones((1, 28, 28, 1)), jax.random.key(0))["params"]
    with pytest.raises(ValueError, match=r"must be in \[0, 1\] for a Bernoulli decoder"):
        ae.vae_loss_fn(model)(params, {"image": jnp.full((1, 28, 28, 1), 255.0)}, jax.random.key(0))
    with pytest.raises(ValueError, match="variant must be one of"):
        autoencoder.get_config("pca")
