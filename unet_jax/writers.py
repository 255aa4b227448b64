"""Where runs write what they measure: JSONL metrics (one JSON object per line) in the workdir."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def _plain(value):
    if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    return value


class MetricWriter:
    """Appends ``{"step": s, **metrics}`` lines to ``workdir/metrics.jsonl``.

    Only the process that is told it is the writer (process 0 in multi-host runs) writes.
    """

    def __init__(self, workdir: str | os.PathLike, filename: str = "metrics.jsonl", enabled: bool = True):
        self.path = Path(workdir) / filename
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, metrics: dict, **tags) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **tags, **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Reads a JSONL file written by :class:`MetricWriter`."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(path: str | os.PathLike, obj) -> None:
    """Writes JSON atomically (temporary file + rename): no half-written file is left behind."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_plain)
    os.replace(tmp, path)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """A deterministic permutation of range(n), different for every (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, batch_size: int, seed: int | None = None, epoch: int = 0,
                  drop_remainder: bool = True):
    """Index arrays of batches over ``n`` examples: shuffled by (seed, epoch) when seed is given."""
    order = np.arange(n) if seed is None else epoch_permutation(n, seed, epoch)
    stop = n - n % batch_size if drop_remainder else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]
