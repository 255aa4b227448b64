"""Shared fixtures. Tests that read ../shared/data skip when it is absent, except in CI
(CI=true), where they fail: a missing data folder must not pass silently."""
import os
from pathlib import Path

import jax
import pytest

# Threefry keys unroll into large XLA programs that take seconds to compile on 2 cores; the
# counter-based "rbg" generator compiles in a fraction of that. Tests only need determinism.
jax.config.update("jax_default_prng_impl", "rbg")
# The entry points the tests start keep no persistent compilation cache in the user's home
# (tests of the cache give their own folder).
os.environ.setdefault("UNET_JAX_COMPILATION_CACHE", "off")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("UNET_JAX_SHARED_DATA", ROOT.parent / "shared" / "data"))


def require_shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        message = f"development data {path} is missing (see ../shared/README.md)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def mnist_dir() -> Path:
    return require_shared("mnist")


@pytest.fixture
def isbi_dir() -> Path:
    return require_shared("isbi2012")


@pytest.fixture
def dsb_dir() -> Path:
    return require_shared("dsb2018_subset")


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A workdir holding a 2-step run of the tiny config (tests/helpers.py)."""
    from tests.helpers import tiny_config
    from unet_jax import train

    workdir = tmp_path_factory.mktemp("trained")
    config = tiny_config(str(tmp_path_factory.mktemp("tfds")))
    config.num_steps = 2
    train.train_and_evaluate(config, str(workdir))
    return workdir
