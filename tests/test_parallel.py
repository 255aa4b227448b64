"""The pmap and mesh steps equal the jit step; a 2-process run equals one process.

Each configuration runs in its own process (tests/parallel_worker.py) with the device count
set before JAX starts; the multi-process runs use jax.distributed on 127.0.0.1 with gloo."""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import chex
import numpy as np
import portpicker
import psutil
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
    deadline = time.time() + 30
    while len(put) < 3 and time.time() < deadline:  # the thread fills the queue behind the step
        time.sleep(0.01)
    assert int(first["x"][0]) == 1 and put[:3] == [1, 2, 3]  # more already on their way
    assert it.get_state() == {"i": 1}  # a checkpoint now resumes at batch 2, not 4
    rest = [int(b["x"][0]) for b in it]
    assert rest == [2, 3, 4, 5] and it.get_state() == {"i": 5} and put == [1, 2, 3, 4, 5]
    it.close()


class _Failing(_Counting):
    def __next__(self):
        if self.i == 2:
            raise OSError("disk gone")
        return super().__next__()


def test_device_prefetch_raises_the_loaders_error_in_the_loop_and_close_stops_its_thread():
    from unet_jax import parallel

    it = parallel.DevicePrefetch(_Failing(5), lambda b: b, size=2)
    assert [int(next(it)["x"][0]) for _ in range(2)] == [1, 2]
    for _ in range(2):
        with pytest.raises(OSError, match="disk gone"):
            next(it)
    it.close()
    endless = parallel.DevicePrefetch(_Counting(10 ** 9), lambda b: b, size=2)
    next(endless)
    endless.close()
    assert not endless._thread.is_alive()


# ------------------------------------------------------------------ whole runs across processes
RUN_STEPS = 6


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
            **extra}


def _segment_args(workdir, tfds_dir, *extra, config=True):
    return ["--workdir", str(workdir), *(["--config", "tests/tiny_config.py"] if config else []),
            f"--config.data.tfds_dir={tfds_dir}", f"--config.num_steps={RUN_STEPS}", *extra]


def _finish_all(procs, timeout=600):
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        outs.append(out)
        assert p.returncode == 0, out[-3000:]
    return outs


def _final_params(workdir, step=RUN_STEPS):
    import jax

    from tests.helpers import tiny_config
    from unet_jax import checkpoint, train

    ck = checkpoint.Checkpoints(Path(workdir) / "checkpoints")
    state, _ = ck.restore(step, train.create_state(tiny_config(""), jax.random.key(0, impl="rbg")))
    ck.close()
    return state


def _assert_one_set_of_outputs(workdir, sessions=1):
    """What process 0 alone writes (TensorBoard starts one events file per session)."""
    from unet_jax.writers import read_jsonl

    lines = read_jsonl(workdir / "metrics.jsonl")
    assert [l["step"] for l in lines if "train_loss" in l] == [2, 4, 6]  # written once, by process 0
    assert len([l for l in lines if l.get("final")]) == 1
    assert len(list((workdir / "tensorboard").iterdir())) == sessions
    for name in ("summary.json", "config.json", "curves.png", "val_predictions.png"):
        assert (workdir / name).is_file(), name
    assert json.loads((workdir / "summary.json").read_text())["process_count"] == 2
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4", "6"]  # one tree


@pytest.fixture(scope="module")
def one_process_two_devices(tmp_path_factory):
    """The reference: the same run in one process with 2 simulated devices (pmap)."""
    workdir, tfds_dir = tmp_path_factory.mktemp("ref2"), tmp_path_factory.mktemp("tfds")
    proc = subprocess.Popen([sys.executable, "-m", "experiments.unet_segment",
                             *_segment_args(workdir, tfds_dir, "--config.parallel=pmap")],
                            cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _finish_all([proc])
    return workdir, tfds_dir


def test_a_whole_run_in_two_processes_equals_one_process_with_two_devices(one_process_two_devices, tmp_path):
    """Mesh mode, set up by flags: one set of outputs, the parameters of the 2-device run."""
    ref, tfds_dir = one_process_two_devices
    port = portpicker.pick_unused_port()
    procs = [subprocess.Popen([sys.executable, "-m", "experiments.unet_segment",
                               *_segment_args(tmp_path, tfds_dir, "--config.parallel=mesh",
                                              f"--config.coordinator=127.0.0.1:{port}",
                                              "--config.num_processes=2", f"--config.process_id={i}")],
                              cwd=ROOT, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    _finish_all(procs)
    _assert_one_set_of_outputs(tmp_path)
    a, b = _final_params(tmp_path), _final_params(ref)
    chex.assert_trees_all_close(a.params, b.params, atol=1e-5, rtol=0)
    chex.assert_trees_all_close(a.batch_stats, b.batch_stats, atol=1e-5, rtol=0)


def _two_processes(workdir, tfds_dir, *extra, step_delay: float = 0.0):
    port = portpicker.pick_unused_port()
    main = ["tests.slow_segment", str(step_delay)] if step_delay else ["experiments.unet_segment"]
    return [subprocess.Popen([sys.executable, "-m", *main,
                              *_segment_args(workdir, tfds_dir, *extra, f"--config.coordinator=127.0.0.1:{port}",
                                             "--config.num_processes=2", f"--config.process_id={i}")],
                             cwd=ROOT, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]


@pytest.mark.parametrize("killed", [1, 0])
def test_pmap_processes_survive_a_kill_9_and_resume_to_the_same_parameters(one_process_two_devices, tmp_path,
                                                                           killed):
    """pmap across 2 processes, set up by flags. SIGKILL one in the middle: the survivor exits 1
    with one line in bounded time; both restarted (checked once, after process 1 is killed)
    resume from the last checkpoint and end with the parameters of the uninterrupted 2-device run.

    Process 0 hosts JAX's coordination service, whose loss makes JAX abort the others at once:
    each process trains in a supervised child, and the supervisor turns that into the one line.
    A killed command's training child dies with it."""
    ref, tfds_dir = one_process_two_devices
    survivor = 1 - killed
    args = ("--config.parallel=pmap", "--config.checkpoint_every=2", "--config.heartbeat_timeout_s=10")
    procs = _two_processes(tmp_path, tfds_dir, *args, step_delay=0.5)
    ckdir, deadline = tmp_path / "checkpoints", time.time() + 300
    while not (ckdir.exists() and any(p.name.isdigit() for p in ckdir.iterdir())):
        assert procs[survivor].poll() is None and time.time() < deadline, procs[survivor].communicate()[1][-3000:]
        time.sleep(0.2)
    trainer = psutil.Process(procs[killed].pid).children()
    assert len(trainer) == 1  # the supervised child that trains
    procs[killed].kill()
    killed_at = time.time()
    _, err = procs[survivor].communicate(timeout=120)
    assert procs[survivor].returncode == 1 and time.time() - killed_at < 30, err[-3000:]
    # one line: the supervisor's (a lost coordinator) or the child's own (a failed collective)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: process {survivor} of 2: "), err[-3000:]
    assert "restart them all on the same --workdir" in lines[0]
    procs[killed].communicate()
    trainer[0].wait(timeout=30)  # gone with its supervisor
    assert not (tmp_path / "summary.json").exists()
    if killed == 0:
        return
    for p in _two_processes(tmp_path, tfds_dir, *args):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0 < summary["resumed_from"] < RUN_STEPS and summary["parallel"] == "pmap"
    _assert_one_set_of_outputs(tmp_path, sessions=2)
    a, b = _final_params(tmp_path), _final_params(ref)
    chex.assert_trees_all_close(a.params, b.params, atol=1e-5, rtol=0)
    chex.assert_trees_all_close(a.opt_state, b.opt_state, atol=1e-5, rtol=0)


def _free_port(lo: int, hi: int) -> int:
    rng = random.Random(os.getpid())
    for _ in range(200):
        port = rng.randint(lo, hi)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {lo}..{hi}")


def _slurm_job(workdir, tfds_dir, bindir, step_delay: float = 0.0):
    """The sbatch template run by bash, its srun line through tests/srun_standin.py: 2 tasks
    (with ``step_delay``, each pausing after every step: tests/slow_segment.py)."""
    port = _free_port(61440, 65535)  # JAX derives the coordinator port from SLURM_JOB_ID
    env = _env(1, PATH=f"{bindir}:{os.environ['PATH']}", SLURM_NTASKS="2", SLURM_JOB_ID=str(port - 61440),
               SLURM_STEP_NODELIST="localhost", SLURM_SUBMIT_DIR=str(ROOT), SLURM_JOB_NAME="test",
               SRUN_STANDIN_STEP_DELAY=str(step_delay), UNET_JAX_CONFIG="tests/tiny_config.py")
    args = _segment_args(workdir, tfds_dir, "--config.batch_size=8", "--config.model.dtype=float32",
                         "--config.data.data_dir=", "--config.checkpoint_every=2", config=False)
    return subprocess.Popen(["bash", "experiments/slurm/unet_multinode.sbatch", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_the_sbatch_template_runs_two_pmap_processes_and_a_requeue_resumes(one_process_two_devices, tmp_path):
    """SLURM's variables alone set up jax.distributed; SIGTERM to the job (as a preemption sends
    it) stops both processes at one step with a checkpoint, and the requeued job resumes and
    ends with the parameters of the uninterrupted 2-device run."""
    ref, tfds_dir = one_process_two_devices
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "srun").write_text(f"#!/bin/sh\nexec {sys.executable} {ROOT / 'tests' / 'srun_standin.py'} \"$@\"\n")
    (bindir / "srun").chmod(0o755)
    workdir = tmp_path / "run"
    job = _slurm_job(workdir, tfds_dir, bindir, step_delay=0.5)
    ckdir = workdir / "checkpoints"
    deadline = time.time() + 300
    while not (ckdir.exists() and any(p.name.isdigit() for p in ckdir.iterdir())):
        assert job.poll() is None and time.time() < deadline, job.communicate()[0][-3000:]
        time.sleep(0.2)
    # SLURM's --signal=TERM goes to the job step, whose srun passes it to every task
    srun = [c for c in psutil.Process(job.pid).children(recursive=True) if "srun_standin.py" in " ".join(c.cmdline())]
    srun[0].send_signal(signal.SIGTERM)
    out, _ = job.communicate(timeout=300)
    assert job.returncode == 0 and "stopped by SIGTERM" in out, out[-3000:]
    assert not (workdir / "summary.json").exists()
    job = _slurm_job(workdir, tfds_dir, bindir)  # the requeue: the same command
    out, _ = job.communicate(timeout=300)
    assert job.returncode == 0, out[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert 0 < summary["resumed_from"] < RUN_STEPS
    assert summary["parallel"] == "pmap" and summary["process_count"] == 2
    _assert_one_set_of_outputs(workdir, sessions=2)
    a, b = _final_params(workdir), _final_params(ref)
    chex.assert_trees_all_close(a.params, b.params, atol=1e-5, rtol=0)


_WATCHED = """
import os, signal, sys, time
from unet_jax import parallel
parallel.initialize_distributed(sys.argv[1], 2, int(sys.argv[2]), heartbeat_timeout_s=2)
watch = parallel.PeerWatch(2)
if sys.argv[3] == "hang" and sys.argv[2] == "1":
    os.kill(os.getpid(), signal.SIGSTOP)  # alive to the OS, silent to the others
if sys.argv[3] == "finish" and sys.argv[2] == "1":
    watch.finish()  # then silent while process 0 works on for 6 s
    sys.exit(0)
time.sleep(6)
watch.finish()
print("finished")
"""


@pytest.mark.parametrize("case", ["hang", "finish"])
def test_a_silent_process_ends_the_others_with_one_line_but_a_finished_one_does_not(case):
    """PeerWatch: a process that stops answering (SIGSTOP) ends process 0 with one line within
    the timeout; a process that marked itself finished is never reported lost."""
    port = portpicker.pick_unused_port()
    procs = [subprocess.Popen([sys.executable, "-c", _WATCHED, f"127.0.0.1:{port}", str(i), case], cwd=ROOT,
                              env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    start = time.time()
    out, err = procs[0].communicate(timeout=60)
    elapsed = time.time() - start
    procs[1].kill()
    procs[1].communicate()
    if case == "hang":
        assert procs[0].returncode == 1 and elapsed < 30, (elapsed, err[-2000:])
        assert err.strip().splitlines()[-1].startswith("error: process 0 of 2: process 1 showed no sign of life for 2 s")
        assert "Traceback" not in err and "finished" not in out
    else:
        assert "finished" in out and "error:" not in err, err[-2000:]
