import json

import numpy as np
import pytest
from click.testing import CliRunner

from fre_edge.cli import cli
from fre_edge.fit.thresholds import lognormal_quantile


def test_export_cli_from_model_and_one_step(sample_model, sample_root, tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["export", str(sample_model[0]), "-o", str(tmp_path / "b"), "--format", "onnx"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["files"].keys() == {"model.onnx"}
    r = runner.invoke(cli, ["export", str(sample_model[0]), "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "already exists" in r.stderr
    r = runner.invoke(cli, ["export", str(sample_root / "train" / "good"), "-o", str(tmp_path / "one"),
                            "--input-size", "128", "--fp16", "--quiet"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert manifest["precision"] == "fp16" and manifest["input_size"] == 128
    r = runner.invoke(cli, ["export", str(sample_model[0]), "-o", str(tmp_path / "c"), "--format", "tflite"])
    assert r.exit_code == 2 and "unknown format" in r.stderr and not (tmp_path / "c").exists()
    r = runner.invoke(cli, ["export", str(tmp_path / "nothing"), "-o", str(tmp_path / "d")])
    assert r.exit_code == 2 and "no such model or image folder" in r.stderr
    r = runner.invoke(cli, ["export", str(tmp_path / "one"), "-o", str(tmp_path / "e")])
    assert r.exit_code == 2 and "is a bundle already" in r.stderr and not (tmp_path / "e").exists()


def test_export_head_form_option(sample_model, sample_bundle, sample_root, tmp_path):
    """--head-form reconstruct overrides the rule (one_pass for this model); scores stay the same."""
    from fre_edge.fit.features import load_batch
    from fre_edge.runtime import load_detector

    runner = CliRunner()
    out = tmp_path / "rec"
    r = runner.invoke(cli, ["export", str(sample_model[0]), "-o", str(out), "--head-form", "reconstruct"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["head_forms"] == ["reconstruct"] * 4
    # the score's head and the map's three
    assert json.loads((sample_bundle / "manifest.json").read_text())["head_forms"] == ["one_pass"] * 4
    assert sample_model[1].detector.heads[0].form == "one_pass"  # the fitted model is left as it was
    x = load_batch(sorted((sample_root / "test").rglob("*.png"))[:4], sample_model[1].config.input_size).numpy()
    scores = {}
    for name, path in (("auto", sample_bundle), ("reconstruct", out)):
        det = load_detector(path, backend="onnxruntime")
        scores[name] = det.adapter.infer(x)["score"]
    np.testing.assert_allclose(scores["reconstruct"], scores["auto"], rtol=1e-4)
    from test_export import assert_head_stored_once

    C, h, w = sample_model[1].detector.heads[0].shape
    assert_head_stored_once(out, C * h * w, sample_model[1].detector.heads[0].n_components, C * h * w, tmp_path)
    r = runner.invoke(cli, ["export", str(sample_model[0]), "-o", str(tmp_path / "bad"), "--head-form", "dense"])
    assert r.exit_code == 2 and "--head-form" in r.stderr and not (tmp_path / "bad").exists()


T_99_2DOF = 6.964556734283274  # Student's t, 99% quantile, 2 degrees of freedom (tables)


@pytest.mark.parametrize("scores, expected", [
    ([1.0, 1.0, 1.0], 1.0),  # no spread: the scores themselves
    ([7.0], 7.0),  # one score: that score
    # log-scores 0, ln 2, 2 ln 2: mean ln 2, std ln 2 -> exp(ln 2 (1 + t sqrt(1 + 1/3)))
    ([1.0, 2.0, 4.0], 2.0 ** (1 + T_99_2DOF * np.sqrt(4 / 3))),
])
def test_lognormal_threshold(scores, expected):
    assert lognormal_quantile(np.array(scores)) == pytest.approx(expected, rel=1e-9)


def test_lognormal_threshold_matches_theory():
    rng = np.random.default_rng(0)
    s = np.exp(rng.normal(3.0, 0.5, 200_000))
    # exp(3 + 2.326 * 0.5) = 64.1
    assert lognormal_quantile(s) == pytest.approx(np.exp(3 + 2.3263478740408408 * 0.5), rel=0.01)


@pytest.mark.parametrize("n", [3, 5, 20])
def test_lognormal_threshold_passes_99_percent_of_new_good_images(n):
    """The point of a prediction limit: from n held-out good scores, the threshold passes 99% of the next good
    image's scores whatever n is (the plain fitted 99th percentile passes about 95% at n = 5)."""
    rng = np.random.default_rng(n)
    trials = 20_000
    logs = rng.normal(3.0, 0.5, (trials, n + 1))
    above = [np.exp(row[-1]) > lognormal_quantile(np.exp(row[:-1])) for row in logs]
    assert 0.007 < np.mean(above) < 0.013
