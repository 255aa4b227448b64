"""ISBI 2012 as in Ronneberger et al. 2015: valid U-Net (depth 4, 64 features), weighted
cross-entropy with the border weight map, elastic deformations, SGD with momentum 0.99, one
large tile per step. Slices 00-19 train, 20-24 held out.

    python -m experiments.unet_segment --workdir runs/isbi --config experiments/configs/isbi2012.py \
        --config.data.data_dir ../shared/data/isbi2012

On 2 CPU cores use the CPU variant (a 16-feature U-Net, batch norm, Adam, <= 55 minutes of
training): --config experiments/configs/isbi2012.py:cpu  (benchmarks/isbi2012_quality.py)
"""
from experiments.configs import default


def get_config(variant: str = "paper"):
    c = default.get_config()
    c.model.features = 64
    c.model.depth = 4
    c.model.padding = "valid"
    c.model.norm = "none"
    c.model.dropout = 0.5
    c.data.dataset = "isbi2012"
    c.data.train_split = "train[:20]"
    c.data.eval_split = "train[20:]"
    c.data.tile_size = 388  # output tile; input 572 (paper Fig. 1)
    c.data.eval_tile_size = 572
    c.data.foreground_prob = 0.0
    c.loss = "weighted_ce"
    c.optim.name = "sgd"
    c.optim.momentum = 0.99
    c.optim.learning_rate = 1e-2
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 100
    c.batch_size = 1
    c.num_steps = 20000
    c.eval_every = 1000
    c.eval_tta = True
    if variant == "cpu":  # fits about an hour on 2 CPU cores
        c.model.features = 16
        c.model.norm = "batch"
        c.data.tile_size = 196
        c.data.eval_tile_size = 380
        c.optim.name = "adam"
        c.optim.learning_rate = 1e-3
        c.optim.schedule = "cosine"
        c.batch_size = 2
        c.num_steps = 1400  # 2.1 s a step on 2 cores when measured (~50 min); ~1.3 s with UNET_JAX_XLA_FLAGS=1
        c.eval_every = 350
        c.eval_max_images = 2
        c.checkpoint_every = 350
        c.time_budget_s = 3300.0  # never more than 55 minutes of training
    return c
