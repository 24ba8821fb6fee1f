import json
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fre_edge.cli import cli
from fre_edge.errors import FreEdgeError
from fre_edge.fit.evaluate import score_images
from fre_edge.runtime import load_detector

BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in {"torch", "torchvision", "nncf"}:
                raise ImportError(f"{name} is blocked in this test")
            return None
    sys.meta_path.insert(0, Block())
    """
)


def test_runtime_and_cli_run_without_torch(sample_bundle, sample_root, tmp_path):
    code = BLOCK_TORCH + textwrap.dedent(
        f"""
        from fre_edge.runtime import load_detector
        det = load_detector({str(sample_bundle)!r})
        p = det.predict({str(sample_root / "test" / "broken_large" / "000.png")!r})
        assert p.anomaly_map.shape == (256, 256), p.anomaly_map.shape
        det2 = load_detector({str(sample_bundle)!r}, backend="onnxruntime")
        from fre_edge.cli import main
        import sys
        for args in (["predict", {str(sample_bundle)!r}, {str(sample_root / "test")!r},
                      "--out", {str(tmp_path / "o")!r}, "--quiet"],
                     ["bench", {str(sample_bundle)!r}, "--duration", "0.2"], ["bench", "--help"], ["predict", "--help"],
                     ["info", {str(sample_bundle)!r}]):
            try:
                main(args)
            except SystemExit as e:
                assert e.code in (0, 1, None), (args, e.code)
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "nncf")]
        print("NO-TORCH-OK")
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "NO-TORCH-OK" in r.stdout
    assert (tmp_path / "o" / "scores.csv").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_runtime_matches_torch_reference_on_real_images(bottle_fit, bottle_bundle, backend):
    ds, fitted = bottle_fit
    paths = [s.path for s in ds.test][::4]
    ref_s, ref_m = score_images(fitted.detector, paths, progress=False)
    det = load_detector(bottle_bundle, backend=backend)
    preds = det.predict_batch(paths)
    s = np.array([p.score for p in preds])
    assert np.abs(s / ref_s - 1).max() < 1e-4
    # maps come back at the original size (512 x 512 here), resized from the model's map
    from fre_edge.images import resize_map

    for p, m in zip(preds, ref_m):
        assert p.anomaly_map.shape == (512, 512)
        ref_full = resize_map(m, 512, 512)
        assert np.abs(p.anomaly_map - ref_full).max() <= 1e-4 * np.abs(ref_full).max()
        np.testing.assert_array_equal(p.mask, p.anomaly_map > det.pixel_threshold)
    assert [p.anomalous for p in preds] == [bool(v > det.image_threshold) for v in s]


def test_any_size_and_channels(sample_bundle):
    det = load_detector(sample_bundle)
    rng = np.random.default_rng(0)
    for img in (rng.integers(0, 255, (100, 300), dtype=np.uint8),
                rng.integers(0, 255, (50, 60, 4), dtype=np.uint8),
                rng.integers(0, 65535, (80, 80, 3), dtype=np.uint16),
                rng.random((64, 64, 3))):
        p = det.predict(img)
        assert p.anomaly_map.shape == img.shape[:2] and p.mask.dtype == bool and np.isfinite(p.score)


def test_batch_one_runs_on_a_graph_compiled_for_it(sample_bundle):
    """Loaded with its dynamic batch, the OpenVINO adapter compiles the graph again at a fixed batch for the sizes
    in FIXED_BATCHES (batch 1) when they come; other sizes run on the dynamic graph. Same scores and maps."""
    from fre_edge.runtime.adapters import FIXED_BATCHES

    det = load_detector(sample_bundle)
    adapter = det.adapter
    assert adapter.model.input(0).get_partial_shape()[0].is_dynamic and FIXED_BATCHES == (1,)
    x = np.random.default_rng(1).integers(0, 256, (3, *det.input_size, 3), dtype=np.uint8)
    dynamic = adapter.request()  # the graph as loaded
    for n in (1, 3, 2, 1):
        out = adapter.infer(x[:n])
        dynamic.infer({0: x[:n]})
        for i, name in enumerate(adapter.output_names):
            want = dynamic.get_output_tensor(i).data
            assert out[name].shape == want.shape and out[name].shape[0] == n
            np.testing.assert_allclose(out[name], want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))
    shape = adapter._fixed[1].inputs[0].get_partial_shape()
    assert list(adapter._fixed) == [1] and shape.is_static and shape[0].get_length() == 1
    assert adapter._compiled_for(1) is adapter._fixed[1] and adapter._compiled_for(3) is adapter.compiled
    # a detector loaded with batch= keeps its one fixed graph
    assert load_detector(sample_bundle, batch=2).adapter._fixed is None


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_threads_get_their_own_results(sample_bundle, sample_root, backend):
    det = load_detector(sample_bundle, backend=backend)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((sample_root / "test").rglob("*.png"))]
    images = images[:6] + [images[0][::-1].copy(), images[1][:, ::-1].copy()]  # flipped: different answers
    expected = [det.predict(img).score for img in images]
    assert len(set(np.round(expected, 3))) == 8  # 8 different answers to tell apart

    def camera(k):
        out = []
        for i in range(50):
            j = (k + i) % 8
            out.append((j, det.predict(images[j]).score))
        return out

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(camera, range(8)))
    for out in results:
        for j, score in out:
            assert score == pytest.approx(expected[j], rel=1e-5)


def test_predict_cli_outputs_and_exit_status(sample_bundle, sample_root, tmp_path):
    r = CliRunner().invoke(cli, ["predict", str(sample_bundle), str(sample_root / "test" / "broken_large"),
                                 "--out", str(tmp_path / "o"), "--quiet"])
    assert r.exit_code == 1, r.output  # the broken bottles are anomalous
    data = json.loads((tmp_path / "o" / "scores.json").read_text())
    assert len(data["images"]) == 2 and all(i["label"] == "anomalous" for i in data["images"])
    assert data["runtime"]["precision_used"] == "f32"
    assert len(list((tmp_path / "o").glob("*.jpg"))) == 2
    assert (tmp_path / "o" / "scores.csv").read_text().startswith("path,score,label")
    for item in data["images"]:  # the box holds the mask's pixels, inside the image
        x0, y0, x1, y1 = item["bbox"]
        assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256 and item["anomalous_pixels"] <= (x1 - x0) * (y1 - y0)
        assert item["peak"] > data["pixel_threshold"]


def test_prediction_bbox():
    from fre_edge.runtime.detector import Prediction

    mask = np.zeros((6, 8), bool)
    mask[2:4, 1] = mask[3, 5] = True
    p = Prediction.from_map(1.0, True, mask.astype(np.float32), mask)
    assert p.bbox == (1, 2, 6, 4) and p.to_dict()["bbox"] == [1, 2, 6, 4]
    none = Prediction.from_map(0.0, False, np.zeros((6, 8), np.float32), np.zeros((6, 8), bool))
    assert none.to_dict()["bbox"] is None
    # lazily: the map at the image's size is made from the model's map only when asked for
    lazy = Prediction(2.0, True, np.arange(16, dtype=np.float32).reshape(4, 4), (8, 6), 7.5)
    assert lazy._map is None and lazy.anomaly_map.shape == (8, 6) and lazy.mask.shape == (8, 6)
    np.testing.assert_array_equal(lazy.mask, lazy.anomaly_map > 7.5)
    # nothing of the model map above the pixel threshold: no pixel of the full map is, and it is never made
    rng = np.random.default_rng(0)
    for threshold in (0.5, 0.999, 1.5):
        small = rng.random((8, 8)).astype(np.float32)
        lazy = Prediction(1.0, False, small, (300, 200), threshold).to_dict()
        eager = Prediction(1.0, False, small, (300, 200), threshold)
        assert eager.anomaly_map.shape == (300, 200)  # made first: to_dict then counts on it
        assert lazy == eager.to_dict() and (lazy["anomalous_pixels"] == 0 if threshold > 1 else True)
        assert lazy["peak"] == float(small.max()) >= float(eager.anomaly_map.max())
    quiet = Prediction(1.0, False, np.full((8, 8), 0.2, np.float32), (3000, 4000), 0.5)
    assert quiet.to_dict()["anomalous_pixels"] == 0 and quiet._map is None


def test_predict_cli_threshold_override(sample_bundle, sample_root, tmp_path):
    """--threshold replaces the bundle's image threshold: set above every score, nothing is anomalous."""
    images = str(sample_root / "test" / "broken_large")
    r = CliRunner().invoke(cli, ["predict", str(sample_bundle), images, "--out", str(tmp_path / "a"), "--quiet",
                                 "--no-overlays"])
    assert r.exit_code == 1, r.output
    top = max(i["score"] for i in json.loads((tmp_path / "a" / "scores.json").read_text())["images"])
    r = CliRunner().invoke(cli, ["predict", str(sample_bundle), images, "--out", str(tmp_path / "b"), "--quiet",
                                 "--no-overlays", "--threshold", str(2 * top), "--pixel-threshold", "1e30"])
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "b" / "scores.json").read_text())
    assert data["image_threshold"] == 2 * top and data["thresholds_from"] == "command line"
    assert all(i["label"] == "good" for i in data["images"])


def test_info_cli(sample_bundle, tmp_path):
    """info reports an intact bundle (exit 0, text and JSON) and refuses a damaged one (exit 2, one line)."""
    r = CliRunner().invoke(cli, ["info", str(sample_bundle)])
    assert r.exit_code == 0, r.output
    assert "checksums ok" in r.stdout and "efficientnet_lite0 blocks.10" in r.stdout and "head one_pass" in r.stdout
    r = CliRunner().invoke(cli, ["info", str(sample_bundle), "--json"])
    report = json.loads(r.stdout)
    assert report["checksums"] == "ok" and report["manifest"]["input_size"] == 224
    assert report["runtimes"]["openvino"] and report["machine"]["logical_cores"] >= 1
    bad = tmp_path / "bad"
    shutil.copytree(sample_bundle, bad)
    (bad / "model.onnx").write_bytes(b"not a model")
    r = CliRunner().invoke(cli, ["info", str(bad)])
    assert r.exit_code == 2 and "model.onnx: checksum mismatch" in r.stderr and r.stdout == ""


def test_bench_cli_json(sample_bundle, tmp_path):
    out = tmp_path / "b.json"
    r = CliRunner().invoke(cli, ["bench", str(sample_bundle), "--duration", "0.3", "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["runtime"]["precision_used"] == "f32" and res["machine"]["logical_cores"] >= 1
    assert res["bench"]["sync"]["fps"] > 0 and res["bench"]["async"]["fps"] > 0
    assert "Intel Xeon 8280" in r.output and "this machine" in r.output
    r = CliRunner().invoke(cli, ["bench", str(sample_bundle), "--duration", "0.3", "--backbone-only"])
    assert r.exit_code == 0 and "[backbone only]" in r.output


def test_bench_head_cost(sample_bundle, tmp_path):
    """--head-cost times the whole graph against the backbone alone in the same rounds; bad combinations are
    one line each and write no JSON."""
    out = tmp_path / "b.json"
    r = CliRunner().invoke(cli, ["bench", str(sample_bundle), "--duration", "0.4", "--head-cost", "--json", str(out)])
    assert r.exit_code == 0, r.output
    h = json.loads(out.read_text())["head_cost"]
    assert h["rounds"] == 10 and h["batch"] == 1 and min(h["calls"].values()) >= 3 * h["rounds"]
    assert h["ratio"] == pytest.approx(h["full_ms"] / h["backbone_ms"]) and h["backbone_ms"] > 0
    assert h["head_ms"] == pytest.approx(h["full_ms"] - h["backbone_ms"])
    assert h["ratio_round_quartiles"][0] <= h["ratio_round_quartiles"][1]
    assert f"= {h['ratio']:.3f}" in r.output and "FRE head: full graph" in r.output
    # above 1.10, a bundle with f32 head weights is pointed to --head-weights int8; an INT8-head one is not
    from fre_edge.bench import HEAD_COST_HINT, format_table

    res = json.loads(out.read_text())
    for ratio, head_weights, hint in ((HEAD_COST_HINT + 0.1, None, True), (HEAD_COST_HINT - 0.05, None, False),
                                      (HEAD_COST_HINT + 0.1, {"stored": "int8", "at_run": ["u8", "u8"]}, False)):
        res["head_cost"].update(ratio=ratio, ratio_round_quartiles=[ratio - 0.01, ratio + 0.01], within_noise=False)
        res["runtime"].pop("head_weights", None)
        if head_weights:
            res["runtime"]["head_weights"] = head_weights
        assert ("--head-weights int8" in format_table(res)) == hint, (ratio, head_weights)
    # a ratio under 1 (the head costing negative time), or rounds spread wider than the effect: said to be noise
    from fre_edge.bench import within_noise

    for ratio, q1, q3, noise in ((0.867, 0.80, 0.95, True), (1.05, 0.97, 1.12, True), (1.04, 1.0, 1.2, True),
                                 (1.20, 1.17, 1.23, False), (1.02, 1.015, 1.025, False)):
        assert within_noise(ratio, q1, q3) == noise, (ratio, q1, q3)
    res["runtime"].pop("head_weights", None)
    res["head_cost"].update(ratio=0.867, ratio_round_quartiles=[0.8, 0.95], within_noise=True)
    table = format_table(res)
    assert "within noise" in table and "--duration 60" in table and "--head-weights int8" not in table
    out.unlink()
    for args, message in ((["--backbone-only"], "drop --backbone-only"),
                          (["--backend", "onnxruntime"], "use --backend openvino"),
                          (["--server", "grpc://127.0.0.1:9"], "drop it with --server")):
        r = CliRunner().invoke(cli, ["bench", str(sample_bundle), "--duration", "0.1", "--head-cost", "--json",
                                     str(out), *args])
        assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output
        assert not out.exists()


def test_bench_end_to_end_from_files(sample_bundle, sample_root, tmp_path):
    out = tmp_path / "b.json"
    r = CliRunner().invoke(cli, ["bench", str(sample_bundle), "--duration", "0.2", "--batch", "4", "--images",
                                 str(sample_root / "test"), "--json", str(out)])
    assert r.exit_code == 0, r.output
    e2e = json.loads(out.read_text())["end_to_end"]
    # one pass at least over the 10 pictures, in batches of 4 (the last one short), without and with overlays
    assert [row["overlays"] for row in e2e] == [False, True]
    assert all(row["images"] == 10 and row["passes"] >= 1 and row["images_per_s"] > 0 for row in e2e)
    assert "End to end from 10 image files" in r.output and "with overlays" in r.output
    (tmp_path / "empty").mkdir()
    for args, message in ((["--images", str(tmp_path / "none")], "none: no such folder"),
                          (["--images", str(tmp_path / "empty")], "empty: no images found"),
                          (["--images", str(sample_root / "test"), "--backbone-only"], "drop --backbone-only")):
        r = CliRunner().invoke(cli, ["bench", str(sample_bundle), "--duration", "0.1", *args])
        assert r.exit_code == 2 and message in r.stderr, r.output


def _run(args):
    return CliRunner().invoke(cli, args)


def test_runtime_bad_inputs(sample_bundle, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    (tmp_path / "empty").mkdir()
    old = tmp_path / "old"
    shutil.copytree(sample_bundle, old)
    m = json.loads((old / "manifest.json").read_text())
    m["schema_version"] = 0
    (old / "manifest.json").write_text(json.dumps(m))
    cases = [
        (["predict", str(sample_bundle), str(not_image)], "notes.png: cannot read image"),
        (["predict", str(sample_bundle), str(tmp_path / "empty")], "no images found"),
        (["predict", str(sample_bundle), str(tmp_path / "missing.png")], "no such file or folder"),
        (["predict", str(old), str(not_image)], "re-export the bundle"),
        (["bench", str(sample_bundle), "--device", "NPU9"], "device 'NPU9' is not available"),
        (["bench", str(tmp_path / "nobundle")], "no such bundle"),
        (["bench", str(sample_bundle), "--backend", "onnxruntime", "--precision", "bf16"], "runs f32"),
        (["predict", str(sample_bundle), str(not_image), "--threshold", "0"], "Invalid value for '--threshold'"),
        (["predict", str(sample_bundle)], "Missing argument 'IMAGES...'"),
        (["predict", str(sample_bundle), str(not_image), "--batch-size", "0"], "'--batch-size': 0 is not in the range"),
        (["bench", str(sample_bundle), "--mode", "fast"], "see: fre-edge bench --help"),
        (["info", str(tmp_path / "nobundle")], "no manifest.json"),
        (["eval", str(sample_bundle), str(tmp_path / "empty"), "-n", "-1"], "'-n' / '--num-pictures': -1 is not in"),
        (["eval", str(sample_bundle), str(tmp_path / "empty"), "--batch-size", "0"], "'--batch-size': 0 is not in"),
        (["info", str(old)], "re-export the bundle"),
    ]
    for args, message in cases:
        r = _run(args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("cmd", ["fit", "eval", "export", "quantize", "predict", "bench", "info"])
def test_every_help(cmd):
    """Each command's help is its docstring's first line, under the group's list of every command."""
    from fre_edge.cli import COMMANDS

    r = _run([cmd, "--help"])
    assert r.exit_code == 0 and r.output.startswith(f"Usage: cli {cmd} [OPTIONS]")
    group = _run(["--help"])
    assert group.exit_code == 0 and all(name in group.output for name in COMMANDS)


def test_backbone_only_refuses_a_graph_without_an_fre_head():
    import openvino as ov
    import openvino.opset13 as ops

    from fre_edge.runtime.adapters import cut_to_backbone

    x = ops.parameter([1, 3, 8, 8], np.float32)
    plain = ov.Model([ops.relu(x)], [x], "not_fre")
    with pytest.raises(FreEdgeError, match="cannot find the FRE head.*fre-edge bundle"):
        cut_to_backbone(plain)


def test_a_verdict_is_made_without_the_full_size_map():
    """Box, anomalous pixels and peak come from the model's map scaled to the picture: the full-size map is
    never made for them, and they agree with it to one cell of the model map."""
    from fre_edge.runtime.detector import Prediction

    rng = np.random.default_rng(1)
    model_map = rng.random((32, 32)).astype(np.float32) * 0.5
    model_map[10:14, 20:27] = 2.0  # a defect
    p = Prediction(9.0, True, model_map, (1944, 2592), 1.0)  # a 5 MP picture
    d = p.to_dict()
    assert p._map is None  # never made
    x0, y0, x1, y1 = d["bbox"]
    cell_h, cell_w = 1944 / 32, 2592 / 32
    full = Prediction(9.0, True, model_map, (1944, 2592), 1.0).mask  # the full-size mask, for reference
    rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
    fx0, fy0, fx1, fy1 = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    assert abs(x0 - fx0) <= cell_w and abs(x1 - fx1) <= cell_w and abs(y0 - fy0) <= cell_h and abs(y1 - fy1) <= cell_h
    assert d["anomalous_pixels"] == pytest.approx(int(full.sum()), rel=0.35)
    assert d["peak"] == pytest.approx(2.0)
