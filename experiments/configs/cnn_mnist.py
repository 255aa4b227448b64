"""The digit CNN on MNIST: 7,000 training digits, 1,000 held out.

    python -m experiments.cnn_classify --workdir runs/cnn --config.data_dir ../shared/data/mnist

Reaches >= 97 % held-out accuracy in <= 5 minutes on 2 CPU cores (benchmarks/cnn_mnist.py).
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.data_dir = ""  # folder of MNIST IDX files; empty: TFDS (downloads once)
    c.num_train = 7000  # training digits (the first ones of data_dir)
    c.num_test = 1000  # held-out digits (the next ones)
    c.features = (32, 64)  # channels of the two conv blocks
    c.hidden = 128  # dense layer width
    c.dropout = 0.25  # dropout before the classifier
    c.conv = "auto"  # convolution kernel: auto | xla | matmul | rows (unet_jax.ops.conv_kernel)
    c.batch_size = 64  # examples per step
    c.epochs = 8  # passes over the training digits
    c.learning_rate = 2e-3  # Adam peak learning rate (cosine decay to 0)
    c.seed = 0  # parameter init and shuffling
    return c
