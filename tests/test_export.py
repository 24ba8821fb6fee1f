import json
import shutil

import numpy as np
import pytest
import torch

from fre_edge.errors import FreEdgeError
from fre_edge.fit.evaluate import score_images
from fre_edge.fit.features import load_batch
from fre_edge.fit.metrics import auroc
from fre_edge.runtime import load_backbone_only, load_detector
from fre_edge.runtime.bundle import SCHEMA_VERSION


@pytest.mark.slow
def test_parity_torch_onnxruntime_openvino_on_real_bottle(bottle_fit, bottle_bundle):
    ds, fitted = bottle_fit
    paths = [s.path for s in ds.test]
    labels = [s.label for s in ds.test]
    ref_s, ref_m = score_images(fitted.detector, paths, progress=False)
    batch = load_batch(paths, fitted.config.input_size).numpy()
    ref_auc = auroc(labels, ref_s)
    assert ref_auc >= 0.99
    for backend in ("onnxruntime", "openvino"):
        det = load_detector(bottle_bundle, backend=backend, precision="f32")
        assert det.adapter.precision_used == "f32"
        s, m = [], []
        for i in range(0, len(batch), 16):
            si, mi = det.infer_prepared(batch[i : i + 16])
            s.append(si)
            m.append(mi)
        s, m = np.concatenate(s), np.concatenate(m)
        rel = np.abs(s / ref_s - 1)
        assert rel.max() < 1e-4, (backend, rel.max())
        assert np.abs(m - ref_m).max() <= 1e-4 * np.abs(ref_m).max(), backend
        assert auroc(labels, s) == ref_auc, backend


def test_batch_1_and_8(sample_model, sample_bundle, sample_root):
    fitted = sample_model[1]
    # test images (training images are reconstructed almost exactly: scores near 0, no relative scale)
    paths = (sorted((sample_root / "test").rglob("*.png")) * 2)[:8]
    x = load_batch(paths, fitted.config.input_size)
    with torch.inference_mode():
        ref_s, _ = fitted.detector(x)
    for backend in ("openvino", "onnxruntime"):
        det = load_detector(sample_bundle, backend=backend)
        s8, m8 = det.infer_prepared(x.numpy())
        s1, m1 = det.infer_prepared(x.numpy()[:1])
        assert s8.shape == (8,) and m8.shape == (8, 224, 224) and s1.shape == (1,)
        np.testing.assert_allclose(s8, ref_s.numpy(), rtol=1e-4)
        np.testing.assert_allclose(s1[0], s8[0], rtol=1e-5)


def test_metadata_round_trip_ir_and_onnx(sample_model, sample_bundle, tmp_path):
    manifest = json.loads((sample_bundle / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["backbone"] == "efficientnet_lite0" and manifest["input_size"] == 224
    assert manifest["thresholds"]["image"] == sample_model[1].info["thresholds"]["image"]
    assert set(manifest["files"]) == {"model.xml", "model.bin", "model.onnx"}
    # lone files, away from their manifest, still describe themselves
    lone = tmp_path / "lone"
    lone.mkdir()
    for name in ("model.xml", "model.bin", "model.onnx"):
        shutil.copy(sample_bundle / name, lone / name)
    for path, backend in ((lone / "model.xml", "openvino"), (lone / "model.onnx", "onnxruntime"),
                          (lone / "model.onnx", "openvino")):
        det = load_detector(path, backend=backend)
        for key in ("backbone", "layers", "input_size", "n_components", "thresholds", "normalization", "precision",
                    "head_forms"):
            assert det.metadata[key] == manifest[key], (path, key)


def test_tampered_bin_is_refused(sample_bundle, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(sample_bundle, bad)
    data = bytearray((bad / "model.bin").read_bytes())
    data[1000] ^= 0xFF
    (bad / "model.bin").write_bytes(bytes(data))
    with pytest.raises(FreEdgeError, match=r"model\.bin: checksum mismatch"):
        load_detector(bad)


def test_future_schema_is_refused(sample_bundle, tmp_path):
    fut = tmp_path / "future"
    shutil.copytree(sample_bundle, fut)
    manifest = json.loads((fut / "manifest.json").read_text())
    manifest["schema_version"] = SCHEMA_VERSION + 1
    (fut / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FreEdgeError, match="upgrade fre-edge"):
        load_detector(fut)


def test_interrupted_export_leaves_no_bundle(sample_model, tmp_path, monkeypatch):
    from fre_edge.export import bundle_writer

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle_writer, "_write_ir", boom)
    with pytest.raises(KeyboardInterrupt):
        bundle_writer.export_bundle(sample_model[1], tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_existing_output_and_bad_format(sample_model, tmp_path):
    from fre_edge.export import export_bundle

    (tmp_path / "b").mkdir()
    with pytest.raises(FreEdgeError, match="already exists"):
        export_bundle(sample_model[1], tmp_path / "b")
    with pytest.raises(FreEdgeError, match="unknown format"):
        export_bundle(sample_model[1], tmp_path / "c", formats=("tflite",))


def _initializer_sizes(bundle) -> list[int]:
    import onnx

    model = onnx.load(str(bundle / "model.onnx"))
    return [int(np.prod(i.dims)) for i in model.graph.initializer]


def _ir_constant_sizes(bundle) -> list[int]:
    import openvino as ov

    model = ov.Core().read_model(str(bundle / "model.xml"))
    return [int(np.prod(list(op.get_output_shape(0)) or [1])) for op in model.get_ops()
            if op.get_type_name() == "Constant"]


def backbone_bin_bytes(bundle, tmp_path) -> int:
    """The size of the same IR cut before the FRE head (what the bundle would be without a head)."""
    import openvino as ov

    from fre_edge.runtime.adapters import cut_to_backbone

    cut = cut_to_backbone(ov.Core().read_model(str(bundle / "model.xml"))).clone()
    ov.save_model(cut, str(tmp_path / "backbone.xml"), compress_to_fp16=False)
    return (tmp_path / "backbone.bin").stat().st_size


def map_head_floats(bundle) -> int:
    """What the map's own heads store (manifest's map_layers): per head V, the mean, and one_pass's Gram triangles;
    a small V (under 2^16 values: the grid head of the demo sample) OpenVINO may also keep transposed."""
    from fre_edge.runtime.bundle import map_pools

    m = json.loads((bundle / "manifest.json").read_text())
    n_score = len(m["layers"])
    side = m["input_size"] if isinstance(m["input_size"], int) else None
    total = 0
    for layer, pool, k, form in zip(m.get("map_layers", []), map_pools(m), m["n_components"][n_score:],
                                    m["head_forms"][n_score:]):
        C, stride = {"blocks.4": (40, 8), "blocks.10": (112, 16)}[layer]
        S = (side // stride // pool) ** 2
        total += C * S * k + C * S + (S * k * (k + 1) // 2 if form == "one_pass" else 0)
        total += C * S * k if form == "reconstruct" and C * S * k < 1 << 16 else 0
    return total


def assert_head_stored_once(bundle, D, k, extra_floats, tmp_path):
    """V once in the ONNX and in the IR; the IR's .bin at most backbone + 4 D k (+ the form's extra constants,
    + the map heads') + 1%."""
    assert _initializer_sizes(bundle).count(D * k) == 1
    assert _ir_constant_sizes(bundle).count(D * k) == 1
    limit = (backbone_bin_bytes(bundle, tmp_path) + 4 * D * k + 4 * extra_floats + 4 * map_head_floats(bundle)) * 1.01
    assert (bundle / "model.bin").stat().st_size <= limit


def test_one_pass_head_holds_the_components_once(sample_bundle, tmp_path):
    # the demo sample fits k < C components (one_pass head): V once, plus the packed Gram triangles
    sizes = _initializer_sizes(sample_bundle)
    C, S = 112, 7 * 7  # lite0 blocks.10 at 224 px, pooled 2x2
    D = C * S
    k = json.loads((sample_bundle / "manifest.json").read_text())["n_components"][0]
    assert k + 1 <= C
    assert not [n for n in sizes if n >= D * D], "a D x D matrix made it into the graph"
    assert sizes.count(D * k) == 1
    # the grid head (blocks.4 pooled to the same 7 x 7 grid) holds Gram triangles of the same size where its k is k
    grid_k = json.loads((sample_bundle / "manifest.json").read_text())["n_components"][3]
    assert sizes.count(S * k * (k + 1) // 2) == 1 + (grid_k == k)
    assert_head_stored_once(sample_bundle, D, k, S * k * (k + 1) // 2 + S * C, tmp_path)  # + Gram, mean


@pytest.mark.slow
def test_reconstruct_head_is_two_thin_matmuls(bottle_fit, bottle_bundle, tmp_path):
    # the default fit on MVTec bottle keeps more components than lite0 has channels: two thin matmuls
    head = bottle_fit[1].detector.heads[0]
    C, h, w = head.shape
    D, k = C * h * w, head.n_components
    assert head.form == "reconstruct" and k + 1 > C
    sizes = _initializer_sizes(bottle_bundle)
    assert not [n for n in sizes if n >= D * D], "a D x D matrix made it into the graph"
    assert_head_stored_once(bottle_bundle, D, k, D, tmp_path)  # + the mean


def test_head_forms_agree_on_real_features(sample_model, sample_root):
    from fre_edge.fit.model import FREHead
    from fre_edge.fit.pca import Subspace

    fitted = sample_model[1]
    ref = fitted.detector.heads[0]
    sub = Subspace(ref.mean, ref.components, torch.full((1,), float("nan")), "test")
    heads = {form: FREHead(sub, ref.shape, form=form) for form in ("reconstruct", "one_pass")}
    paths = sorted((sample_root / "test").rglob("*.png"))[:6] + sorted((sample_root / "train").rglob("*.png"))[:2]
    with torch.inference_mode():
        feats = fitted.detector.features(load_batch(paths, fitted.config.input_size))[0]
        (s1, m1), (s2, m2) = [heads[f](feats) for f in ("reconstruct", "one_pass")]
    assert s1.shape == s2.shape == (8,) and m1.shape == m2.shape == (8, *ref.shape[1:])
    np.testing.assert_allclose(s2.numpy(), s1.numpy(), rtol=1e-4)
    np.testing.assert_allclose(m2.numpy(), m1.numpy(), rtol=1e-4, atol=1e-4 * float(m1.abs().max()))
    with pytest.raises(ValueError, match="unknown head form"):
        FREHead(sub, ref.shape, form="dense")


def test_backbone_only_cut_ends_at_the_pooled_features(sample_model, sample_bundle, sample_root):
    fitted = sample_model[1]
    paths = sorted((sample_root / "test").rglob("*.png"))[:2]
    x = load_batch(paths, fitted.config.input_size)
    with torch.inference_mode():
        refs = [f.numpy() for f in fitted.detector.features(x)]
    det = load_backbone_only(sample_bundle, precision="f32")
    out = list(det.adapter.infer(x.numpy()).values())
    # what each head reads: the score's pooled layer, the map heads' layers, the stride-8 layer on the score's grid
    assert len(out) == len(refs) == 4
    for ref in refs:
        feats = next(o for o in out if o.shape == ref.shape)
        np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_backbone_only_is_for_timing_not_scoring(sample_bundle):
    from fre_edge.runtime import AnomalyDetector, BackboneOnly, InferenceAdapter

    bb, det = load_backbone_only(sample_bundle), load_detector(sample_bundle)
    assert isinstance(bb, BackboneOnly) and not hasattr(bb, "predict")
    assert isinstance(det, AnomalyDetector) and bb.describe()["input_size"] == 224 and det.input_size == (224, 224)
    assert isinstance(bb.adapter, InferenceAdapter) and isinstance(det.adapter, InferenceAdapter)
    assert isinstance(load_detector(sample_bundle, backend="onnxruntime").adapter, InferenceAdapter)
    with pytest.raises(FreEdgeError, match="--backbone-only is available with --backend openvino"):
        load_backbone_only(sample_bundle, backend="onnxruntime")
