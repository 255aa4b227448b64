"""Process-wide settings that entry points apply at the top of ``main`` (``experiments/*``,
``benchmarks/*``); importing ``unet_jax`` never applies them.

:func:`setup` does all three:

* glibc malloc keeps XLA's per-step CPU buffers mapped (:func:`apply_malloc`);
  ``UNET_JAX_MALLOC=0`` leaves malloc alone;
* JAX's persistent compilation cache (:func:`compilation_cache`), so that a rerun, a resume or
  another process of the same configuration loads its compiled programs instead of compiling
  (and, on GPUs, autotuning) them again; ``UNET_JAX_COMPILATION_CACHE=DIR`` moves it and
  ``UNET_JAX_COMPILATION_CACHE=off`` switches it off;
* the libraries' INFO logs (absl, TFDS, orbax, JAX) and TFDS's progress bars are hidden unless
  the run asks for ``--verbosity=1``.

Why the malloc settings: XLA's CPU runtime allocates each execution's temporary buffers from
worker threads. With glibc's defaults those threads get their own arenas, whose heaps are
``mmap``-ed and given back to the kernel when they empty, so every step faults its working
memory in again. One arena (``M_ARENA_MAX`` = 1), no ``mmap`` for large blocks (``M_MMAP_MAX``
= 0) and no heap trimming (``M_TRIM_THRESHOLD`` at its maximum) keep those pages. The cost:
memory the process frees stays with it, and all threads share one arena's lock. Numerics are
untouched. Apply it before the first JAX computation (threads that already own an arena keep
it). Only glibc (Linux) has ``mallopt``; elsewhere nothing changes. The same settings for
another process (the PyTorch reference of ``benchmarks/train_step_speed.py``) are
:data:`GLIBC_TUNABLES`. Measurements: ``docs/performance.md``.
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
MALLOC_SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2 ** 31 - 1))
_TUNABLE_NAMES = {M_ARENA_MAX: "arena_max", M_MMAP_MAX: "mmap_max", M_TRIM_THRESHOLD: "trim_threshold"}
GLIBC_TUNABLES = ":".join(f"glibc.malloc.{_TUNABLE_NAMES[param]}={value}" for param, value in MALLOC_SETTINGS)


CACHE_ENV = "UNET_JAX_COMPILATION_CACHE"
CACHE_OFF = ("0", "off", "false", "no", "none")
# programs that compile faster than this are not written to the cache (JAX's default: 1 s); the
# train step, evaluation and initialisation all take longer on a GPU or with a paper-size model
CACHE_MIN_COMPILE_S = 0.2


def setup(verbosity: int = 0, environ=os.environ) -> bool:
    """:func:`apply_malloc` and :func:`compilation_cache`, then :func:`quiet_logs` unless
    ``verbosity`` >= 1; returns whether the malloc settings were applied."""
    applied = apply_malloc(environ)
    compilation_cache(environ)
    if verbosity < 1:
        quiet_logs()
    return applied


def default_cache_dir(environ=os.environ) -> str:
    """``$XDG_CACHE_HOME/unet_jax/jax``, else ``~/.cache/unet_jax/jax``."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "unet_jax", "jax")


def compilation_cache(environ=os.environ) -> str | None:
    """Turns on JAX's persistent compilation cache; returns its folder, or None when off.

    The folder is ``UNET_JAX_COMPILATION_CACHE`` when set (``off`` or ``0``: no cache), else
    JAX's own ``JAX_COMPILATION_CACHE_DIR`` when set, else :func:`default_cache_dir`. JAX keys
    each entry by the program, the compiler options, the devices and the JAX version, so a
    changed model or flag compiles anew and never loads a stale program. On GPUs XLA's
    per-fusion autotuning results are kept there too. Several processes (a SLURM job) may share
    one folder.
    """
    value = environ.get(CACHE_ENV, "").strip()
    if value.lower() in CACHE_OFF:
        return None
    import jax

    path = os.path.abspath(os.path.expanduser(value or jax.config.jax_compilation_cache_dir
                                              or default_cache_dir(environ)))
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_S)
    return path


def apply_malloc(environ=os.environ) -> bool:
    """Sets :data:`MALLOC_SETTINGS` with glibc's ``mallopt`` unless ``UNET_JAX_MALLOC=0``; True
    if all were accepted, False off Linux, without glibc, or when turned off."""
    if environ.get("UNET_JAX_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl has mallopt as a no-op stub
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all([mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS])


def _not_tfds_custom_config(record: logging.LogRecord) -> bool:
    # TFDS warns whenever a builder runs with a config it does not list, which every prepared
    # dataset of this project does (its options are the config)
    return not record.getMessage().startswith("Using custom data configuration")


def quiet_logs() -> None:
    """Only warnings and errors from absl, TFDS, orbax and JAX (less TFDS's notice that a
    dataset has a custom config); no TFDS progress bars."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ("jax", "orbax", "tensorflow_datasets", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)
    absl_logger = logging.getLogger("absl")
    if _not_tfds_custom_config not in absl_logger.filters:
        absl_logger.addFilter(_not_tfds_custom_config)
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
