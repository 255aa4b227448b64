"""Exports a trained run as a BioImage Model Zoo package (bioimage.io model 0.5, ONNX weights),
which Fiji (deepImageJ), ilastik, QuPath and napari open.

    python -m experiments.unet_export --workdir runs/ --output my_unet.zip

The package holds the ONNX weights (class probabilities), the pre-processing the run trained
with, a test tile from the run's own data with the JAX model's output for it, a cover image,
a README with the training data's source and licence, and the citations. ``unet_predict
--model my_unet.zip`` runs it again through ONNX Runtime.
"""
import json
import sys
import time
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A trained run (config.json + checkpoints/).", required=True)
flags.DEFINE_string("output", None, "The package to write (NAME.zip).", required=True)
flags.DEFINE_bool("fallback", False, "If the checkpoint cannot be read, use the next older one.")
flags.DEFINE_string("name", "", "The model's name (default: from the dataset).")
flags.DEFINE_list("authors", ["unet_jax"], "Authors, comma-separated.")
flags.DEFINE_string("license", "CC-BY-4.0", "SPDX licence of the weights.")


def main(argv):
    del argv
    from unet_jax import evaluation, runtime, zoo
    from unet_jax.data import builders

    runtime.setup(FLAGS.verbosity)
    t = time.perf_counter()
    try:
        if not FLAGS.output.endswith(".zip"):
            raise ValueError(f"--output {FLAGS.output}: expected a file name ending in .zip")
        run = evaluation.load_trained(FLAGS.workdir, fallback=FLAGS.fallback)
        zoo.check_exportable(run.config)
        d = run.config.data
        source = builders.load(d.dataset, builders.tfds_dir(run.config), d.data_dir, splits=(d.eval_split,),
                               **builders.dataset_options(run.config, d.dataset))[d.eval_split]
        summary = Path(FLAGS.workdir) / "summary.json"
        result = zoo.export(run, FLAGS.output, zoo.raw_test_image(run.config, source), name=FLAGS.name,
                            authors=tuple(FLAGS.authors), licence=FLAGS.license,
                            validation=json.loads(summary.read_text()) if summary.exists() else None)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({**result, "wall_s": round(time.perf_counter() - t, 1)}))


if __name__ == "__main__":
    app.run(main)
