"""DSB 2018-style nuclei (``<id>/images/<id>.png`` + ``<id>/masks/*.png``): same-padding
U-Net with batch norm, Dice + cross-entropy, grey input.

    python -m experiments.unet_segment --workdir runs/nuclei --config experiments/configs/nuclei.py \
        --config.data.data_dir ../shared/data/dsb2018_subset
"""
from experiments.configs import default


def get_config():
    c = default.get_config()
    c.data.dataset = "nuclei_dsb"
    c.data.to_grey = True  # the few colour (stained) images become grey like the rest
    c.data.train_split = "train[:10]"
    c.data.eval_split = "train[10:]"
    c.data.tile_size = 128
    c.loss = "dice_ce"
    c.num_steps = 1500
    return c
