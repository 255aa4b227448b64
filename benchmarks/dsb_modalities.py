"""The kinds of image in a DSB 2018 folder (``<id>/images/<id>.png``), and a held-out split that
holds every kind: one JSON line with the counts per kind, the kinds in the nuclei config's
current held-out part (the last 40 in file order), and a stratified choice of ids.

Kinds, by a rule on the pixels: ``colour`` (channels differ: stained brightfield / H&E),
``grey_brightfield`` (equal channels, median above mid-grey: dark nuclei on a bright
background) and ``fluorescence`` (equal channels, dark background).

    python -m benchmarks.dsb_modalities --data_dir ../shared/data/dsb2018_train [--held_out 0.2]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from unet_jax.data import readers


def kind(path: Path) -> str:
    arr = readers.read_image(path)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and not readers.equal_channels(arr):
        return "colour"
    grey = arr[..., 0] if arr.ndim == 3 else arr
    return "grey_brightfield" if np.median(grey) > 127 else "fluorescence"


def stratified(ids_by_kind: dict[str, list[str]], fraction: float, minimum: dict[str, int]) -> list[str]:
    """Every kind's ids spread evenly over its sorted list: round(fraction * n) of them, at least
    ``minimum[kind]`` where it has that many."""
    chosen = []
    for k, ids in sorted(ids_by_kind.items()):
        n = min(len(ids), max(round(fraction * len(ids)), minimum.get(k, 1)))
        picks = np.linspace(0, len(ids) - 1, n).round().astype(int) if n else []
        chosen += [ids[i] for i in sorted(set(picks))]
    return sorted(chosen)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--held_out", type=float, default=0.2)
    a = p.parse_args(argv)
    folders = sorted(d for d in Path(a.data_dir).iterdir() if (d / "images").is_dir())
    kinds = {d.name: kind(d / "images" / f"{d.name}.png") for d in folders}
    by_kind: dict[str, list[str]] = {}
    for name, k in kinds.items():
        by_kind.setdefault(k, []).append(name)
    count = lambda names: {k: sum(kinds[n] == k for n in names) for k in sorted(by_kind)}  # noqa: E731
    held = stratified(by_kind, a.held_out, {"colour": 8, "grey_brightfield": 2, "fluorescence": 30})
    print(json.dumps({"benchmark": "dsb_modalities", "images": len(kinds), "kinds": count(kinds),
                      "last_40_in_file_order": count([d.name for d in folders[-40:]]),
                      "stratified_held_out": count(held), "stratified_held_out_ids": held}))


if __name__ == "__main__":
    main()
