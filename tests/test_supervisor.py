"""The supervisor's stderr filter on streams written out by hand, and a supervised command's exit
status, signals and death with its parent."""
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from unet_jax import supervisor

ROOT = Path(__file__).resolve().parents[1]
WARNING = (b"W1201 21:20:28.676940    5118 preemption_sync_manager.cc:147] Failed to retrieve preemption "
           b"notice from coordination service: UNAVAILABLE: Socket closed\n"
           b"Additional GRPC error information from remote target coordination_service:\n")
FATAL = (b"E1201 21:17:29.511495    4243 coordination_service_agent.cc:289] Polled an error from coordination "
         b"service (this can be an error from this or another task).\n"
         b"F1201 21:17:29.511579    4243 client.h:80] Terminating process because the JAX distributed service "
         b"detected fatal errors. This most likely indicates that another task died\n"
         b"*** Check failure stack trace: ***\n    @     0x7f0b636f0321  tsl::RPCState<>::OnCompleted()\n"
         b"Fatal Python error: Aborted\n\nThread 0x00007f0b3aceb6c0 (most recent call first):\n")


def _filter():
    out = io.BytesIO()
    return supervisor.StderrFilter(out, hold_s=5.0), out


def test_progress_bars_and_log_lines_pass_as_they_come():
    f, out = _filter()
    f.feed(b"\rtrain:  10%|#", 0.0)  # a progress bar redraw, no newline yet: passes at once
    assert out.getvalue() == b"\rtrain:  10%|#"
    f.feed(b"\rtrain:  20%|##", 0.1)
    f.feed(b"I1201 21:17:29.5 1 train.py:10] step 2\n", 0.2)
    assert out.getvalue() == b"\rtrain:  10%|#\rtrain:  20%|##I1201 21:17:29.5 1 train.py:10] step 2\n"
    f.feed(b"E1201 21:17:29.5 1 x.cc:3] ", 0.3)  # half a log line waits for its end
    assert out.getvalue().endswith(b"step 2\n")
    f.feed(b"disk nearly full\n", 0.4)
    assert out.getvalue().endswith(b"E1201 21:17:29.5 1 x.cc:3] disk nearly full\n")
    assert not f.lost_contact(0)


def test_a_passing_coordination_warning_is_written_late_but_whole():
    f, out = _filter()
    f.feed(WARNING + b"step 3\n", 0.0)
    assert out.getvalue() == b"" and not f.lost_contact(0)
    f.tick(4.0)
    assert out.getvalue() == b""
    f.tick(6.0)  # no fatal block within hold_s: everything held goes out, in order
    assert out.getvalue() == WARNING + b"step 3\n"
    f.feed(b"step 4\n", 7.0)
    assert out.getvalue().endswith(b"step 4\n")


def test_a_lost_coordinator_leaves_nothing_but_the_childs_own_error_line():
    f, out = _filter()
    f.feed(b"step 1\n" + WARNING, 0.0)
    f.feed(b"error: process 1 of 2: Gloo AllGather failed\n", 0.1)
    for i in range(0, len(FATAL), 50):  # the fatal block in pieces
        f.feed(FATAL[i:i + 50], 0.2)
    f.feed(b"Extension modules: yaml._yaml\n", 0.3)
    f.tick(60.0)
    assert out.getvalue() == b"step 1\n"
    assert f.lost_contact(-signal.SIGABRT) and f.own_error() == b"error: process 1 of 2: Gloo AllGather failed\n"


def test_a_failure_after_a_held_warning_counts_as_a_lost_coordinator():
    f, out = _filter()
    f.feed(WARNING, 0.0)
    assert f.lost_contact(1) and not f.lost_contact(0) and f.own_error() == b""
    f.release()
    assert out.getvalue() == WARNING


SCRIPT = """
import os, signal, sys, time
from unet_jax import supervisor
if not supervisor.is_child():
    sys.exit(supervisor.run("process 1 of 2"))
supervisor.die_with_supervisor()
mode = sys.argv[1]
if mode == "term":
    signal.signal(signal.SIGTERM, lambda *a: (print("stopping", flush=True), sys.exit(3)))
print("child", os.getpid(), flush=True)
if mode == "abort":
    sys.stderr.write({fatal!r}.decode())
    sys.stderr.flush()
    os.abort()
if mode == "segv":
    os.kill(os.getpid(), signal.SIGSEGV)
time.sleep(60)
""".format(fatal=FATAL)


def _supervised(mode, tmp_path):
    script = tmp_path / "supervised.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    child = int(proc.stdout.readline().split()[1])
    return proc, child


def test_a_supervised_child_aborted_by_a_lost_coordinator_ends_as_one_line(tmp_path):
    proc, _ = _supervised("abort", tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.decode().splitlines() == ["error: process 1 of 2: lost JAX's coordination service (process 0 "
                                         "stopped or cannot be reached); restart them all on the same --workdir "
                                         "to resume from the last checkpoint"]


def test_a_supervised_child_gets_sigterm_and_its_exit_status_and_signals_pass_through(tmp_path):
    proc, child = _supervised("term", tmp_path)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3 and b"stopping" in out and not psutil.pid_exists(child)
    proc, _ = _supervised("segv", tmp_path)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGSEGV  # a crash stays a crash


def test_a_supervised_child_dies_with_its_sigkilled_supervisor(tmp_path):
    proc, child = _supervised("sleep", tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.time() + 10
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.time() < deadline, "the child outlived its supervisor"
        time.sleep(0.1)


def test_only_multi_process_runs_are_supervised(monkeypatch):
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    assert supervisor.requested() is None and supervisor.requested("", 1, 0) is None
    assert supervisor.requested("127.0.0.1:1234", 2, 1) == "process 1 of 2"
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert supervisor.requested() == "process 3 of 4"
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert supervisor.requested() is None


@pytest.mark.parametrize("line", [b"F1201 1 x.cc:1] lost the coordination service\n"])
def test_any_fatal_coordination_log_line_counts(line):
    f, out = _filter()
    f.feed(line, 0.0)
    assert f.fatal and out.getvalue() == b""
