"""A parent process for one process of a multi-process run, so that losing process 0 ends the
others with one error line.

Process 0 hosts JAX's coordination service. When it dies, JAX's client in every other process
aborts that process at once (SIGABRT, a fatal log block, a stack trace and a thread dump); jax
offers no hook to do otherwise. So the command a user (or ``srun``) starts runs the same command
again as its child, passes the child's stdout and stderr through as they come, and when the
child ends that way writes one ``error:`` line in place of the fatal block and exits with status
1. Signals sent to the parent (SIGTERM from a preemption, SIGINT) are passed to the child, and
the child dies with the parent (Linux ``PR_SET_PDEATHSIG``), so a SIGKILL of the command ends
both. Any other exit of the child, by status or by signal, becomes the parent's own.
"""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

ENV = "UNET_JAX_SUPERVISOR"  # set in the child: its supervisor's pid
FATAL = b"Terminating process because the JAX distributed service detected fatal errors"
_C_LOG = re.compile(rb"[IWEF]\d{4} ")  # a line of the C++ (and absl) log: E1201 21:17:29.511 ...
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def requested(coordinator: str = "", num_processes: int = 0, process_id: int = -1) -> str | None:
    """"process i of n" when flags or SLURM (several tasks) ask for a multi-process run, else
    None."""
    if coordinator or num_processes > 1:
        return f"process {process_id} of {num_processes}"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return f"process {os.environ['SLURM_PROCID']} of {os.environ['SLURM_NTASKS']}"
    return None


def supervise(config) -> None:
    """For a CLI, before it loads anything heavy: when ``config`` (or SLURM) asks for several
    processes, runs this command again as a supervised child (:func:`run`) and exits with its
    status; in that child, and in a one-process run, returns."""
    if is_child():
        die_with_supervisor()
        return
    label = requested(config.get("coordinator", ""), config.get("num_processes", 0), config.get("process_id", -1))
    if label:
        sys.exit(run(label))


def is_child() -> bool:
    """Whether this process runs under a supervisor."""
    return ENV in os.environ


def die_with_supervisor() -> None:
    """In the child: be killed when the supervisor dies (Linux), and exit if it already has."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child outlives a SIGKILLed supervisor
        pass
    if os.getppid() != int(os.environ[ENV]):
        os._exit(1)


class StderrFilter:
    """Passes the child's stderr through as it comes, except around a lost coordination service.

    From a C++ log warning or error about the coordination service on, output is held: a fatal
    block that follows is dropped with all it held, and without one the held output is written
    after ``hold_s`` seconds (the warning was passing) or when the child ends. Other output
    (progress bars, Python's) passes at once, complete lines or not.
    """

    def __init__(self, out, hold_s: float = 5.0):
        self.out, self.hold_s = out, hold_s
        self.pending = b""
        self.held: list[bytes] = []
        self.held_since = None
        self.fatal = False
        self.wrote_error = False  # the child's own "error:" line was passed through

    def feed(self, data: bytes, now: float) -> None:
        if self.fatal:
            return
        self.pending += data
        while self.pending and not self.fatal:
            ends = [i for i in (self.pending.find(b"\n"), self.pending.find(b"\r", 1)) if i >= 0]
            end = min(ends) if ends else -1
            if _C_LOG.match(self.pending) or len(self.pending) < 5:
                if end < 0:  # a log line (or too little to tell) not yet complete: wait for it
                    return
            elif end < 0:
                end = len(self.pending) - 1
            self._line(self.pending[:end + 1], now)
            self.pending = self.pending[end + 1:]

    def _line(self, line: bytes, now: float) -> None:
        about_coordination = _C_LOG.match(line) and b"coordination" in line.lower()
        if FATAL in line or about_coordination and line.startswith(b"F"):
            self.fatal = True
        elif self.held or about_coordination and line[:1] in b"WE":
            self.held_since = self.held_since or now
            self.held.append(line)
        else:
            self.wrote_error |= line.startswith(b"error: ")
            self.out.write(line)
            self.out.flush()

    def tick(self, now: float) -> None:
        """Writes held output once it has waited ``hold_s`` without a fatal block."""
        if self.held and not self.fatal and now - self.held_since > self.hold_s:
            self.release()

    def release(self) -> None:
        self.out.write(b"".join(self.held) + self.pending)
        self.out.flush()
        self.held, self.held_since, self.pending = [], None, b""

    def lost_contact(self, code: int) -> bool:
        """After the child ended with ``code``: whether it lost the coordination service (a fatal
        block, or a failure while a coordination warning was held)."""
        return self.fatal or bool(self.held) and code != 0

    def own_error(self) -> bytes:
        """The child's own first ``error:`` line among the held output, if any."""
        return next((line for line in self.held if line.startswith(b"error: ")), b"")


def run(label: str) -> int:
    """Runs this process's own command line as a supervised child; returns the exit status this
    process should have. ``label`` names the process in the error line ("process 1 of 2")."""
    child = subprocess.Popen([sys.executable, *sys.orig_argv[1:]], env={**os.environ, ENV: str(os.getpid())},
                             stderr=subprocess.PIPE)
    previous = {sig: signal.signal(sig, lambda signum, frame: child.send_signal(signum)) for sig in _FORWARDED}
    stderr = StderrFilter(sys.stderr.buffer)
    fd = child.stderr.fileno()
    try:
        while True:
            if select.select([fd], [], [], 1.0)[0]:
                data = os.read(fd, 65536)
                if not data:
                    break
                stderr.feed(data, time.monotonic())
            stderr.tick(time.monotonic())
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stderr.lost_contact(code):
        if not stderr.wrote_error:  # one line: the child's own, or this one
            sys.stderr.buffer.write(stderr.own_error() or (
                f"error: {label}: lost JAX's coordination service (process 0 stopped or cannot be "
                f"reached); restart them all on the same --workdir to resume from the last checkpoint\n").encode())
            sys.stderr.flush()
        return 1
    stderr.release()
    if code < 0:  # ended by a signal: end the same way
        if -code not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code
