"""``experiments.unet_segment`` with a pause after every train step, so that tests can signal
or kill a run in the middle of training:

    python -m tests.slow_segment SECONDS --workdir ... --config ...
"""
import sys
import time

from absl import app

from experiments import unet_segment
from unet_jax import supervisor


def slowed(step, delay: float):
    def call(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        time.sleep(delay)
        return out

    return call


def main(argv, delay: float):
    supervisor.supervise(unet_segment.FLAGS.config)  # a supervising parent stops here
    from unet_jax import parallel

    parallel.Runner.__call__ = slowed(parallel.Runner.__call__, delay)
    unet_segment.main(argv)


if __name__ == "__main__":
    pause = float(sys.argv.pop(1))
    app.run(lambda argv: main(argv, pause))
