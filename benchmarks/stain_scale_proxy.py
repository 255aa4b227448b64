"""How a trained RGB model holds on images stained and magnified otherwise than its own: the
held-out images as they are, re-stained by a fixed transform that training never draws (in
haematoxylin-eosin-DAB optical density: H x 1.5 + 0.05, E x 0.6 - 0.05, which turns the wbc
lab's yellowish smears pink-violet), and enlarged 2.5x (labels by nearest neighbour), predicted
as they are and with ``scale=0.4``. One JSON line per model with per-class Dice on each and,
where the data has instances (nuclei), the DSB 2018 mean AP (per kind for DSB images).

    python -m benchmarks.stain_scale_proxy --workdir RUN [--workdir RUN2 ...] [--output FILE]
    python -m benchmarks.stain_scale_proxy --model nuclei --data_dir ../shared/data/dsb2018_train
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np

from benchmarks import instance_thresholds, jsonl, nuclei_modalities

STAIN_ALPHA = np.array([1.5, 0.6, 1.0])  # outside the robust config's U(0.7, 1.3)
STAIN_BETA = np.array([0.05, -0.05, 0.0])
ENLARGE = 2.5


class Transformed:
    """A source whose examples' images (and, when resized, labels and instances) are changed."""

    def __init__(self, source, image_fn=None, factor: float = 1.0):
        self.source, self.image_fn, self.factor = source, image_fn, factor

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        from skimage import transform

        ex = dict(self.source[i])
        if self.image_fn is not None:
            ex["image"] = self.image_fn(ex["image"])
        if self.factor != 1.0:
            h, w = ex["labels"].shape
            size = (round(h * self.factor), round(w * self.factor))
            ex["image"] = transform.resize(ex["image"], size + ex["image"].shape[2:], order=1,
                                           preserve_range=True).astype(np.float32)
            for k in ("labels", "instances"):
                ex[k] = transform.resize(ex[k], size, order=0, preserve_range=True,
                                         anti_aliasing=False).astype(ex[k].dtype)
        return ex


def restain(image: np.ndarray) -> np.ndarray:
    from skimage import color

    return color.hed2rgb(color.rgb2hed(np.clip(image, 0, 1)) * STAIN_ALPHA + STAIN_BETA).astype(np.float32)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", action="append", default=[], help="a trained run (its final step)")
    p.add_argument("--model", action="append", default=[], help="a shipped model's name or a model folder")
    p.add_argument("--data_dir", default="", help="with --model: the data it was trained on")
    p.add_argument("--instances", action="append", default=[],
                   help="KEY=VALUE: the same instance setting for every model (threshold=, seed_threshold=, "
                        "min_size=, min_seed_size=)")
    p.add_argument("--output", default="", help="also append the JSON lines to this file")
    a = p.parse_args(argv)
    if not a.workdir and not a.model:
        p.error("give --workdir or --model")

    from unet_jax import evaluation, pretrained, runtime
    from unet_jax.data import builders

    runtime.setup(0)
    for spec in a.workdir + a.model:
        if spec in a.workdir:
            summary = json.loads(open(os.path.join(spec, "summary.json")).read())
            run = evaluation.load_trained(spec, step=summary["step"])  # the final step, as own_data_quality
        else:
            run = pretrained.resolve(spec)
            with run.config.unlocked():
                run.config.data.data_dir = a.data_dir
                run.config.data.tfds_dir = os.path.join(tempfile.gettempdir(), "unet_jax_pretrained_tfds")
        with run.config.unlocked():
            run.config.instances.update(instance_thresholds.settings(a.instances))
        _, held_out = builders.load_train_eval(run.config)
        objects = run.config.instances.mode == "interior"  # instance metrics (slower: a full evaluation)
        names = list(run.config.data.get("held_out") or ())
        cases = {"as_is": (held_out, 1.0), "restained": (Transformed(held_out, restain), 1.0),
                 "enlarged": (Transformed(held_out, factor=ENLARGE), 1.0),
                 "enlarged_scale_0.4": (Transformed(held_out, factor=ENLARGE), 1 / ENLARGE),
                 "restained_enlarged_scale_0.4": (Transformed(held_out, restain, ENLARGE), 1 / ENLARGE)}
        if run.config.model.in_channels != 3:  # grey models: no stains to change
            cases = {k: v for k, v in cases.items() if "restained" not in k}
        line = {"benchmark": "stain_scale_proxy", "workdir": spec, "steps": run.step,
                **({"instances": dict(run.config.instances)} if objects else {}),
                "augment": {k: run.config.augment[k] for k in ("stain", "stain_shift", "scale")
                            if k in run.config.augment}}
        for name, (source, scale) in cases.items():
            rows: list[dict] = []
            res, _ = evaluation.evaluate(run.config, run.predict, source, warping=False, quick=not objects,
                                         scale=scale, workers=len(os.sched_getaffinity(0)), rows_out=rows)
            line[name] = {k: round(res[k], 4) for k in ("dice_1", "dice_2", "pixel_error", "dsb_map") if k in res}
            if objects and names and run.config.data.dataset == "nuclei_dsb":
                figures = nuclei_modalities.per_kind(rows, nuclei_modalities.kinds(run.config.data.data_dir, names))
                line[name].update({f"dsb_map_{g}": figures[g]["dsb_map"] for g in ("fluorescence", "brightfield")})
        jsonl.Lines(a.output).emit(line)


if __name__ == "__main__":
    main()
