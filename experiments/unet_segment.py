"""Trains the U-Net (the main job). Offline on a fresh CPU machine it trains on the embedded
synthetic-cells dataset; flags scale it to several GPUs and SLURM nodes.

    python -m experiments.unet_segment --workdir runs/
    python -m experiments.unet_segment --workdir runs/isbi --config experiments/configs/isbi2012.py \
        --config.data.data_dir ../shared/data/isbi2012
    python -m experiments.unet_segment --workdir runs/ --config.num_steps=200 --config.parallel=mesh

A rerun on the same workdir resumes from its last checkpoint. ``--verbosity=1`` shows the
libraries' INFO logs.
"""
from absl import app, flags
from ml_collections import config_flags

from unet_jax import runtime, safety, supervisor

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, figures).", required=True)
config_flags.DEFINE_config_file("config", "experiments/configs/default.py",
                                "Config file (path[:variant]); override fields with --config.x=y.",
                                lock_config=True)


def main(argv):
    del argv
    runtime.setup(FLAGS.verbosity)
    supervisor.supervise(FLAGS.config)  # each process of a multi-process run trains in a child
    from unet_jax import train  # loaded here: a supervising parent never needs it

    safety.run_or_exit(train.train_and_evaluate, FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
