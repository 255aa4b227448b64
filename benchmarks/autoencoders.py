"""Autoencoder quality on the 8,000 digits (train 7,000, hold out 1,000). Prints one JSON line
per model and a final verdict line. Issue targets:
  * AE with 32 latents: held-out MSE below PCA with 32 components;
  * VAE (20 latents, Bernoulli decoder): held-out negative ELBO <= 120 nats;
  * denoising AE: reconstructs noisy held-out digits closer to the clean ones than the plain AE;
  * each run <= 10 minutes on 2 CPU cores.

    python -m benchmarks.autoencoders --data_dir ../shared/data/mnist
"""
import argparse
import json
import tempfile

import jax

from experiments.configs import autoencoder
from unet_jax import mnist_train, runtime


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default="../shared/data/mnist")
    p.add_argument("--models", default="ae,denoising,vae,sparse,contractive")
    a = p.parse_args()
    runtime.setup()
    results = {}
    for name in a.models.split(","):
        config = autoencoder.get_config(name)
        config.data_dir = a.data_dir
        s = mnist_train.train_autoencoder(config, tempfile.mkdtemp(prefix=f"ae_bench_{name}_"))
        results[name] = s
        print(json.dumps({"benchmark": "autoencoders", "backend": jax.default_backend(), **s}), flush=True)
    verdict = {"all_runs_under_600_s": all(s["wall_time_s"] <= 600 for s in results.values())}
    if "ae" in results:
        verdict["ae_mse_below_pca"] = results["ae"]["test_mse"] < results["ae"]["pca32_test_mse"]
    if "vae" in results:
        verdict["vae_neg_elbo_le_120"] = results["vae"]["test_neg_elbo_nats"] <= 120
    if "ae" in results and "denoising" in results:
        verdict["denoising_beats_ae_on_noisy"] = (results["denoising"]["test_denoising_mse"]
                                                  < results["ae"]["test_denoising_mse"])
    print(json.dumps({"benchmark": "autoencoders_verdict", **verdict}))


if __name__ == "__main__":
    main()
