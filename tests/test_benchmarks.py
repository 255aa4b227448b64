"""The GPU benchmark's model-FLOP count against XLA's own cost analysis (an independent count);
the GPU benchmark and the prepared GPU check run end to end on tiny shapes; the nuclei
benchmark's figures per kind of image."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks import gpu_check, gpu_speed
from tests.conftest import require_shared
from unet_jax import train, unet


def _xla_flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


@pytest.mark.parametrize("padding,size,upsample", [("valid", 92, "transpose"), ("same", 64, "transpose")])
def test_model_flops_match_xla_forward(padding, size, upsample):
    model = unet.UNet(features=8, depth=2, padding=padding, upsample=upsample)
    x = jnp.zeros((2, size, size, 1))
    params = model.init(jax.random.key(0), x[:1])
    counted = gpu_speed.model_flops(model, x.shape)
    xla = _xla_flops(model.apply, params, x)
    # XLA also counts bias adds, ReLUs and pooling (a few FLOPs per element against 2*9*C per
    # convolution output) and leaves out products with same-padding zeros (2.5 % here)
    low = 1.0 if padding == "valid" else 0.95
    assert low * counted <= xla <= 1.08 * counted, (counted, xla)


def test_train_step_flops_are_three_forward_passes():
    model = unet.UNet(features=8, depth=2, padding="valid")
    batch = jax.tree.map(jnp.asarray, gpu_speed.make_batch(2, 92))
    out = unet.output_size(92, 2, "valid")
    params = model.init(jax.random.key(0), batch["image"][:1])["params"]
    state = train.TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(1e-2))
    step = functools.partial(train.train_step, cfg=train.StepConfig(loss="weighted_ce", crop=(92 - out) // 2))
    xla = _xla_flops(step, state, batch, jax.random.key(0))
    counted = 3 * gpu_speed.model_flops(model, batch["image"].shape)
    # the first layer's input gradient is not needed (1 channel: a small share), the rest is 3 passes
    assert 0.9 * counted <= xla <= 1.15 * counted, (counted, xla)


def test_largest_batch_search_and_json_lines(tmp_path):
    out = tmp_path / "speed.jsonl"
    lines = gpu_speed.main(["--size", "92", "--features", "4", "--depth", "2", "--batches", "1,2,max",
                            "--max_batch", "8", "--steps", "6", "--dtypes", "float32",
                            "--inference_batch", "2", "--loop_steps", "3", "--output", str(out)])
    kinds = [d["benchmark"] for d in lines]
    batches = [d["batch"] for d in lines if d["benchmark"] == "gpu_train"]
    # without a device memory limit (CPU) the search aims at 90 % of --max_batch images' bytes
    assert batches[:2] == [1, 2] and len(batches) == 3 and batches[2] in (4, 8), batches
    assert {"largest_batch", "gpu_inference", "bf16_vs_f32"} <= set(kinds)
    assert all(d["finite"] for d in lines if d["benchmark"] == "gpu_train")
    # the timed steps learn: synthetic cells and the paper's warm-up, not noise
    assert all(d["loss_first_last"][1] < d["loss_first_last"][0] for d in lines if d["benchmark"] == "gpu_train")
    loops = [d for d in lines if d["benchmark"] == "gpu_loop"]
    assert [d["batch"] for d in loops] == [1, 2] and all(d["images_per_s"] > 0 and d["compile_s"] > 0 for d in loops)
    assert len(out.read_text().splitlines()) == len(lines)
    agree = next(d for d in lines if d["benchmark"] == "bf16_vs_f32")
    assert agree["loss_rel_diff"] < 0.05 and agree["grad_cosine"] > 0.9


def test_the_gpu_check_runs_every_stage_on_tiny_shapes(tmp_path):
    """``gpu_check --smoke``: every stage (versions, gpu_speed, the paper config's training by the
    CLI, unet_evaluate with a calibrated threshold and TTA) runs and writes its JSON line."""
    data = require_shared("isbi2012")
    out = tmp_path / "check.jsonl"
    assert gpu_check.main(["--smoke", "--data_dir", str(data), "--output", str(out),
                           "--workdir", str(tmp_path / "work")]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    stages = [d["stage"] for d in lines]
    assert stages[0] == "devices" and stages[-3:] == ["train", "evaluate", "done"], stages
    assert lines[0]["backend"] == "cpu" and lines[0]["jax"] == jax.__version__
    speed = [d for d in lines if d["stage"] == "gpu_speed"]
    assert {"gpu_train", "gpu_loop"} <= {d.get("benchmark") for d in speed}
    train_line, eval_line, done = lines[-3:]
    assert train_line["step"] == 3 and train_line["compile_s"] > 0 and not train_line["cut_at_limit"]
    assert 0 <= eval_line["rand_error"] <= 1 and 0 <= eval_line["pixel_error_calibrated"] <= 1
    assert done["all_stages_ok"] and done["results"]["rand_error"] == eval_line["rand_error"]


def test_nuclei_figures_per_kind_are_the_means_and_sums_of_their_own_images():
    from benchmarks import nuclei_modalities

    rows = [{"dsb_map": 0.6, "n_pred": 10, "n_true": 12}, {"dsb_map": 0.2, "n_pred": 30, "n_true": 8},
            {"dsb_map": 0.4, "n_pred": 5, "n_true": 5}, {"dsb_map": 0.1, "n_pred": 9, "n_true": 3}]
    out = nuclei_modalities.per_kind(rows, ["fluorescence", "colour", "fluorescence", "grey_brightfield"])
    assert out["fluorescence"] == {"images": 2, "dsb_map": 0.5, "n_pred": 15, "n_true": 17}
    assert out["brightfield"] == {"images": 2, "dsb_map": 0.15, "n_pred": 39, "n_true": 11}
    assert out["overall"] == {"images": 4, "dsb_map": 0.325, "n_pred": 54, "n_true": 28}


def test_the_threshold_sweep_scores_each_pair_against_the_truth():
    """Two nuclei whose interiors touch through a saddle of 0.65: the seed threshold 0.6 finds
    one object (AP 0: IoU < 0.5 with both), 0.7 finds both (each matched at IoU > 0.5); seeds
    of at least 300 pixels drop both interiors (about 200 pixels each), so nothing is found."""
    from benchmarks import instance_thresholds

    yy, xx = np.mgrid[:40, :64]
    near = np.minimum(np.hypot(yy - 20, xx - 16), np.hypot(yy - 20, xx - 46))
    truth = np.where(np.hypot(yy - 20, xx - 16) <= 11, 1, 0) + np.where(np.hypot(yy - 20, xx - 46) <= 11, 2, 0)
    fg = np.where(near <= 11, 0.95, 0.05)
    interior = np.where(near < 8, 0.9, 0.0)
    interior[(np.abs(yy - 20) <= 1) & (near >= 8)] = 0.65  # a bridge joins the interiors
    fg = np.maximum(fg, interior)
    probs = np.stack([1 - fg, interior, fg - interior], -1)
    rows = instance_thresholds.image_rows(probs, truth, [(0.5, 0.6, 0), (0.5, 0.7, 0), (0.5, 0.7, 300)],
                                          min_size=8)
    assert [r["n_pred"] for r in rows] == [1, 2, 0] and [r["n_true"] for r in rows] == [2, 2, 2]
    assert rows[0]["ap@0.5"] == 0.0 and rows[1]["ap@0.5"] == 1.0
    assert instance_thresholds.settings(["threshold=0.8", "seed_threshold=0.7", "min_size=5",
                                         "min_seed_size=8"]) == {
        "threshold": 0.8, "seed_threshold": 0.7, "min_size": 5, "min_seed_size": 8}
    with pytest.raises(ValueError, match="--instances mode=components: expected threshold="):
        instance_thresholds.settings(["mode=components"])
    with pytest.raises(ValueError, match="'high' is not a number"):
        instance_thresholds.settings(["threshold=high"])
