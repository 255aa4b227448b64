"""Run safety on its own: the workdir lock, SIGTERM as a flag, the resumed-config check and the
stop after non-finite steps (the trainer's use of them is tested end to end in test_train.py)."""
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from unet_jax import checkpoint, safety


def test_a_second_lock_on_a_workdir_is_refused_until_released(tmp_path):
    lock = safety.WorkdirLock(tmp_path)
    with pytest.raises(RuntimeError, match=f"workdir {tmp_path} is in use by another run"):
        safety.WorkdirLock(tmp_path)
    lock.release()
    safety.WorkdirLock(tmp_path).release()


def test_a_failed_start_removes_only_what_it_added(tmp_path):
    """Nothing half-written: a new workdir goes entirely, an old one loses only the new files,
    and a workdir holding a checkpoint keeps everything (it can be resumed)."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.json").write_text("{}")
    safety.remove_unfinished(fresh, None)
    assert not fresh.exists()
    old = tmp_path / "old"
    (old / "mine").mkdir(parents=True)
    before = set(old.iterdir())
    (old / "config.json").write_text("{}")
    (old / "checkpoints").mkdir()
    safety.remove_unfinished(old, before)
    assert sorted(p.name for p in old.iterdir()) == ["mine"]
    @safety.removes_unfinished
    def failing(config, workdir):
        (Path(workdir) / "metrics.jsonl").write_text("")
        raise ValueError(config)

    with pytest.raises(ValueError, match="bad"):
        failing("bad", old)
    assert sorted(p.name for p in old.iterdir()) == ["mine"]
    (old / "checkpoints" / "4").mkdir(parents=True)
    (old / "metrics.jsonl").write_text("")
    safety.remove_unfinished(old, before)
    assert sorted(p.name for p in old.iterdir()) == ["checkpoints", "metrics.jsonl", "mine"]


def test_sigterm_only_sets_a_flag_until_restored():
    before = signal.getsignal(signal.SIGTERM)
    signals = safety.StopSignals()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == "SIGTERM"
    finally:
        signals.restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_config_check_names_the_changed_fields_and_allows_resumable_ones():
    saved = {"num_steps": 10, "model": {"features": 4, "depth": 2}, "data": {"w0": 10.0}}
    safety.check_compatible(saved, {**saved, "num_steps": 99, "progress": False}, "ck/10")
    with pytest.raises(ValueError, match=r"ck/10 was written with a different config "
                                         r"\(data.w0: 10.0 -> 20.0, model.features: 4 -> 8\)"):
        safety.check_compatible(saved, {**saved, "model": {"features": 8, "depth": 2}, "data": {"w0": 20.0}},
                                "ck/10")
    # a field added since the checkpoint was written is accepted; one the current config lost is not
    safety.check_compatible(saved, {**saved, "data": {"w0": 10.0, "mask_suffix": ""}}, "ck/10")
    with pytest.raises(ValueError, match=r"data.w0: 10.0 -> None"):
        safety.check_compatible(saved, {**saved, "data": {}}, "ck/10")


def test_a_streak_of_skipped_steps_stops_naming_the_step_and_the_kept_checkpoint(tmp_path):
    ckpts = checkpoint.Checkpoints(tmp_path / "ck")
    ckpts.save(2, {"w": np.zeros(2)}, {"step": 2})
    streak = safety.NonFiniteStreak(3)
    for step, skipped in [(3, True), (4, True), (5, False), (6, True), (7, True)]:
        streak.update(step, skipped, ckpts)  # never 3 in a row
    with pytest.raises(safety.NonFiniteLoss, match=r"not finite at step 8 \(3 step\(s\) in a row, "
                                                   r"max_nonfinite_steps 3\); stopped. The last good "
                                                   rf"checkpoint \(step 2\) is kept in {tmp_path / 'ck'}"):
        streak.update(8, True, ckpts)
    never = safety.NonFiniteStreak(0)
    for step in range(10):
        never.update(step, True, ckpts)
    ckpts.close()


@pytest.mark.parametrize("field,value,least", [("num_steps", -5, 1), ("batch_size", 0, 1), ("log_every", 0, 1),
                                               ("eval_every", -1, 0), ("keep_checkpoints", 0, 1)])
def test_counts_out_of_range_are_named(field, value, least):
    from tests.helpers import tiny_config

    config = tiny_config("")
    safety.check_counts(config)
    config[field] = value
    with pytest.raises(ValueError, match=rf"^--config.{field} must be >= {least}, got {value}$"):
        safety.check_counts(config)
