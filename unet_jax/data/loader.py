"""The training loader, on grain: deterministic shuffling by seed with a new order every epoch,
each global batch shared out between the processes of a multi-host run, random tiles with foreground oversampling and
mirrored context (the overlap-tile strategy), background prefetch, and an iterator state
(a small JSON dict) that a checkpoint saves so a resumed run continues with exactly the
next batch.
"""
from __future__ import annotations

import dataclasses
import functools
import threading

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
    image, labels, weights = (_mirrored_window(a, oy, ox, t + 2 * c, c, cfg.mirror)
                              for a in (image, labels, weights))
    return {"image": np.ascontiguousarray(image, np.float32),
            "labels": np.ascontiguousarray(labels, np.int32),
            "weights": np.ascontiguousarray(weights, np.float32)}


def _mirrored_window(a: np.ndarray, oy: int, ox: int, size: int, c: int, mode: str) -> np.ndarray:
    """``mirror_pad(a, c, mode)[oy:oy + size, ox:ox + size]``, mirroring only the sides the
    window crosses, from the rows and columns it covers. The values are the same: a mirror of
    p pixels reads the p pixels next to the edge, and the part cut out either spans the whole
    axis or is longer than p. It costs a fraction of padding the whole image."""
    if mode not in MIRROR_MODES:
        raise ValueError(f"mirror must be one of {MIRROR_MODES}, got {mode!r}")
    pads, cut = [], []
    for axis, o in enumerate((oy, ox)):
        lo, hi, n = o - c, o - c + size, a.shape[axis]
        start, stop = max(lo, 0), min(hi, n)
        pads.append((start - lo, hi - stop))
        cut.append(slice(start, stop))
    part = a[tuple(cut)]
    if any(p for pair in pads for p in pair):
        part = np.pad(part, pads + [(0, 0)] * (a.ndim - 2), mode=mode)
    return part


class MemoryCache:
    """A random-access source that keeps the examples it has read, in memory, with only the
    fields training reads, while they fit in ``max_bytes``.

    Reading a stored example decompresses all of its fields (8 ms for a 512x512 one, several
    train steps of a GPU); each is read once an epoch, so from the second epoch on the loader
    only cuts tiles. Safe to share between grain's read threads.
    """

    def __init__(self, source, keys=("image", "labels", "weights"), max_bytes: int = 2 ** 30):
        self.source, self.keys, self.max_bytes = source, tuple(keys), max_bytes
        self.examples, self.bytes = {}, 0
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples.get(i)
        if ex is None:
            full = self.source[i]
            ex = {k: full[k] for k in self.keys}
            size = sum(v.nbytes for v in ex.values())
            with self.lock:
                if i not in self.examples and self.bytes + size <= self.max_bytes:
                    self.examples[i] = ex
                    self.bytes += size
        return ex


def repeated_indices(names, oversample: dict) -> np.ndarray:
    """The examples of one epoch: each index ``i`` once, or ``oversample[names[i]]`` times, so
    that rare kinds of image (a few brightfield images among many fluorescence ones) are drawn
    as often as needed. A name in ``oversample`` that no example has is an error."""
    names = list(names)
    missing = sorted(set(oversample) - set(names))
    if missing:
        raise ValueError(f"data.oversample_names: no training image named {missing[0]!r} "
                         f"({len(missing)} of {len(oversample)} names not found)")
    for name, times in oversample.items():
        if int(times) != times or times < 1:
            raise ValueError(f"data.oversample: expected a whole number >= 1 for {name!r}, got {times!r}")
    return np.repeat(np.arange(len(names)), [int(oversample.get(n, 1)) for n in names])


@functools.lru_cache(maxsize=16)
def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of ``n`` examples in ``epoch``: a permutation keyed by (seed, epoch). (grain's
    ``shuffle`` computes each index with a cipher whose cost grows as the dataset shrinks: 1.3 ms
    an example for the 20 ISBI slices, more than a GPU's train step.)"""
    return np.random.default_rng([seed, epoch]).permutation(n)


def make_train_loader(source, tile: TileConfig, batch_size: int, seed: int, process_index: int = 0,
                      process_count: int = 1, num_threads: int = 2, prefetch: int = 4,
                      workers: int = 0, cache_bytes: int = 2 ** 30, epoch: np.ndarray | None = None):
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
      cache_bytes: examples kept in memory after their first read (:class:`MemoryCache`), per
        process; 0 reads every example from ``source`` each time.
      epoch: the example indices of one epoch (:func:`repeated_indices`), shuffled anew each
        epoch; by default each example once.
    """
    if len(source) == 0:
        raise ValueError("the training split is empty")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    offset = process_index * batch_size
    epoch = np.arange(len(source)) if epoch is None else np.asarray(epoch)
    n = len(epoch)
    if cache_bytes > 0:
        source = MemoryCache(source, max_bytes=cache_bytes)
    ds = (grain.MapDataset.range(n).repeat()
          .map_with_index(lambda i, _: source[int(epoch[epoch_permutation(n, seed, i // n)[i % n]])])
          .random_map(lambda ex, rng: random_tile(ex, rng, tile), seed=seed + 1)
          .batch(batch_size, drop_remainder=True)[process_index::process_count]
          .map(lambda b: {**b, "index": np.arange(offset, offset + batch_size, dtype=np.int32)}))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
    if workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return it
