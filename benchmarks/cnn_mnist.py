"""Digit CNN quality and time: train on 7,000 digits, hold out 1,000 (target: >= 97 %
held-out accuracy in <= 5 minutes on 2 CPU cores). Prints one JSON line.

    python -m benchmarks.cnn_mnist --data_dir ../shared/data/mnist
"""
import argparse
import json
import os
import tempfile

import jax

from experiments.configs import cnn_mnist
from unet_jax import mnist_train, runtime


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default="../shared/data/mnist")
    p.add_argument("--workdir", default=None, help="keep the run here (default: a temp dir)")
    a = p.parse_args()
    runtime.setup()
    config = cnn_mnist.get_config()
    config.data_dir = a.data_dir
    workdir = a.workdir or tempfile.mkdtemp(prefix="cnn_bench_")
    s = mnist_train.train_cnn(config, workdir)
    print(json.dumps({"benchmark": "cnn_mnist", "backend": jax.default_backend(),
                      "cpu_count": os.cpu_count(), **s,
                      "target_accuracy": 0.97, "target_wall_s": 300,
                      "meets_target": s["test_accuracy"] >= 0.97 and s["wall_time_s"] <= 300}))


if __name__ == "__main__":
    main()
