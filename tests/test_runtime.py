"""unet_jax.runtime: the malloc settings keep XLA's per-call CPU buffers mapped (fewer page
faults per call than glibc's defaults) and UNET_JAX_MALLOC=0 leaves malloc alone; importing
unet_jax changes nothing; quiet runs hide the libraries' INFO logs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unet_jax import runtime

ROOT = Path(__file__).resolve().parents[1]

# page faults per call of a jitted function with 64 MB input/output and temporaries, after a warm-up
PROBE = """
import resource
import unet_jax.train
from unet_jax import runtime
if APPLY:
    runtime.apply_malloc()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sort(x * 2.0 + 1.0)[::-1] * 3.0)
x = jnp.ones((16 * 2 ** 20,))
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    f(x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
"""


def _faults(malloc: str, apply: bool = True) -> float:
    env = {**os.environ, "UNET_JAX_MALLOC": malloc, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", f"APPLY = {apply}\n" + PROBE], env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_malloc_settings_keep_xla_buffers_mapped_and_opt_out_restores_defaults():
    on, off, imported_only = _faults("1"), _faults("0"), _faults("1", apply=False)
    # measured: 16k faults per call (the fresh 64 MB output) against 98k with glibc's defaults
    assert on < off / 3, (on, off)
    assert on < imported_only / 3, (on, imported_only)  # importing the library alone sets nothing


def test_apply_malloc_respects_opt_out_and_reports_settings():
    assert runtime.apply_malloc({"UNET_JAX_MALLOC": "0"}) is False
    if sys.platform.startswith("linux"):
        assert runtime.apply_malloc({}) is True  # glibc accepted all three settings
    # the environment form (for other processes) names the same values as the mallopt calls
    tunables = dict(kv.split("=") for kv in runtime.GLIBC_TUNABLES.split(":"))
    params = {"glibc.malloc.arena_max": runtime.M_ARENA_MAX, "glibc.malloc.mmap_max": runtime.M_MMAP_MAX,
              "glibc.malloc.trim_threshold": runtime.M_TRIM_THRESHOLD}
    assert {params[k]: int(v) for k, v in tunables.items()} == dict(runtime.MALLOC_SETTINGS)


IMPORT_PROBE = """
import ctypes, logging, os, sys
env = dict(os.environ)
import unet_jax, unet_jax.metrics, unet_jax.train, unet_jax.evaluation, unet_jax.mnist_train
import unet_jax.pretrained, unet_jax.zoo, unet_jax.onnx_graph
assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())
from jax._src import xla_bridge
# no JAX computation at import: it would start the backend before jax.distributed.initialize
# (multi-process runs) and before the malloc settings
assert not xla_bridge._backends, "importing unet_jax started a JAX backend"
print(logging.getLogger().level, logging.getLogger("absl").level)
"""


def test_importing_the_library_changes_nothing_process_wide():
    plain = subprocess.run([sys.executable, "-c", "import logging; print(logging.getLogger().level, "
                            "logging.getLogger('absl').level)"], capture_output=True, text=True, check=True)
    imported = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True,
                              timeout=300)
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert imported.stdout.split() == plain.stdout.split()


QUIET_PROBE = """
import logging, sys
from absl import logging as absl_logging
from unet_jax import runtime
logging.basicConfig(stream=sys.stdout, format="%(name)s %(levelname)s %(message)s")
runtime.quiet_logs()
logging.getLogger("jax._src.xla_bridge").info("Unable to initialize backend 'tpu'")
logging.getLogger("orbax.checkpoint").info("CheckpointManager created")
absl_logging.info("Downloading and preparing dataset Unknown size")
absl_logging.warning("Using custom data configuration: CellsConfig(name='c32d83b67fd')")
absl_logging.warning("a real warning")
logging.getLogger("jax").warning("a jax warning")
"""


def test_quiet_logs_hide_library_info_but_keep_warnings():
    out = subprocess.run([sys.executable, "-c", QUIET_PROBE], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    assert out.splitlines() == ["absl WARNING a real warning", "jax WARNING a jax warning"], out


def test_compilation_cache_folder_comes_from_the_environment(tmp_path):
    import jax

    before = jax.config.jax_compilation_cache_dir
    try:
        assert runtime.compilation_cache({runtime.CACHE_ENV: "off"}) is None
        assert runtime.compilation_cache({runtime.CACHE_ENV: "0"}) is None
        assert runtime.compilation_cache({runtime.CACHE_ENV: str(tmp_path / "c")}) == str(tmp_path / "c")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c")
        assert runtime.default_cache_dir({"XDG_CACHE_HOME": "/x"}) == "/x/unet_jax/jax"
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def _tiny_cli(workdir, tfds_dir, cache, **environ):
    env = {**os.environ, runtime.CACHE_ENV: str(cache), **environ}
    return subprocess.run([sys.executable, "-m", "experiments.unet_segment", "--workdir", str(workdir),
                           "--config", "tests/tiny_config.py", f"--config.data.tfds_dir={tfds_dir}",
                           "--config.num_steps=2"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_a_second_run_of_one_config_loads_every_program_from_the_cache(tmp_path):
    """The first run writes its compiled programs (train step, initialisation, prediction); a
    second run of the same config, in a new workdir, finds every one of them and compiles
    nothing new; switched off, the default folder is not made."""
    cache, tfds = tmp_path / "cache", tmp_path / "tfds"
    first = _tiny_cli(tmp_path / "a", tfds, cache)
    assert first.returncode == 0, first.stderr[-2000:]
    written = sorted(p.name for p in cache.iterdir())
    assert any("train_step-" in n for n in written), written
    second = _tiny_cli(tmp_path / "b", tfds, cache)
    assert second.returncode == 0, second.stderr[-2000:]
    assert sorted(p.name for p in cache.iterdir()) == written
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["step"] == 2 and summary["compile_s"] > 0
    off = _tiny_cli(tmp_path / "c", tfds, "off", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert off.returncode == 0, off.stderr[-2000:]
    assert not (tmp_path / "xdg" / "unet_jax").exists()
