"""Non-square input: ``--input-size HxW`` and ``auto`` carried through the fit, the exported
graph (both formats), the manifest, the runtime's resize, INT8, serving, Model API, eval and bench."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import one_error_line, run
from fre_edge.errors import FreEdgeError
from fre_edge.images import input_hw, picture_hw, size_json, size_text

HW = (160, 288)  # height x width: a wide input, both sides multiples of 32


@pytest.fixture(scope="module")
def wide_model(sample_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("wide") / "model"
    r = run("fit", sample_root, "-o", out, "--input-size", "160x288", "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["input_size"] == [160, 288]
    return out


@pytest.fixture(scope="module")
def wide_bundle(wide_model):
    out = wide_model.parent / "bundle"
    r = run("export", wide_model, "-o", out, "--quiet")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def test_images(sample_root):
    return sorted(sample_root.glob("test/*/*.png"))


# ----------------------------------------------------------------------------- the size's forms
def test_input_sizes_are_a_side_or_height_by_width():
    assert input_hw(256) == (256, 256) and input_hw("256") == (256, 256)
    assert input_hw("192x480") == input_hw("192 X 480") == input_hw([192, 480]) == (192, 480)
    assert size_json((256, 256)) == 256 and size_json((192, 480)) == [192, 480]  # square bundles are unchanged
    assert size_text(256) == "256" and size_text([192, 480]) == "192x480"
    for bad in ("12a", "1x2x3", "x480", [160], [160, 288, 3], True, 2.5, "auto"):
        with pytest.raises(FreEdgeError, match="is not N or HxW; use e.g. 256 or 192x480"):
            input_hw(bad)


def test_auto_keeps_the_pixel_budget_in_the_pictures_aspect():
    from fre_edge.fit.sizing import auto_input_size

    long_part = [np.zeros((500, 1260, 3), np.uint8)] * 4
    hw, record = auto_input_size(long_part, 256)
    # 500 x 1260 (aspect 2.52): 256 / sqrt(2.52) = 161 -> 160, 256 x sqrt(2.52) = 406 -> 416
    assert hw == (160, 416)
    assert record["median_aspect_w_over_h"] == pytest.approx(2.52) and record["images_sampled"] == 4
    assert auto_input_size([a.transpose(1, 0, 2) for a in long_part], 256)[0] == (416, 160)
    # the median decides: one square picture among four long ones does not
    assert auto_input_size(long_part + [np.zeros((300, 300, 3), np.uint8)], 256)[0] == (160, 416)
    # near square (within 1.25): the backbone's square, as every bundle so far
    assert auto_input_size([np.zeros((300, 370), np.uint8)] * 3, 256)[0] == (256, 256)
    assert auto_input_size([np.zeros((300, 380), np.uint8)] * 3, 256)[0] == (224, 288)
    # very long pictures: each side kept within 32-2048 and a multiple of 32
    assert auto_input_size([np.zeros((10, 4000), np.uint8)], 256)[0] == (32, 2048)


def test_auto_with_tiles_shapes_the_tile_so_the_grid_has_the_pictures_aspect():
    from fre_edge.fit.sizing import auto_input_size
    from fre_edge.tiling import Tiling

    square = [np.zeros((900, 900), np.uint8)] * 3
    # 2 rows x 3 columns of square tiles would make a 448 x 640 canvas; tiles of 320 x 224 make it square
    hw, record = auto_input_size(square, 256, ((2, 3), 0.25))
    assert hw == (320, 224) and record["median_aspect_w_over_h"] == 1.0
    assert Tiling((2, 3), hw, 0.25).canvas == (560, 560)
    # a grid that already has the pictures' aspect keeps the square tile
    assert auto_input_size([np.zeros((900, 1320), np.uint8)], 256, ((2, 3), 0.25))[0] == (256, 256)


def test_picture_sizes_are_read_upright_from_the_header(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: a viewer shows it 400 high, 100 wide
    Image.new("RGB", (400, 100)).save(tmp_path / "turned.jpg", exif=exif)
    Image.new("L", (300, 120)).save(tmp_path / "plain.png")
    assert picture_hw(tmp_path / "turned.jpg") == (400, 100)
    assert picture_hw(tmp_path / "plain.png") == (120, 300)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(FreEdgeError, match="bad.png: cannot read image .*replace or remove the file"):
        picture_hw(tmp_path / "bad.png")


def test_auto_on_real_long_pictures_fits_a_wide_model(mtd_root):
    """Magnetic Tile pictures wider than 1.5 x their height (real, long parts): auto picks a wide input of about
    the square's pixels, records why, and the fitted graph takes it."""
    from fre_edge.fit import FitConfig, fit_fre

    train = json.loads((mtd_root / "split.json").read_text())["train"]
    wide = [mtd_root / p for p in train if (lambda hw: hw[1] > 1.5 * hw[0])(picture_hw(mtd_root / p))][:40]
    assert len(wide) == 40
    fitted = fit_fre(wide, FitConfig(), progress=False)
    h, w = fitted.config.input_size
    rec = fitted.info["input_size"]
    assert rec["rule"] == "auto" and rec["images_sampled"] == 40 and rec["chosen"] == [h, w]
    a = rec["median_aspect_w_over_h"]
    assert a > 1.5 and h < w and h % 32 == 0 and w % 32 == 0
    assert w / h == pytest.approx(a, rel=0.25) and h * w == pytest.approx(256 * 256, rel=0.12)
    c, fh, fw = fitted.info["feature_shapes"][0]
    assert (fh, fw) == (h // 32, w // 32)  # stride 16, pool 2
    score, amap = fitted.detector(torch.zeros(2, h, w, 3, dtype=torch.uint8))
    assert score.shape == (2,) and amap.shape == (2, h, w)


# ----------------------------------------------------------------------------- a wide model, end to end
def test_the_fit_records_the_size_and_loads_it_back(wide_model):
    from fre_edge.fit.persist import load_model

    settings = json.loads((wide_model / "model.json").read_text())
    assert settings["config"]["input_size"] == [160, 288]
    assert settings["info"]["input_size"] == {"rule": "given", "chosen": [160, 288]}
    fitted = load_model(wide_model)
    assert fitted.config.input_size == HW and fitted.detector.input_size == HW
    # the score head, the map heads, the grid head (blocks.4 on the score's 5 x 9 grid)
    assert fitted.info["feature_shapes"] == [[112, 5, 9], [40, 20, 36], [112, 10, 18], [40, 5, 9]]


def test_the_bundle_takes_the_wide_input_on_both_backends_and_agrees_with_the_fit(wide_model, wide_bundle,
                                                                                   test_images):
    from fre_edge.fit.features import load_batch
    from fre_edge.fit.persist import load_model
    from fre_edge.runtime import load_detector

    manifest = json.loads((wide_bundle / "manifest.json").read_text())
    assert manifest["input_size"] == [160, 288]
    assert manifest["input"]["shape"] == [-1, 160, 288, 3]
    assert manifest["outputs"][1]["shape"] == [-1, 160, 288]
    fitted = load_model(wide_model)
    with torch.inference_mode():
        ref_scores, ref_maps = (t.numpy() for t in fitted.detector(load_batch(test_images, HW)))
    for backend in ("openvino", "onnxruntime"):
        det = load_detector(wide_bundle, backend=backend)
        assert tuple(det.adapter.input_hw()) == HW and det.input_size == HW
        preds = det.predict_batch(test_images)
        np.testing.assert_allclose([p.score for p in preds], ref_scores, rtol=1e-4)
        assert all(p.anomaly_map.shape == (256, 256) for p in preds)  # at the picture's own size
        _, maps = det.infer_prepared(load_batch(test_images, HW).numpy())
        assert maps.shape == (len(test_images), 160, 288)
        np.testing.assert_allclose(maps, ref_maps, atol=1e-4 * float(ref_maps.max()))
        # the runtime's resize gives the fit's pixels: a picture and the same picture pre-resized agree
        rgb = np.asarray(Image.open(test_images[0]).convert("RGB"))
        assert det.predict(rgb).score == pytest.approx(preds[0].score, rel=1e-6)


def test_eval_info_and_bench_speak_of_height_by_width(wide_model, wide_bundle, sample_root, tmp_path):
    r = run("eval", wide_model, sample_root, "-n", "2", "--quiet")
    assert r.exit_code == 0, r.output
    metrics = json.loads((wide_model / "eval.json").read_text())
    # 6 defects, 4 good images; measured with this fit (160 x 288 input, 27 fitting images)
    assert metrics["image_auroc"] == 1.0
    assert metrics["pixel_auroc"] == pytest.approx(0.9871, abs=2e-3)
    assert metrics["aupro"] == pytest.approx(0.9564, abs=5e-3)
    r = run("info", wide_bundle)
    assert r.exit_code == 0 and "efficientnet_lite0 blocks.10 (imagenet weights), 160x288 px" in r.stdout
    out = tmp_path / "bench.json"
    r = run("bench", wide_bundle, "--duration", "0.2", "--json", out, "--images", sample_root / "test")
    assert r.exit_code == 0, r.output
    assert "efficientnet_lite0 @ 160x288 px" in r.stdout
    report = json.loads(out.read_text())
    assert report["runtime"]["input_size"] == [160, 288]
    assert [e["images"] for e in report["end_to_end"]] == [10, 10]  # with and without overlays


def test_int8_keeps_the_wide_input(wide_bundle, sample_root, tmp_path, test_images):
    from fre_edge.runtime import load_detector

    out = tmp_path / "int8"
    r = run("quantize", wide_bundle, "-o", out, "--calib", sample_root / "train" / "good")
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input_size"] == [160, 288] and manifest["precision"] == "int8"
    det = load_detector(out)
    assert tuple(det.adapter.input_hw()) == HW
    f32 = load_detector(wide_bundle)
    ours, theirs = det.predict_batch(test_images), f32.predict_batch(test_images)
    # INT8 backbone, head refitted on its features: scores near the f32 bundle's (measured: within 12%)
    np.testing.assert_allclose([p.score for p in ours], [p.score for p in theirs], rtol=0.2)
    assert ours[0].anomaly_map.shape == (256, 256)


def test_served_and_model_api_wide_bundles_agree_with_the_local_runtime(wide_bundle, test_images, tmp_path):
    if not (importlib.util.find_spec("kserve") and importlib.util.find_spec("tritonclient")):
        if os.environ.get("CI"):
            pytest.fail('the serve and remote extras are missing on CI: pip install -e ".[test]"')
        pytest.skip("kserve or tritonclient not installed")  # the server runs kserve in its own process
    pytest.importorskip("model_api")
    from model_api.models import Model

    from fre_edge.runtime import load_detector
    from fre_edge.runtime.bundle import read_manifest
    from fre_edge.serve.contract import check_request
    from fre_edge.serve.model_api import f32_adapter, write_model_api
    from fre_edge.serve.process import ServeProcess

    manifest = read_manifest(wide_bundle)
    assert check_request("images", "UINT8", [1, 160, 288, 3], manifest) is None
    assert "send [N, 160, 288, 3]" in check_request("images", "UINT8", [1, 288, 160, 3], manifest)
    local = load_detector(wide_bundle)
    expect = [p.score for p in local.predict_batch(test_images[:4])]
    with ServeProcess(wide_bundle, log=tmp_path / "serve.log") as server:
        remote = load_detector(wide_bundle, backend="kserve", url=server.grpc_url)
        assert tuple(remote.adapter.input_hw()) == HW
        got = [p.score for p in remote.predict_batch(test_images[:4])]
        assert server.stop() == 0
    np.testing.assert_allclose(got, expect, rtol=1e-5)
    model = Model.create_model(f32_adapter(write_model_api(wide_bundle, tmp_path / "ma")))
    th = manifest["thresholds"]["image"]
    for path, score in zip(test_images[:4], expect):
        rgb = np.asarray(Image.open(path).convert("RGB").resize((288, 160), Image.LANCZOS))
        assert model(rgb).pred_score == pytest.approx(min(1.0, 0.5 * local.predict(rgb).score / th), rel=1e-4)


# ----------------------------------------------------------------------------- bad input: one line each
@pytest.mark.parametrize("size, message", [
    ("16x300", "'16x300': each side must be 32 to 2048 pixels"),
    ("12a", "'12a' is not auto, N or HxW; use e.g. auto, 256 or 192x480"),
    ("160x", "'160x' is not auto, N or HxW"),
])
def test_a_bad_input_size_is_one_line_and_writes_nothing(sample_root, tmp_path, size, message):
    r = run("fit", sample_root, "-o", tmp_path / "m", "--input-size", size, "--quiet")
    assert message in one_error_line(r)
    assert not (tmp_path / "m").exists()


def test_export_of_a_model_folder_refuses_another_input_size(wide_model, tmp_path):
    r = run("export", wide_model, "-o", tmp_path / "b", "--input-size", "256")
    assert "--input-size applies to the one-step form" in one_error_line(r)
    assert not (tmp_path / "b").exists()


def test_a_model_json_with_a_bad_input_size_is_refused(wide_model, tmp_path):
    from fre_edge.fit.persist import load_model

    copy = tmp_path / "m"
    shutil.copytree(wide_model, copy)
    settings = json.loads((copy / "model.json").read_text())
    settings["config"]["input_size"] = [160, "288"]
    (copy / "model.json").write_text(json.dumps(settings))
    with pytest.raises(FreEdgeError, match="input size .* is not N or HxW"):
        load_model(copy)
