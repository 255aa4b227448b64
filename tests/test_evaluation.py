"""The one evaluation loop against metrics computed here from scratch, loading a trained run
(and its bad checkpoints), and the evaluate CLI."""
import csv
import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from tests.helpers import tiny_config
from unet_jax import checkpoint, evaluation, inference, metrics, train

ROOT = Path(__file__).resolve().parents[1]


def _pointwise(x):
    """A 'model' whose foreground probability is the image itself: [N, S, S, 1] -> [N, S, S, 2]."""
    x = np.asarray(x)
    return np.concatenate([1 - x, x], -1)


def _source(n=3, size=32, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        labels = (rng.random((size, size)) > 0.6).astype(np.uint8)
        noise = rng.random((size, size))
        image = np.clip(0.7 * labels + 0.3 * noise, 0, 1).astype(np.float32)[..., None]
        out.append({"image": image, "labels": labels, "instances": np.zeros_like(labels, np.int32)})
    return out


@pytest.mark.parametrize("quick", [True, False])
def test_evaluate_averages_per_image_metrics_computed_from_scratch(quick):
    config = tiny_config("")
    source = _source()
    got, samples = evaluation.evaluate(config, _pointwise, source, quick=quick, warping=False, max_images=2)
    assert got["images"] == 2 and len(samples) == 2
    dice, pixel, rand = [], [], []
    for ex in source[:2]:
        fg = ex["image"][..., 0]
        pred, truth = fg > 0.5, ex["labels"] > 0
        dice.append(2 * np.sum(pred & truth) / (pred.sum() + truth.sum()))
        pixel.append(np.mean(pred != truth))
        grid = np.round(np.arange(5, 100, 5) / 100, 2) if quick else np.round(np.arange(1, 100) / 100, 2)
        rand.append(min(metrics.rand_error(fg, truth, [t])[0] for t in grid))
    np.testing.assert_allclose(got["dice"], np.mean(dice), rtol=1e-6)
    np.testing.assert_allclose(got["dice_1"], np.mean(dice), rtol=1e-6)
    np.testing.assert_allclose(got["pixel_error"], np.mean(pixel), rtol=1e-6)
    np.testing.assert_allclose(got["rand_error"], np.mean(rand), rtol=1e-6)
    assert ("rand_error_coarse" in got) is not quick and ("warping_error" not in got)


def test_worker_processes_give_the_same_metrics_as_one():
    """Metrics computed in 2 spawned processes while later images are predicted equal those
    computed in-process, instance metrics and the thinned Rand error included."""
    config = tiny_config("")
    source = _source(n=3, size=40, seed=1)
    for ex in source:
        ex["instances"] = metrics.segments(ex["labels"])
    one, _ = evaluation.evaluate(config, _pointwise, source, warping=True, thinned=True)
    two, _ = evaluation.evaluate(config, _pointwise, source, warping=True, thinned=True, workers=2)
    assert one == two and one["images"] == 3
    assert {"rand_error_thinned", "warping_error", "dsb_map", "pq"} <= set(one)
    thinned = [metrics.rand_error(ex["image"][..., 0], ex["labels"] > 0, thin=True)[0] for ex in source]
    np.testing.assert_allclose(one["rand_error_thinned"], np.mean(thinned), rtol=1e-12)
    assert "rand_error_thinned" not in evaluation.evaluate(config, _pointwise, source, warping=False)[0]


def test_load_trained_reads_the_checkpoint_the_trainer_wrote(trained):
    run = evaluation.load_trained(trained)
    ck = checkpoint.Checkpoints(trained / "checkpoints", best_metric="val_dice")
    assert run.step == (ck.best_step() or ck.latest_step()) == 2
    target = train.create_state(run.config, jax.random.key(0, impl="rbg"))
    state, _ = ck.restore(run.step, target)  # the trainer's own restore path, with a target
    ck.close()
    chex.assert_trees_all_equal(run.variables, inference.model_variables(state))
    image = np.random.default_rng(0).random((64, 64, 1)).astype(np.float32)
    want = inference.predict_probs(run.config, functools.partial(inference.make_predict(state.apply_fn),
                                                                 inference.model_variables(state)), image)
    np.testing.assert_allclose(inference.predict_probs(run.config, run.predict, image), want, atol=1e-6)


def test_load_trained_takes_the_best_validated_step(trained, tmp_path):
    """Val Dice peaks at step 3 of 5: step 3 survives the latest-2 policy and is the one loaded."""
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    config = evaluation.load_trained(workdir).config
    ck = checkpoint.Checkpoints(workdir / "checkpoints", keep=2, best_metric="val_dice")
    states = {}
    for step, dice in ((3, 1.0), (4, 0.1), (5, 0.2)):
        state = train.create_state(config, jax.random.key(step, impl="rbg"))  # other parameters
        states[step] = state
        ck.save(step, state, {"step": step, "config": config.to_dict()}, metrics={"val_dice": dice})
    assert ck.all_steps() == [3, 4, 5]
    ck.close()
    run = evaluation.load_trained(workdir)
    assert run.step == 3
    chex.assert_trees_all_equal(run.variables, inference.model_variables(states[3]))


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_a_damaged_checkpoint_is_named_and_fallback_takes_the_next_older(trained, tmp_path, damage):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    config = evaluation.load_trained(workdir).config
    ck = checkpoint.Checkpoints(workdir / "checkpoints", keep=2, best_metric="val_dice")
    ck.save(3, train.create_state(config, jax.random.key(3, impl="rbg")), {"step": 3, "config": config.to_dict()},
            metrics={"val_dice": 1.0})
    ck.close()
    for f in (workdir / "checkpoints" / "3" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size:
            data = f.read_bytes()
            f.write_bytes(data[: len(data) // 2] if damage == "truncate" else bytes(b ^ 0x5A for b in data))
    with pytest.raises(ValueError, match=rf"checkpoint {workdir / 'checkpoints' / '3'} cannot be read .*--fallback"):
        evaluation.load_trained(workdir)
    run = evaluation.load_trained(workdir, fallback=True)
    assert run.step == 2
    chex.assert_trees_all_equal(run.variables, evaluation.load_trained(workdir, step=2).variables)


def test_bad_checkpoints_are_refused_naming_them(trained, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trained, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model"]["features"] = 8
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="was trained with model"):
        evaluation.load_trained(other)
    with pytest.raises(ValueError, match="holds no trained run"):
        evaluation.load_trained(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(trained / "config.json", empty / "config.json")
    with pytest.raises(ValueError, match="holds no checkpoint"):
        evaluation.load_trained(empty)


def test_evaluate_cli_prints_per_class_figures_writes_json_and_a_report(trained, tmp_path):
    config = json.loads((trained / "config.json").read_text())
    proc = subprocess.run([sys.executable, "-m", "experiments.unet_evaluate", "--workdir", str(trained),
                           "--dataset", "synthetic_cells", "--split", "test",
                           "--tfds_dir", config["data"]["tfds_dir"], "--output", str(tmp_path / "e.json"),
                           "--calibrate_split", "test", "--report", str(tmp_path / "report")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # not ISBI data: per-class Dice / IoU and instance metrics, not the paper's Table 1
    assert "| class | Dice | IoU |" in proc.stdout and "DSB 2018 mean AP" in proc.stdout
    assert "Warping Error" not in proc.stdout
    with open(tmp_path / "report" / "per_image.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["index"]) for r in table] == [0, 1]
    assert (tmp_path / "report" / "contact_sheet.png").read_bytes()[:4] == b"\x89PNG"
    res = json.loads((tmp_path / "e.json").read_text())
    for k in ("warping_error", "rand_error", "rand_error_bg_segment", "pixel_error",
              "pixel_error_best_threshold", "dice_1", "iou_1", "dsb_map", "f1@0.5"):
        assert 0 <= res[k] <= 1, k
    assert res["pixel_error_best_threshold"] <= res["pixel_error"]  # 0.5 is among the thresholds
    # calibrated on the evaluated split itself: one threshold for all images can do no better
    # than each image's best, and no worse than 0.5 (one of the candidates)
    assert res["pixel_error_best_threshold"] <= res["pixel_error_calibrated"] <= res["pixel_error"]
    assert res["calibrated_threshold"] in evaluation.THRESHOLDS and res["calibrate_split"] == "test"
    assert res["images"] == 2
    # the per-image rows average to the reported figures
    for k in ("dice", "pixel_error", "dsb_map"):
        assert abs(np.mean([float(r[k]) for r in table]) - res[k]) < 1e-9, k


def test_the_paper_table_is_printed_for_isbi_only():
    results = {"warping_error": 0.001, "rand_error": 0.05, "pixel_error": 0.07, "dice": 0.9, "iou": 0.8,
               "dice_0": 0.7, "iou_0": 0.6, "dice_1": 0.9, "iou_1": 0.8}
    assert "| Warping Error | Rand Error | Pixel Error |" in evaluation.results_table(results, "isbi2012")
    other = evaluation.results_table(results, "image_folder")
    assert "Rand" not in other and "| 1 | 0.9000 | 0.8000 |" in other and "instances" not in other
