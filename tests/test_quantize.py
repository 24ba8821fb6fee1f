import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from fre_edge.cli import cli
from fre_edge.errors import FreEdgeError
from fre_edge.runtime import load_detector
from fre_edge.serve.process import fre_edge_cmd


@pytest.fixture(scope="module")
def int8_bundle(sample_bundle, sample_root, tmp_path_factory):
    from fre_edge.export.quantize import quantize_bundle

    out = tmp_path_factory.mktemp("q") / "int8"
    quantize_bundle(sample_bundle, out, sorted((sample_root / "train" / "good").glob("*.png")))
    return out


def test_int8_scores_stay_close_to_f32_on_real_images(sample_bundle, int8_bundle, sample_root):
    """Tolerance: on the sample's 10 real test images the INT8 scores rank the images like f32 does
    (Spearman >= 0.9) and every defect still scores above every good image when f32 separates them."""
    paths = sorted((sample_root / "test").rglob("*.png"))
    f32, q = load_detector(sample_bundle), load_detector(int8_bundle)
    s32 = np.array([p.score for p in f32.predict_batch(paths)])
    s8 = np.array([p.score for p in q.predict_batch(paths)])
    r32, r8 = np.argsort(np.argsort(s32)), np.argsort(np.argsort(s8))
    assert np.corrcoef(r32, r8)[0, 1] >= 0.9, (s32, s8)
    labels = np.array(["good" not in str(p) for p in paths])
    from fre_edge.fit.metrics import auroc

    assert auroc(labels, s8) >= auroc(labels, s32) - 0.05
    meta = json.loads((int8_bundle / "manifest.json").read_text())
    assert meta["precision"] == "int8" and q.metadata["precision"] == "int8"
    qi = meta["quantization"]
    assert qi["keep_head_float"] is True and qi["calibration"]["n_images"] >= 8
    assert qi["check_on_unseen_good_images"]["n_images"] >= 1
    assert set(meta["files"]) == {"model.xml", "model.bin"}


def test_int8_bundle_works_with_bench(int8_bundle):
    r = CliRunner().invoke(cli, ["bench", str(int8_bundle), "--duration", "0.2"])
    assert r.exit_code == 0, r.output


def test_calibration_errors_write_nothing(sample_bundle, sample_root, tmp_path):
    from fre_edge.export.quantize import quantize_bundle

    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(cli, ["quantize", str(sample_bundle), "-o", str(tmp_path / "q1"),
                                 "--calib", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "no images found" in r.stderr
    bad = tmp_path / "bad"
    shutil.copytree(sample_root / "train" / "good", bad)
    (bad / "zz_broken.png").write_bytes(b"\x89PNG not really")
    r = CliRunner().invoke(cli, ["quantize", str(sample_bundle), "-o", str(tmp_path / "q2"), "--calib", str(bad)])
    assert r.exit_code == 2 and "zz_broken.png: cannot read image" in r.stderr
    with pytest.raises(FreEdgeError, match="at least 8"):
        quantize_bundle(sample_bundle, tmp_path / "q3", sorted(bad.glob("0*.png"))[:3])
    assert not any(p.name.startswith(("q1", "q2", "q3", ".q")) for p in tmp_path.iterdir())


def test_quantize_refuses_int8_input(int8_bundle, sample_root, tmp_path):
    r = CliRunner().invoke(cli, ["quantize", str(int8_bundle), "-o", str(tmp_path / "x"),
                                 "--calib", str(sample_root / "train" / "good")])
    assert r.exit_code == 2 and "already INT8" in r.stderr


def test_eval_accepts_bundles_f32_and_int8(sample_bundle, int8_bundle, sample_root, tmp_path):
    for b in (sample_bundle, int8_bundle):
        out = tmp_path / f"{b.name}.json"
        r = CliRunner().invoke(cli, ["eval", str(b), str(sample_root), "--json", str(out), "-n", "2",
                                     "--pictures", str(tmp_path / f"{b.name}_pics"), "--quiet"])
        assert r.exit_code == 0, r.output
        m = json.loads(out.read_text())
        assert 0.5 < m["image_auroc"] <= 1.0 and "aupro" in m
        assert len(list((tmp_path / f"{b.name}_pics").glob("*.png"))) == 2 + 1  # + scores.png


def test_accuracy_controlled_mode_records_its_check(sample_bundle, sample_root, tmp_path):
    r = CliRunner().invoke(cli, ["quantize", str(sample_bundle), "-o", str(tmp_path / "ac"),
                                 "--calib", str(sample_root / "train" / "good"), "--val", str(sample_root),
                                 "--max-drop", "0.05", "--quiet"])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "ac" / "manifest.json").read_text())
    q = meta["quantization"]
    assert q["mode"] == "accuracy-controlled" and q["head_refit_on_int8_features"] is False
    ac = q["accuracy_control"]
    assert ac["n_images"] == 10 and ac["max_drop"] == 0.05
    assert ac["image_auroc_int8"] >= ac["image_auroc_f32"] - 0.05 - 1e-9
    assert load_detector(tmp_path / "ac").metadata["precision"] == "int8"
    # the head was not refitted, so it is the exported one: it must have stayed in floating point
    import openvino as ov

    from fre_edge.runtime.adapters import head_starts

    starts = head_starts(ov.Core().read_model(str(tmp_path / "ac" / "model.xml")))
    assert starts
    for op, _ in starts:
        assert all(i.get_source_output().get_node().get_type_name() != "FakeQuantize" for i in op.inputs()), op


@pytest.mark.parametrize("forms, first_op", [(None, "GroupConvolution"), (["reconstruct"], "MatMul")])
def test_openvino_head_builder_matches_the_numpy_reference(sample_bundle, sample_root, forms, first_op):
    """The head that the INT8 refit builds with OpenVINO ops scores the backbone's features as the plain
    numpy formula does, in the form the rule picks (one_pass here: k < C) and in the form a manifest names."""
    import openvino as ov

    from fre_edge.export.int8_head import backbone_features, build_model, refit_heads
    from fre_edge.fit.features import load_batch
    from fre_edge.fit.model import linear_resize_matrix
    from fre_edge.runtime.adapters import cut_to_backbone, head_starts

    core = ov.Core()
    backbone = cut_to_backbone(core.read_model(str(sample_bundle / "model.xml"))).clone()
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    train = sorted((sample_root / "train" / "good").glob("*.png"))
    test = sorted((sample_root / "test").rglob("*.png"))
    compiled_backbone = core.compile_model(backbone, "CPU", f32)
    shapes = [tuple(int(d) for d in o.get_partial_shape()[1:].to_shape()) for o in backbone.outputs]
    fit_feats = backbone_features(compiled_backbone, [load_batch(train, 224).numpy()])
    heads = refit_heads(fit_feats, [8], shapes)
    x = load_batch(test, 224).numpy()
    test_feats = backbone_features(compiled_backbone, [x])[0]
    ref_s, ref_m = heads[0].reconstruction_error(test_feats), heads[0].error_maps(test_feats)
    model = build_model(backbone, shapes, heads, 224, None, forms)
    assert [op.get_type_name() for op, _ in head_starts(model)] == [first_op]
    out = core.compile_model(model, "CPU", f32).create_infer_request().infer({0: x})
    score = np.asarray(out["score"])
    assert score.shape == (len(test),) and out["anomaly_map"].shape == (len(test), 224, 224)
    np.testing.assert_allclose(score, ref_s, rtol=1e-4)
    # the map: the feature-grid error maps, upsampled by the same bilinear matrices as the f32 graph
    _, h, w = shapes[0]
    rows, cols = linear_resize_matrix(h, 224).numpy(), linear_resize_matrix(w, 224).numpy()
    np.testing.assert_allclose(out["anomaly_map"], rows @ ref_m @ cols.T, rtol=1e-3, atol=1e-4 * ref_m.max())


@pytest.mark.parametrize("command", ["quantize", "export-int8-head"])
def test_quiet_means_quiet(sample_model, sample_bundle, sample_root, tmp_path, command):
    """Nothing but the command's JSON: no torch CUDA line, no NNCF tables or bars (a fresh process, where
    torch's import-time line would show)."""
    import subprocess

    good = sample_root / "train" / "good"
    args = (["quantize", str(sample_bundle), "-o", str(tmp_path / "q"), "--calib", str(good), "--quiet"]
            if command == "quantize" else
            ["export", str(sample_model[0]), "-o", str(tmp_path / "q"), "--format", "openvino", "--head-weights",
             "int8", "--check-images", str(sample_root / "test" / "good"), "--quiet"])
    r = subprocess.run(fre_edge_cmd(*args), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    assert json.loads(r.stdout)["bundle"] == str(tmp_path / "q")
