"""Tiling: pictures scored as overlapping tiles by the one exported graph: the geometry, the fit
(held, streamed, on Dask), export, both backends, eval, bench, predict, INT8, serving, and one line per bad
setting or tampered manifest."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil

import numpy as np
import pytest

from cli_helpers import one_error_line, run
from fre_edge.errors import FreEdgeError
from fre_edge.tiling import Tiling, parse_grid, tiles_of

TILE = 160


# ----------------------------------------------------------------------------- geometry
def test_the_grid_covers_the_canvas_with_overlapping_tiles():
    t = Tiling((2, 3), (160, 192), 0.25)
    assert t.count == 6 and t.stride == (120, 144) and t.canvas == (280, 480)
    assert t.origins() == [(0, 0), (0, 144), (0, 288), (120, 0), (120, 144), (120, 288)]
    canvas = np.arange(280 * 480 * 3, dtype=np.uint32).reshape(280, 480, 3).astype(np.uint8)
    tiles = t.split(canvas)
    assert tiles.shape == (6, 160, 192, 3) and np.array_equal(tiles[4], canvas[120:280, 144:336])
    # a field cut into tiles and stitched back is the field (overlaps averaged from equal values)
    field = np.random.default_rng(0).random((280, 480)).astype(np.float32)
    maps = np.stack([field[y:y + 160, x:x + 192] for y, x in t.origins()])
    np.testing.assert_allclose(t.stitch(maps), field, rtol=1e-6)
    # overlaps are the mean of the tiles that cover them
    stitched = t.stitch(np.stack([np.full((160, 192), i, np.float32) for i in range(6)]))
    assert stitched[0, 0] == 0 and stitched[0, 150] == 0.5 and stitched[130, 150] == pytest.approx(2.0)
    # two pictures: the largest tile score each, their maps stitched
    s, m = t.reduce(np.array([1, 5, 2, 0, 0, 3, 7, 1, 1, 1, 1, 1.0]), np.zeros((12, 160, 192)))
    assert s.tolist() == [5.0, 7.0] and m.shape == (2, 280, 480)
    assert Tiling.from_json(json.loads(json.dumps(t.to_json()))) == t


def test_tiles_of_a_picture_follow_the_fit_s_resize(sample_root):
    from fre_edge.images import read_for_model

    t = Tiling((2, 2), (TILE, TILE))
    path = sorted(sample_root.glob("test/*/*.png"))[0]
    tiles, hw = tiles_of(path, t)
    canvas, _ = read_for_model(path, t.canvas)
    assert hw == (256, 256) and tiles.shape == (4, TILE, TILE, 3) and np.array_equal(tiles, t.split(canvas))


@pytest.mark.parametrize("grid, message", [
    ("2", "tiles '2' is not RxC"), ("0x3", "tiles '0x3' is not RxC"), ("9x9", "make 81 tiles a picture"),
    ([2, True], "is not RxC"),
])
def test_bad_grids_are_refused(grid, message):
    with pytest.raises(FreEdgeError, match=message):
        parse_grid(grid)


# ----------------------------------------------------------------------------- a tiled model, end to end
@pytest.fixture(scope="module")
def tiled(sample_root, tmp_path_factory):
    """A real fit on the sample as 2 x 2 tiles of 160 px (canvas 280 x 280), and its bundle."""
    root = tmp_path_factory.mktemp("tiled")
    r = run("fit", sample_root, "-o", root / "model", "--tiles", "2x2", "--input-size", TILE, "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["tiles"]["canvas"] == [280, 280]
    r = run("export", root / "model", "-o", root / "bundle", "--quiet")
    assert r.exit_code == 0, r.output
    return root / "model", root / "bundle"


@pytest.fixture(scope="module")
def test_images(sample_root):
    return sorted(sample_root.glob("test/*/*.png"))


def test_the_fit_records_the_tiling_and_its_thresholds_are_per_picture(tiled, sample_root):
    from fre_edge.fit.persist import load_model

    fitted = load_model(tiled[0])
    assert fitted.tiling == Tiling((2, 2), (TILE, TILE), 0.25)
    info = fitted.info
    assert info["tiling"]["subspace"] == "shared by every tile position"
    assert info["tiling"]["image_score"] == "the largest tile score"
    # 27 fitting pictures x 4 tiles: the subspace saw 108 samples (k > the 26 a picture-level fit could keep)
    assert info["n_components"] == [31, 16, 16, 5]  # the unpooled map heads 16 each, the grid head 97% (4 x 4 grid)
    # thresholds from the 3 held-out pictures' largest tile scores, not from 12 tiles
    assert info["thresholds"]["n_images"] == 3


def test_both_backends_give_the_fit_s_scores_and_maps(tiled, test_images):
    from fre_edge.fit.evaluate import score_images
    from fre_edge.fit.persist import load_model
    from fre_edge.runtime import load_detector

    fitted = load_model(tiled[0])
    ref_s, ref_m = score_images(fitted.detector, test_images, progress=False, tiling=fitted.tiling)
    assert ref_m.shape == (len(test_images), 280, 280)
    manifest = json.loads((tiled[1] / "manifest.json").read_text())
    assert manifest["tiling"]["grid"] == [2, 2] and manifest["input"]["shape"] == [-1, TILE, TILE, 3]
    for backend in ("openvino", "onnxruntime"):
        det = load_detector(tiled[1], backend=backend)
        assert det.tiling == fitted.tiling
        preds = det.predict_batch(test_images)
        np.testing.assert_allclose([p.score for p in preds], ref_s, rtol=1e-4)
        np.testing.assert_allclose(np.stack([p.model_map for p in preds]), ref_m, atol=1e-4 * float(ref_m.max()))
        assert preds[0].anomaly_map.shape == (256, 256)  # at the picture's own size
        # the score is the largest tile's: scoring the tiles alone gives it
        tiles, _ = det.prepare(test_images[0])
        scores, _ = det.infer_prepared(tiles)
        assert preds[0].score == pytest.approx(float(scores.max()), rel=1e-6)


def test_eval_bench_info_and_predict_on_a_tiled_model(tiled, sample_root, tmp_path):
    model, bundle = tiled
    r = run("eval", model, sample_root, "-n", "2", "--quiet")
    assert r.exit_code == 0, r.output
    m = json.loads((model / "eval.json").read_text())
    # measured with this fit: 6 defects, 4 good pictures, metrics on the 280 x 280 stitched maps
    assert m["image_auroc"] == 1.0
    assert m["pixel_auroc"] == pytest.approx(0.9891, abs=2e-3)
    assert m["aupro"] == pytest.approx(0.9613, abs=5e-3)
    r = run("info", bundle)
    assert r.exit_code == 0 and "160 px tiles, 2x2 a picture (canvas 280)" in r.stdout
    r = run("bench", bundle, "--duration", "0.2", "--json", tmp_path / "b.json")
    assert r.exit_code == 0, r.output
    assert "pictures (4 tiles each)" in r.stdout
    assert json.loads((tmp_path / "b.json").read_text())["runtime"]["tiles_per_picture"] == 4
    r = run("predict", bundle, sample_root / "test", "--out", tmp_path / "p", "--no-overlays")
    assert r.exit_code in (0, 1), r.output
    rows = json.loads((tmp_path / "p" / "scores.json").read_text())
    assert len(rows["images"] if isinstance(rows, dict) else rows) == 10


def test_the_streamed_fit_of_tiles_equals_the_held_one(sample_root):
    from fre_edge.fit import FitConfig, fit_fre
    from fre_edge.fit.data import read_dataset

    ds = read_dataset(sample_root)
    train = [s.path for s in ds.train]
    # a streamed fit has no map heads and no position-free score
    cfg = dict(tiles=(2, 2), input_size=128, pool=4, map_layers=(), position_free="off")
    held = fit_fre(train, FitConfig(**cfg, strategy="gram"), progress=False)
    streamed = fit_fre(train, FitConfig(**cfg, strategy="covariance"), progress=False)
    assert streamed.info["fitted_by"]["features"].startswith("streamed")
    _assert_same(held, streamed, [s.path for s in ds.test])


def test_a_tiled_fit_on_dask_equals_the_one_process_fit(sample_root):
    if importlib.util.find_spec("distributed") is None:
        if os.environ.get("CI"):
            pytest.fail('the dask extra is missing on CI: pip install -e ".[test]"')
        pytest.skip("dask.distributed not installed")
    from fre_edge.cluster.engine import dask_client
    from fre_edge.fit import FitConfig, fit_fre
    from fre_edge.fit.data import read_dataset

    ds = read_dataset(sample_root)
    train = [str(s.path.resolve()) for s in ds.train]
    # a streamed fit has no map heads and no position-free score
    cfg = dict(tiles=(2, 2), input_size=128, pool=4, map_layers=(), position_free="off")
    here = fit_fre(train, FitConfig(**cfg, strategy="covariance"), progress=False)
    with dask_client("local:2") as client:
        remote = fit_fre(train, FitConfig(**cfg), progress=False, client=client, partition_size=10)
    assert remote.info["fitted_by"]["fit_partitions"] == 3
    _assert_same(here, remote, [s.path for s in ds.test])


def _assert_same(a, b, paths):
    """Same thresholds and scores: to 1e-4 here (D = 448 at 128 px and pool 4, held-out scores near the small
    residual the Gram and covariance routes compute with different rounding)."""
    from fre_edge.fit.evaluate import score_images

    assert a.info["n_components"] == b.info["n_components"]
    for key in ("image", "pixel"):
        assert b.info["thresholds"][key] == pytest.approx(a.info["thresholds"][key], rel=1e-4)
    sa, ma = score_images(a.detector, paths, progress=False, tiling=a.tiling)
    sb, mb = score_images(b.detector, paths, progress=False, tiling=b.tiling)
    np.testing.assert_allclose(sb, sa, rtol=1e-4)
    np.testing.assert_allclose(mb, ma, atol=1e-4 * float(ma.max()))


def test_int8_keeps_the_tiling(tiled, sample_root, tmp_path, test_images):
    from fre_edge.runtime import load_detector

    out = tmp_path / "int8"
    r = run("quantize", tiled[1], "-o", out, "--calib", sample_root / "train" / "good")
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["tiling"] == json.loads(
        (tiled[1] / "manifest.json").read_text())["tiling"]
    # thresholds from held-out good pictures' largest tile scores (7 of the 30 calibration pictures)
    assert manifest["thresholds"]["n_images"] == 7
    det = load_detector(out)
    preds = det.predict_batch(test_images)
    assert det.tiling.count == 4 and preds[0].model_map.shape == (280, 280)
    f32 = load_detector(tiled[1]).predict_batch(test_images)
    # INT8 backbone, head refitted on its tiles: scores near the f32 bundle's
    np.testing.assert_allclose([p.score for p in preds], [p.score for p in f32], rtol=0.35)


def test_a_served_tiled_bundle_gives_the_local_scores(tiled, test_images, tmp_path):
    if not (importlib.util.find_spec("kserve") and importlib.util.find_spec("tritonclient")):
        if os.environ.get("CI"):
            pytest.fail('the serve and remote extras are missing on CI: pip install -e ".[test]"')
        pytest.skip("kserve or tritonclient not installed")
    from fre_edge.runtime import load_detector
    from fre_edge.serve.process import ServeProcess

    local = [p.score for p in load_detector(tiled[1]).predict_batch(test_images[:5])]
    with ServeProcess(tiled[1], log=tmp_path / "serve.log") as server:
        remote = load_detector(tiled[1], backend="kserve", url=server.http_url)
        got = remote.predict_batch(test_images[:5])  # 20 tiles in one request
        assert server.stop() == 0
    np.testing.assert_allclose([p.score for p in got], local, rtol=1e-5)
    assert got[0].model_map.shape == (280, 280)


def test_archive_scoring_of_a_tiled_bundle_equals_predict(tiled, test_images, tmp_path):
    if not (importlib.util.find_spec("distributed") and importlib.util.find_spec("pyarrow")):
        if os.environ.get("CI"):
            pytest.fail('the dask extra is missing on CI: pip install -e ".[test]"')
        pytest.skip("dask.distributed or pyarrow not installed")
    from fre_edge.cluster.archive import read_scores
    from fre_edge.runtime import load_detector

    det = load_detector(tiled[1])
    expected = {str(p.resolve()): det.predict(p).to_dict() for p in test_images}
    r = run("archive", tiled[1], test_images[0].parent.parent, "--out", tmp_path / "a", "--partition-size", "4",
            "--quiet")
    assert r.exit_code == 1, r.output  # the sample's test set holds defects
    rows = read_scores(tmp_path / "a").to_pylist()
    assert [x["path"] for x in rows] == sorted(expected)
    for x in rows:
        e = expected[x["path"]]
        assert x["score"] == pytest.approx(e["score"], rel=1e-5) and x["label"] == e["label"]
        assert x["bbox"] == e["bbox"] and x["error"] is None


# ----------------------------------------------------------------------------- bad input: one line each
@pytest.mark.parametrize("args, message", [
    (("--tiles", "9x9"), "tiles 9x9 make 81 tiles a picture; use at most 64"),
    (("--tiles", "2"), "tiles '2' is not RxC; use e.g. 2x3"),
    (("--tiles", "2x2", "--tile-overlap", "0.7"), "0.7 is not in the range 0<=x<=0.5"),
])
def test_bad_tile_settings_are_one_line_and_write_nothing(sample_root, tmp_path, args, message):
    r = run("fit", sample_root, "-o", tmp_path / "m", *args, "--quiet")
    assert message in one_error_line(r)
    assert not (tmp_path / "m").exists()


def test_model_api_refuses_a_tiled_bundle_in_one_line(tiled, tmp_path):
    r = run("model-api", tiled[1], "-o", tmp_path / "ma")
    assert "scores pictures as tiles, which Model API's one-image wrapper cannot cut" in one_error_line(r)
    assert not (tmp_path / "ma").exists()


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update(tile=[128, 128], canvas=[224, 224]), "has tiles of 128 x 128, not the input's 160 x 160"),
    (lambda t: t.update(canvas=[300, 300]), "canvas [300, 300] does not follow from its grid"),
    (lambda t: t.update(grid=[0, 2]), "tiles [0, 2] is not RxC"),
    (lambda t: t.update(grid=2), "tiles 2 is not RxC"),
])
def test_a_tampered_tiling_is_refused(tiled, tmp_path, test_images, change, message):
    from fre_edge.runtime.bundle import validate_metadata

    manifest = json.loads((tiled[1] / "manifest.json").read_text())
    change(manifest["tiling"])
    with pytest.raises(FreEdgeError, match=re.escape(message)) as err:
        validate_metadata(manifest, "m")
    assert "metadata field 'tiling'" in str(err.value) and str(err.value).endswith("re-export the bundle")
    copy = tmp_path / "b"
    shutil.copytree(tiled[1], copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert "'tiling'" in one_error_line(run("predict", copy, test_images[0]))
    assert not (copy / "scores.csv").exists()
