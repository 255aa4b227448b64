"""U-Net training: the train state, one pure train step, and train_and_evaluate(config, workdir).

Batches: image [B, S, S, C] float32, labels [B, S, S] int32 and weights [B, S, S] float32 at the
input tile size S (labels and weights carry the same mirrored context as the image; the step
crops them to the network's output after augmentation), and index [B], each example's
position in the global batch (keys its augmentation).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from flax.training import train_state

from unet_jax import checkpoint, evaluation, inference, losses, parallel, plots, safety, unet
from unet_jax.data import augment, builders, loader
from unet_jax.writers import MetricWriter, write_json


class TrainState(train_state.TrainState):
    batch_stats: Any = None


# ------------------------------------------------------------------ model, optimiser, state
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
    """(input tile, output tile) of the run's training tile (``config.data.tile_size`` output
    pixels)."""
    return unet.tile_sizes(config.data.tile_size, config.model.depth, config.model.padding)


def create_state(config, rng) -> TrainState:
    """The initial train state: parameters (He-normal, :func:`unet.from_config`), batch
    statistics and optimiser state."""
    model = unet.from_config(config.model)
    size_in, _ = tile_sizes(config)
    x = jnp.zeros((1, size_in, size_in, config.model.in_channels))
    variables = jax.jit(model.init)(rng, x)
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             tx=create_optimizer(config), batch_stats=variables.get("batch_stats"))


def init_from(state: TrainState, config) -> TrainState:
    """``state`` with the parameters and batch statistics of the trained model
    ``config.init_from`` (a shipped name, a workdir, a model folder:
    :func:`unet_jax.pretrained.resolve`) and a fresh optimiser state: fine-tuning starts from
    what that model learned, not from random weights.

    Raises:
      ValueError: one line naming the model: no JAX variables (an ONNX package), or variables
        that do not fit ``config.model`` (:func:`unet_jax.evaluation.trained_from`), with both
        models' settings.
    """
    from unet_jax import pretrained  # reads shipped models: only runs that fine-tune need it

    spec = config.init_from
    run = pretrained.resolve(spec)
    if not isinstance(run.variables, dict) or "params" not in run.variables:
        raise ValueError(f"init_from {spec!r}: holds no JAX parameters to start from (an ONNX package?)")
    try:
        variables = evaluation.trained_from(config, run.variables, run.step, spec, "config.model").variables
    except ValueError:
        raise ValueError(f"init_from {spec!r}: its model ({_model_summary(run.config.model)}) does not fit "
                         f"config.model ({_model_summary(config.model)})") from None
    params = jax.tree.map(jnp.asarray, variables["params"])
    state = state.replace(params=params, opt_state=state.tx.init(params))
    if state.batch_stats:
        state = state.replace(batch_stats=jax.tree.map(jnp.asarray, variables["batch_stats"]))
    return state


def _model_summary(model) -> str:
    keys = ("in_channels", "num_classes", "features", "depth", "norm", "upsample")
    return ", ".join(f"{k}={model.get(k)!r}" for k in keys)


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
                                contrast=a.contrast, gamma=a.gamma, scale=a.get("scale", 0.0),
                                stain=a.get("stain", 0.0), stain_shift=a.get("stain_shift", 0.0)) \
        if a.enabled else None
    if aug is not None and (aug.stain > 0 or aug.stain_shift > 0) and config.model.in_channels != 3:
        raise ValueError(f"augment.stain needs RGB images (model.in_channels 3), got "
                         f"{config.model.in_channels} channels")
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
      (new state, metrics) with metrics as {name: (sum, count)} pairs. A step whose loss or
      gradients are not finite changes nothing but ``state.step``; it reports ``nonfinite``
      (1, 1) and leaves the other metrics out (count 0).
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
    stats = new_vars.get("batch_stats")
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        sums = jax.lax.psum(sums, axis_name)
        stats = jax.lax.pmean(stats, axis_name) if stats is not None else None
    grad_norm = optax.tree.norm(grads)
    # a non-finite loss or gradient (on any device: both are reduced over devices by now) leaves
    # parameters, optimiser state and batch statistics as they were, as optax.apply_if_finite does
    finite = jnp.isfinite(sums["loss"][0]) & jnp.isfinite(grad_norm)
    updated = state.apply_gradients(grads=grads)
    if stats is not None:
        updated = updated.replace(batch_stats=stats)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    new_state = updated.replace(params=keep(updated.params, state.params),
                                opt_state=keep(updated.opt_state, state.opt_state),
                                batch_stats=keep(updated.batch_stats, state.batch_stats))
    # the skipped step's own metrics are left out of the means
    sums = jax.tree.map(lambda v: jnp.where(finite, v, 0.0), sums)
    sums["grad_norm"] = (jnp.where(finite, grad_norm, 0.0), finite.astype(jnp.float32))
    sums["nonfinite"] = (1.0 - finite.astype(jnp.float32), jnp.float32(1.0))
    return new_state, sums


METRICS = ("loss", "pixel_error", "dice", "grad_norm", "nonfinite")  # what train_step reports


def packed_train_step(state, batch, rng, cfg: StepConfig = StepConfig(), axis_name: str | None = None):
    """:func:`train_step` with its metrics as one float32 vector [sum, count] x :data:`METRICS`:
    the loop then copies one array per step to the host, not ten (:func:`unpack_metrics`)."""
    state, sums = train_step(state, batch, rng, cfg, axis_name)
    return state, jnp.stack([jnp.asarray(v, jnp.float32) for k in METRICS for v in sums[k]])


def unpack_metrics(vector) -> dict:
    """The inverse of :func:`packed_train_step`'s packing: {name: (sum, count)}."""
    return {k: (vector[2 * i], vector[2 * i + 1]) for i, k in enumerate(METRICS)}


def reduce_metrics(sums: dict) -> dict:
    """{name: (sum, count)} -> {name: sum / count} (NaN for a count of 0)."""
    return {k: float(s) / float(c) if float(c) > 0 else float("nan") for k, (s, c) in sums.items()}


# ------------------------------------------------------------------ the run
_LOST_PEER_WORDS = ("Gloo", "NCCL", "peer", "heartbeat", "oordination")


@safety.removes_unfinished
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains a U-Net and evaluates it; resumes from ``workdir`` when it holds a checkpoint.

    Writes (process 0): metrics.jsonl, TensorBoard events, checkpoints/, config.json,
    PNG overlays and curves, summary.json. Returns the summary. A run that fails before its
    first checkpoint leaves nothing behind (:func:`unet_jax.safety.remove_unfinished`).
    """
    heartbeat_s = config.get("heartbeat_timeout_s", 100)
    parallel.initialize_distributed(config.coordinator, config.num_processes, config.process_id,
                                    heartbeat_timeout_s=heartbeat_s)
    is_main, processes = jax.process_index() == 0, jax.process_count()
    watch = parallel.PeerWatch(heartbeat_s) if processes > 1 else None
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lock = safety.WorkdirLock(workdir) if is_main else None
    signals = safety.StopSignals()
    try:
        return _train(config, workdir, is_main, signals)
    except (RuntimeError, ValueError) as e:
        if processes == 1:
            raise
        message = f"process {jax.process_index()} of {processes}: {str(e).splitlines()[0]}"
        if any(w in str(e) for w in _LOST_PEER_WORDS):
            message += " (another process stopped: restart them all on the same --workdir to resume)"
        raise type(e)(message) from e
    finally:
        signals.restore()
        if lock:
            lock.release()
        if watch:
            watch.finish()


def _train(config, workdir: Path, is_main: bool, signals: safety.StopSignals) -> dict:
    safety.check_counts(config)
    parallel.check_batch(config.batch_size)
    train_src, eval_src = builders.load_train_eval(config)
    t_start = time.perf_counter()  # compile_s: from here to the end of the first step
    data_iter = _train_batches(config, train_src)
    base_rng = jax.random.key(config.seed, impl="rbg")
    state = create_state(config, jax.random.fold_in(base_rng, 1 << 20))
    if config.get("init_from"):
        state = init_from(state, config)
    ckpts = checkpoint.Checkpoints(workdir / "checkpoints", keep=config.keep_checkpoints,
                                   best_metric="val_dice", best_mode="max",
                                   async_save=_async_save(config))
    config_dict = config.to_dict()
    state, base_rng, start = _resume(ckpts, state, data_iter, base_rng, config_dict)
    if is_main:
        write_json(workdir / "config.json", config_dict)

    predict = inference.make_predict(state.apply_fn)
    runner = parallel.Runner(functools.partial(packed_train_step, cfg=step_config(config)), config.parallel)
    if runner.mode == "pmap":  # batch statistics averaged over the pmap axis
        state = state.replace(apply_fn=unet.from_config(config.model, parallel.AXIS).apply)
    dstate = runner.put_state(state)
    batches = parallel.DevicePrefetch(data_iter, runner.put_device_batch, size=2)
    writer = MetricWriter(workdir, enabled=is_main, tensorboard=True)
    log = _TrainLog(writer, runner, learning_rate_schedule(config), config.batch_size, ckpts,
                    safety.NonFiniteStreak(config.max_nonfinite_steps))

    def validate(host_state, **kwargs):
        variables = inference.model_variables(host_state)
        return evaluation.evaluate(config, functools.partial(predict, variables), eval_src, quick=True,
                                   **kwargs)

    def save(step, host_state, val=None):
        meta = {"step": step, "loader": batches.get_state(), "config": config_dict,
                "rng": np.asarray(jax.random.key_data(base_rng)).tolist()}
        ckpts.save(step, host_state, meta, metrics={"val_dice": val["dice"]} if val else None)

    step, stop, budget_hit, last_val, compile_s = start, None, False, None, None
    # read once: a ConfigDict look-up costs microseconds, and the loop must keep up with the step
    num_steps, log_every, checkpoint_every, eval_every = (config.num_steps, config.log_every,
                                                          config.checkpoint_every, config.eval_every)
    t0 = time.perf_counter()
    try:  # a checkpoint write in flight completes before an error ends the run
        with tqdm.tqdm(total=config.num_steps, initial=start, disable=not (is_main and config.progress),
                       dynamic_ncols=True, desc="train") as bar:
            for step in range(start + 1, num_steps + 1):
                dstate, sums = runner(dstate, next(batches), base_rng, placed=True)
                log.add(step, sums)
                if compile_s is None:  # the budget, train_time_s and images/s start from here
                    jax.block_until_ready(sums)
                    t0 = time.perf_counter()
                    compile_s = round(t0 - t_start, 2)
                    log.restart_clock(t0)
                    if is_main and config.progress:
                        bar.write(f"step {step} done {compile_s:.1f} s after start (compilation, "
                                  f"{_cache_note()})")
                bar.update(1)
                last = step == num_steps  # validated and saved after the loop
                stop = _stop_reason(signals, step, config)
                save_now = (step % checkpoint_every == 0 and not last) or stop
                eval_now = bool(eval_every) and step % eval_every == 0 and not last
                if not (step % log_every == 0 or last or save_now or eval_now):
                    continue
                bar.set_postfix(log.flush(step))  # raises NonFiniteLoss after too many skipped steps
                val = None
                if eval_now:
                    val, _ = validate(runner.get_state(dstate), max_images=config.eval_max_images)
                    log.validation(step, val, is_main, echo=bar.write)
                    last_val = val
                if save_now:
                    save(step, runner.get_state(dstate), val)
                if stop:
                    break
                if config.time_budget_s > 0 and time.perf_counter() - t0 > config.time_budget_s:
                    budget_hit = True  # train no longer; evaluate and save as at the last step
                    break
    except BaseException:
        ckpts.close()
        raise
    finally:
        batches.close()
    final = runner.get_state(dstate)
    summary = {"step": step, "compile_s": compile_s, "train_time_s": round(time.perf_counter() - t0, 2),
               "stopped_by": stop,
               "resumed_from": start, "process_count": jax.process_count(),
               "devices": jax.device_count(), "parallel": runner.mode, "time_budget_hit": budget_hit}
    if stop:
        ckpts.close()
        writer.close()
        if is_main:
            print(f"stopped by {stop} at step {step}; checkpoint saved in {workdir / 'checkpoints'}")
        return summary
    try:
        val, samples = validate(final, tta=config.eval_tta)
    except BaseException:
        save(step, final)  # a failing evaluation loses no training
        raise
    save(step, final, val)
    ckpts.close()
    summary.update({f"val_{k}": v for k, v in val.items()})
    if last_val is not None:
        summary["previous_val_dice"] = last_val["dice"]
    if is_main:
        log.validation(step, val, is_main, final=True)
        writer.close()
        plots.prediction_overlays(samples, workdir / "val_predictions.png")
        plots.training_curves(log.history, workdir / "curves.png")
        write_json(workdir / "summary.json", summary)
        print(json.dumps({"summary": summary}))
    return summary


def _cache_note() -> str:
    path = jax.config.jax_compilation_cache_dir
    return f"compilation cache {path}" if path else "no compilation cache"


def _stop_reason(signals, step: int, config) -> str | None:
    """Why the run stops after ``step``, or None. Several processes must stop at the same step:
    there a signal counts once every process has checked for one, at the log steps."""
    if step == config.stop_after:
        return "stop_after"
    if jax.process_count() == 1:
        return signals.received
    if step % config.log_every == 0 and parallel.any_process(signals.received is not None):
        return signals.received or "SIGTERM (another process)"
    return None


def _train_batches(config, source):
    """This process's share of each global batch of training tiles, as a resumable iterator."""
    tile_in, tile_out = tile_sizes(config)
    tile = loader.TileConfig(out_size=tile_out, context=(tile_in - tile_out) // 2,
                             foreground_prob=config.data.foreground_prob, mirror=config.data.mirror)
    pcount = jax.process_count()
    epoch = None
    named = tuple(config.data.get("oversample_names", ()))
    if named:  # each named image config.data.oversample times per epoch
        times = config.data.get("oversample", 1)
        names = [source[i]["name"] for i in range(len(source))]
        epoch = loader.repeated_indices([n.decode() if isinstance(n, bytes) else str(n) for n in names],
                                        {n: times for n in named})
    return iter(loader.make_train_loader(source, tile, config.batch_size // pcount, config.seed,
                                         jax.process_index(), pcount, num_threads=config.loader_threads,
                                         workers=config.loader_workers, epoch=epoch))


def _async_save(config) -> bool | None:
    value = config.get("async_checkpoints", "auto")
    choices = {"auto": None, "on": True, "off": False}
    if value not in choices:
        raise ValueError(f"async_checkpoints must be one of {tuple(choices)}, got {value!r}")
    return choices[value]


def _resume(ckpts, state, data_iter, base_rng, config_dict):
    """(state, rng, step) of the latest checkpoint (the loader moved to its position), or the
    initial ones when there is none; a checkpoint of another config is refused."""
    latest = ckpts.latest_step()
    if latest is None:
        return state, base_rng, 0
    where = ckpts.directory / str(latest)

    def damaged(e: Exception) -> ValueError:  # any read failure: a damaged checkpoint
        return ValueError(f"workdir checkpoint {where} cannot be read ({type(e).__name__}); move that "
                          f"folder away to resume from the step before")

    try:
        saved = ckpts.read_meta(latest)["config"]
    except Exception as e:  # noqa: BLE001
        raise damaged(e) from None
    safety.check_compatible(saved, config_dict, where)
    safety.check_schedule_kept(saved, config_dict, where)
    try:
        state, meta = ckpts.restore(latest, state)
    except Exception as e:  # noqa: BLE001
        raise damaged(e) from None
    data_iter.set_state(meta["loader"])
    return (state, jax.random.wrap_key_data(np.asarray(meta["rng"], np.uint32), impl="rbg"),
            int(meta["step"]))


class _TrainLog:
    """Collects the step metrics on the device and looks at them only when flushed, so no step
    waits for the host; writes train and validation lines and keeps their history for the
    curves."""

    def __init__(self, writer: MetricWriter, runner, schedule, batch_size: int, ckpts,
                 nonfinite: safety.NonFiniteStreak):
        self.writer, self.runner, self.schedule, self.ckpts = writer, runner, schedule, ckpts
        self.nonfinite = nonfinite
        self.batch_size = batch_size
        self.pending = []  # (step, device metrics) not yet looked at
        self.history = []
        self.since = time.perf_counter()
        self.untimed = 0  # pending steps that ran before ``since`` (the compiling first step)

    def add(self, step: int, sums) -> None:
        self.pending.append((step, sums))

    def restart_clock(self, now: float) -> None:
        """Images/s count from ``now``: the steps so far (the first, which compiled) are left out."""
        self.since, self.untimed = now, len(self.pending)

    def flush(self, step: int) -> dict:
        """Writes the train metrics of the steps since the last flush; returns the progress
        bar's postfix."""
        host = [(s, unpack_metrics(self.runner.metrics(m))) for s, m in jax.device_get(self.pending)]
        for s, m in host:
            self.nonfinite.update(s, float(m["nonfinite"][0]) > 0, self.ckpts)
        values = reduce_metrics(jax.tree.map(lambda *xs: sum(xs), *[m for _, m in host]))
        now = time.perf_counter()
        timed = len(host) - self.untimed
        if timed:  # a window of the compiling first step alone has no rate
            values["images_per_s"] = timed * self.batch_size / (now - self.since)
        values["learning_rate"] = float(self.schedule(step))
        self.pending, self.since, self.untimed = [], now, 0
        line = {f"train_{k}": v for k, v in values.items()}
        self.writer.write(step, line)
        self.history.append({"step": step, **line})
        postfix = {"loss": f"{values['loss']:.4f}"}
        if timed:
            postfix["img_s"] = f"{values['images_per_s']:.1f}"
        return postfix

    def validation(self, step: int, val: dict, is_main: bool, final: bool = False, echo=print) -> None:
        """Writes a validation's metrics and ``echo``-es one line about it (process 0)."""
        line = {f"val_{k}": v for k, v in val.items()}
        self.writer.write(step, line, **({"final": True} if final else {}))
        if self.history and self.history[-1]["step"] == step:
            self.history[-1].update(line)
        if is_main:
            per_class = sorted(k for k in val if k.startswith("dice_") and k != "dice_0")
            classes = f" ({', '.join(f'class {k[5:]} {val[k]:.4f}' for k in per_class)})" \
                if len(per_class) > 1 else ""
            echo(f"step {step}: {'final ' if final else ''}validation on {val['images']} images: "
                 f"dice {val['dice']:.4f}{classes}, pixel error {val['pixel_error']:.4f}, "
                 f"rand error {val['rand_error']:.4f}")
