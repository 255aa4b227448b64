"""What keeps a run safe to stop, kill and restart: one run per workdir, SIGTERM / SIGINT as a
clean stop, a resumed run's config checked against its checkpoint, and a stop after too many
non-finite steps in a row that names the step."""
from __future__ import annotations

import fcntl
import functools
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path


# Config fields that may change between a run and its resumption.
RESUMABLE_CHANGES = {"num_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                     "progress", "loader_workers", "loader_threads", "parallel", "coordinator",
                     "num_processes", "process_id", "stop_after", "eval_tta", "eval_batch_tiles",
                     "time_budget_s", "max_nonfinite_steps", "heartbeat_timeout_s",
                     "async_checkpoints", "instances"}


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


class WorkdirLock:
    """An exclusive lock on ``workdir/.lock``, released by the OS if the process dies.

    Raises:
      RuntimeError: when another run holds it.
    """

    def __init__(self, workdir: Path):
        self.path = Path(workdir) / ".lock"
        self.f = open(self.path, "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.close()
            raise RuntimeError(f"workdir {workdir} is in use by another run (lock {self.path}); "
                               f"wait for it to finish or choose another --workdir") from None

    def release(self) -> None:
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def remove_unfinished(workdir: Path, before: set | None) -> None:
    """After a run failed before its first checkpoint, removes what it added to ``workdir`` (all
    of it when ``before`` is None: the run created the folder), so a failed start leaves nothing
    half-written. A run with a checkpoint keeps everything: it can be resumed."""
    ckdir = workdir / "checkpoints"
    if ckdir.is_dir() and any(p.name.isdigit() for p in ckdir.iterdir()):
        return
    if before is None:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    for p in set(workdir.iterdir()) - before:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def removes_unfinished(train_fn: Callable) -> Callable:
    """Decorates ``train_fn(config, workdir)``: when it fails, process 0 calls
    :func:`remove_unfinished` on what the call added to ``workdir``."""

    @functools.wraps(train_fn)
    def wrapped(config, workdir):
        path = Path(workdir)
        before = set(path.iterdir()) if path.is_dir() else None
        try:
            return train_fn(config, workdir)
        except BaseException:
            import jax

            if jax.process_index() == 0:
                remove_unfinished(path, before)
            raise

    return wrapped


def run_or_exit(train_fn: Callable, config, workdir: str):
    """``train_fn(config, workdir)`` for a CLI: a bad input (ValueError, RuntimeError, OSError)
    ends the process with status 1 and one ``error:`` line. In a multi-process run the exit skips
    JAX's shutdown barrier, which would wait for a process that may be gone."""
    try:
        return train_fn(config, workdir)
    except (ValueError, RuntimeError, OSError) as e:
        message = str(e)
        if isinstance(e, OSError):  # a full disk, a read-only folder
            message = f"{e.filename or workdir}: {e.strerror or e}"
        import jax

        from unet_jax import parallel

        if jax.process_count() > 1:
            parallel.exit_with_error(message)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


class StopSignals:
    """While installed, SIGTERM and SIGINT only set :attr:`received` (the signal's name); the
    training loop then saves a checkpoint and returns. :meth:`restore` puts the previous
    handlers back."""

    def __init__(self):
        self.received = None
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass

    def _handle(self, signum, frame):
        del frame
        self.received = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def check_counts(config) -> None:
    """Raises ValueError naming the first count of a run's config that is out of its range
    (``num_steps``, ``batch_size``, ``log_every``, ``checkpoint_every``, ``keep_checkpoints`` >= 1;
    ``eval_every``, ``max_nonfinite_steps`` >= 0)."""
    for name, least in (("num_steps", 1), ("batch_size", 1), ("log_every", 1), ("checkpoint_every", 1),
                        ("keep_checkpoints", 1), ("eval_every", 0), ("max_nonfinite_steps", 0)):
        value = config.get(name, least)
        if value < least:
            raise ValueError(f"--config.{name} must be >= {least}, got {value}")


def check_compatible(saved: dict, current: dict, path) -> None:
    """Raises ValueError naming the first fields in which a resumed run's config differs from
    the one its checkpoint ``path`` was written with, except :data:`RESUMABLE_CHANGES` and
    fields the saved config lacks (added since, at defaults that keep the old behaviour)."""
    a, b = _flat(saved), _flat(current)
    diff = sorted(k for k in a if k.split(".")[0] not in RESUMABLE_CHANGES and a.get(k) != b.get(k))
    if diff:
        detail = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:4])
        raise ValueError(f"workdir checkpoint {path} was written with a different config ({detail}); "
                         f"use a new --workdir or the same config")


def check_schedule_kept(saved: dict, current: dict, path) -> None:
    """Raises ValueError when a resumed run changes ``num_steps`` under a learning-rate schedule
    that depends on it (cosine, poly): the rate would jump at the resumed step."""
    schedule = current["optim"]["schedule"]
    if saved["num_steps"] != current["num_steps"] and schedule != "constant":
        raise ValueError(f"workdir checkpoint {path} was trained towards num_steps={saved['num_steps']}; "
                         f"resuming with num_steps={current['num_steps']} would make the {schedule} "
                         f"learning rate jump. Use the same num_steps, or a new --workdir")


class NonFiniteStreak:
    """Counts consecutive steps that the train step skipped for a non-finite loss or gradient
    and stops the run (:class:`NonFiniteLoss`) when ``limit`` of them come in a row."""

    def __init__(self, limit: int):
        self.limit, self.count = limit, 0

    def update(self, step: int, skipped: bool, checkpoints) -> None:
        """Counts ``step``; raises naming it and the last good checkpoint of ``checkpoints`` (a
        :class:`unet_jax.checkpoint.Checkpoints`), which is kept."""
        self.count = self.count + 1 if skipped else 0
        if self.limit > 0 and self.count >= self.limit:
            raise NonFiniteLoss(f"loss or gradients not finite at step {step} ({self.count} step(s) in a "
                                f"row, max_nonfinite_steps {self.limit}); stopped. The last good checkpoint "
                                f"(step {checkpoints.latest_step()}) is kept in {checkpoints.directory}")
