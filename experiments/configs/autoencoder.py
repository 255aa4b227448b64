"""Autoencoders and the VAE on MNIST digits (7,000 train, 1,000 held out), compared with PCA.
Variants: ae (default), sparse, denoising, contractive, vae.

    python -m experiments.autoencoder --workdir runs/vae \
        --config experiments/configs/autoencoder.py:vae --config.data_dir ../shared/data/mnist

Measured by benchmarks/autoencoders.py: the AE beats PCA-32, the VAE's held-out negative ELBO is
<= 120 nats, the denoising AE beats the plain one on noisy digits, each in <= 10 minutes on 2
CPU cores.
"""
import ml_collections

VARIANTS = ("ae", "sparse", "denoising", "contractive", "vae")


def get_config(variant: str = "ae") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"autoencoder variant must be one of {VARIANTS}, got {variant!r}")
    c = ml_collections.ConfigDict()
    c.model = variant  # ae | sparse | denoising | contractive | vae
    c.data_dir = ""  # folder of MNIST IDX files; empty: TFDS (downloads once)
    c.num_train = 7000  # training digits
    c.num_test = 1000  # held-out digits
    c.latent = 20 if variant == "vae" else 32  # latent units
    c.hidden = (512, 256)  # MLP widths of the encoder (mirrored in the decoder)
    c.kind = "mlp"  # mlp | conv encoder/decoder (autoencoders only)
    c.sparsity = 1e-3 if variant == "sparse" else 0.0  # lambda of sum |h_i|
    c.contractive = 0.1 if variant == "contractive" else 0.0  # lambda of ||J_f||_F^2
    c.noise = "gaussian" if variant == "denoising" else ""  # gaussian | masking | '' (none)
    c.noise_level = 0.4  # std (gaussian) or drop probability (masking)
    c.eval_noise_level = 0.4  # Gaussian noise of the held-out denoising evaluation
    c.beta = 1.0  # KL weight of the VAE
    c.batch_size = 128  # examples per step
    c.epochs = 100 if variant == "vae" else 40  # passes over the training digits
    c.learning_rate = 1e-3  # Adam peak learning rate (cosine decay)
    c.iwae_k = 100  # importance samples for the VAE log-likelihood estimate
    c.seed = 0  # init, shuffling and noise
    return c
