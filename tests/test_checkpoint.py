"""Orbax checkpoints: an exact round trip of state and JSON side item, the latest-k policy, the
target-free read used for inference, and half-written step folders ignored."""
import chex
import numpy as np
import pytest

from unet_jax import checkpoint


def _state(step):
    rng = np.random.default_rng(step)
    return {"params": {"w": rng.standard_normal((3, 2)).astype(np.float32)},
            "opt_state": [rng.standard_normal(2).astype(np.float32), np.full((), step, np.int32)]}


def test_round_trip_is_exact_and_only_the_latest_are_kept(tmp_path):
    ck = checkpoint.Checkpoints(tmp_path / "ck", keep=2)
    for step in (1, 2, 3):
        ck.save(step, _state(step), {"step": step, "loader": {"pos": step * 10}})
    assert ck.all_steps() == [2, 3] and ck.latest_step() == 3
    state, meta = ck.restore(3, _state(0))
    chex.assert_trees_all_equal(state, _state(3))
    assert meta == {"step": 3, "loader": {"pos": 30}} and ck.read_meta(2)["step"] == 2
    raw = ck.restore_raw(3)  # without a target: the same arrays
    chex.assert_trees_all_equal(raw["params"], _state(3)["params"])
    ck.close()
    with pytest.raises(ValueError, match="keep must be >= 1"):
        checkpoint.Checkpoints(tmp_path / "other", keep=0)


def test_a_half_written_step_is_not_listed(tmp_path):
    ck = checkpoint.Checkpoints(tmp_path / "ck")
    ck.save(1, _state(1), {"step": 1})
    ck.close()
    junk = tmp_path / "ck" / "2.orbax-checkpoint-tmp-99"
    junk.mkdir()
    (junk / "state").write_text("half written")
    assert checkpoint.Checkpoints(tmp_path / "ck").latest_step() == 1
