"""Metric files: JSONL lines with tags, TensorBoard events beside them, only on the writing
process, and JSON written atomically."""
import json

import numpy as np

from unet_jax.writers import MetricWriter, read_jsonl, write_json


def test_metric_lines_round_trip_with_tags_and_numpy_values(tmp_path):
    w = MetricWriter(tmp_path, tensorboard=True)
    w.write(2, {"train_loss": np.float32(0.5), "train_dice": np.asarray(0.25)})
    w.write(4, {"val_dice": 0.75}, final=True)
    w.close()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [
        {"step": 2, "train_loss": 0.5, "train_dice": 0.25}, {"step": 4, "final": True, "val_dice": 0.75}]
    events = list((tmp_path / "tensorboard").iterdir())
    assert len(events) == 1 and events[0].name.startswith("events.out.tfevents")
    assert b"train/loss" in events[0].read_bytes() and b"val/dice" in events[0].read_bytes()


def test_only_the_writing_process_writes(tmp_path):
    w = MetricWriter(tmp_path / "run", enabled=False, tensorboard=True)
    w.write(1, {"train_loss": 1.0})
    w.close()
    assert not (tmp_path / "run").exists()


def test_write_json_replaces_the_file_whole(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"a": np.float64(1.5), "b": np.arange(3)})
    write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left
