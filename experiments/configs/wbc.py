"""White blood cells (``../shared/data/wbc_dataset1``): 3 classes (background, cytoplasm,
nucleus) from grey-level masks 0 / 128 / 255, RGB input, a fixed 80/20 split (images 1-240 /
241-300 in file order).

    python -m experiments.unet_segment --workdir runs/wbc --config experiments/configs/wbc.py \
        --config.data.data_dir ../shared/data/wbc_dataset1

The ``robust`` variant (``experiments/configs/wbc.py:robust``, the shipped ``wbc`` model) adds
HED stain jitter and a mild random zoom, for smears stained and magnified otherwise than this
lab's, and trains 5,000 steps (``benchmarks/stain_scale_proxy.py`` measures both on re-stained
and resized held-out images; docs/performance.md).
"""
from experiments.configs import default


def get_config(variant: str = "default"):
    c = default.get_config()
    c.model.num_classes = 3
    c.model.in_channels = 3
    c.data.dataset = "image_folder"
    c.data.mask_values = (0, 128, 255)  # background, cytoplasm, nucleus
    c.data.train_split = "train[:240]"
    c.data.eval_split = "train[240:]"
    c.data.tile_size = 96
    c.data.eval_tile_size = 128
    c.data.w0 = 0.0  # no separating borders to learn: one cell per image
    c.augment.elastic_sigma = 6.0
    c.loss = "dice_ce"
    c.num_steps = 3000
    c.eval_every = 500
    c.eval_max_images = 20
    c.checkpoint_every = 500
    c.time_budget_s = 1740.0  # stays inside 30 minutes of training on 2 CPU cores
    if variant == "robust":
        c.augment.stain = 0.3  # haematoxylin / eosin / DAB concentrations each x U(0.7, 1.3)
        c.augment.stain_shift = 0.02  # + U(-0.02, 0.02)
        c.augment.scale = 0.2  # zoom x 0.82 ... 1.22 (larger factors: unet_predict --scale)
        c.num_steps = 5000
    elif variant != "default":
        raise ValueError(f"wbc config variants: default, robust; got {variant!r}")
    return c
