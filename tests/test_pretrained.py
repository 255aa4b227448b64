"""Model folders: a saved run loads back with the same predictions, every shipped model matches
its checksums, a changed or missing file is named, and a name that is nothing is one line
naming the choices."""
import numpy as np
import pytest

from unet_jax import evaluation, inference, pretrained


@pytest.fixture(scope="module")
def run(trained):
    return evaluation.load_trained(trained)


def test_a_saved_model_folder_predicts_as_the_run_did(run, tmp_path):
    folder = pretrained.save(run, tmp_path / "mini", card="# mini\n")
    assert sorted(p.name for p in folder.iterdir()) == ["SHA256SUMS", "card.md", "config.json", "variables.npz"]
    loaded = pretrained.resolve(str(folder))
    image = np.random.default_rng(0).random((64, 64, 1)).astype(np.float32)
    np.testing.assert_array_equal(inference.predict_probs(loaded.config, loaded.predict, image),
                                  inference.predict_probs(run.config, run.predict, image))
    assert loaded.config.data.data_dir == "" and loaded.step == run.step  # no trainer's folders kept


def test_a_changed_or_missing_file_is_named(run, tmp_path):
    folder = pretrained.save(run, tmp_path / "m", card="# m\n")
    good = (folder / "variables.npz").read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 1
    (folder / "variables.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"variables.npz: checksum mismatch"):
        pretrained.load_folder(folder)
    (folder / "variables.npz").write_bytes(good)
    (folder / "card.md").unlink()
    with pytest.raises(ValueError, match=r"card.md: missing"):
        pretrained.load_folder(folder)


def test_names_come_from_the_models_folder_and_an_unknown_one_names_the_choices(run, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "MODELS_DIR", tmp_path)
    pretrained.save(run, tmp_path / "mini", card="# mini\n")
    (tmp_path / "not_a_model").mkdir()
    assert pretrained.names() == ["mini"]
    assert pretrained.resolve("mini").step == run.step
    with pytest.raises(ValueError, match=r"model 'nucle' is neither a shipped model \(mini\) nor"):
        pretrained.resolve("nucle")
    assert pretrained.one_of("mini", None) == pretrained.one_of(None, "mini") == "mini"
    for both_or_neither in (("mini", "runs/x"), (None, None)):
        with pytest.raises(ValueError, match="give one of --model"):
            pretrained.one_of(*both_or_neither)


@pytest.mark.parametrize("name", pretrained.names())
def test_every_shipped_model_matches_its_checksums_and_loads(name):
    model = pretrained.load_folder(pretrained.MODELS_DIR / name)
    assert (pretrained.MODELS_DIR / name / "card.md").read_text().startswith("# ")
    channels = model.config.model.in_channels
    probs = inference.predict_probs(model.config, model.predict, np.zeros((64, 64, channels), np.float32))
    assert probs.shape == (64, 64, model.config.model.num_classes)


@pytest.mark.skipif("wbc" not in pretrained.names(), reason="the wbc model is not shipped")
def test_the_shipped_wbc_model_segments_a_held_out_smear_by_name_offline(tmp_path):
    """``unet_predict --model wbc`` on a held-out image of its data set, as on a fresh clone (no
    training, no network): its classes agree with the image's mask."""
    import subprocess
    import sys

    from PIL import Image

    from tests.conftest import ROOT, require_shared

    data = require_shared("wbc_dataset1")
    (tmp_path / "in").mkdir()
    image = sorted((data / "images").iterdir())[-1]  # one of the held-out images 241-300
    (tmp_path / "in" / image.name).write_bytes(image.read_bytes())
    proc = subprocess.run([sys.executable, "-m", "experiments.unet_predict", "--model", "wbc", "--input",
                           str(tmp_path / "in"), "--output", str(tmp_path / "out")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pred = np.asarray(Image.open(tmp_path / "out" / f"{image.stem}_mask.png"))
    truth = np.searchsorted([0, 128, 255], np.asarray(Image.open(data / "masks" / f"{image.stem}.png")))
    for c in (1, 2):  # cytoplasm, nucleus
        dice = 2 * ((pred == c) & (truth == c)).sum() / ((pred == c).sum() + (truth == c).sum())
        assert dice > 0.8, (c, dice)


def test_the_shipped_nuclei_model_writes_label_tiffs_for_fluorescence_and_brightfield_offline(tmp_path):
    """``unet_predict --model nuclei --instances`` on held-out DSB 2018 images of both kinds, as
    on a fresh clone (no training, no network): a 16-bit label image per input whose objects
    match the true nuclei (IoU > 0.5, brute-force matching) for most of them, without
    fragmenting the brightfield one."""
    import subprocess
    import sys

    import tifffile

    from tests.conftest import ROOT, require_shared
    from unet_jax.data import readers

    data = require_shared("dsb2018_train")
    assert "nuclei" in pretrained.names()
    ids = {"fluorescence": "00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552",
           "fluorescence, sparse": "1c2f9e121fc207efff79d46390df1a740566b683ff56a96d8cabe830a398dd2e",
           "H&E": "4ae4f936a9ade472764dad80f60f7168e4be067aa66ce9d06d60ebe34951dca4"}
    (tmp_path / "in").mkdir()
    for i in ids.values():
        (tmp_path / "in" / f"{i}.png").write_bytes((data / i / "images" / f"{i}.png").read_bytes())
    proc = subprocess.run([sys.executable, "-m", "experiments.unet_predict", "--model", "nuclei", "--input",
                           str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--instances"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for kind, i in ids.items():
        pred = tifffile.imread(tmp_path / "out" / f"{i}_instances.tif")
        masks = [readers.read_image(m, indices=True) > 0 for m in sorted((data / i / "masks").glob("*.png"))]
        assert pred.dtype == np.uint16 and pred.shape == masks[0].shape[:2]
        found = 0
        for m in masks:
            m = m[..., 0] if m.ndim == 3 else m
            ids_under, counts = np.unique(pred[m], return_counts=True)
            for label, inter in zip(ids_under, counts):
                if label and inter / (m.sum() + (pred == label).sum() - inter) > 0.5:
                    found += 1
                    break
        n_pred = len(np.unique(pred)) - 1
        assert found >= 0.6 * len(masks) and 0.6 * len(masks) <= n_pred <= 1.6 * len(masks), \
            (kind, found, n_pred, len(masks))
