"""U-Net training: the TrainState, one pure train step, eval, and train_and_evaluate(config, workdir).

Batches: image [B, S, S, C] float32, labels [B, S, S] int32 and weights [B, S, S] float32 at the
input tile size S (labels and weights carry the same mirrored context as the image; the step
crops them to the network's output after augmentation), and index [B], each example's
position in the global batch (keys its augmentation).
"""
from __future__ import annotations

import dataclasses
import fcntl
import functools
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from unet_jax import checkpoint, inference, losses, metrics, parallel, unet
from unet_jax.data import augment, builders, loader
from unet_jax.writers import MetricWriter, write_json

# Config fields that may change between a run and its resumption.
RESUMABLE_CHANGES = {"num_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                     "progress", "loader_workers", "loader_threads", "parallel", "coordinator",
                     "num_processes", "process_id", "stop_after", "eval_tta", "eval_batch_tiles",
                     "debug_step_delay", "time_budget_s"}


class TrainState(train_state.TrainState):
    batch_stats: Any = None


# ------------------------------------------------------------------ model and optimiser
def create_model(config, axis_name: str | None = None) -> unet.UNet:
    m = config.model
    return unet.UNet(num_classes=m.num_classes, features=m.features, depth=m.depth,
                     in_channels=m.in_channels, padding=m.padding, norm=m.norm, dropout=m.dropout,
                     upsample=m.upsample, dtype=jnp.dtype(m.dtype), axis_name=axis_name,
                     conv=m.get("conv", "auto"))


def learning_rate_schedule(config):
    """constant / cosine / poly (nnU-Net: lr (1 - t/T)^0.9), after a linear warm-up."""
    o = config.optim
    steps = max(config.num_steps - o.warmup_steps, 1)
    if o.schedule == "constant":
        main = optax.constant_schedule(o.learning_rate)
    elif o.schedule == "cosine":
        main = optax.cosine_decay_schedule(o.learning_rate, steps)
    elif o.schedule == "poly":
        main = optax.polynomial_schedule(o.learning_rate, 0.0, 0.9, steps)
    else:
        raise ValueError(f"optim.schedule must be constant, cosine or poly, got {o.schedule!r}")
    if o.warmup_steps <= 0:
        return main
    warm = optax.linear_schedule(0.0, o.learning_rate, o.warmup_steps)
    return optax.join_schedules([warm, main], [o.warmup_steps])


def create_optimizer(config) -> optax.GradientTransformation:
    """SGD with momentum (paper: 0.99), Adam or AdamW; gradient clipping; weight decay."""
    o = config.optim
    lr = learning_rate_schedule(config)
    if o.name == "sgd":
        tx = optax.sgd(lr, momentum=o.momentum or None, nesterov=o.nesterov)
    elif o.name == "adam":
        tx = optax.adam(lr)
    elif o.name == "adamw":
        tx = optax.adamw(lr, weight_decay=o.weight_decay)
    else:
        raise ValueError(f"optim.name must be sgd, adam or adamw, got {o.name!r}")
    parts = []
    if o.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(o.grad_clip))
    if o.weight_decay > 0 and o.name != "adamw":
        parts.append(optax.add_decayed_weights(o.weight_decay))
    return optax.chain(*parts, tx)


def tile_sizes(config) -> tuple[int, int]:
    """(input tile, output tile) for the configured training tile (the output size)."""
    m = config.model
    if m.padding == "same":
        size = config.data.tile_size
        unet.output_size(size, m.depth, "same")
        return size, size
    size_in = unet.input_size_for_output(config.data.tile_size, m.depth, "valid")
    return size_in, unet.output_size(size_in, m.depth, "valid")


def create_state(config, rng) -> TrainState:
    model = create_model(config)
    size_in, _ = tile_sizes(config)
    x = jnp.zeros((1, size_in, size_in, config.model.in_channels))
    variables = jax.jit(model.init)(rng, x)
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             tx=create_optimizer(config), batch_stats=variables.get("batch_stats"))


# ------------------------------------------------------------------ the step
@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the pure step needs from the config (hashable, static)."""

    loss: str = "weighted_ce"  # ce | weighted_ce | dice_ce
    augment: augment.AugmentConfig | None = None
    crop: int = 0  # pixels cropped from each side of labels / weights (valid mode context)


def step_config(config) -> StepConfig:
    size_in, size_out = tile_sizes(config)
    a = config.augment
    aug = augment.AugmentConfig(elastic_sigma=a.elastic_sigma, elastic_grid=a.elastic_grid,
                                flips=a.flips, rot90=a.rot90, brightness=a.brightness,
                                contrast=a.contrast, gamma=a.gamma) if a.enabled else None
    return StepConfig(loss=config.loss, augment=aug, crop=(size_in - size_out) // 2)


def compute_loss(logits, labels, weights, kind: str):
    """(loss, sum, count) for ``ce`` (unweighted), ``weighted_ce`` (eq. 1 with the weight map) or
    ``dice_ce``."""
    if kind == "ce":
        total, count = losses.weighted_cross_entropy_sum(logits, labels)
        return total / count, total, count
    total, count = losses.weighted_cross_entropy_sum(logits, labels, weights)
    loss = total / count
    if kind == "dice_ce":
        loss = loss + losses.soft_dice_loss(logits, labels)
    elif kind != "weighted_ce":
        raise ValueError(f"loss must be ce, weighted_ce or dice_ce, got {kind!r}")
    return loss, loss * count, count


def train_step(state: TrainState, batch: dict, rng, cfg: StepConfig = StepConfig(),
               axis_name: str | None = None):
    """One optimiser step. Pure; averages over devices only when ``axis_name`` is given.

    Args:
      state: the train state.
      batch: see the module docstring (this device's share).
      rng: the run's base key; the step folds in ``state.step``.
      cfg: static step options.
      axis_name: the pmap axis, or None.

    Returns:
      (new state, metrics) with metrics as {name: (sum, count)} pairs.
    """
    rng = jax.random.fold_in(rng, state.step)
    aug_rng, dropout_rng = jax.random.split(rng)
    if cfg.augment is not None:
        batch = augment.augment_batch(aug_rng, batch, cfg.augment)
    labels, weights = batch["labels"], batch["weights"]
    if cfg.crop:
        c = cfg.crop
        labels, weights = labels[:, c:-c, c:-c], weights[:, c:-c, c:-c]
    if axis_name is not None:
        dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))

    def loss_fn(params):
        variables = {"params": params}
        mutable = []
        if state.batch_stats is not None:
            variables["batch_stats"] = state.batch_stats
            mutable = ["batch_stats"]
        logits, new_vars = state.apply_fn(variables, batch["image"], train=True, mutable=mutable,
                                          rngs={"dropout": dropout_rng})
        loss, total, count = compute_loss(logits, labels, weights, cfg.loss)
        return loss, (logits, new_vars, total, count)

    (loss, (logits, new_vars, total, count)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    pred = jnp.argmax(logits, -1)
    fg_inter = jnp.sum((pred > 0) & (labels > 0))
    fg_sizes = jnp.sum(pred > 0) + jnp.sum(labels > 0)
    sums = {"loss": (total, count),
            "pixel_error": (jnp.sum(pred != labels).astype(jnp.float32), jnp.float32(labels.size)),
            "dice": (2.0 * fg_inter.astype(jnp.float32), fg_sizes.astype(jnp.float32))}
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        sums = jax.lax.psum(sums, axis_name)
    new_state = state.apply_gradients(grads=grads)
    if state.batch_stats is not None:
        stats = new_vars["batch_stats"]
        if axis_name is not None:
            stats = jax.lax.pmean(stats, axis_name)
        new_state = new_state.replace(batch_stats=stats)
    sums["grad_norm"] = (optax.global_norm(grads), jnp.float32(1.0))
    return new_state, sums


def reduce_metrics(sums: dict) -> dict:
    """{name: (sum, count)} -> {name: sum / count}."""
    return {k: float(s) / max(float(c), 1e-12) for k, (s, c) in sums.items()}


def predict_fn(state: TrainState):
    """A jitted ``tiles [N, S, S, C] -> softmax [N, s, s, K]`` for inference."""
    variables = {"params": state.params}
    if state.batch_stats is not None:
        variables["batch_stats"] = state.batch_stats

    @jax.jit
    def predict(x):
        return jax.nn.softmax(state.apply_fn(variables, x, train=False), -1)

    return predict


# ------------------------------------------------------------------ evaluation
def eval_tile_size(config) -> int:
    """The input tile size used for inference: the training tile or ``data.eval_tile_size``."""
    return max(tile_sizes(config)[0], config.data.eval_tile_size)


def predict_probs(config, predict, image, tta: bool = False, tile_size: int = 0):
    """[H, W, K] probabilities for one image [H, W, C] with overlap-tile inference.

    ``predict`` comes from :func:`predict_fn` (build it once per model, not per image).
    """
    m = config.model
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] != m.in_channels:
        raise ValueError(f"image has {image.shape[-1]} channels, the model expects {m.in_channels}")
    return inference.predict_image(predict, image, depth=m.depth, padding=m.padding,
                                   tile_size=tile_size or eval_tile_size(config),
                                   num_classes=m.num_classes, tta=tta, batch_tiles=config.eval_batch_tiles)


def evaluate(state: TrainState, config, source, tta: bool = False, max_images: int | None = None):
    """Whole-image predictions on a split (overlap-tile inference) and their metrics."""
    predict = predict_fn(state)
    results, preds = [], []
    for i in range(len(source) if max_images is None else min(len(source), max_images)):
        ex = source[i]
        probs = predict_probs(config, predict, ex["image"], tta)
        fg = probs[..., 1:].sum(-1)
        true = ex["labels"] > 0
        dice, iou = metrics.dice_iou((fg > 0.5).astype(int), true.astype(int), 2)
        rand, _ = metrics.rand_error(fg, true, metrics.COARSE_THRESHOLDS)  # a monitor: the quick sweep
        results.append({"dice": dice[1], "iou": iou[1], "pixel_error": metrics.pixel_error(fg > 0.5, true),
                        "rand_error": rand})
        preds.append((ex["image"], ex["labels"], fg))
    summary = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
    return summary, preds


# ------------------------------------------------------------------ the run
class WorkdirLock:
    """An exclusive lock on ``workdir/.lock`` (released by the OS if the process dies)."""

    def __init__(self, workdir: Path):
        self.path = workdir / ".lock"
        self.f = open(self.path, "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.close()
            raise RuntimeError(f"workdir {workdir} is in use by another run (lock {self.path}); "
                               f"wait for it to finish or choose another --workdir") from None
        self.f.seek(0)
        self.f.truncate()
        self.f.write(str(os.getpid()))
        self.f.flush()

    def release(self):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


class _Signals:
    """SIGTERM / SIGINT set a flag; the loop saves a checkpoint and exits cleanly."""

    def __init__(self):
        self.received = None
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum, frame):
        del frame
        self.received = signal.Signals(signum).name

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def check_compatible(saved: dict, current: dict, path) -> None:
    """Raises when a resumed run's config differs in anything but ``RESUMABLE_CHANGES``."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
        return out

    a, b = flat(saved), flat(current)
    diff = sorted(k for k in set(a) | set(b) if k.split(".")[0] not in RESUMABLE_CHANGES
                  and k not in RESUMABLE_CHANGES and a.get(k) != b.get(k))
    if diff:
        detail = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:4])
        raise ValueError(f"workdir checkpoint {path} was written with a different config ({detail}); "
                         f"use a new --workdir or the same config")


class NonFiniteLoss(RuntimeError):
    pass


def dataset_options(config, dataset: str) -> dict:
    """The builder options of ``dataset`` for a run's ``config``: the synthetic set's sizes, the
    input channels, the weight map (class_balance only when off, so that datasets prepared
    before the option existed keep their names)."""
    d = config.data
    options = {"w0": d.w0, "sigma": d.sigma}
    if not d.get("class_balance", True):
        options["class_balance"] = False
    if dataset == "synthetic_cells":
        options.update(size=d.synthetic_size, num_train=d.synthetic_train, num_test=d.synthetic_test)
    if dataset in ("nuclei_dsb", "image_folder"):
        options["channels"] = config.model.in_channels
    return options


def load_data(config):
    """(train source, validation source)."""
    d = config.data
    sources = builders.load(d.dataset, d.tfds_dir or os.path.expanduser("~/tensorflow_datasets"),
                            d.data_dir, splits=(d.train_split, d.eval_split), **dataset_options(config, d.dataset))
    return sources[d.train_split], sources[d.eval_split]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains a U-Net and evaluates it; resumes from ``workdir`` when it holds a checkpoint.

    Writes (process 0): metrics.jsonl, TensorBoard events, checkpoints/, config.json,
    PNG overlays and curves, summary.json. Returns the summary.
    """
    parallel.initialize_distributed(config.coordinator, config.num_processes, config.process_id)
    is_main = jax.process_index() == 0
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lock = WorkdirLock(workdir) if is_main else None
    signals = _Signals()
    try:
        return _run(config, workdir, is_main, signals)
    finally:
        signals.restore()
        if lock:
            lock.release()


def _run(config, workdir: Path, is_main: bool, signals: _Signals) -> dict:
    import tqdm

    from unet_jax import plots

    parallel.check_batch(config.batch_size)
    pcount, pindex = jax.process_count(), jax.process_index()
    train_src, eval_src = load_data(config)
    tile_in, tile_out = tile_sizes(config)
    tile = loader.TileConfig(out_size=tile_out, context=(tile_in - tile_out) // 2,
                             foreground_prob=config.data.foreground_prob, mirror=config.data.mirror)
    data_iter = iter(loader.make_train_loader(
        train_src, tile, config.batch_size // pcount, config.seed, pindex, pcount,
        num_threads=config.loader_threads, workers=config.loader_workers))

    base_rng = jax.random.key(config.seed, impl="rbg")
    state = create_state(config, jax.random.fold_in(base_rng, 1 << 20))
    ckpts = checkpoint.Checkpoints(workdir / "checkpoints", keep=config.keep_checkpoints,
                                   best_metric="val_dice", best_mode="max")
    config_dict = config.to_dict()
    start = 0
    latest = ckpts.latest_step()
    if latest is not None:
        meta = ckpts.read_meta(latest)
        check_compatible(meta["config"], config_dict, workdir / "checkpoints" / str(latest))
        state, meta = ckpts.restore(latest, state)
        data_iter.set_state(meta["loader"])
        base_rng = jax.random.wrap_key_data(np.asarray(meta["rng"], np.uint32), impl="rbg")
        start = int(meta["step"])
    if is_main:
        write_json(workdir / "config.json", config_dict)

    runner = parallel.Runner(functools.partial(train_step, cfg=step_config(config)), config.parallel)
    if runner.mode == "pmap":  # batch statistics averaged over the pmap axis
        state = state.replace(apply_fn=create_model(config, parallel.AXIS).apply)
    dstate = runner.put_state(state)
    batches = parallel.DevicePrefetch(data_iter, runner.put_device_batch, size=2)
    writer = MetricWriter(workdir, enabled=is_main)
    tb = _tensorboard(workdir) if is_main else None

    def save(step, host_state, extra_metrics=None):
        ckpts.save(step, host_state, {"step": step, "loader": batches.get_state(), "config": config_dict,
                                      "rng": np.asarray(jax.random.key_data(base_rng)).tolist()},
                   metrics=extra_metrics)

    schedule = learning_rate_schedule(config)
    pending = []  # device metrics not yet looked at: (step, sums)
    last_log = time.perf_counter()
    images_since = 0
    stop_reason = None
    history = []
    bar = tqdm.tqdm(total=config.num_steps, initial=start, disable=not (is_main and config.progress),
                    dynamic_ncols=True, desc="train")
    step = start
    t0 = time.perf_counter()
    last_eval = None
    budget_hit = False
    try:
        while step < config.num_steps:
            dstate, sums = runner(dstate, next(batches), base_rng, placed=True)
            step += 1
            images_since += config.batch_size
            pending.append((step, sums))
            bar.update(1)
            if config.debug_step_delay > 0:
                time.sleep(config.debug_step_delay)
            boundary = (step % config.log_every == 0 or step == config.num_steps
                        or step % config.checkpoint_every == 0 or signals.received
                        or step == config.stop_after)
            if not boundary:
                continue
            host = [(s, runner.metrics(m)) for s, m in pending]
            pending = []
            for s, m in host:
                if not np.isfinite(float(m["loss"][0])):
                    raise NonFiniteLoss(f"loss is {float(m['loss'][0])} at step {s}; stopped. The last "
                                        f"good checkpoint (step {ckpts.latest_step()}) is kept in "
                                        f"{workdir / 'checkpoints'}")
            totals = jax.tree.map(lambda *xs: sum(xs), *[m for _, m in host])
            values = reduce_metrics(totals)
            now = time.perf_counter()
            values["images_per_s"] = images_since / (now - last_log)
            values["learning_rate"] = float(schedule(step))
            last_log, images_since = now, 0
            writer.write(step, {f"train_{k}": v for k, v in values.items()})
            _tb_write(tb, step, values, "train")
            history.append({"step": step, **{f"train_{k}": v for k, v in values.items()}})
            bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{values['images_per_s']:.1f}")
            val = None
            if config.eval_every and step % config.eval_every == 0 and step != config.num_steps:
                val, _ = evaluate(runner.get_state(dstate), config, eval_src, max_images=config.eval_max_images)
                writer.write(step, {f"val_{k}": v for k, v in val.items()})
                _tb_write(tb, step, val, "val")
                history[-1].update({f"val_{k}": v for k, v in val.items()})
                last_eval = val
            if step % config.checkpoint_every == 0 or signals.received or step == config.stop_after:
                save(step, runner.get_state(dstate), {"val_dice": val["dice"]} if val else None)
            if signals.received:
                stop_reason = signals.received
                break
            if step == config.stop_after:
                stop_reason = "stop_after"
                break
            if config.time_budget_s > 0 and time.perf_counter() - t0 > config.time_budget_s:
                budget_hit = True  # train no longer; evaluate and save as at the last step
                break
    finally:
        bar.close()
    train_time = time.perf_counter() - t0
    final = runner.get_state(dstate)
    summary = {"step": step, "train_time_s": round(train_time, 2), "stopped_by": stop_reason,
               "resumed_from": start, "process_count": pcount, "devices": jax.device_count(),
               "parallel": runner.mode, "time_budget_hit": budget_hit}
    if stop_reason:
        if is_main:
            print(f"stopped by {stop_reason} at step {step}; checkpoint saved in {workdir / 'checkpoints'}")
        return summary
    val, preds = evaluate(final, config, eval_src, tta=config.eval_tta)
    save(step, final, {"val_dice": val["dice"]})
    ckpts.close()
    summary.update({f"val_{k}": v for k, v in val.items()})
    if last_eval is not None:
        summary["previous_val_dice"] = last_eval["dice"]
    if is_main:
        writer.write(step, {f"val_{k}": v for k, v in val.items()}, final=True)
        _tb_write(tb, step, val, "val")
        if tb:
            tb.close()
        plots.prediction_overlays(preds[:4], workdir / "val_predictions.png")
        plots.training_curves(history, workdir / "curves.png")
        write_json(workdir / "summary.json", summary)
        print(json.dumps({"summary": summary}))
    return summary


def _tensorboard(workdir: Path):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # optional: JSONL is always written
        return None
    return SummaryWriter(str(workdir / "tensorboard"))


def _tb_write(tb, step, values: dict, prefix: str) -> None:
    if tb is None:
        return
    for k, v in values.items():
        tb.add_scalar(f"{prefix}/{k}", v, step)
    tb.flush()
