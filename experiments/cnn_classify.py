"""Trains the lecture's digit CNN on MNIST.

    python -m experiments.cnn_classify --workdir runs/cnn --config.data_dir ../shared/data/mnist

Without ``--config.data_dir`` MNIST comes through TFDS (internet needed once).
"""
from absl import app, flags
from ml_collections import config_flags

from unet_jax import mnist_train, runtime, safety

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for metrics, figures and the summary.", required=True)
config_flags.DEFINE_config_file("config", "experiments/configs/cnn_mnist.py",
                                "Config file; override fields with --config.x=y.", lock_config=True)


def main(argv):
    del argv
    runtime.setup(FLAGS.verbosity)
    summary = safety.run_or_exit(mnist_train.train_cnn, FLAGS.config, FLAGS.workdir)
    print(f"held-out accuracy {summary['test_accuracy']:.4f} in {summary['wall_time_s']:.0f} s "
          f"({summary['steps']} steps); results in {FLAGS.workdir}")


if __name__ == "__main__":
    app.run(main)
