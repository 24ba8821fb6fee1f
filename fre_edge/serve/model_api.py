"""A bundle as an OpenVINO Model API ``AnomalyDetection`` model (``Model.create_model("model.xml")``).

Intel's Model API (the ``openvino-model-api`` package, also in C++; Geti's runtime) chooses a wrapper from
the IR's rt_info ``model_info``. Its AnomalyDetection wrapper reads four outputs, as anomalib exports
them; this flavour adds them to the bundle's own graph (torch-free, with OpenVINO's graph API):

- ``pred_score`` = clip(0.5 * score / image_threshold, 0, 1): 0.5 at the bundle's image threshold;
- ``pred_label`` = score > image_threshold, fre-edge's own verdict;
- ``anomaly_map`` = clip(0.5 * map / pixel_threshold, 0, 1), and ``pred_mask`` = map > pixel_threshold.

Model API resizes the picture into the graph itself (``resize_type`` standard: bilinear, stretched to the
model's input; fre-edge's runtime uses Lanczos), so it takes RGB pictures of any size. The thresholds are
those of the bundle; to change them, re-export the bundle.

Precision: Model API compiles with OpenVINO's defaults, and on CPUs with bf16 (AMX, AVX-512 BF16) those are
bf16, which moves FRE's scores by a few percent (the residual is a small difference of large vectors). An
IR's rt_info cannot pin it, so load through an adapter that does: ``Model.create_model(f32_adapter(xml))``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FreEdgeError
from ..runtime.bundle import bundle_digest, read_manifest

OUTPUTS = ("pred_score", "pred_label", "pred_mask", "anomaly_map")


def f32_adapter(xml: str | Path, device: str = "CPU"):
    """Model API's ``OpenvinoAdapter`` for ``xml`` with f32 inference: ``Model.create_model(f32_adapter(xml))``.
    (``create_model(xml, core=...)`` cannot carry it: openvino-model-api 0.4.7 fails when given a core.)"""
    from model_api.adapters import OpenvinoAdapter, create_core

    return OpenvinoAdapter(create_core(), str(xml), device=device, plugin_config={"INFERENCE_PRECISION_HINT": "f32"})


def model_info(manifest: dict) -> dict[str, str]:
    """rt_info ["model_info"] that Model API reads (all values strings, as Model API parses them)."""
    return {"model_type": "AnomalyDetection", "task": "segmentation", "image_threshold": "0.5",
            "pixel_threshold": "0.5", "normalization_scale": "1.0", "labels": "Normal Anomaly",
            "resize_type": "standard", "reverse_input_channels": "False", "mean_values": "0 0 0",
            "scale_values": "1 1 1", "fre_edge_digest": bundle_digest(manifest)}


def build_model_api_model(bundle: Path):
    """The bundle's IR with Model API's four outputs and model_info (an ``openvino.Model``)."""
    import openvino as ov
    from openvino import opset13 as ops

    manifest = read_manifest(bundle, verify=True)
    if "model.xml" not in manifest["files"]:
        raise FreEdgeError(f"{bundle}: this bundle has no OpenVINO IR (model.xml); re-export it with openvino")
    if manifest.get("tiling"):
        raise FreEdgeError(f"{bundle}: this bundle scores pictures as tiles, which Model API's one-image wrapper "
                           f"cannot cut; use fre-edge's runtime or `fre-edge serve` for it, or fit without --tiles")
    model = ov.Core().read_model(str(Path(bundle) / "model.xml"))
    th_image, th_pixel = manifest["thresholds"]["image"], manifest["thresholds"]["pixel"]
    score = model.output("score").get_node().input_value(0)  # what the Result nodes read
    amap = model.output("anomaly_map").get_node().input_value(0)

    def normalised(x, threshold):
        return ops.clamp(ops.multiply(x, ops.constant(np.float32(0.5 / threshold))), 0.0, 1.0)

    nodes = {"pred_score": normalised(score, th_image),
             "pred_label": ops.greater(score, ops.constant(np.float32(th_image))),
             "pred_mask": ops.greater(amap, ops.constant(np.float32(th_pixel))),
             "anomaly_map": normalised(amap, th_pixel)}
    outputs = []
    for name in OUTPUTS:
        out = nodes[name].output(0)
        out.get_tensor().set_names({name})
        outputs.append(out)
    flavour = ov.Model(outputs, model.get_parameters(), "fre_edge_model_api")
    for key, value in model_info(manifest).items():
        flavour.set_rt_info(value, ["model_info", key])
    return flavour


def write_model_api(bundle: str | Path, out: str | Path, *, force: bool = False) -> Path:
    """Write ``out/model.xml`` + ``.bin`` (written whole or not at all); returns the .xml path."""
    import json

    import openvino as ov

    from ..outputs import atomic_dir

    bundle, out = Path(bundle), Path(out)
    with atomic_dir(out, force, "model-api", inputs=[bundle]) as tmp:
        model = build_model_api_model(bundle)
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        (tmp / "model_api.json").write_text(json.dumps({"kind": "fre-edge model api", "bundle": str(bundle),
                                                        "outputs": list(OUTPUTS)}, indent=2) + "\n")
    return out / "model.xml"
