"""Shared test helpers: a tiny, fast training config."""
from experiments.configs import default


def tiny_config(tfds_dir: str):
    """A 2-level, 4-feature U-Net on 64x64 synthetic cells, 32x32 tiles, batch 8."""
    c = default.get_config()
    c.model.features = 4
    c.model.depth = 2
    c.data.tfds_dir = tfds_dir
    c.data.synthetic_size = 64
    c.data.synthetic_train = 8
    c.data.synthetic_test = 2
    c.data.tile_size = 32
    c.data.eval_tile_size = 64
    c.optim.name = "sgd"
    c.optim.momentum = 0.9
    c.optim.learning_rate = 0.05
    c.optim.warmup_steps = 0
    c.batch_size = 8
    c.num_steps = 6
    c.log_every = 2
    c.eval_every = 0
    c.checkpoint_every = 2
    c.progress = False
    c.loader_threads = 1
    return c
