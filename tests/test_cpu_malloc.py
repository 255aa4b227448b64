"""unet_jax.cpu_malloc: importing unet_jax keeps XLA's per-call CPU buffers mapped (fewer page
faults per call than glibc's defaults), and UNET_JAX_MALLOC=0 leaves malloc alone."""
import os
import subprocess
import sys

import pytest

from unet_jax import cpu_malloc

# page faults per call of a jitted function with 64 MB input/output and temporaries, after a warm-up
PROBE = """
import resource
import unet_jax, jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sort(x * 2.0 + 1.0)[::-1] * 3.0)
x = jnp.ones((16 * 2 ** 20,))
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    f(x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
"""


def _faults(malloc: str) -> float:
    env = {**os.environ, "UNET_JAX_MALLOC": malloc, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_import_keeps_xla_buffers_mapped_and_opt_out_restores_defaults():
    on, off = _faults("1"), _faults("0")
    # measured: 16k faults per call (the fresh 64 MB output) against 98k with glibc's defaults
    assert on < off / 3, (on, off)


def test_apply_respects_opt_out_and_reports_settings():
    assert cpu_malloc.apply({"UNET_JAX_MALLOC": "0"}) is False
    if sys.platform.startswith("linux"):
        assert cpu_malloc.apply({}) is True  # glibc accepted all three settings
    # the environment form (for other processes) names the same values as the mallopt calls
    tunables = dict(kv.split("=") for kv in cpu_malloc.GLIBC_TUNABLES.split(":"))
    params = {"glibc.malloc.arena_max": cpu_malloc.M_ARENA_MAX, "glibc.malloc.mmap_max": cpu_malloc.M_MMAP_MAX,
              "glibc.malloc.trim_threshold": cpu_malloc.M_TRIM_THRESHOLD}
    assert {params[k]: int(v) for k, v in tunables.items()} == dict(cpu_malloc.SETTINGS)
