"""The training loader, on grain: deterministic shuffling by seed with a new order every epoch,
each global batch shared out between the processes of a multi-host run, random tiles with foreground oversampling and
mirrored context (the overlap-tile strategy), background prefetch, and an iterator state
(a small JSON dict) that a checkpoint saves so a resumed run continues with exactly the
next batch.
"""
from __future__ import annotations

import dataclasses

import grain
import numpy as np

MIRROR_MODES = ("reflect", "symmetric")


@dataclasses.dataclass(frozen=True)
class TileConfig:
    out_size: int  # label tile size (the network's output)
    context: int = 0  # mirrored context on each side (valid U-Net: (in - out) / 2)
    foreground_prob: float = 0.33  # chance a tile is centred on a random foreground pixel
    mirror: str = "reflect"  # numpy pad mode for the context: reflect (no edge repeat) or symmetric

    @property
    def in_size(self) -> int:
        return self.out_size + 2 * self.context


def mirror_pad(a: np.ndarray, c: int, mode: str) -> np.ndarray:
    """Pads the two leading (spatial) axes by ``c`` with numpy's ``reflect`` (mirror without
    repeating the edge pixel) or ``symmetric`` (with it); wider than the image mirrors again."""
    if mode not in MIRROR_MODES:
        raise ValueError(f"mirror must be one of {MIRROR_MODES}, got {mode!r}")
    return np.pad(a, [(c, c), (c, c)] + [(0, 0)] * (a.ndim - 2), mode=mode)


def random_tile(example: dict, rng: np.random.Generator, cfg: TileConfig) -> dict:
    """A random ``in_size`` tile of image, labels and weights (labels and weights with the same
    mirrored context; the train step crops them to ``out_size`` after augmentation). An image
    smaller than the tile is first mirrored out to its size, the added pixels weighted 0 so
    that only the real ones count in the loss."""
    image, labels, weights = example["image"], example["labels"], example["weights"]
    h, w = labels.shape
    t = cfg.out_size
    if h < t or w < t:
        pads = [((t - n) // 2, t - n - (t - n) // 2) if n < t else (0, 0) for n in (h, w)]
        mode = "symmetric" if cfg.mirror == "symmetric" else "reflect"
        image = np.pad(image, pads + [(0, 0)] * (image.ndim - 2), mode=mode)
        labels = np.pad(labels, pads, mode=mode)
        weights = np.pad(weights, pads)  # zeros
        h, w = labels.shape
    if cfg.foreground_prob > 0 and rng.random() < cfg.foreground_prob and labels.any():
        ys, xs = np.nonzero(labels)
        k = rng.integers(len(ys))
        oy = int(np.clip(ys[k] - t // 2, 0, h - t))
        ox = int(np.clip(xs[k] - t // 2, 0, w - t))
    else:
        oy, ox = int(rng.integers(h - t + 1)), int(rng.integers(w - t + 1))
    c = cfg.context
    win = (slice(oy, oy + t + 2 * c), slice(ox, ox + t + 2 * c))
    if c:
        image, labels, weights = (mirror_pad(a, c, cfg.mirror)[win] for a in (image, labels, weights))
    else:
        image, labels, weights = image[win], labels[win], weights[win]
    return {"image": np.ascontiguousarray(image, np.float32),
            "labels": np.ascontiguousarray(labels, np.int32),
            "weights": np.ascontiguousarray(weights, np.float32)}


def make_train_loader(source, tile: TileConfig, batch_size: int, seed: int, process_index: int = 0,
                      process_count: int = 1, num_threads: int = 2, prefetch: int = 4,
                      workers: int = 0):
    """An endless grain ``IterDataset`` of this process's share of each global batch.

    Every process walks the same shuffled stream of tiles (each tile's randomness keyed by its
    place in that stream); global batch ``g`` is tiles ``g * B ... g * B + B - 1`` of it (``B =
    batch_size * process_count``), and process ``p`` takes its ``p``-th block of ``batch_size``.
    So the global batches, and the run, do not depend on how many processes share them: a job
    requeued on another number of nodes continues the same run.

    Each batch: image [b, S, S, C], labels [b, S, S], weights [b, S, S] (S = tile.in_size) and
    index [b], the examples' positions in the global batch (process_index * b + i), which the
    train step uses to key per-example augmentation.

    Args:
      source: a random-access data source (``len`` and ``[i]``), e.g. a TFDS data source.
      tile: tile sizes and sampling.
      batch_size: examples per process per step (the global batch / process_count).
      seed: shuffling and tile sampling; each epoch gets a new order.
      process_index, process_count: this process's shard.
      num_threads, prefetch: grain read threads and prefetch buffer.
      workers: > 0 moves loading into that many worker processes.
    """
    if len(source) == 0:
        raise ValueError("the training split is empty")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    offset = process_index * batch_size
    ds = (grain.MapDataset.source(source).shuffle(seed=seed).repeat()
          .random_map(lambda ex, rng: random_tile(ex, rng, tile), seed=seed + 1)
          .batch(batch_size, drop_remainder=True)[process_index::process_count]
          .map(lambda b: {**b, "index": np.arange(offset, offset + batch_size, dtype=np.int32)}))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
    if workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return it
