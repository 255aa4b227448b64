"""Orbax checkpoints in the workdir: the train state (params, optimiser state, step, rng, ...)
as a PyTree and a JSON side item (loader state, config). No pickle anywhere.

Orbax writes each step to a temporary directory and renames it when complete, so a
checkpoint half-written by a crash is never listed (``cleanup_tmp_directories`` removes it).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp


class Checkpoints:
    """Keeps the latest ``keep`` checkpoints and, given ``best_metric``, also the best one.

    Args:
      directory: where the step folders go (created).
      keep: how many of the most recent checkpoints to keep.
      best_metric: a key of the metrics passed to :meth:`save`; the checkpoint with its best
        value is kept as well, and is :meth:`best_step`. A checkpoint saved without it ranks
        below every one saved with it.
      best_mode: ``max`` or ``min``.
      async_save: write in a background thread after copying the arrays to the host (default:
        on GPU/TPU, where training then goes on during the write; on CPU the copy is the write).
        :meth:`close` waits for a write in flight, so a run stopped by SIGTERM keeps it.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, best_metric: str | None = None,
                 best_mode: str = "max", async_save: bool | None = None):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        policies = [pp.LatestN(n=keep)]
        best_fn = None
        if best_metric:
            unranked = -math.inf if best_mode == "max" else math.inf
            best_fn = lambda m: m.get(best_metric, unranked)  # noqa: E731
            policies.append(pp.BestN(get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
                                     keep_checkpoints_without_metrics=False))
        self.best_metric = best_metric
        self.async_save = jax.default_backend() != "cpu" if async_save is None else bool(async_save)
        self.directory = Path(os.path.abspath(directory))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                create=True, cleanup_tmp_directories=True, enable_async_checkpointing=self.async_save,
                best_fn=best_fn, best_mode=best_mode,  # orbax records metrics only with a best_fn
                preservation_policy=pp.AnyPreservationPolicy(policies)),
            item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The step with the best ``best_metric`` (among equals the latest); None without one."""
        return self.manager.best_step() if self.best_metric else None

    def metrics(self, step: int) -> dict | None:
        """The metrics saved with ``step``."""
        return self.manager.metrics(step)

    def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None) -> None:
        """Saves ``state`` (a PyTree of arrays) and ``meta`` (JSON-able) at ``step``, with
        ``metrics`` for the best-checkpoint policy; a step already saved is left as it is."""
        if self.manager.latest_step() == step:
            return
        if self.best_metric:
            metrics = metrics or {}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)),
                          metrics=metrics, force=True)
        if not self.async_save:
            self.manager.wait_until_finished()

    def restore(self, step: int, target: Any) -> tuple[Any, dict]:
        """Restores ``(state, meta)``; ``target`` gives the tree structure, shapes and shardings."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                meta=ocp.args.JsonRestore()))
        return out["state"], out["meta"]

    def restore_raw(self, step: int) -> tuple[dict, dict]:
        """``(state, meta)`` of ``step`` in one read, the state as a tree of dicts and arrays
        without a target (for inference: no optimiser needs to be built to read the parameters)."""
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                                meta=ocp.args.JsonRestore()))
        return out["state"], out["meta"]

    def read_meta(self, step: int) -> dict:
        """Only the JSON side item of ``step``."""
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
