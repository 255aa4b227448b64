"""Trains an autoencoder or the VAE on MNIST and compares it with PCA.

    python -m experiments.autoencoder --workdir runs/ae --config.data_dir ../shared/data/mnist
    python -m experiments.autoencoder --workdir runs/vae --config experiments/configs/autoencoder.py:vae \
        --config.data_dir ../shared/data/mnist
    python -m experiments.autoencoder --workdir runs/dae --config experiments/configs/autoencoder.py:denoising \
        --config.data_dir ../shared/data/mnist --config.noise=masking

The variant after the colon (ae, sparse, denoising, contractive, vae) picks the defaults;
``--config.x=y`` overrides them.
"""
from absl import app, flags
from ml_collections import config_flags

from unet_jax import mnist_train, runtime, safety

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "experiments/configs/autoencoder.py",
                                "Config file (path[:variant]); override fields with --config.x=y.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for metrics, checkpoints and figures.", required=True)


def main(argv):
    del argv
    runtime.setup(FLAGS.verbosity)
    summary = safety.run_or_exit(mnist_train.train_autoencoder, FLAGS.config, FLAGS.workdir)
    print(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    app.run(main)
