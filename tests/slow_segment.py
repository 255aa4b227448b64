"""``experiments.unet_segment`` with a pause after every train step, so that tests can signal
or kill a run in the middle of training:

    python -m tests.slow_segment SECONDS --workdir ... --config ...
"""
import sys
import time

from absl import app

from experiments import unet_segment
from unet_jax import parallel


def slowed(delay: float):
    step = parallel.Runner.__call__

    def call(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        time.sleep(delay)
        return out

    return call


if __name__ == "__main__":
    parallel.Runner.__call__ = slowed(float(sys.argv.pop(1)))
    app.run(unet_segment.main)
