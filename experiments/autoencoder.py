"""Trains an autoencoder or the VAE on MNIST and compares it with PCA.

    python -m experiments.autoencoder --model vae --workdir runs/vae --config.data_dir ../shared/data/mnist
    python -m experiments.autoencoder --model denoising --workdir runs/dae --config.data_dir ../shared/data/mnist --config.noise=masking

--model picks the defaults (ae, sparse, denoising, contractive, vae); --config.x=y overrides them.
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from unet_jax import ae_train

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "ae", ae_train.MODELS, "Which autoencoder.")
flags.DEFINE_string("workdir", None, "Directory for metrics, checkpoints and figures.", required=True)
config_flags.DEFINE_config_dict("config", ae_train.get_config("ae"), "Overrides (--config.x=y).")


def main(argv):
    del argv
    config = ae_train.get_config(FLAGS.model)
    overridden = {a.split("=")[0][len("--config."):] for a in sys.argv if a.startswith("--config.")}
    for key in overridden:
        config[key] = FLAGS.config[key]
    summary = ae_train.train_and_evaluate(config, FLAGS.workdir)
    print(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    app.run(main)
