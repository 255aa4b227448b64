"""jit / pmap / mesh wrappers around the one pure train step, and multi-host set-up.

The step itself (``unet_jax.train.train_step``) knows nothing about devices; it averages
gradients with ``lax.pmean`` only when it is given an axis name (the pmap path). The mesh path
is ``jax.jit`` with ``NamedSharding``s: the batch split over a 1-D ``data`` mesh axis, the
state replicated; XLA inserts the gradient all-reduce itself.
"""
from __future__ import annotations

import functools
import os
import queue
import sys
import threading
import time

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from unet_jax import supervisor

AXIS = "devices"
MODES = ("auto", "jit", "pmap", "mesh")


def initialize_distributed(coordinator: str = "", num_processes: int = 0, process_id: int = -1,
                           local_device_ids=None, heartbeat_timeout_s: int = 100) -> bool:
    """Starts multi-host JAX when asked (flags) or when SLURM launched several tasks.

    ``heartbeat_timeout_s``: the :class:`PeerWatch` timeout. JAX's own heartbeat check, which
    aborts a process with a core dump, gets twice that plus 30 s, so it only serves as a backstop.

    Returns:
      True when ``jax.distributed.initialize`` was called.
    """
    if not supervisor.requested(coordinator, num_processes):
        return False
    # CPU collectives across processes go through gloo (GPU collectives use NCCL regardless).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {"heartbeat_timeout_seconds": 2 * int(heartbeat_timeout_s) + 30}
    if coordinator:
        kwargs.update(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    if local_device_ids is not None:
        kwargs["local_device_ids"] = local_device_ids
    jax.distributed.initialize(**kwargs)  # with no arguments: SLURM's environment
    return True


class PeerWatch:
    """Ends this process (status 1, one line on stderr) when another process of a multi-process
    run shows no sign of life for ``timeout_s`` seconds, or the coordinator (process 0) is gone.

    A daemon thread bumps this process's counter in the coordination service's key-value store
    every ``timeout_s / 10`` s and reads everyone's. It runs beside the main thread, so a survivor
    stuck in a collective or a barrier exits in bounded time instead of hanging until JAX's
    heartbeat check aborts it. :meth:`finish` marks this process done; a done process is never
    reported lost. (When process 0 itself dies, JAX's client in the others aborts them at once,
    before this thread can speak; :mod:`unet_jax.supervisor` turns that into one line.)
    """

    PREFIX = "unet_jax/peer_watch/"

    def __init__(self, timeout_s: float):
        from jax._src import distributed

        self.client = distributed.global_state.client
        self.me, self.n = jax.process_index(), jax.process_count()
        self.timeout_s = float(timeout_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="PeerWatch", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.client.key_value_set(f"{self.PREFIX}done/{self.me}", "1", allow_overwrite=True)
        except Exception:  # noqa: BLE001 - the coordinator already went away: nothing to tell
            pass

    def _run(self) -> None:
        seen, since = {}, dict.fromkeys(range(self.n), time.monotonic())
        while not self._stop.wait(self.timeout_s / 10):
            now = time.monotonic()
            try:
                self.client.key_value_increment(f"{self.PREFIX}alive/{self.me}", 1)
                alive = dict(self.client.key_value_dir_get(f"{self.PREFIX}alive/"))
                done = dict(self.client.key_value_dir_get(f"{self.PREFIX}done/"))
            except Exception as e:  # noqa: BLE001 - any failure here means the coordinator is gone
                if self._stop.is_set():
                    return
                exit_with_error(f"process {self.me} of {self.n}: lost the coordinator (process 0): "
                                f"{str(e).splitlines()[0]}")
            for p in range(self.n):
                key = f"{self.PREFIX}alive/{p}"
                if p == self.me or f"{self.PREFIX}done/{p}" in done:
                    continue
                if alive.get(key) != seen.get(p):
                    seen[p], since[p] = alive.get(key), now
                elif now - since[p] > self.timeout_s:
                    exit_with_error(f"process {self.me} of {self.n}: process {p} showed no sign of life "
                                    f"for {self.timeout_s:g} s (killed, or its host lost); restart every "
                                    f"process on the same --workdir to resume from the last checkpoint")


def exit_with_error(message: str) -> None:
    """Exits at once, status 1, with ``error: message`` on stderr. It skips JAX's shutdown
    barrier, which in a multi-process run would wait for a lost process."""
    sys.stdout.flush()
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    os._exit(1)


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is set in any process (a collective: every process must call it at the
    same point); with one process, ``flag`` itself."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))


def resolve_mode(mode: str) -> str:
    """``auto``: pmap when several devices are present, else jit."""
    if mode not in MODES:
        raise ValueError(f"parallel must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        return "pmap" if jax.device_count() > 1 else "jit"
    return mode


def data_mesh() -> Mesh:
    """A 1-D mesh over every device of every process."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def check_batch(global_batch: int) -> None:
    n = jax.device_count()
    if global_batch % n:
        raise ValueError(f"batch_size {global_batch} must be divisible by the device count {n}")


class Runner:
    """Puts state and batches where a mode wants them and runs the wrapped step.

    Args:
      step: ``step(state, batch, rng, axis_name=None) -> (state, metrics)``, pure.
      mode: ``jit``, ``pmap`` or ``mesh`` (``auto`` resolved by :func:`resolve_mode`).
      donate: donate the state buffers to the step.
    """

    def __init__(self, step, mode: str, donate: bool = True):
        self.mode = resolve_mode(mode)
        donate_argnums = (0,) if donate else ()
        if self.mode == "jit":
            self.fn = jax.jit(step, donate_argnums=donate_argnums)
        elif self.mode == "pmap":
            self.n_local = jax.local_device_count()
            # where pmap leaves its outputs: giving the first call the state and batches placed
            # the same way keeps it from compiling the step a second time on the second call
            self.stacked = NamedSharding(Mesh(np.asarray(jax.local_devices()), (AXIS,)), P(AXIS))
            self.fn = jax.pmap(functools.partial(step, axis_name=AXIS), axis_name=AXIS,
                               in_axes=(0, 0, None), donate_argnums=donate_argnums)
        else:
            self.mesh = data_mesh()
            self.replicated = NamedSharding(self.mesh, P())
            self.sharded = NamedSharding(self.mesh, P("data"))
            self.fn = jax.jit(step, in_shardings=(self.replicated, self.sharded, self.replicated),
                              out_shardings=(self.replicated, self.replicated),
                              donate_argnums=donate_argnums)

    def put_state(self, state):
        """Host (or single-device) state -> the layout the step takes."""
        if self.mode == "jit":
            return state
        if self.mode == "pmap":  # stacked copies, one on each local device
            def stack(x):
                x = np.asarray(x)
                x = x.astype(jax.dtypes.canonicalize_dtype(x.dtype))
                return jax.device_put(np.broadcast_to(x, (self.n_local,) + x.shape), self.stacked)
            return jax.tree.map(stack, state)
        return jax.device_put(state, self.replicated)

    def get_state(self, state):
        """The step's layout -> one copy on the host (for checkpoints and evaluation)."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: np.asarray(x[0]), state)
        return state

    def put_batch(self, batch: dict):
        """This process's batch (numpy) -> the layout the step takes."""
        if self.mode == "jit":
            return batch
        if self.mode == "pmap":
            return jax.tree.map(lambda x: x.reshape((self.n_local, -1) + x.shape[1:]), batch)
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.sharded, x), batch)

    def put_device_batch(self, batch: dict):
        """:meth:`put_batch`, then started on its way to the devices (asynchronously)."""
        batch = self.put_batch(batch)
        if self.mode == "jit":
            return jax.device_put(batch)
        if self.mode == "pmap":
            return jax.device_put(batch, self.stacked)
        return batch  # mesh: put_batch made device arrays already

    def __call__(self, state, batch, rng, placed: bool = False):
        """One step; ``placed``: the batch came from :meth:`put_device_batch` (or
        :class:`DevicePrefetch`)."""
        return self.fn(state, batch if placed else self.put_batch(batch), rng)

    def metrics(self, metrics):
        """Metrics to host numbers (pmap returns one identical copy per device)."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: np.asarray(x)[0], metrics)
        return jax.tree.map(np.asarray, metrics)


class DevicePrefetch:
    """Iterator over a data iterator's batches, ``size`` of them on their way to the devices
    ahead of the step that uses them. A background thread takes them from the loader and starts
    their copies, so the training loop only dispatches steps and the copies overlap them.

    ``get_state`` is the data iterator's state after the last batch *taken* from here (not the
    last one fetched), so a checkpoint resumes exactly at the next unused batch. :meth:`close`
    stops the thread (it would otherwise go on loading while the run evaluates).
    """

    _END = object()

    def __init__(self, iterator, put, size: int = 2):
        self.it, self.put = iterator, put
        self.state = iterator.get_state()
        self.queue = queue.Queue(maxsize=max(size, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="DevicePrefetch", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        while not self._stop.is_set():
            try:
                batch = next(self.it)
                item = (self.put(batch), self.it.get_state())
            except StopIteration:
                item = self._END
            except BaseException as e:  # noqa: BLE001 - raised in the training loop instead
                item = e
            while not self._stop.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not isinstance(item, tuple):
                return

    def __iter__(self):
        return self

    def __next__(self):
        item = self.queue.get()
        if item is self._END or isinstance(item, BaseException):
            self.queue.put(item)  # every later call ends the same way
            if item is self._END:
                raise StopIteration
            raise item
        batch, self.state = item
        return batch

    def get_state(self):
        return self.state

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
