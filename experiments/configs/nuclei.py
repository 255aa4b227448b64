"""Nuclei instances (2018 Data Science Bowl layout, ``<id>/images/<id>.png`` +
``<id>/masks/*.png``): a U-Net trained on 3 classes (background, nucleus interior, nucleus
border, as the DSB 2018 winners did), whose interiors seed the instances. Held out:
``HELD_OUT``, 43 of ``dsb2018_train``'s 202 images chosen per kind (33 fluorescence, 8 colour
brightfield / H&E, 2 grey brightfield: ``python -m benchmarks.dsb_modalities``).

The default variant trains from scratch: RGB input (grey images fill the three channels),
haematoxylin-eosin stain jitter and a mild zoom, 7,000 steps (about 50 minutes on 2 CPU cores).
The shipped ``nuclei`` model is that run fine-tuned four times, 3,000 steps at learning rate 1e-3
each (about 25 minutes), borders 2 pixels wide: twice by ``fine_tune``, then twice by
``fine_tune_brightfield``, which draws the brightfield training images 10 times an epoch (20 the
last time). Its objects are cut at foreground probability 0.8 from interiors above 0.7 of at
least 8 pixels, all chosen on the training images (``python -m benchmarks.instance_thresholds``):

    python -m experiments.unet_segment --workdir runs/nuclei_base --config experiments/configs/nuclei.py \
        --config.data.data_dir ../shared/data/dsb2018_train
    python -m experiments.unet_segment --workdir runs/nuclei_ft1 --config experiments/configs/nuclei.py:fine_tune \
        --config.init_from runs/nuclei_base --config.data.data_dir ../shared/data/dsb2018_train
    python -m experiments.unet_segment --workdir runs/nuclei_ft2 --config experiments/configs/nuclei.py:fine_tune \
        --config.init_from runs/nuclei_ft1 --config.data.data_dir ../shared/data/dsb2018_train
    python -m experiments.unet_segment --workdir runs/nuclei_bf1 \
        --config experiments/configs/nuclei.py:fine_tune_brightfield \
        --config.init_from runs/nuclei_ft2 --config.data.data_dir ../shared/data/dsb2018_train
    python -m experiments.unet_segment --workdir runs/nuclei \
        --config experiments/configs/nuclei.py:fine_tune_brightfield --config.data.oversample 20 \
        --config.init_from runs/nuclei_bf1 --config.data.data_dir ../shared/data/dsb2018_train
    python -m experiments.unet_predict --workdir runs/nuclei --input my_images/ --output out/ --instances --tta

Other variants, compared per kind of image by ``benchmarks/nuclei_modalities.py``
(docs/performance.md): ``grey`` (colour made grey, 3,500 steps, the 30-minute recipe),
``bright_objects`` (grey, stretched and inverted where the background is bright) and
``colour_oversampled`` (the brightfield training images drawn 3 times an epoch, 5,000 steps).
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


# the 28 training images of the brightfield kinds (25 colour H&E / stained, 3 grey), for
# oversampling: among 159 training images they would otherwise fill one tile in six
BRIGHTFIELD_TRAIN = (
    "15039b3acccc4257a1a442646a89b6e596b5eb4531637e6d8fa1c43203722c99",
    "1ec74a26e772966df764e063f1391109a60d803cff9d15680093641ed691bf72",
    "2a1a294e21d76efd0399e4eb321b45f44f7510911acd92c988480195c5b4c812",
    "2e2d29fc44444a85049b162eb359a523dec108ccd5bd75022b25547491abf0c7",
    "353ab00e964f71aa720385223a9078b770b7e3efaf5be0f66e670981f68fe606",
    "40946065f7e4b6038599fbfd419f2a67e7635b6f89db3ed6c0d67c8801521af1",
    "420f43d21dbaba42bf8c0995b3a2c85537876d594433770c6c6f3d6b779ec15f",
    "442c4eb0185698fe7d148c108a46f74abd399aecda2f4f22981a1671cd95dd7d",
    "4ca5081854df7bbcaa4934fcf34318f82733a0f8c05b942c2265eea75419d62f",
    "52a6b8ae4c8e0a8a07a31b8e3f401d8811bf1942969c198e51dfcbd98520aa60",
    "54793624413c7d0e048173f7aeee85de3277f7e8d47c82e0a854fe43e879cd12",
    "55f98f43c152aa0dc8bea513f8ba558cc57494b81ae4ee816977816e79629c50",
    "5c6eb9a47852754d4e45eceb9a696c64c7cfe304afc5ea491cdfef11d55c17f3",
    "5d58600efa0c2667ec85595bf456a54e2bd6e6e9a5c0dff42d807bc9fe2b822e",
    "6c67b78e8164801059375ed9a607f61e67a7ae347e92e36a7f20514224541d56",
    "6d327ab4f0e3604fa6e9b8041c7e6db86ab809890d886c691f6e59c9168b7fbe",
    "718751b439c05bdd589f04fcef321a86be3ecb35292a435138e295e05eb2e771",
    "815524d88283ba10ad597b87aa1967671db776df8004a0c4291b67fc2624c22a",
    "8e507d58f4c27cd2a82bee79fe27b069befd62a46fdaed20970a95a2ba819c7b",
    "a0325cb7aa59e9c0a75e64ba26855d8032c46161aa4bca0c01bac5e4a836485e",
    "a08166d91d2cca263d2dd52764dc25c9c582b7a5ece2b802749fa4be33187c49",
    "a7f6194ddbeaefb1da571226a97785d09ccafc5893ce3c77078d2040bccfcb77",
    "a90401357d50e1376354ae6e5f56a2e4dff3fdb5a4e8d50316673b2b8f1f293b",
    "abd8dde78f8d37b68b28da67459371ed65f0a575523e94bc4ecbc88e6fedf0d0",
    "af6b6173c59450bc76b2cc461cf233921fbfdb6feb8dd6da03a0d44193221fd0",
    "b0e35e06b85da49bfe3ea737711a72b551a6add446e30eabb01aa683a79873c5",
    "bb61fc17daf8bdd4e16fdcf50137a8d7762bec486ede9249d92e511fcb693676",
    "ea94ba4b01d1bd5f7768d10e0ac547743791033df545c71fcec442d0cb5cb5e7",
)


def get_config(variant: str = "colour"):
    c = default.get_config()
    c.model.num_classes = 3
    c.data.dataset = "nuclei_dsb"
    c.data.targets = "interior_border"
    c.data.held_out = HELD_OUT
    c.data.train_split = "train"
    c.data.eval_split = "held_out"
    c.data.tile_size = 128
    c.data.eval_tile_size = 256
    c.data.foreground_prob = 0.5
    c.instances.mode = "interior"
    c.instances.min_size = 8
    c.instances.threshold = 0.8  # all three chosen on the training images (benchmarks/instance_thresholds.py)
    c.instances.seed_threshold = 0.7
    c.instances.min_seed_size = 8
    c.eval_tta = True  # the final validation over 8 flips / rotations, as the shipped model runs (--tta)
    c.loss = "dice_ce"
    c.eval_every = 0  # validate at the end only (periodic validations count as training time)
    c.eval_max_images = 10
    c.checkpoint_every = 500
    if variant in ("colour", "colour_oversampled", "fine_tune", "fine_tune_brightfield"):  # colour, stain jitter
        c.model.in_channels = 3
        c.augment.stain = 0.3  # haematoxylin / eosin / DAB concentrations each x U(0.7, 1.3)
        c.augment.stain_shift = 0.02  # + U(-0.02, 0.02)
        c.augment.scale = 0.2  # zoom x 0.82 ... 1.22 (larger factors: unet_predict --scale)
        c.num_steps = 7000  # about 50 minutes on 2 CPU cores
        if variant in ("fine_tune", "fine_tune_brightfield"):  # later stages: --config.init_from RUN
            c.data.border_width = 2  # touching nuclei: interiors 4 pixels apart
            c.num_steps = 3000  # about 25 minutes on 2 CPU cores
            c.optim.learning_rate = 1e-3
            if variant == "fine_tune_brightfield":  # the brightfield images drawn 10x: 280 of 411 draws
                c.data.oversample_names = BRIGHTFIELD_TRAIN
                c.data.oversample = 10
        if variant == "colour_oversampled":  # a candidate: brightfield drawn 3x
            c.data.oversample_names = BRIGHTFIELD_TRAIN
            c.data.oversample = 3  # 84 of 215 draws an epoch
            c.augment.scale = 0.0
            c.num_steps = 5000
    elif variant in ("grey", "bright_objects"):  # the earlier 30-minute recipe and a variant of it
        c.data.to_grey = True
        c.num_steps = 3500  # about 29 minutes on 2 CPU cores
        c.time_budget_s = 1740.0  # stays inside 30 minutes of training on 2 CPU cores
        if variant == "bright_objects":
            c.data.contrast = "bright_objects"
            c.num_steps = 4000
            c.time_budget_s = 0.0
    else:
        raise ValueError(f"nuclei config variants: colour (default), fine_tune, fine_tune_brightfield, "
                         f"colour_oversampled, grey, bright_objects; got {variant!r}")
    return c
