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
    raw, raw_meta = ck.restore_raw(3)  # without a target: the same arrays
    chex.assert_trees_all_equal(raw["params"], _state(3)["params"])
    assert raw_meta == meta
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


@pytest.mark.parametrize("mode,values,best", [("max", [0.5, 0.9, 0.6, 0.7, 0.65], 2),
                                              ("min", [0.5, 0.1, 0.6, 0.7, 0.65], 2)])
def test_the_best_step_survives_the_latest_k_policy(tmp_path, mode, values, best):
    ck = checkpoint.Checkpoints(tmp_path / "ck", keep=2, best_metric="val_dice", best_mode=mode)
    ck.save(0, _state(0), {"step": 0})  # never validated: ranks below every validated step
    for step, v in enumerate(values, start=1):
        ck.save(step, _state(step), {"step": step}, metrics={"val_dice": v})
    assert ck.all_steps() == [best, 4, 5] and ck.best_step() == best
    assert ck.metrics(best) == {"val_dice": values[best - 1]}
    ck.close()
    reopened = checkpoint.Checkpoints(tmp_path / "ck", keep=2, best_metric="val_dice", best_mode=mode)
    assert reopened.best_step() == best  # read back from disk


def test_without_any_validation_the_best_is_the_latest(tmp_path):
    ck = checkpoint.Checkpoints(tmp_path / "ck", keep=2, best_metric="val_dice")
    for step in (1, 2, 3):
        ck.save(step, _state(step), {"step": step})
    assert ck.all_steps() == [2, 3] and ck.best_step() == 3
