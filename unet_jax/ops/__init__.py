"""Backend-specific kernels behind one small interface.

:func:`conv_kernel` turns a config's kernel name into the function a model's convolutions call
(``flax.linen.Conv(conv_general_dilated=...)``). It is called once, when a model is built, so
traced code never asks which backend it runs on.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
from jax import lax

from unet_jax.ops import cpu_conv

CONV_KERNELS = ("auto", "xla", "matmul", "rows")


def conv_kernel(name: str = "auto", backend: str | None = None) -> Callable:
    """The convolution function for ``name``.

    ``xla``: ``lax.conv_general_dilated``. ``matmul`` / ``rows``: :mod:`cpu_conv` with the
    kernel gradient as one matrix product per kernel offset / by row blocks. ``auto``:
    :mod:`cpu_conv` with its per-layer choice on the CPU backend, ``xla`` on any other (cuDNN's
    kernels are fast). ``backend`` defaults to ``jax.default_backend()``.
    """
    if name == "auto":
        name = "cpu" if (backend or jax.default_backend()) == "cpu" else "xla"
    strategies = {"cpu": "auto", "matmul": "offsets", "rows": "rows"}
    if name in strategies:
        return functools.partial(cpu_conv.conv_general_dilated, strategy=strategies[name])
    if name == "xla":
        return lax.conv_general_dilated
    raise ValueError(f"model.conv must be one of {CONV_KERNELS}, got {name!r}")
