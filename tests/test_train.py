"""The training engine end to end: outputs, quiet output, exact resume, SIGKILL / SIGTERM, NaN,
locking, config checks, half-written checkpoints and recompilation."""
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny_config
from unet_jax import checkpoint, evaluation, safety, train
from unet_jax.data import builders, loader
from unet_jax.writers import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8


def _cli(workdir, tfds_dir, *overrides, step_delay: float = 0.0):
    """The main job's CLI on the tiny config; ``step_delay`` pauses after every step
    (tests/slow_segment.py) so that a test can signal the run in the middle."""
    entry = ["tests.slow_segment", str(step_delay)] if step_delay else ["experiments.unet_segment"]
    cmd = [sys.executable, "-m", *entry, "--workdir", str(workdir),
           "--config", "tests/tiny_config.py", f"--config.data.tfds_dir={tfds_dir}",
           f"--config.num_steps={STEPS}", *overrides]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _params(workdir, step=None):
    ck = checkpoint.Checkpoints(Path(workdir) / "checkpoints")
    step = ck.latest_step() if step is None else step
    target = train.create_state(tiny_config(""), jax.random.key(0, impl="rbg"))
    state, meta = ck.restore(step, target)
    ck.close()
    return state, meta


def _assert_bitwise_equal(a, b):
    chex.assert_trees_all_equal(a.params, b.params)
    chex.assert_trees_all_equal(a.opt_state, b.opt_state)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tfds_dir):
    """An uninterrupted run of STEPS steps."""
    workdir = tmp_path_factory.mktemp("reference")
    rc, out = _finish(_cli(workdir, tfds_dir))
    assert rc == 0, out[-3000:]
    (workdir.parent / "reference_output.txt").write_text(out)
    return workdir


def test_a_run_prints_validations_and_a_summary_without_library_chatter(reference):
    out = (reference.parent / "reference_output.txt").read_text()
    lines = out.strip().splitlines()
    # progress off: one line per validation (here only the final one) and the summary
    assert len(lines) == 2, out
    assert lines[0].startswith(f"step {STEPS}: final validation on 2 images: dice ")
    assert json.loads(lines[1])["summary"]["step"] == STEPS
    for chatter in ("INFO", "Warning", "Unable to initialize backend", "Downloading and preparing"):
        assert chatter not in out, chatter


def test_end_to_end_run_writes_everything(reference):
    lines = read_jsonl(reference / "metrics.jsonl")
    train_lines = [l for l in lines if "train_loss" in l]
    assert [l["step"] for l in train_lines] == list(range(2, STEPS + 1, 2))
    assert all(np.isfinite(l["train_loss"]) and l["train_images_per_s"] > 0 for l in train_lines)
    final = [l for l in lines if l.get("final")]
    assert len(final) == 1 and 0 <= final[0]["val_dice"] <= 1 and "val_rand_error" in final[0]
    assert any(p.name.startswith("events.out.tfevents") for p in (reference / "tensorboard").iterdir())
    for name in ("val_predictions.png", "curves.png"):
        assert (reference / name).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((reference / "config.json").read_text())["num_steps"] == STEPS
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["step"] == STEPS and summary["stopped_by"] is None
    ck = checkpoint.Checkpoints(reference / "checkpoints", best_metric="val_dice")
    assert ck.all_steps() == [STEPS - 2, STEPS]  # the latest 2; the best is the last here
    # the final step is saved after its validation, with the metric the best policy ranks by
    assert ck.metrics(STEPS) == {"val_dice": summary["val_dice"]} and ck.best_step() == STEPS
    ck.close()


def test_resume_ends_with_the_uninterrupted_parameters(reference, tfds_dir, tmp_path):
    rc, out = _finish(_cli(tmp_path, tfds_dir, "--config.stop_after=3"))
    assert rc == 0 and "stopped by stop_after at step 3" in out, out[-2000:]
    rc, out = _finish(_cli(tmp_path, tfds_dir))
    assert rc == 0, out[-2000:]
    assert json.loads((tmp_path / "summary.json").read_text())["resumed_from"] == 3
    _assert_bitwise_equal(_params(tmp_path)[0], _params(reference)[0])


def test_fine_tuning_starts_from_the_named_model_and_one_that_does_not_fit_is_named(reference, tfds_dir,
                                                                                      tmp_path):
    # with a learning rate of 0 a whole fine-tuning run keeps the parameters it started from
    rc, out = _finish(_cli(tmp_path / "tuned", tfds_dir, f"--config.init_from={reference}",
                           "--config.optim.learning_rate=0"))
    assert rc == 0, out[-2000:]
    source = evaluation.load_trained(reference, step=STEPS).variables
    chex.assert_trees_all_equal(_params(tmp_path / "tuned")[0].params, source["params"])
    fresh = train.create_state(tiny_config(str(tfds_dir)), jax.random.key(0, impl="rbg"))
    assert not np.array_equal(fresh.params["down_0"]["Conv_0"]["kernel"],
                              source["params"]["down_0"]["Conv_0"]["kernel"])  # not the initial weights
    config = tiny_config("")
    config.init_from = str(reference)
    started = train.init_from(fresh, config)
    chex.assert_trees_all_equal(started.params, source["params"])
    chex.assert_trees_all_equal(started.batch_stats, source["batch_stats"])
    chex.assert_trees_all_equal(started.opt_state, fresh.tx.init(source["params"]))  # a fresh optimiser
    wider = tiny_config("")
    wider.model.features = 8
    wider.init_from = str(reference)
    state = train.create_state(wider, jax.random.key(0, impl="rbg"))
    with pytest.raises(ValueError, match=r"init_from '.*reference.*': its model \(in_channels=1, num_classes=2, "
                                         r"features=4, .*\) does not fit config.model \(.*features=8"):
        train.init_from(state, wider)
    wider.init_from = "no_such_model"
    with pytest.raises(ValueError, match=r"model 'no_such_model' is neither a shipped model \(.*nuclei"):
        train.init_from(state, wider)


def test_sigkill_at_a_random_step_then_restart(reference, tfds_dir, tmp_path):
    proc = _cli(tmp_path, tfds_dir, step_delay=0.4)
    ckdir = tmp_path / "checkpoints"
    deadline = time.time() + 300
    while not (ckdir.exists() and any(p.name.isdigit() for p in ckdir.iterdir())):
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.1)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = checkpoint.Checkpoints(ckdir).latest_step()
    assert killed_at < STEPS
    rc, out = _finish(_cli(tmp_path, tfds_dir))
    assert rc == 0, out[-2000:]
    _assert_bitwise_equal(_params(tmp_path)[0], _params(reference)[0])


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tfds_dir, tmp_path):
    """With background (async) checkpoint writes, as on GPUs: the write started at the SIGTERM
    step completes before the run exits."""
    proc = _cli(tmp_path, tfds_dir, "--config.num_steps=10000", "--config.checkpoint_every=3",
                "--config.async_checkpoints=on", step_delay=0.2)
    deadline = time.time() + 300
    while not (tmp_path / "metrics.jsonl").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    rc, out = _finish(proc)
    assert rc == 0, out[-2000:]
    assert "stopped by SIGTERM at step" in out
    step = int(out.split("stopped by SIGTERM at step ")[1].split(";")[0])
    ck = checkpoint.Checkpoints(tmp_path / "checkpoints")
    assert ck.latest_step() == step and ck.read_meta(step)["step"] == step
    assert sorted(p.name for p in ck.directory.iterdir()) == sorted(map(str, ck.all_steps()))  # no tmp dirs


class _NanAt:
    """Wraps the loader iterator; batch number ``at`` (1-based) gets a NaN pixel."""

    def __init__(self, it, at):
        self.it, self.at, self.n = it, at, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.n += 1
        b = next(self.it)
        if self.n == self.at:
            b = {**b, "image": b["image"].copy()}
            b["image"][0, 3, 3, 0] = np.nan
        return b

    def get_state(self):
        return self.it.get_state()

    def set_state(self, s):
        self.it.set_state(s)


def test_a_nan_batch_is_skipped_and_a_streak_of_them_stops_the_run(tfds_dir, tmp_path, monkeypatch):
    real = loader.make_train_loader
    monkeypatch.setattr(loader, "make_train_loader",
                        lambda *a, **k: _NanAt(iter(real(*a, **k)), at=5))
    config = tiny_config(str(tfds_dir))
    config.num_steps = STEPS
    summary = train.train_and_evaluate(config, str(tmp_path / "skip"))  # max_nonfinite_steps 5
    assert summary["step"] == STEPS and np.isfinite(summary["val_dice"])
    lines = {l["step"]: l for l in read_jsonl(tmp_path / "skip" / "metrics.jsonl") if "train_loss" in l}
    assert lines[6]["train_nonfinite"] == 0.5 and lines[4]["train_nonfinite"] == lines[8]["train_nonfinite"] == 0
    assert np.isfinite(lines[6]["train_loss"])  # the mean of the finite step alone
    config.max_nonfinite_steps = 1
    with pytest.raises(safety.NonFiniteLoss, match=r"not finite at step 5 .*checkpoint \(step 4\)"):
        train.train_and_evaluate(config, str(tmp_path / "stop"))
    assert checkpoint.Checkpoints(tmp_path / "stop" / "checkpoints").latest_step() == 4


def test_a_budget_shorter_than_the_compilation_still_trains(tfds_dir, tmp_path):
    """``time_budget_s`` counts from the end of the first step: a budget that compiling alone
    would use up still trains for that long (counting the compilation would stop the run at its
    first log step, 5)."""
    config = tiny_config(str(tfds_dir))
    config.num_steps, config.log_every, config.checkpoint_every = 100_000, 5, 100_000
    config.time_budget_s = 1.0
    summary = train.train_and_evaluate(config, str(tmp_path))
    assert summary["compile_s"] > config.time_budget_s, summary  # the premise of this test
    assert summary["time_budget_hit"] and summary["step"] >= 10, summary
    assert config.time_budget_s <= summary["train_time_s"] < summary["compile_s"] + 5, summary


def test_a_non_finite_step_leaves_the_state_as_it_was():
    config = tiny_config("")
    state = train.create_state(config, jax.random.key(0, impl="rbg"))
    step = jax.jit(functools.partial(train.train_step, cfg=train.step_config(config)))
    size = train.tile_sizes(config)[0]
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((8, size, size, 1), np.float32),
             "labels": rng.integers(0, 2, (8, size, size)).astype(np.int32),
             "weights": np.ones((8, size, size), np.float32), "index": np.arange(8, dtype=np.int32)}
    key = jax.random.key(1, impl="rbg")
    good, m1 = step(state, batch, key)
    assert float(m1["nonfinite"][0]) == 0 and float(m1["loss"][1]) > 0
    assert not np.array_equal(good.params["head"]["kernel"], state.params["head"]["kernel"])
    for bad_value in (np.nan, np.inf):
        bad = {**batch, "image": batch["image"].copy()}
        bad["image"][3, 5, 5, 0] = bad_value
        after, m2 = step(good, bad, key)
        chex.assert_trees_all_equal(after.params, good.params)
        chex.assert_trees_all_equal(after.opt_state, good.opt_state)
        chex.assert_trees_all_equal(after.batch_stats, good.batch_stats)
        assert int(after.step) == int(good.step) + 1
        assert (float(m2["nonfinite"][0]), float(m2["loss"][1]), float(m2["grad_norm"][1])) == (1.0, 0.0, 0.0)


def test_validation_at_every_eval_step_and_a_failing_final_evaluation_keeps_the_steps(tfds_dir, tmp_path,
                                                                                    monkeypatch):
    config = tiny_config(str(tfds_dir))
    config.num_steps, config.eval_every, config.checkpoint_every = STEPS, 3, 4  # 3: no log boundary
    real = evaluation.evaluate

    def final_fails(*args, **kwargs):
        if kwargs.get("max_images") is None:  # the final validation
            raise RuntimeError("evaluation broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", final_fails)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        train.train_and_evaluate(config, str(tmp_path))
    assert [l["step"] for l in read_jsonl(tmp_path / "metrics.jsonl") if "val_dice" in l] == [3, 6]
    ck = checkpoint.Checkpoints(tmp_path / "checkpoints", best_metric="val_dice")
    assert ck.all_steps() == [4, STEPS] and ck.metrics(STEPS) == {}  # saved before the error
    ck.close()


def test_second_run_on_a_workdir_in_use_refuses(tfds_dir, tmp_path):
    lock = safety.WorkdirLock(tmp_path)
    try:
        with pytest.raises(RuntimeError, match="is in use by another run"):
            train.train_and_evaluate(tiny_config(str(tfds_dir)), str(tmp_path))
    finally:
        lock.release()


def test_incompatible_config_or_schedule_is_refused_and_half_written_checkpoints_ignored(reference, tfds_dir, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(reference, workdir)
    config = tiny_config(str(tfds_dir))
    config.num_steps = STEPS
    config.model.features = 8
    with pytest.raises(ValueError, match=r"different config \(model.features: 4 -> 8\)"):
        train.train_and_evaluate(config, str(workdir))
    # a crash mid-save leaves an orbax temporary folder; a resumed run must skip it
    junk = workdir / "checkpoints" / f"{STEPS + 4}.orbax-checkpoint-tmp-1234567"
    junk.mkdir()
    (junk / "state").write_text("half written")
    config.model.features = 4
    config.num_steps = STEPS + 2  # under the cosine schedule the learning rate would jump
    with pytest.raises(ValueError, match=rf"trained towards num_steps={STEPS}; resuming with "
                                         rf"num_steps={STEPS + 2} would make the cosine"):
        train.train_and_evaluate(config, str(workdir))
    # resume from the step before the last (its folder removed) past the half-written one
    shutil.rmtree(workdir / "checkpoints" / str(STEPS))
    config.num_steps = STEPS
    summary = train.train_and_evaluate(config, str(workdir))
    assert summary["resumed_from"] == STEPS - 2 and summary["step"] == STEPS


def test_no_recompilation_per_step():
    config = tiny_config("")
    state = train.create_state(config, jax.random.key(0, impl="rbg"))
    cfg = train.step_config(config)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, batch, rng):
        return train.train_step(state, batch, rng, cfg=cfg)

    size = train.tile_sizes(config)[0]
    rng = np.random.default_rng(0)
    for i in range(4):
        batch = {"image": rng.random((8, size, size, 1), np.float32),
                 "labels": rng.integers(0, 2, (8, size, size)).astype(np.int32),
                 "weights": np.ones((8, size, size), np.float32), "index": np.arange(8, dtype=np.int32)}
        state, _ = step(state, batch, jax.random.key(i, impl="rbg"))
    assert int(state.step) == 4


@pytest.mark.parametrize("name,variant", [("isbi2012", "paper"), ("isbi2012", "cpu"), ("nuclei", None),
                                          ("nuclei", "grey"), ("nuclei", "bright_objects"), ("nuclei", "colour"),
                                          ("nuclei", "colour_oversampled"), ("nuclei", "fine_tune"),
                                          ("nuclei", "fine_tune_brightfield"),
                                          ("wbc", "default"), ("wbc", "robust")])
def test_config_variants_only_override_fields_of_the_default(name, variant):
    """A misspelt field in a variant would be a silent no-op (ConfigDict adds it)."""
    import dataclasses
    import importlib

    from experiments.configs import default

    def keys(c, prefix=""):
        return {k2 for k, v in c.items()
                for k2 in (keys(v, f"{prefix}{k}.") if hasattr(v, "items") else {f"{prefix}{k}"})}

    module = importlib.import_module(f"experiments.configs.{name}")
    config = module.get_config(variant) if variant else module.get_config()
    assert keys(config) == keys(default.get_config())
    fields = {f.name for f in dataclasses.fields(builders.CellsConfig)}
    assert set(builders.dataset_options(config, config.data.dataset)) <= fields  # options the builders accept


def _optim_config(**optim):
    config = tiny_config("")
    config.num_steps = 100
    config.optim.update({"warmup_steps": 10, "learning_rate": 0.1, "grad_clip": 0.0, "weight_decay": 0.0, **optim})
    return config


@pytest.mark.parametrize("schedule", ["constant", "cosine", "poly"])
def test_learning_rate_schedules_equal_their_closed_forms(schedule):
    config = _optim_config(schedule=schedule)
    lr, warm, total = 0.1, 10, 100
    fn = train.learning_rate_schedule(config)
    for t in [0, 1, 5, 9, 10, 11, 40, 77, 99, 100]:
        if t < warm:
            want = lr * t / warm
        else:
            frac = (t - warm) / (total - warm)
            want = {"constant": lr, "cosine": lr * 0.5 * (1 + np.cos(np.pi * frac)),
                    "poly": lr * (1 - frac) ** 0.9}[schedule]
        np.testing.assert_allclose(float(fn(t)), want, rtol=1e-5, atol=1e-8, err_msg=f"{schedule} at {t}")


def _one_update(config, params, grads, steps=1):
    tx = train.create_optimizer(config)
    opt = tx.init(params)
    for g in grads[:steps]:
        updates, opt = tx.update(g, opt, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    return params


def test_optimizers_equal_their_closed_forms():
    p0 = {"w": jnp.asarray([1.0, -2.0, 3.0])}
    g1, g2 = {"w": jnp.asarray([0.5, -1.0, 2.0])}, {"w": jnp.asarray([-0.25, 0.5, 1.0])}
    cfg = lambda **o: _optim_config(warmup_steps=0, schedule="constant", **o)  # noqa: E731
    # SGD with momentum 0.99 (the paper's): v1 = g1, v2 = 0.99 v1 + g2; p -= lr v
    got = _one_update(cfg(name="sgd", momentum=0.99), p0, [g1, g2], steps=2)
    v2 = 0.99 * np.asarray(g1["w"]) + np.asarray(g2["w"])
    np.testing.assert_allclose(got["w"], np.asarray(p0["w"]) - 0.1 * np.asarray(g1["w"]) - 0.1 * v2, rtol=1e-6)
    # clipping by global norm: |g1| = 2.29 > 1 scales the gradient to norm 1
    got = _one_update(cfg(name="sgd", momentum=0.0, grad_clip=1.0), p0, [g1])
    g = np.asarray(g1["w"])
    np.testing.assert_allclose(got["w"], np.asarray(p0["w"]) - 0.1 * g / np.linalg.norm(g), rtol=1e-6)
    # AdamW: the first Adam step is lr * g / (|g| + eps), the decay lr * wd * p, decoupled
    got = _one_update(cfg(name="adamw", weight_decay=0.01), p0, [g1])
    p = np.asarray(p0["w"])
    np.testing.assert_allclose(got["w"], p - 0.1 * (g / (np.abs(g) + 1e-8) + 0.01 * p), rtol=1e-6)
    # Adam with weight decay: the decay is added to the gradient first (L2), then Adam
    got = _one_update(cfg(name="adam", weight_decay=0.01), p0, [g1])
    gd = g + 0.01 * p
    np.testing.assert_allclose(got["w"], p - 0.1 * gd / (np.abs(gd) + 1e-8), rtol=1e-6)
    with pytest.raises(ValueError, match="optim.name must be sgd, adam or adamw"):
        train.create_optimizer(cfg(name="lion"))


def test_the_valid_mode_step_scores_the_centre_of_the_labels():
    """Valid padding: the step's loss is eq. 1 of the logits against the labels and weights
    cropped by the context on every side, computed here in numpy."""
    config = tiny_config("")
    config.model.padding, config.model.norm = "valid", "none"
    config.augment.enabled = False
    size_in, size_out = train.tile_sizes(config)
    c = (size_in - size_out) // 2
    assert c > 0
    state = train.create_state(config, jax.random.key(0, impl="rbg"))
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((2, size_in, size_in, 1), np.float32),
             "labels": rng.integers(0, 2, (2, size_in, size_in)).astype(np.int32),
             "weights": rng.uniform(0.5, 3, (2, size_in, size_in)).astype(np.float32),
             "index": np.arange(2, dtype=np.int32)}
    logits = np.asarray(state.apply_fn({"params": state.params}, batch["image"]), np.float64)
    _, sums = jax.jit(functools.partial(train.train_step, cfg=train.step_config(config)))(
        state, batch, jax.random.key(1, impl="rbg"))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    labels, weights = batch["labels"][:, c:-c, c:-c], batch["weights"][:, c:-c, c:-c]
    nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0] * weights
    np.testing.assert_allclose(float(sums["loss"][0]), nll.sum(), rtol=1e-5)
    assert float(sums["loss"][1]) == nll.size == 2 * size_out ** 2


def test_bad_counts_and_datasets_end_the_cli_with_one_line(tfds_dir, tmp_path):
    for flag, message in (("--config.num_steps=-5", "error: --config.num_steps must be >= 1, got -5"),
                          ("--config.data.dataset=my_cells", "error: dataset 'my_cells' is neither one of the "
                                                             "built-in")):
        rc, out = _finish(_cli(tmp_path / flag.split("=")[0][9:], tfds_dir, flag))
        assert rc == 1 and out.strip().startswith(message) and len(out.strip().splitlines()) == 1, out[-2000:]


def test_the_train_loader_oversamples_the_images_the_config_names():
    """``data.oversample_names`` / ``data.oversample`` reach the loader through the examples'
    stored names (bytes, as TFDS returns text): one epoch of 4 + 2 draws holds example 2 three
    times; a name no training image has stops the run before it starts."""
    config = tiny_config("")
    config.batch_size = 6
    config.data.tile_size = 8
    source = [{**ex, "name": f"cell{i}".encode()} for i, ex in enumerate(
        {"image": np.full((8, 8, 1), i, np.float32), "labels": np.zeros((8, 8), np.uint8),
         "weights": np.ones((8, 8), np.float32)} for i in range(4))]
    config.data.oversample_names = ("cell2",)
    config.data.oversample = 3
    batch = next(train._train_batches(config, source))
    np.testing.assert_array_equal(np.bincount(batch["image"][:, 0, 0, 0].astype(int), minlength=4), [1, 1, 3, 1])
    config.data.oversample_names = ("cell7",)
    with pytest.raises(ValueError, match="no training image named 'cell7'"):
        train._train_batches(config, source)
