"""The Model API flavour: Intel's openvino-model-api loads it as AnomalyDetection, and its results agree with
fre-edge's own runtime on the demo sample."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from fre_edge.errors import FreEdgeError
from fre_edge.runtime import load_detector
from fre_edge.runtime.bundle import read_manifest
from fre_edge.serve.model_api import f32_adapter, write_model_api

try:
    from model_api.models import AnomalyDetection, Model
except ImportError:
    if os.environ.get("CI"):
        pytest.fail('openvino-model-api is missing on CI: pip install -e ".[test]"')
    pytest.skip("openvino-model-api not installed", allow_module_level=True)


def test_model_api_loads_it_and_agrees_with_fre_edge(sample_bundle, sample_root, tmp_path):
    xml = write_model_api(sample_bundle, tmp_path / "ma")
    adapter = f32_adapter(xml)  # as README says: on CPUs with bf16, Model API's defaults would run bf16
    model = Model.create_model(adapter)
    assert isinstance(model, AnomalyDetection)
    assert adapter.compiled_model.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    th = read_manifest(sample_bundle)["thresholds"]
    det = load_detector(sample_bundle)
    size = det.input_size
    paths = sorted(sample_root.glob("test/*/*.png")) + sorted(sample_root.glob("train/*/*.png"))[:3]
    labels = set()
    for path in paths:
        # at the model's input size, both runtimes see the same pixels (no resize on either side)
        rgb = np.asarray(Image.open(path).convert("RGB").resize(size[::-1], Image.LANCZOS))
        ours, theirs = det.predict(rgb), model(rgb)
        assert theirs.pred_label == str(ours.anomalous)
        labels.add(theirs.pred_label)
        assert theirs.pred_score == pytest.approx(min(1.0, 0.5 * ours.score / th["image"]), rel=1e-4, abs=1e-6)
        expected_map = np.clip(0.5 * ours.model_map / th["pixel"], 0, 1) * 255
        assert np.abs(theirs.anomaly_map.astype(float) - expected_map).max() <= 1.0  # uint8 rounding
        mask_agreement = (theirs.pred_mask.astype(bool) == ours.mask).mean()
        assert mask_agreement > 0.999
    assert labels == {"True", "False"}  # the sample has both: the check saw both verdicts
    # a picture of another size: Model API resizes in the graph (bilinear), fre-edge with Lanczos
    rgb = np.asarray(Image.open(paths[0]).convert("RGB"))
    theirs, ours = model(rgb), det.predict(rgb)
    assert theirs.anomaly_map.shape == rgb.shape[:2] and theirs.pred_label == str(ours.anomalous)


def test_model_api_refuses_a_bundle_without_ir_and_its_own_output(sample_model, sample_bundle, tmp_path):
    from fre_edge.export import export_bundle

    onnx_only = tmp_path / "onnx_only"
    export_bundle(sample_model[1], onnx_only, formats=("onnx",))
    with pytest.raises(FreEdgeError, match="no OpenVINO IR"):
        write_model_api(onnx_only, tmp_path / "ma")
    assert not (tmp_path / "ma").exists()
    with pytest.raises(FreEdgeError):
        write_model_api(sample_bundle, sample_bundle, force=True)
    assert read_manifest(sample_bundle)
