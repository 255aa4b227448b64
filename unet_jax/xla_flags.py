"""XLA CPU options once faster for CPU training (issue 8), opt-in: ``UNET_JAX_XLA_FLAGS=1``.

``--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce`` routes matrix products (and the
elementwise / reduction fusions around them) to XNNPACK's YNN kernels. Measured on the project's
2-core AVX2 machine: the ISBI training step (16-feature valid U-Net, 572x572 input, batch norm,
augmentation) 1.96 s -> 1.16 s per step; same losses to ~1e-5 relative.
Since the grouped row-block kernel gradients (:func:`unet_jax.layers.kernel_grad`) it no longer
helps on the project's 2-core AVX-512 machine: ISBI CPU step (2 x 380x380) 544 / 448 ms with it
against 439 / 444 ms without (median of 8, two processes each, in turns).
The option only affects XLA's CPU backend; GPU runs ignore it.

Why it is not on by default: with it, an 8-device pmap step and a one-device jit step of the same
batch differ by up to 6e-5 in parameters after 3 steps (1e-5 without), and a NaN in a batch
reached the loss one step later (the fused reductions do not propagate NaN the way XLA's do),
so the ``NonFiniteLoss`` check named the wrong step. Inference is about 9 % slower with it.

Single-device only: when ``XLA_FLAGS`` asks for several simulated host devices
(``--xla_force_host_platform_device_count`` > 1), :func:`apply` adds nothing. With the option,
the default model's pmap step on 4 simulated devices stopped in XLA's all-reduce rendezvous with
the devices waiting at different all-reduces (``op_id`` 7 and 45; 40 s timeout), reproducibly
once the transposed convolution was a plain matrix product (jaxlib 0.10.2, 2 cores); without it
the same step runs on 1-8 devices. Multi-process CPU runs should not set it either.

XLA reads ``XLA_FLAGS`` once, when JAX starts its first backend, so :func:`apply` must run
before any computation: with ``UNET_JAX_XLA_FLAGS=1`` in the environment, importing ``unet_jax``
does it. Flags the user already set win: an option named in ``XLA_FLAGS`` is never overridden.
"""
from __future__ import annotations

import os

CPU_FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": "dot,eltwise,reduce"}


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge
        return bool(getattr(xla_bridge, "_backends", {}))
    except Exception:  # noqa: BLE001 - private API moved: assume not started
        return False


def merged(current: str) -> tuple[str, list[str]]:
    """(new XLA_FLAGS value, flags added): :data:`CPU_FLAGS` that ``current`` does not name."""
    named = {f.split("=", 1)[0] for f in current.split()}
    added = [f"{k}={v}" for k, v in CPU_FLAGS.items() if k not in named]
    return " ".join([current, *added]).strip(), added


def simulated_devices(flags: str) -> int:
    """The ``--xla_force_host_platform_device_count`` named in ``flags`` (the last one), else 1."""
    count = 1
    for f in flags.split():
        name, _, value = f.partition("=")
        if name == "--xla_force_host_platform_device_count" and value.isdigit():
            count = int(value)
    return count


def apply(environ=os.environ) -> list[str]:
    """With ``UNET_JAX_XLA_FLAGS=1``, sets ``environ['XLA_FLAGS']`` to :func:`merged`; returns
    the flags added (none without the opt-in, once JAX's backend runs, or when ``XLA_FLAGS``
    asks for several simulated devices)."""
    if environ.get("UNET_JAX_XLA_FLAGS", "0") != "1" or _backend_started():
        return []
    if simulated_devices(environ.get("XLA_FLAGS", "")) > 1:
        return []
    value, added = merged(environ.get("XLA_FLAGS", ""))
    if added:
        environ["XLA_FLAGS"] = value
    return added
