"""Evaluates a trained run on a dataset split: the paper's Table 1 (warping, Rand, pixel
error) plus Dice / IoU and, where the data has instances, instance metrics; also as JSON.

    python -m experiments.unet_evaluate --workdir runs/isbi --dataset isbi2012 \
        --data_dir ../shared/data/isbi2012 --split 'train[20:]' --tta
"""
import json
import os
import sys
from pathlib import Path

from absl import app, flags

from unet_jax import evaluation, pretrained, runtime
from unet_jax.data import builders

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A shipped model's name, a trained run's workdir, a model folder, or a "
                    "bioimage.io package (NAME.zip).")
flags.DEFINE_string("workdir", None, "A trained run; the same as --model.")
flags.DEFINE_bool("fallback", False, "If the checkpoint cannot be read, use the next older one.")
flags.DEFINE_string("dataset", None, "synthetic_cells | isbi2012 | nuclei_dsb | image_folder.", required=True)
flags.DEFINE_string("data_dir", "", "The dataset's local source folder.")
flags.DEFINE_string("split", "test", "TFDS split (slicing allowed).")
flags.DEFINE_string("tfds_dir", "", "Prepared datasets (default: the run's, else ~/tensorflow_datasets).")
flags.DEFINE_bool("tta", False, "Test-time augmentation.")
flags.DEFINE_bool("warping", True, "Compute the warping error.")
flags.DEFINE_bool("thinned", False, "Also the Rand error after border thinning (rand_error_thinned): "
                  "one watershed per threshold, about 7 s per megapixel.")
flags.DEFINE_integer("workers", 0, "Processes computing the metrics (0: one per CPU this process may "
                     "use, at most 8).")
flags.DEFINE_string("calibrate_split", "", "Choose the foreground threshold with the smallest pixel "
                    "error on this split (e.g. the training slices) and also report the evaluated "
                    "split's pixel error at it (pixel_error_calibrated).")
flags.DEFINE_string("output", "", "JSON file (default: WORKDIR/eval_DATASET.json).")
flags.DEFINE_float("scale", 1.0, "Resize each image by this factor before the model, the outputs back "
                   "to its size: 0.5 for objects twice the size of the training data's.")
flags.DEFINE_string("report", "", "Also write to this folder per_image.csv (each image's metrics) and "
                    "contact_sheet.png (the worst and best images, truth and prediction outlined).")


def main(argv):
    del argv
    runtime.setup(FLAGS.verbosity)
    try:
        if not FLAGS.scale > 0:
            raise ValueError(f"--scale must be > 0, got {FLAGS.scale}")
        model = pretrained.one_of(FLAGS.model, FLAGS.workdir)
        run = pretrained.resolve(model, fallback=FLAGS.fallback)
        splits = (FLAGS.split,) + ((FLAGS.calibrate_split,) if FLAGS.calibrate_split else ())
        sources = builders.load(FLAGS.dataset, FLAGS.tfds_dir or builders.tfds_dir(run.config), FLAGS.data_dir,
                                splits=splits, **builders.dataset_options(run.config, FLAGS.dataset))
        threshold = None
        if FLAGS.calibrate_split:
            threshold = evaluation.calibrate_threshold(run.config, run.predict, sources[FLAGS.calibrate_split],
                                                       FLAGS.tta, scale=FLAGS.scale)
        workers = FLAGS.workers or min(len(os.sched_getaffinity(0)), 8)
        rows = []
        results, _ = evaluation.evaluate(run.config, run.predict, sources[FLAGS.split], tta=FLAGS.tta,
                                         warping=FLAGS.warping, thinned=FLAGS.thinned, threshold=threshold,
                                         workers=workers, scale=FLAGS.scale, rows_out=rows)
        if FLAGS.report:
            written = evaluation.write_report(run.config, run.predict, sources[FLAGS.split], rows, FLAGS.report,
                                              tta=FLAGS.tta, scale=FLAGS.scale)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(evaluation.results_table(results, FLAGS.dataset))
    if FLAGS.report:
        print(f"report: {', '.join(str(p) for p in written)}")
    print(json.dumps(results, indent=1))
    shipped = model in pretrained.names() or not Path(model).is_dir()  # a name or a .zip: here
    default = Path(f"eval_{Path(model).stem}_{FLAGS.dataset}.json") if shipped \
        else Path(model) / f"eval_{FLAGS.dataset}.json"
    path = Path(FLAGS.output or default)
    path.write_text(json.dumps({"dataset": FLAGS.dataset, "split": FLAGS.split, "tta": FLAGS.tta,
                                "calibrate_split": FLAGS.calibrate_split, **results}, indent=1))


if __name__ == "__main__":
    app.run(main)
