"""The shipped models (``unet_jax/models/``): re-evaluates each one's held-out figures from the
shipped files, as a user would load them, and (``--ship``) writes a trained run into that
folder with its model card. One JSON line per model.

    python -m benchmarks.pretrained_models --data_dir wbc=../shared/data/wbc_dataset1
    python -m benchmarks.pretrained_models --ship wbc --workdir RUN --data_dir wbc=../shared/data/wbc_dataset1
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from benchmarks import jsonl

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
                   "--config experiments/configs/wbc.py --config.data.data_dir DATA/wbc_dataset1",
        "input": "RGB (3 channels), 8-bit; one cell per image at about the training data's magnification "
                 "(a leukocyte about 60-100 pixels across); other magnifications: --scale (e.g. 0.4 for "
                 "cells 2.5x larger). Trained on one lab's staining (yellowish background, violet nuclei) "
                 "without stain augmentation: smears stained otherwise lose much of their accuracy "
                 "(benchmarks/stain_scale_proxy.py)",
        "classes": "0 background (and red cells), 1 cytoplasm, 2 nucleus",
        "cite": "Zheng, Wang, Wang & Liu (2018). Fast and robust segmentation of white blood cell images "
                "by self-supervised learning. Micron 107:55-71. doi:10.1016/j.micron.2018.01.010",
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
    res, _ = evaluation.evaluate(config, model.predict, held_out, warping=False,
                                 workers=len(os.sched_getaffinity(0)))
    keys = [k for k in res if k.startswith(("dice", "iou")) or k in ("pixel_error", "dsb_map", "ap@0.5", "pq")]
    return {"benchmark": "pretrained_models", "model": name, "held_out": f"{config.data.eval_split}",
            "images": res["images"], **{k: round(res[k], 4) for k in keys}}


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
        folder = pretrained.save(run, pretrained.MODELS_DIR / a.ship, card=f"# {a.ship}\n")
        figures = {"step": run.step, **evaluate(a.ship, data[a.ship])}
        pretrained.save(run, folder, card=card(a.ship, run.config, figures))
    for name in pretrained.names():
        if name not in data:
            continue
        jsonl.Lines(a.output).emit(evaluate(name, data[name]))


if __name__ == "__main__":
    main()
