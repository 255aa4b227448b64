"""Segments images with a trained run: masks, per-class probabilities and overlays.

    python -m experiments.unet_predict --workdir runs/ --input image.png --output out/
    python -m experiments.unet_predict --workdir runs/ --input folder/ --output out/ --tta
    python -m experiments.unet_predict --workdir runs/ --input stack.tif --output out/

    python -m experiments.unet_predict --workdir runs/ --input folder/ --output out/ --instances
    python -m experiments.unet_predict --model my_unet.zip --input folder/ --output out/
    python -m experiments.unet_predict --model wbc --input smears/ --output out/   # a shipped model

Writes NAME_mask.png (0/255 for two classes, else class ids), NAME_prob.tif (float32
[K, H, W]) and NAME_overlay.png (for K > 2 classes, each class in its colour with a legend); a
TIFF stack gives NAME_mask.tif / NAME_prob.tif stacks. ``--instances`` adds NAME_instances.tif,
a 16-bit label image (0 background, objects 1..N) that Fiji and napari open, made as the run's
``config.instances`` says (or ``--instances_mode``).
"""
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A shipped model's name, a trained run's workdir, a model folder, or a "
                    "bioimage.io package (NAME.zip, from unet_export; run through ONNX Runtime).")
flags.DEFINE_string("workdir", None, "A trained run (config.json + checkpoints/); the same as --model.")
flags.DEFINE_bool("fallback", False, "If the checkpoint cannot be read, use the next older one.")
flags.DEFINE_string("input", None, "An image, a folder of images, or a TIFF stack.", required=True)
flags.DEFINE_string("output", None, "Output folder.", required=True)
flags.DEFINE_bool("tta", False, "Average over the 8 flips / 90 degree rotations.")
flags.DEFINE_integer("tile_size", 0, "Input tile size (0: the run's evaluation tile).")
flags.DEFINE_float("scale", 1.0, "Resize each image by this factor before the model, the outputs back "
                   "to its size: 0.5 for objects twice the size of the training data's.")
flags.DEFINE_bool("instances", False, "Also write NAME_instances.tif (16-bit object labels).")
flags.DEFINE_enum("instances_mode", None, ["components", "watershed", "interior"],
                  "How objects are separated (default: the run's config.instances.mode).")
flags.DEFINE_float("instances_threshold", None, "Foreground probability above which pixels belong to "
                   "objects (default: the run's config.instances.threshold).")
flags.DEFINE_float("seed_threshold", None, "Interior mode: interior probability above which pixels seed "
                   "objects; higher splits touching objects (default: config.instances.seed_threshold).")
flags.DEFINE_integer("min_seed_size", None, "Interior mode: seeds below this many pixels are dropped, so "
                     "specks do not split large objects (default: config.instances.min_seed_size).")


def main(argv):
    del argv
    from unet_jax import inference, pretrained, runtime
    from unet_jax.data import builders, readers

    runtime.setup(FLAGS.verbosity)
    try:
        if not FLAGS.scale > 0:
            raise ValueError(f"--scale must be > 0, got {FLAGS.scale}")
        for name in ("instances_threshold", "seed_threshold"):
            value = getattr(FLAGS, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"--{name} must be in [0, 1), got {value}")
        if FLAGS.min_seed_size is not None and FLAGS.min_seed_size < 0:
            raise ValueError(f"--min_seed_size must be >= 0, got {FLAGS.min_seed_size}")
        if FLAGS.tile_size < 0:
            raise ValueError(f"--tile_size must be >= 0 (0: the run's evaluation tile), got {FLAGS.tile_size}")
        src = Path(FLAGS.input)
        if not src.exists():
            raise ValueError(f"--input {src}: no such file or folder")
        files = sorted(p for p in src.iterdir() if p.suffix.lower() in readers.IMAGE_SUFFIXES) \
            if src.is_dir() else [src]
        if not files:
            raise ValueError(f"--input {src}: no images ({', '.join(readers.IMAGE_SUFFIXES)}) found")
        run = pretrained.resolve(pretrained.one_of(FLAGS.model, FLAGS.workdir), fallback=FLAGS.fallback)
        config = run.config
        out = Path(FLAGS.output)
        k = config.model.num_classes
        tile_in = FLAGS.tile_size or inference.eval_tile_size(config)
        for f in files:
            arr = readers.read_image(f)
            stack = readers.is_stack(arr)
            slices = list(arr) if stack else [arr]
            images, masks, probs, objects = [], [], [], []
            for s in slices:
                image = builders.model_input(s, f, config.model.in_channels, config.data.get("to_grey", False),
                                             config.data.get("contrast", "as_is"))
                p = inference.predict_probs(config, run.predict, image, FLAGS.tta, tile_in, scale=FLAGS.scale)
                mask = p.argmax(-1).astype(np.uint8)
                images.append(image)
                masks.append(mask * 255 if k == 2 else mask)
                probs.append(np.moveaxis(p, -1, 0).astype(np.float32))
                if FLAGS.instances:
                    objects.append(_instances(config, p))
            _write(out, f.stem, stack, images, masks, probs, objects, k)
            print(f"{f} -> {out / f.stem}_mask.{'tif' if stack else 'png'}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def _instances(config, probs: np.ndarray) -> np.ndarray:
    from unet_jax import evaluation

    chosen = {"mode": FLAGS.instances_mode, "threshold": FLAGS.instances_threshold,
              "seed_threshold": FLAGS.seed_threshold, "min_seed_size": FLAGS.min_seed_size}
    chosen = {k: v for k, v in chosen.items() if v is not None}
    if chosen:
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.instances.update(chosen)
    labels = evaluation.predicted_instances(config, probs)
    if labels.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"{labels.max()} objects do not fit a 16-bit label image")
    return labels.astype(np.uint16)


def _write(out: Path, stem: str, stack: bool, images, masks, probs, objects, k: int) -> None:
    """Writes one input's outputs; if any write fails (a full disk), removes the ones written."""
    import tifffile
    from PIL import Image

    from unet_jax import plots

    written = []

    def target(name):
        written.append(out / name)
        return out / name

    try:
        out.mkdir(parents=True, exist_ok=True)
        if stack:
            tifffile.imwrite(target(f"{stem}_mask.tif"), np.stack(masks))
            tifffile.imwrite(target(f"{stem}_prob.tif"), np.stack(probs))
        else:
            Image.fromarray(masks[0]).save(target(f"{stem}_mask.png"))
            tifffile.imwrite(target(f"{stem}_prob.tif"), probs[0])
        if objects:
            tifffile.imwrite(target(f"{stem}_instances.tif"), np.stack(objects) if stack else objects[0],
                             imagej=True)
        for i, (image, p) in enumerate(zip(images, probs)):
            name = target(f"{stem}{f'_{i:03d}' if stack else ''}_overlay.png")
            if k > 2:
                plots.class_overlay(image, p.argmax(0), k, name)
            else:
                plots.prediction_overlays([(image, np.zeros(p.shape[1:]), p[1:].sum(0))], name)
    except OSError as e:
        for path in written:
            if not path.is_symlink():
                path.unlink(missing_ok=True)
        raise ValueError(f"{written[-1] if written else out}: cannot write ({e.strerror or e})") from None


if __name__ == "__main__":
    app.run(main)
