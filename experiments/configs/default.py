"""Default U-Net run: the embedded synthetic_cells dataset, a CPU-sized same-padding U-Net.

    python -m experiments.unet_segment --workdir runs/

Reaches held-out foreground Dice >= 0.90 in <= 10 minutes on 2 CPU cores
(measured by benchmarks/unet_default_run.py).
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # parameter init, shuffling, tiles, augmentation

    c.model = m = ml_collections.ConfigDict()
    m.num_classes = 2  # background, cell
    m.in_channels = 1  # grey images
    m.features = 16  # channels of the first level (paper: 64)
    m.depth = 3  # max-pooling steps (paper: 4)
    m.padding = "same"  # same | valid (paper)
    m.norm = "batch"  # none (paper) | batch | group
    m.dropout = 0.0  # dropout at the end of the contracting path
    m.upsample = "transpose"  # transpose (paper) | bilinear
    m.dtype = "float32"  # compute dtype (bfloat16 on GPUs)
    m.conv = "auto"  # convolution kernels: auto (CPU kernels on CPU) | xla | matmul | rows

    c.data = d = ml_collections.ConfigDict()
    d.dataset = "synthetic_cells"  # synthetic_cells | isbi2012 | nuclei_dsb | image_folder
    d.data_dir = ""  # local source folder (isbi2012, nuclei_dsb, image_folder)
    d.tfds_dir = ""  # where prepared datasets are kept (default ~/tensorflow_datasets)
    d.train_split = "train"  # TFDS split (slicing allowed: train[:20])
    d.eval_split = "test"  # held-out split
    d.synthetic_size = 256  # synthetic_cells image size
    d.synthetic_train = 48  # synthetic_cells training images
    d.synthetic_test = 16  # synthetic_cells held-out images
    d.mask_suffix = ""  # image_folder: NAME.tif pairs with NAME<mask_suffix>.* (e.g. "_mask")
    d.mask_kind = "auto"  # image_folder: auto | classes | binary | instances
    d.mask_values = ()  # image_folder: mask value (or RGB colour) of each class, e.g. (0, 128, 255)
    d.targets = "classes"  # with instance masks: classes | interior_border (3 classes, DSB 2018 style)
    d.border_width = 1  # interior_border: border pixels counted inwards from each object's edge
    d.to_grey = False  # nuclei_dsb / image_folder: colour images become grey (else kept as channels)
    d.contrast = "as_is"  # as_is | bright_objects: stretched, inverted where the background is bright
    d.held_out = ()  # nuclei_dsb / image_folder: image names held out as the split "held_out"
    d.oversample_names = ()  # training images drawn data.oversample times per epoch (rare kinds)
    d.oversample = 1
    d.tile_size = 128  # training tile (network output) size
    d.eval_tile_size = 256  # inference tile (input) size
    d.foreground_prob = 0.33  # tiles centred on foreground
    d.mirror = "reflect"  # context extrapolation: reflect | symmetric
    d.w0 = 10.0  # weight map border weight
    d.sigma = 5.0  # weight map border width
    d.class_balance = True  # weight map w_c balances class frequencies (paper); False: w_c = 1

    c.augment = a = ml_collections.ConfigDict()
    a.enabled = True  # on-device augmentation in the train step
    a.elastic_sigma = 10.0  # paper: 10 px on a 3x3 grid
    a.elastic_grid = 3
    a.flips = True
    a.rot90 = True
    a.brightness = 0.1
    a.contrast = 0.2
    a.gamma = 0.3
    a.scale = 0.0  # random zoom ~ exp(U(-s, s)): objects of other sizes (0: off)
    a.stain = 0.0  # RGB: haematoxylin / eosin / DAB stain jitter, each concentration x U(1-s, 1+s)
    a.stain_shift = 0.0  # and + U(-t, t) (concentrations are mostly 0-0.2)

    c.instances = i = ml_collections.ConfigDict()  # objects from the predictions (unet_predict
    i.mode = "watershed"  # --instances, instance metrics): components | watershed | interior
    i.min_size = 10  # objects below this many pixels are dropped
    i.min_distance = 4  # watershed: seeds at least this far apart (pixels)
    i.threshold = 0.5  # the foreground: probability above this
    i.seed_threshold = ml_collections.config_dict.placeholder(float)  # interior: seeds (None: threshold)
    i.min_seed_size = 0  # interior: seeds below this many pixels are dropped

    c.init_from = ""  # fine-tuning: start from a shipped model, a workdir or a model folder
    c.loss = "weighted_ce"  # ce | weighted_ce (paper) | dice_ce
    c.optim = o = ml_collections.ConfigDict()
    o.name = "adam"  # sgd | adam | adamw
    o.learning_rate = 3e-3
    o.momentum = 0.99  # sgd only (paper)
    o.nesterov = False
    o.weight_decay = 0.0
    o.grad_clip = 1.0  # global-norm clipping (0: off)
    o.schedule = "cosine"  # constant | cosine | poly
    o.warmup_steps = 20  # linear warm-up steps

    c.batch_size = 8  # global batch (divisible by the device count)
    c.num_steps = 320  # optimiser steps
    c.log_every = 20  # steps between metric lines
    c.eval_every = 100  # steps between validations (0: only at the end)
    c.eval_max_images = 4  # images in periodic validations (the final one uses all)
    c.eval_tta = False  # test-time augmentation in the final validation
    c.eval_batch_tiles = 4  # tiles per device call in inference
    c.checkpoint_every = 100  # steps between checkpoints
    c.async_checkpoints = "auto"  # write checkpoints in the background: auto (on GPU/TPU) | on | off
    c.keep_checkpoints = 2  # latest checkpoints kept (plus the best by val Dice)
    c.stop_after = -1  # stop (with a checkpoint) after this step, as a preemption would
    c.time_budget_s = 0.0  # > 0: stop training this many seconds after the first step (so
    # compilation is not counted), then evaluate and save
    c.max_nonfinite_steps = 5  # stop after this many skipped (non-finite) steps in a row (0: never)
    c.progress = True  # tqdm progress bar
    c.parallel = "auto"  # auto (pmap if several devices) | jit | pmap | mesh
    c.loader_threads = 2  # grain read threads
    c.loader_workers = 0  # grain worker processes (0: threads only)
    c.coordinator = ""  # multi-host: coordinator host:port (SLURM sets it up when empty)
    c.num_processes = 0  # multi-host: process count
    c.process_id = -1  # multi-host: this process
    c.heartbeat_timeout_s = 100  # multi-host: a process silent this long ends the others (one line)
    return c
