"""Writes a figure in the spirit of Ronneberger et al. 2015, Fig. 3: image, ground truth and
the border weight map w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / (2 sigma^2)).

    python -m experiments.weight_map_figure --output weight_map.png
    python -m experiments.weight_map_figure --data_dir ../shared/data/isbi2012 --index 0 --output isbi_wm.png

Without --data_dir the sample comes from the embedded synthetic-cells generator.
"""
from absl import app, flags

from unet_jax import losses, plots, runtime
from unet_jax.data import readers, synthetic

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "", "ISBI 2012 folder (images/ + labels/ or the .tif stacks); "
                    "empty: embedded synthetic cells.")
flags.DEFINE_integer("index", 0, "Slice (ISBI) or seed (synthetic).")
flags.DEFINE_float("w0", 10.0, "Border weight w0.")
flags.DEFINE_float("sigma", 5.0, "Border width sigma in pixels.")
flags.DEFINE_string("output", "weight_map.png", "PNG to write.")


def main(argv):
    del argv
    runtime.setup(FLAGS.verbosity)
    if FLAGS.data_dir:
        images, masks, names = readers.read_isbi2012(FLAGS.data_dir)
        if not 0 <= FLAGS.index < len(images):
            raise app.UsageError(f"--index must be in [0, {len(images) - 1}], got {FLAGS.index}")
        image, mask, name = images[FLAGS.index], masks[FLAGS.index], names[FLAGS.index]
        instances = losses.ndimage.label(mask)[0]
    else:
        sample = synthetic.generate(FLAGS.index, 256)
        image, instances, name = sample["image"], sample["instances"], f"synthetic seed {FLAGS.index}"
    weights = losses.weight_map(instances, FLAGS.w0, FLAGS.sigma)
    plots.weight_map_figure(image, instances, weights, FLAGS.output,
                            f"{name}: w0={FLAGS.w0:g}, sigma={FLAGS.sigma:g} px, "
                            f"w in [{weights.min():.2f}, {weights.max():.2f}]")
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
