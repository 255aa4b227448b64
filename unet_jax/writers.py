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
    """Appends ``{"step": s, **tags, **metrics}`` lines to ``workdir/metrics.jsonl`` and, with
    ``tensorboard``, the same scalars to TensorBoard event files in ``workdir/tensorboard``
    (``train_loss`` as the tag ``train/loss``).

    Only the process that is told it is the writer (process 0 in multi-host runs) writes.
    """

    def __init__(self, workdir: str | os.PathLike, filename: str = "metrics.jsonl", enabled: bool = True,
                 tensorboard: bool = False):
        self.path = Path(workdir) / filename
        self.enabled = enabled
        self.tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from tensorboardX import SummaryWriter
                except ImportError:  # optional: the JSONL is always written
                    SummaryWriter = None
                if SummaryWriter is not None:
                    self.tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, metrics: dict, **tags) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **tags, **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k.replace("_", "/", 1), _plain(v), step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


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
