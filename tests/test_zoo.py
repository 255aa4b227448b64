"""BioImage Model Zoo packages: the zoo's own test (bioimageio.core: format validation and the
test tensors reproduced through ONNX Runtime) passes for an 8-bit and a 16-bit package; a
package runs again through unet_predict's path with the JAX model's probabilities; bad input
ends with one line and leaves no zip."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from unet_jax import evaluation, inference, unet, zoo
from unet_jax.data import builders

core = pytest.importorskip("bioimageio.core")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(trained):
    return evaluation.load_trained(trained)


def _zoo_test(path: Path):
    summary = core.test_model(str(path))
    failed = [d for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", (core.__version__, [(d.name, d.errors) for d in failed])


def test_an_8_bit_package_passes_the_zoo_test_and_runs_again_as_the_jax_model(run, trained, tmp_path):
    d = run.config.data
    source = builders.load(d.dataset, d.tfds_dir, splits=(d.eval_split,),
                           **builders.dataset_options(run.config, d.dataset))[d.eval_split]
    raw = zoo.raw_test_image(run.config, source)
    assert raw.dtype == np.uint8
    result = zoo.export(run, tmp_path / "pkg.zip", raw)
    _zoo_test(tmp_path / "pkg.zip")
    with zipfile.ZipFile(tmp_path / "pkg.zip") as z:
        assert {"rdf.yaml", "weights.onnx", "test_input.npy", "test_output.npy", "cover.png",
                "README.md"} <= set(z.namelist())
        assert b"Ronneberger" in z.read("README.md") and z.read("cover.png")[:4] == b"\x89PNG"
    assert result["test_tile"] >= unet.input_size_for_output(1, run.config.model.depth, run.config.model.padding)
    # the package through ONNX Runtime, as unet_predict runs it, against the JAX model
    package = zoo.load_package(tmp_path / "pkg.zip")
    image = np.asarray(source[0]["image"], np.float32)
    want = inference.predict_probs(run.config, run.predict, image)
    got = inference.predict_probs(package.config, package.predict, image)
    assert float(np.abs(got - want).max()) < 1e-4


def test_a_16_bit_package_maps_percentiles_as_training_did(run, tmp_path):
    """A 16-bit test tile: the zoo's scale_range + clip in bioimageio.core reproduces the output
    the JAX model gives after the project's own normalisation."""
    rng = np.random.default_rng(0)
    raw = (rng.gamma(2.0, 900.0, (64, 64, 1)) + 300).astype(np.uint16)
    # the package's scale_range + clip, as the zoo defines them, equal training's normalisation
    lo, hi = np.percentile(raw, zoo.PERCENTILES, axis=(0, 1))
    np.testing.assert_allclose(np.clip((raw - lo) / (hi - lo + 1e-6), 0, 1), builders.normalise(raw), atol=1e-5)
    zoo.export(run, tmp_path / "pkg16.zip", raw)
    _zoo_test(tmp_path / "pkg16.zip")


def test_a_changed_package_or_an_uncovered_layer_is_refused_and_leaves_no_zip(run, trained, tmp_path):
    raw = np.zeros((64, 64, 1), np.uint8)
    zoo.export(run, tmp_path / "good.zip", raw)
    with zipfile.ZipFile(tmp_path / "good.zip") as z, zipfile.ZipFile(tmp_path / "bad.zip", "w") as out:
        for name in z.namelist():
            data = z.read(name)
            out.writestr(name, data[:-1] + bytes([data[-1] ^ 1]) if name == "weights.onnx" else data)
    with pytest.raises(ValueError, match=r"bad.zip: weights.onnx has sha256 .* damaged or was changed"):
        zoo.load_package(tmp_path / "bad.zip")
    config = run.config.copy_and_resolve_references()
    with config.unlocked():
        config.model.norm = "group"
    model = unet.from_config(config.model)
    grouped = evaluation.Trained(config, model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 1))), 1, None)
    with pytest.raises(ValueError, match="does not cover the layer 'group' normalisation"):
        zoo.export(grouped, tmp_path / "group.zip", raw)
    inverted = run.config.copy_and_resolve_references()
    with inverted.unlocked():
        inverted.data.contrast = "bright_objects"
    with pytest.raises(ValueError, match="data.contrast 'bright_objects': the bioimage.io pre-processing has no"):
        zoo.export(evaluation.Trained(inverted, run.variables, run.step, None), tmp_path / "inv.zip", raw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip", "good.zip"]  # no temporary files


def _cli(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_cli_exports_and_predicts_again_and_bad_input_is_one_line(trained, tmp_path):
    out = _cli("experiments.unet_export", "--workdir", str(trained), "--output", str(tmp_path / "m.zip"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1])["bytes"] == (tmp_path / "m.zip").stat().st_size
    (tmp_path / "empty").mkdir()
    bad = _cli("experiments.unet_export", "--workdir", str(tmp_path / "empty"), "--output", str(tmp_path / "x.zip"))
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "holds no trained run" in bad.stderr and not (tmp_path / "x.zip").exists()
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "in" / "a.png")
    bad = _cli("experiments.unet_predict", "--workdir", str(tmp_path / "broken.zip"), "--input",
               str(tmp_path / "in"), "--output", str(tmp_path / "o"))
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "not a unet_jax bioimage.io package" in bad.stderr
