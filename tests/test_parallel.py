"""The pmap and mesh steps equal the jit step; a 2-process run equals one process.

Each configuration runs in its own process (tests/parallel_worker.py) with the device count
set before JAX starts; the multi-process runs use jax.distributed on 127.0.0.1 with gloo."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import portpicker
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "parallel_worker.py"


def _run(out, mode, devices=1, extra=()):
    cmd = [sys.executable, str(WORKER), "--mode", mode, "--devices", str(devices), "--out", str(out), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(procs):
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]


def _assert_same(a_path, b_path, atol=1e-5):
    a, b = np.load(a_path), np.load(b_path)
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], atol=atol, rtol=0, err_msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "jit.npz"
    _wait([_run(out, "jit")])
    return out


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_eight_device_step_equals_jit(reference, tmp_path, mode):
    out = tmp_path / f"{mode}.npz"
    _wait([_run(out, mode, devices=8)])
    _assert_same(reference, out)
    # the runs did change every parameter (the comparison is not between two initial states)
    ref = np.load(reference)
    assert float(ref["loss"]) > 0
    for k in ref.files:
        if k.startswith("init"):
            assert np.abs(ref[k[len("init"):]] - ref[k]).max() > 1e-4, k[len("init"):]
    assert int(np.load(out)["traces"]) == 1  # the step compiled once, not again on its 2nd call


def test_two_process_run_equals_single_process(reference, tmp_path):
    port = portpicker.pick_unused_port()
    out = tmp_path / "mp.npz"
    procs = [_run(out, "mesh", devices=1, extra=["--num_processes", "2", "--process_id", str(i),
                                                  "--coordinator", f"127.0.0.1:{port}"]) for i in range(2)]
    _wait(procs)
    _assert_same(reference, out)
    assert int(np.load(out)["traces"]) == 1


class _Counting:
    """A finite data iterator whose state is the number of batches handed out."""

    def __init__(self, n):
        self.n, self.i = n, 0

    def __next__(self):
        if self.i == self.n:
            raise StopIteration
        self.i += 1
        return {"x": np.full(2, self.i)}

    def get_state(self):
        return {"i": self.i}


def test_device_prefetch_reports_the_state_of_the_last_batch_taken():
    from unet_jax import parallel

    put = []
    it = parallel.DevicePrefetch(_Counting(5), lambda b: put.append(int(b["x"][0])) or b, size=2)
    assert it.get_state() == {"i": 0}
    first = next(it)
    assert int(first["x"][0]) == 1 and put == [1, 2, 3]  # two more already on their way
    assert it.get_state() == {"i": 1}  # a checkpoint now resumes at batch 2, not 4
    rest = [int(b["x"][0]) for b in it]
    assert rest == [2, 3, 4, 5] and it.get_state() == {"i": 5}
