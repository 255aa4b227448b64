"""Nuclei instances (2018 Data Science Bowl layout, ``<id>/images/<id>.png`` +
``<id>/masks/*.png``): a U-Net trained on 3 classes (background, nucleus interior, nucleus
border, as the DSB 2018 winners did), whose interiors seed the instances. Grey input (the
stained colour images become grey). Held out: ``HELD_OUT``, 43 of ``dsb2018_train``'s 202
images chosen per kind (33 fluorescence, 8 colour brightfield / H&E, 2 grey brightfield:
``python -m benchmarks.dsb_modalities``). The shipped ``nuclei`` model is this config.

    python -m experiments.unet_segment --workdir runs/nuclei --config experiments/configs/nuclei.py \
        --config.data.data_dir ../shared/data/dsb2018_train
    python -m experiments.unet_predict --workdir runs/nuclei --input my_images/ --output out/ --instances

``nuclei.py:bright_objects`` stretches each image and inverts those with a bright background
(``data.contrast``), so that brightfield nuclei look like fluorescence ones;
``benchmarks/nuclei_modalities.py`` compares the two per kind of image (docs/performance.md).
"""
from experiments.configs import default

HELD_OUT = (
    "00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552",
    "01d44a26f6680c42ba94c9bc6339228579a95d0e2695b149b7cc0c9592b21baf",
    "06c779330d6d3447be21df2b9f05d1088f5b3b50dc48724fc130b1fd2896a68c",
    "091944f1d2611c916b98c020bd066667e33f4639159b2a92407fe5a40788856d",
    "0ddd8deaf1696db68b00c600601c6a74a0502caaf274222c8367bdc31458ae7e",
    "175dbb364bfefc9537931144861c9b6e08934df3992782c669c6fe4234319dfc",
    "1c2f9e121fc207efff79d46390df1a740566b683ff56a96d8cabe830a398dd2e",
    "1f6b7cead15344593b32d5f2345fc26713dc74d9b31306c824209d67da401fd8",
    "27c30f9011492f234e4587c9a4b53c787037d486f658821196fe354240ac3c47",
    "2c83c86dd4e5dacc024b55629375567fb8e320a82ef86f541cfe54764040fc25",
    "3582166ee20755856adf4882a8bfacb616fce4247911605a109c4862de421bcd",
    "3bfa8b3b01fd24a28477f103063d17368a7398b27331e020f3a0ef59bf68c940",
    "45cc00f2ef95da6698bf590663e319d7c0ed4fb99d42dd3cf4060887da74fb81",
    "4ae4f936a9ade472764dad80f60f7168e4be067aa66ce9d06d60ebe34951dca4",
    "4b274461c6d001a7a9aeaf5952b40ac4934d1be96b9c176edfd628a8f77e6df2",
    "50a7ea80dd73232a17f98b5c83f62ec89989e892fe25b79b36f99b3872a7d182",
    "5afb7932e9c7328f4fb1d7a8166a3699d6cdc5192b93758a75e9956f1513c5a3",
    "5e263abff938acba1c0cff698261c7c00c23d7376e3ceacc3d5d4a655216b16d",
    "5ef4442e5b8b0b4cf824b61be4050dfd793d846e0a6800afa4425a2f66e91456",
    "62570c4ff1c5ab6d9d383aba9f25e604768520b4266afd40fdf4734a694c8bc3",
    "700afb1cd830a808e3c6125749612e5d23fd9f9726049a9e0c2061997514e1a7",
    "7aae06bc4558829473071defec0b7ab3bfa9c5005548a13da95596bb6a66d105",
    "7f55678298adb736987d9fb5d1d2daefb08fe5bf4d81b2380bedf9449f79cc38",
    "84e642d75ae6ece8147272418b6fe13d04db8d076fe306c4acedc329fceab564",
    "8b77284d6f37ab3fc826139ebadaec3b9d81c552fe525c3547bbbd6c65ac0d83",
    "8fdc34509a0c3721f7b5e235c8a93e1f553343aa17ad103a1e89e3509a3e1570",
    "97158b2fe38783d88d4e44ba1b7bc6c84f225f8b35fcccc2f9265c65f14e7c8b",
    "a5fe0b7412dd152c41f7afc34ffdf276d4261b6942fa6d36803648e90f2cfc06",
    "a65bbfc5673e8053b6ce49f39c79cf3a846fe5cc46dd93105f74fb07cf44606d",
    "ae570a676961482848b5097038ef5e407df7a66a8e1c9b0567da599565a6b142",
    "af8621ef0db8c26b0bce6385bd5609b584bfd678fcf7a234b8a15e6bb05c15ac",
    "b76ff33ae9da28f9cd8bdce465d45f1eca399db3ffa83847535708e0d511fe38",
    "bff985591dd5d6303018a6e9a3dcfb336771a414ad4605c24ce1c1155fc86a96",
    "c6de542205b891eed5c40e6d8ae3d03a6ca39b26dc445b4dbc64340d4d64dd2d",
    "cdab367b30db47061df837c1ae9fa875d6057614f797332d37d3513517d6c694",
    "d52958107d0b1f0288f50f346a833df3df485b92d5516cfcb536e73ab7adafd0",
    "dbe5ad05b6f87018159a3228c1d1725892a1bfb9fa9f8fcc2e8bfe70d69d0355",
    "df9a4212ecb67bb4e58eba62f293b91f9d6f1dde73e38fa891c75661d419fc97",
    "e5a7b8a9924b26b3abf039255a8a3bb00258f4966f68ff3349560b4350af9367",
    "ebc18868864ad075548cc1784f4f9a237bb98335f9645ee727dac8332a3e3716",
    "f01a9742c43a69f087700a43893f713878e537bae8e44f76b957f09519601ad6",
    "f8e74d4006dd68c1dbe68df7be905835e00d8ba4916f3b18884509a15fdc0b55",
    "ff599c7301daa1f783924ac8cbe3ce7b42878f15a39c2d19659189951f540f48",
)


def get_config(variant: str = "grey"):
    c = default.get_config()
    c.model.num_classes = 3
    c.data.dataset = "nuclei_dsb"
    c.data.targets = "interior_border"
    c.data.to_grey = True
    c.data.held_out = HELD_OUT
    c.data.train_split = "train"
    c.data.eval_split = "held_out"
    c.data.tile_size = 128
    c.data.eval_tile_size = 256
    c.data.foreground_prob = 0.5
    c.instances.mode = "interior"
    c.instances.min_size = 8
    c.loss = "dice_ce"
    c.num_steps = 3500  # about 29 minutes on 2 CPU cores
    c.eval_every = 0  # validate at the end only (periodic validations count as training time)
    c.eval_max_images = 10
    c.checkpoint_every = 500
    c.time_budget_s = 1740.0  # stays inside 30 minutes of training on 2 CPU cores
    if variant == "bright_objects":
        c.data.contrast = "bright_objects"
        c.num_steps = 4000
        c.time_budget_s = 0.0
    elif variant != "grey":
        raise ValueError(f"nuclei config variants: grey (default), bright_objects; got {variant!r}")
    return c
