"""ISBI 2012 as in Ronneberger et al. 2015: valid U-Net (depth 4, 64 features), weighted
cross-entropy with the border weight map, elastic deformations, SGD with momentum 0.99, one
large tile per step. Slices 00-19 train, 20-24 held out.

    python -m experiments.unet_segment --workdir runs/isbi --config experiments/configs/isbi2012.py \
        --config.data.data_dir ../shared/data/isbi2012

On 2 CPU cores use the CPU variant, a 16-feature U-Net with batch norm, no dropout, border
weight w0 = 20 and Adam, trained for at most 57 minutes:
--config experiments/configs/isbi2012.py:cpu. benchmarks/isbi2012_quality.py trains it and
evaluates slices 20-24 with TTA (Rand error 0.078-0.087, pixel error 0.075 on a 2-core AMD EPYC;
how the variant was chosen: docs/performance.md).
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
    c.log_every = 100  # each metric line waits for the device: rarely, at a GPU's step rate
    c.eval_every = 1000
    c.checkpoint_every = 1000
    c.eval_tta = True
    if variant == "cpu":  # fits about an hour on 2 CPU cores
        c.model.features = 16
        c.model.norm = "batch"
        c.model.dropout = 0.0  # no visible effect on the training curve with batch norm
        c.data.w0 = 20.0  # border weight, chosen on these runs (the paper: 10)
        c.data.tile_size = 196
        c.data.eval_tile_size = 380
        c.optim.name = "adam"
        c.optim.learning_rate = 1e-3
        c.optim.schedule = "cosine"
        c.batch_size = 2
        c.num_steps = 5700  # about 54 minutes on a 2-core AVX-512 EPYC
        c.eval_every = 0  # validate at the end only (periodic validations count as training time)
        c.eval_max_images = 2
        c.checkpoint_every = 500
        c.time_budget_s = 3420.0  # never more than 57 minutes of training
    return c
