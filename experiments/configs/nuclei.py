"""Nuclei instances (2018 Data Science Bowl layout, ``<id>/images/<id>.png`` +
``<id>/masks/*.png``): a U-Net trained on 3 classes (background, nucleus interior, nucleus
border, as the DSB 2018 winners did), whose interiors seed the instances. Grey input (the few
stained colour images become grey). Held out: the last 40 of ``dsb2018_train``'s 202 images in
file order.

    python -m experiments.unet_segment --workdir runs/nuclei --config experiments/configs/nuclei.py \
        --config.data.data_dir ../shared/data/dsb2018_train
    python -m experiments.unet_predict --workdir runs/nuclei --input my_images/ --output out/ --instances
"""
from experiments.configs import default


def get_config():
    c = default.get_config()
    c.model.num_classes = 3
    c.data.dataset = "nuclei_dsb"
    c.data.targets = "interior_border"
    c.data.to_grey = True
    c.data.train_split = "train[:162]"
    c.data.eval_split = "train[162:]"
    c.data.tile_size = 128
    c.data.eval_tile_size = 256
    c.data.foreground_prob = 0.5
    c.instances.mode = "interior"
    c.instances.min_size = 8
    c.loss = "dice_ce"
    c.num_steps = 4000
    c.eval_every = 1000
    c.eval_max_images = 10
    c.checkpoint_every = 500
    c.time_budget_s = 1740.0  # stays inside 30 minutes of training on 2 CPU cores
    return c
