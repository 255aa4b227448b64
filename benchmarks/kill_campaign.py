"""SIGKILL a small main-job run at random moments, some during checkpoint writes, restarting it
each time with the same command; then check that its final parameters, batch statistics and
optimiser state are bitwise equal to those of an uninterrupted run. Prints one JSON line.

    python -m benchmarks.kill_campaign [--kills 20] [--seed 0]

Half of the kills land at a uniformly random moment of a start's first 20 s (start-up,
compilation, resumption and training; start-up alone takes about 10 s on 2 cores); the other
half wait until orbax writes a checkpoint 2-10 steps past the last complete one (its temporary
step folder exists) and kill then. ``stray`` lists whatever is left in the run folder besides
the expected outputs.
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STEPS = 100
CONFIG = [f"--config.num_steps={STEPS}", "--config.checkpoint_every=2", "--config.log_every=2",
          "--config.keep_checkpoints=2", "--config.eval_every=0", "--config.progress=False",
          "--config.model.features=4", "--config.model.depth=2", "--config.data.synthetic_size=64",
          "--config.data.synthetic_train=8", "--config.data.synthetic_test=2", "--config.data.tile_size=32",
          "--config.data.eval_tile_size=64", "--config.loader_threads=1"]
EXPECTED = {"checkpoints", "tensorboard", "metrics.jsonl", "config.json", "summary.json", "curves.png",
            "val_predictions.png", ".lock"}


def _start(workdir: Path, tfds_dir: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "experiments.unet_segment", "--workdir", str(workdir),
           f"--config.data.tfds_dir={tfds_dir}", *CONFIG]
    log = open(workdir.parent / f"{workdir.name}.log", "a")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)


def _writing(ckdir: Path, at_least: int = 0) -> bool:
    """Whether orbax is writing a step >= ``at_least`` (a temporary folder "STEP.orbax-...")."""
    try:
        names = [p.name for p in ckdir.iterdir() if not p.name.isdigit()]
    except FileNotFoundError:
        return False
    return any(n.split(".")[0].isdigit() and int(n.split(".")[0]) >= at_least for n in names)


def _latest(ckdir: Path) -> int:
    done = [int(p.name) for p in ckdir.iterdir() if p.name.isdigit()] if ckdir.exists() else []
    return max(done, default=0)


def _final_state(workdir: Path) -> dict:
    from unet_jax import checkpoint

    ck = checkpoint.Checkpoints(workdir / "checkpoints")
    state, _ = ck.restore_raw(STEPS)
    ck.close()
    return state


def _bitwise_equal(a, b) -> bool:
    import jax

    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    return ta == tb and all(np.asarray(x).tobytes() == np.asarray(y).tobytes() and
                            np.asarray(x).dtype == np.asarray(y).dtype for x, y in zip(la, lb))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = random.Random(a.seed)
    tmp = Path(tempfile.mkdtemp(prefix="kill_campaign_"))
    tfds_dir = tmp / "tfds"

    t = time.perf_counter()
    ref = _start(tmp / "reference", tfds_dir)
    if ref.wait():
        sys.exit(f"the uninterrupted run failed; see {tmp / 'reference.log'}")
    run_s = time.perf_counter() - t

    workdir, ckdir = tmp / "killed", tmp / "killed" / "checkpoints"
    kills, during_write, restarts, steps_at_kill = 0, 0, 0, []
    while kills < a.kills:
        proc = _start(workdir, tfds_dir)
        restarts += 1
        if kills % 2 == 0:  # a random moment of the run's life
            try:
                proc.wait(timeout=rng.uniform(0.0, 20.0))
            except subprocess.TimeoutExpired:
                pass
        else:  # during the write of a checkpoint a few steps on
            target = min(_latest(ckdir) + rng.randrange(2, 12, 2), STEPS - 2)
            while proc.poll() is None and not _writing(ckdir, target):
                time.sleep(0.002)
        if proc.poll() is not None:  # finished (or failed) before the kill: start it again
            if proc.returncode:
                sys.exit(f"a run failed; see {tmp / 'killed.log'}")
            break  # the run finished: fewer kills than asked for (reported)
        writing = _writing(ckdir)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        during_write += writing
        steps_at_kill.append(_latest(ckdir))
    final = _start(workdir, tfds_dir)
    if final.wait():
        sys.exit(f"the last restart failed; see {tmp / 'killed.log'}")

    a_state, b_state = _final_state(workdir), _final_state(tmp / "reference")
    equal = {k: _bitwise_equal(a_state[k], b_state[k]) for k in ("params", "batch_stats", "opt_state")}
    stray = sorted(p.name for p in workdir.iterdir() if p.name not in EXPECTED)
    stray += sorted(f"checkpoints/{p.name}" for p in ckdir.iterdir() if not p.name.isdigit())
    print(json.dumps({"benchmark": "kill_campaign", "cpu_count": os.cpu_count(), "steps": STEPS,
                      "kills": kills, "kills_during_checkpoint_write": during_write,
                      "restarts": restarts + 1, "last_checkpoint_at_each_kill": steps_at_kill,
                      "uninterrupted_run_s": round(run_s, 1), "bitwise_equal": equal,
                      "all_equal": all(equal.values()), "stray": stray,
                      "passed": all(equal.values()) and not stray and kills == a.kills}))


if __name__ == "__main__":
    main()
