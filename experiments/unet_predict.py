"""Segments images with a trained run: masks, per-class probabilities and overlays.

    python -m experiments.unet_predict --workdir runs/ --input image.png --output out/
    python -m experiments.unet_predict --workdir runs/ --input folder/ --output out/ --tta
    python -m experiments.unet_predict --workdir runs/ --input stack.tif --output out/

Writes NAME_mask.png (0/255 for two classes, else class ids), NAME_prob.tif (float32
[K, H, W]) and NAME_overlay.png; a TIFF stack gives NAME_mask.tif / NAME_prob.tif stacks.
"""
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A trained run (config.json + checkpoints/).", required=True)
flags.DEFINE_bool("fallback", False, "If the checkpoint cannot be read, use the next older one.")
flags.DEFINE_string("input", None, "An image, a folder of images, or a TIFF stack.", required=True)
flags.DEFINE_string("output", None, "Output folder.", required=True)
flags.DEFINE_bool("tta", False, "Average over the 8 flips / 90 degree rotations.")
flags.DEFINE_integer("tile_size", 0, "Input tile size (0: the run's evaluation tile).")


def main(argv):
    del argv
    import tifffile
    from PIL import Image

    from unet_jax import evaluation, inference, plots, runtime
    from unet_jax.data import builders, readers

    runtime.setup(FLAGS.verbosity)
    try:
        run = evaluation.load_trained(FLAGS.workdir, fallback=FLAGS.fallback)
        config = run.config
        src = Path(FLAGS.input)
        files = sorted(p for p in src.iterdir() if p.suffix.lower() in readers.IMAGE_SUFFIXES) \
            if src.is_dir() else [src]
        if not files:
            raise ValueError(f"--input {src}: no images (png, tif, jpg) found")
        out = Path(FLAGS.output)
        out.mkdir(parents=True, exist_ok=True)
        k = config.model.num_classes
        tile_in = FLAGS.tile_size or inference.eval_tile_size(config)
        for f in files:
            arr = readers.read_image(f)
            stack = f.suffix.lower() in (".tif", ".tiff") and arr.ndim == 3 and arr.shape[-1] not in (3, 4)
            slices = list(arr) if stack else [arr]
            masks, probs = [], []
            for i, s in enumerate(slices):
                image = builders.normalise(s)
                if image.ndim == 3 and config.model.in_channels == 1 and image.shape[-1] in (3, 4):
                    raise ValueError(f"{f}: image has {image.shape[-1]} channels, the model expects 1")
                image = builders.to_channels(image, config.model.in_channels, f)
                p = inference.predict_probs(config, run.predict, image, FLAGS.tta, tile_in)
                mask = p.argmax(-1).astype(np.uint8)
                masks.append(mask * 255 if k == 2 else mask)
                probs.append(np.moveaxis(p, -1, 0).astype(np.float32))
                plots.prediction_overlays([(image, np.zeros(mask.shape), p[..., 1:].sum(-1))],
                                          out / f"{f.stem}{f'_{i:03d}' if stack else ''}_overlay.png")
            if stack:
                tifffile.imwrite(out / f"{f.stem}_mask.tif", np.stack(masks))
                tifffile.imwrite(out / f"{f.stem}_prob.tif", np.stack(probs))
            else:
                Image.fromarray(masks[0]).save(out / f"{f.stem}_mask.png")
                tifffile.imwrite(out / f"{f.stem}_prob.tif", probs[0])
            print(f"{f} -> {out / f.stem}_mask.{'tif' if stack else 'png'}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
