"""Runs every CLI against bad inputs and checks each failure: exit status 1, one line on stderr
that names the culprit, no traceback, and no file added or changed in the folders involved.
Prints one JSON line (passed / total, and each case that failed).

    python -m benchmarks.bad_inputs [--only SUBSTRING]

A tiny run is trained first (about 30 s on 2 CPU cores) so that the inference CLIs have a
workdir to load; the full disk is /dev/full (every write to it fails with ENOSPC) in place of
an output file.
"""
import argparse
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config.model.features=4", "--config.model.depth=2", "--config.data.synthetic_size=64",
        "--config.data.synthetic_train=8", "--config.data.synthetic_test=2", "--config.data.tile_size=32",
        "--config.data.eval_tile_size=64", "--config.progress=False", "--config.loader_threads=1",
        "--config.eval_every=0"]


@dataclasses.dataclass
class Case:
    name: str
    args: list  # after "python -m"
    culprit: str  # the line must contain it
    watch: tuple = ()  # folders in which nothing may change


def _segment(workdir, tfds_dir, *extra):
    return ["experiments.unet_segment", "--workdir", str(workdir), f"--config.data.tfds_dir={tfds_dir}",
            *TINY, "--config.num_steps=4", *extra]


def _folder(root: Path, images: dict, masks: dict) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, arr in images.items():
        path = root / "images" / name
        tifffile.imwrite(path, arr) if name.endswith(".tif") else Image.fromarray(arr).save(path)
    for name, arr in masks.items():
        Image.fromarray(arr).save(root / "masks" / name)
    return root


def _tree(folders) -> dict:
    """{path: content hash} of every file under ``folders`` (symlinks by their target)."""
    out = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            continue
        for p in sorted(folder.rglob("*")):
            if p.is_symlink():
                out[str(p)] = "->" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir() and not any(p.iterdir()):
                out[str(p)] = "empty dir"
    return out


def _cases(tmp: Path, run: Path, tfds_dir: Path) -> list:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (48, 48), np.uint8)
    mask = np.zeros((48, 48), np.uint8)
    mask[10:30, 10:30] = 1
    good = {"a.png": grey}
    folders = tmp / "folders"
    f = {
        "missing_mask": _folder(folders / "missing_mask", {**good, "b.png": grey}, {"a.png": mask}),
        "size": _folder(folders / "size", good, {"a.png": mask[:40]}),
        "classes": _folder(folders / "classes", good, {"a.png": mask * 3}),
        "channels": _folder(folders / "channels", {"a.tif": np.stack([grey, grey])}, {"a.png": mask}),
        "rgb_mask": _folder(folders / "rgb_mask", good, {"a.png": np.stack([mask, mask * 0, mask], -1) * 100}),
        "corrupt": _folder(folders / "corrupt", good, {"a.png": mask}),
        "empty": _folder(folders / "empty", {}, {}),
    }
    (f["corrupt"] / "images" / "a.png").write_bytes(b"not a png at all")
    text = tmp / "notes.png"
    text.write_text("not an image")
    truncated = tmp / "truncated.png"
    Image.fromarray(grey).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    grey_path, a_path = tmp / "grey.png", tmp / "a.png"
    for path in (grey_path, a_path):
        Image.fromarray(grey).save(path)
    rgb = tmp / "rgb.png"
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), np.uint8)).save(rgb)  # colour: 3 channels
    small = tmp / "small.png"
    Image.fromarray(grey[:8, :8]).save(small)

    corrupt_run = tmp / "corrupt_run"
    shutil.copytree(run, corrupt_run)
    steps = sorted((p for p in (corrupt_run / "checkpoints").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    for step in steps:  # every step damaged: nothing to fall back on
        for p in step.rglob("*"):
            if p.is_file() and p.stat().st_size > 0 and "state" in p.parts:
                p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    resumed = tmp / "resumed"
    shutil.copytree(run, resumed)
    (resumed / "summary.json").unlink()
    locked = tmp / "locked"
    locked.mkdir()
    empty_run = tmp / "empty_run"
    empty_run.mkdir()
    full_out = tmp / "full_out"
    full_out.mkdir()
    (full_out / "a_mask.png").symlink_to("/dev/full")
    full_run = tmp / "full_run"
    full_run.mkdir()
    (full_run / "metrics.jsonl").symlink_to("/dev/full")
    out = tmp / "out"
    fresh = tmp / "fresh"

    def folder_run(key, *extra):
        return Case(f"image_folder_{key}", _segment(fresh / key, tmp / f"tfds_{key}", "--config.data.dataset=image_folder",
                                                    f"--config.data.data_dir={f[key]}", *extra),
                    str(f[key]), (fresh / key, tmp / f"tfds_{key}", f[key]))

    seg = lambda name, culprit, *extra: Case(name, _segment(fresh / name, tfds_dir, *extra), culprit,  # noqa: E731
                                             (fresh / name,))
    predict = lambda name, culprit, workdir, inp, *extra: Case(  # noqa: E731
        name, ["experiments.unet_predict", "--workdir", str(workdir), "--input", str(inp), "--output", str(out),
               *extra], culprit, (out, workdir))
    evaluate = lambda name, culprit, workdir, *extra: Case(  # noqa: E731
        name, ["experiments.unet_evaluate", "--workdir", str(workdir), "--tfds_dir", str(tfds_dir), *extra],
        culprit, (workdir,))
    return [
        seg("negative_num_steps", "num_steps", "--config.num_steps=-5"),
        seg("zero_batch", "batch_size", "--config.batch_size=0"),
        seg("unknown_dataset", "my_cells", "--config.data.dataset=my_cells"),
        seg("unknown_optimizer", "optim", "--config.optim.name=rmsprop_typo"),
        seg("unknown_loss", "loss", "--config.loss=focal_typo"),
        seg("unknown_parallel_mode", "parallel", "--config.parallel=spmd"),
        seg("bad_async_checkpoints", "async_checkpoints", "--config.async_checkpoints=maybe"),
        seg("missing_data_dir", "/no/such/folder", "--config.data.dataset=image_folder",
            "--config.data.data_dir=/no/such/folder"),
        folder_run("missing_mask", "--config.data.train_split=train", "--config.data.eval_split=train"),
        folder_run("size"),
        folder_run("classes"),
        folder_run("channels"),
        folder_run("rgb_mask"),
        folder_run("corrupt"),
        folder_run("empty"),
        Case("locked_workdir", _segment(locked, tfds_dir), str(locked), (locked,)),
        Case("changed_config_on_resume", _segment(resumed, tfds_dir, "--config.model.features=8"), "features",
             (resumed,)),
        Case("corrupted_checkpoint_on_resume", _segment(corrupt_run, tfds_dir),
             "checkpoints", (corrupt_run,)),
        Case("full_disk", _segment(full_run, tfds_dir), "No space left on device", (full_run,)),
        predict("predict_missing_workdir", "/no/such/run", "/no/such/run", grey_path),
        predict("predict_workdir_without_checkpoints", str(empty_run), empty_run, grey_path),
        predict("predict_missing_input", "/no/such/image.png", run, "/no/such/image.png"),
        predict("predict_not_an_image", str(text), run, text),
        predict("predict_truncated_image", str(truncated), run, truncated),
        predict("predict_channel_mismatch", str(rgb), run, rgb),
        predict("predict_bad_tile_size", "tile_size", run, grey_path, "--tile_size=-1"),
        predict("predict_corrupted_checkpoint", "checkpoints", corrupt_run, grey_path),
        Case("predict_full_disk", ["experiments.unet_predict", "--workdir", str(run), "--input", str(a_path),
                                   "--output", str(full_out)], "a_mask.png", (full_out, run)),
        predict("predict_empty_folder", str(f["empty"] / "images"), run, f["empty"] / "images"),
        evaluate("evaluate_unknown_dataset", "my_cells", run, "--dataset=my_cells"),
        evaluate("evaluate_corrupted_checkpoint", "checkpoints", corrupt_run, "--dataset=synthetic_cells"),
        evaluate("evaluate_missing_workdir", "/no/such/run", "/no/such/run", "--dataset=synthetic_cells"),
        Case("cnn_negative_epochs", ["experiments.cnn_classify", "--workdir", str(fresh / "cnn"),
                                     "--config.epochs=-1"], "epochs", (fresh / "cnn",)),
        Case("autoencoder_missing_mnist", ["experiments.autoencoder", "--workdir", str(fresh / "ae"),
                                           "--config.data_dir=/no/such/mnist"], "/no/such/mnist", (fresh / "ae",)),
    ]


def _check(case: Case, env: dict) -> dict:
    before = _tree(case.watch)
    proc = subprocess.run([sys.executable, "-m", *case.args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    problems = []
    if proc.returncode != 1:
        problems.append(f"exit status {proc.returncode}")
    if "Traceback" in proc.stderr:
        problems.append("traceback")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines")
    if not any(case.culprit in line for line in lines):
        problems.append(f"no line names {case.culprit!r}")
    changed = sorted(set(_tree(case.watch).items()) ^ set(before.items()))
    if changed:
        problems.append(f"changed: {sorted({p for p, _ in changed})[:4]}")
    return {"case": case.name, "ok": not problems, "problems": problems,
            "stderr": lines[-1][:300] if lines else ""}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bad_inputs_"))
    tfds_dir, run = tmp / "tfds", tmp / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    trained = subprocess.run([sys.executable, "-m", *_segment(run, tfds_dir)], cwd=ROOT, env=env,
                             capture_output=True, text=True)
    if trained.returncode:
        sys.exit(f"the tiny run failed:\n{trained.stderr[-3000:]}")
    cases = _cases(tmp, run, tfds_dir)
    lock = open(tmp / "locked" / ".lock", "a+")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run holds this workdir
    results = [_check(c, env) for c in cases if a.only in c.name]
    lock.close()
    failed = [r for r in results if not r["ok"]]
    print(json.dumps({"benchmark": "bad_inputs", "passed": len(results) - len(failed), "total": len(results),
                      "failed": failed, "cases": [r["case"] for r in results]}))


if __name__ == "__main__":
    main()
