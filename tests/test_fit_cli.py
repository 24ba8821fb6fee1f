import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fre_edge.cli import cli
from fre_edge.fit.persist import load_model, save_model


def test_save_load_bit_for_bit(sample_model, tmp_path, sample_root):
    out, fitted = sample_model
    loaded = load_model(out)
    for a, b in zip(fitted.detector.heads, loaded.detector.heads):
        assert torch.equal(a.mean, b.mean) and torch.equal(a.components, b.components)
        assert a.form == b.form
        bufs_a, bufs_b = dict(a.named_buffers()), dict(b.named_buffers())
        assert bufs_a.keys() == bufs_b.keys() and all(torch.equal(bufs_a[n], bufs_b[n]) for n in bufs_a)
    assert loaded.info == json.loads(json.dumps(fitted.info))
    x = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224)))
                                   for p in sorted((sample_root / "test" / "good").glob("*.png"))]))
    s1, m1 = fitted.detector(x)
    s2, m2 = loaded.detector(x)
    assert torch.equal(s1, s2) and torch.equal(m1, m2)
    # a second save of the loaded model gives the same tensor file
    save_model(loaded, tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_fit_has_sensible_thresholds(sample_model):
    _, fitted = sample_model
    t = fitted.info["thresholds"]
    assert t["source"] == "holdout" and t["n_images"] == 3
    # from 3 held-out scores the 99% prediction limit lies far above their maximum (t(0.99, 2) = 6.96)
    assert t["image"] == pytest.approx(6038.1, rel=1e-2) and t["image"] > 1.5 * t["score_stats"]["max"]
    # the map: the coarse map, two fine ones and the grid head's, each divided by its spread on the held-out
    # pictures, added
    assert t["pixel"] == pytest.approx(16.803, rel=1e-2)
    assert fitted.info["data"]["fit_images"] == 27 and fitted.info["data"]["holdout_images"] == 3


def test_cli_fit_then_eval(tmp_path, sample_root):
    runner = CliRunner()
    out = tmp_path / "m"
    r = runner.invoke(cli, ["fit", str(sample_root), "-o", str(out), "--input-size", "224", "--quiet"])
    assert r.exit_code == 0, r.output
    # 27 fitting images: 97% of the variance takes 24 of at most 26 components (the score's head and the grid
    # head); the unpooled map heads keep 16 each
    assert json.loads(r.stdout)["n_components"] == [24, 16, 16, 24]
    assert json.loads(r.stdout)["map_layers"] == ["blocks.4", "blocks.10"]
    # 30 good images, 10% held out: a threshold from 3 images is wide, and fitting says so
    assert "warning: the image threshold comes from only 3 good image(s)" in r.stderr
    assert json.loads((out / "model.json").read_text())["info"]["warnings"]
    r = runner.invoke(cli, ["eval", str(out), str(sample_root), "-n", "3", "--quiet"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "eval.json").read_text())
    # 6 defects against 4 good images, from 27 fitting images: every defect scores above every good image
    assert metrics["image_auroc"] == 1.0
    assert metrics["pixel_auroc"] == pytest.approx(0.9876, abs=2e-3)
    assert metrics["aupro"] == pytest.approx(0.9527, abs=5e-3)
    ops, at = metrics["operating_points"], metrics["at_threshold"]
    assert ops["catch_every_defect"]["false_reject_rate"] == 0.0 and ops["reject_no_good_image"]["miss_rate"] == 0.0
    # the wide small-sample threshold misses the one small crack (README says so): 1 of 6 defects
    assert at["false_reject_rate"] == 0.0 and at["miss_rate"] == pytest.approx(1 / 6)
    assert "to catch every defect:" in r.stdout
    pics = sorted((out / "eval_pictures").glob("*.png"))
    assert [p.name for p in pics][-1] == "scores.png" and len(pics) == 4
    assert Image.open(out / "eval_pictures" / "scores.png").size[1] == 24 + 26 * 4 + 30  # good + 3 defect kinds
    w, h = Image.open(pics[0]).size
    from fre_edge.visualize import LABEL_H, SCALE_H, TITLE_H

    assert w == 4 * 224 and h == TITLE_H + LABEL_H + 224 + SCALE_H  # image | mask | heatmap | outline, labelled


def _copy_sample(sample_root, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(sample_root, d)
    return d


def test_fit_bad_inputs(tmp_path, sample_root):
    runner = CliRunner()
    cases = []
    # missing folder, empty folder
    cases.append(([str(tmp_path / "nope")], "no such folder"))
    (tmp_path / "empty").mkdir()
    cases.append(([str(tmp_path / "empty")], "no images found"))
    # corrupt and truncated image in the training set
    data = _copy_sample(sample_root, tmp_path)
    (data / "train" / "good" / "zz_corrupt.png").write_bytes(b"garbage")
    cases.append(([str(data)], "zz_corrupt.png: cannot read image"))
    data2 = tmp_path / "trunc"
    shutil.copytree(sample_root, data2)
    p = data2 / "train" / "good" / "000.png"
    p.write_bytes(p.read_bytes()[:5000])
    cases.append(([str(data2)], "000.png: cannot read image"))
    # too few images
    few = tmp_path / "few"
    few.mkdir()
    shutil.copy(sample_root / "train" / "good" / "000.png", few)
    cases.append(([str(few)], "at least 2"))
    # unknown layer, bad variance
    cases.append(([str(sample_root), "--layers", "layer3"], "unknown layer 'layer3' for efficientnet_lite0"))
    cases.append(([str(sample_root), "--variance", "1.5"], "strictly between 0 and 1"))
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        r = runner.invoke(cli, ["fit", *args, "-o", str(out), "--quiet"])
        assert r.exit_code == 2, (args, r.output)
        assert message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
        assert not out.exists()
        assert not list(tmp_path.glob(f".out{i}*"))  # no partial folder either


def test_fit_unknown_backbone_and_existing_output(tmp_path, sample_root):
    runner = CliRunner()
    r = runner.invoke(cli, ["fit", str(sample_root), "-o", str(tmp_path / "o"), "--backbone", "resnet9000"])
    assert r.exit_code == 2 and "resnet9000" in r.output
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "keep.txt").write_text("mine")
    r = runner.invoke(cli, ["fit", str(sample_root), "-o", str(tmp_path / "exists"), "--quiet"])
    assert r.exit_code == 2 and "already exists" in r.stderr and "--force" in r.stderr
    assert (tmp_path / "exists" / "keep.txt").read_text() == "mine"


def test_torchvision_weights_missing_fail_fast(tmp_path, sample_root, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.delenv("FRE_EDGE_ALLOW_DOWNLOAD", raising=False)
    r = CliRunner().invoke(cli, ["fit", str(sample_root), "-o", str(tmp_path / "o"), "--backbone", "resnet18"])
    assert r.exit_code == 2
    assert "resnet18-f37072fd.pth are not on this machine; put the file in" in r.stderr
    assert str(tmp_path / "hub") in r.stderr


def test_eval_bad_model_dir(tmp_path, sample_root):
    r = CliRunner().invoke(cli, ["eval", str(tmp_path / "nomodel"), str(sample_root)])
    assert r.exit_code == 2 and "no such model folder" in r.stderr
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.json").write_text("{}")
    r = CliRunner().invoke(cli, ["eval", str(tmp_path / "half"), str(sample_root)])
    assert r.exit_code == 2 and "model.safetensors is missing" in r.stderr


def test_autoencoder_strategy_end_to_end_writes_strict_json(tmp_path, sample_root):
    r = CliRunner().invoke(cli, ["fit", str(sample_root), "-o", str(tmp_path / "ae"), "--strategy", "autoencoder",
                                 "--input-size", "128", "--map-layers", "none", "--quiet"])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "ae" / "model.json").read_text()

    def no_nan(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    settings = json.loads(text, parse_constant=no_nan)
    assert settings["info"]["strategies"] == ["autoencoder"]
    assert settings["info"]["explained_variance"] == [None]
    loaded = load_model(tmp_path / "ae")
    assert loaded.detector.heads[0].n_components == settings["info"]["n_components"][0]


@pytest.mark.parametrize("n_images, held_out, expected", [
    (3, True, "only 3 good image(s)"),
    (19, True, "only 19 good image(s)"),
    (20, True, None),
    (500, False, "come from the fitting images themselves"),
])
def test_threshold_warnings(n_images, held_out, expected):
    from fre_edge.fit.thresholds import threshold_warnings

    got = threshold_warnings(n_images, held_out)
    assert (got == []) if expected is None else (len(got) == 1 and expected in got[0])


@pytest.mark.parametrize("good, bad, catch, frr, no_reject, miss", [
    ([1, 2, 3], [4, 5], 3.5, 0.0, 3.5, 0.0),  # separable: halfway between the classes either way
    ([1, 2, 6], [4, 5], 3.0, 1 / 3, 6.06, 1.0),  # one high good image: catching all costs it, rejecting none misses all
    ([1, 4, 4], [4, 9], 2.5, 2 / 3, 6.5, 0.5),  # ties: "above the threshold" is anomalous
    ([5, 6], [4, 9], 3.96, 1.0, 7.5, 0.5),  # the weakest defect below every good image
])
def test_operating_points(good, bad, catch, frr, no_reject, miss):
    from fre_edge.fit.evaluate import operating_points

    ops = operating_points(np.array(good, float), np.array(bad, float))
    assert ops["catch_every_defect"] == {"threshold": pytest.approx(catch), "false_reject_rate": pytest.approx(frr)}
    assert ops["reject_no_good_image"] == {"threshold": pytest.approx(no_reject), "miss_rate": pytest.approx(miss)}
    # the promise: at the first threshold no defect is missed, at the second no good image is rejected
    assert (np.array(bad) > ops["catch_every_defect"]["threshold"]).all()
    assert not (np.array(good) > ops["reject_no_good_image"]["threshold"]).any()
    assert operating_points(np.array([]), np.array([1.0])) == {}
