"""Assemble a bundle folder: ONNX + OpenVINO IR + manifest, each with the metadata inside."""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..errors import FreEdgeError
from ..fit.model import HEAD_FORMS
from ..outputs import atomic_dir
from ..runtime.bundle import MANIFEST, METADATA_KEY, SCHEMA_VERSION, metadata_json, sha256_file
from .onnx_graph import export_onnx

FORMATS = ("openvino", "onnx")
OUTPUTS = ["score", "anomaly_map"]


def bundle_metadata(fitted, precision: str, exporter: dict, head_forms: list[str]) -> dict:
    from ..fit.backbones import get_spec

    cfg, info = fitted.config, fitted.info
    spec = get_spec(cfg.backbone)
    return {
        "schema_version": SCHEMA_VERSION,
        "fre_edge_version": __version__,
        "model_type": "fre",
        "backbone": cfg.backbone,
        "backbone_weights": "imagenet" if cfg.pretrained else "random (timing only)",
        "layers": list(cfg.layers),
        "pool": cfg.pool,
        "input_size": cfg.input_size,
        "input": {"name": "images", "layout": "NHWC", "dtype": "uint8", "color": "RGB",
                  "resize": "lanczos", "shape": [-1, cfg.input_size, cfg.input_size, 3]},
        "normalization": {"mean": list(spec.mean), "std": list(spec.std), "inside_graph": True},
        "n_components": info["n_components"],
        "head_forms": head_forms,  # fre_edge.fit.model.head_form
        "blur_sigma": cfg.blur_sigma,
        "thresholds": info["thresholds"],
        "data": info.get("data", {}),
        "precision": precision,
        "outputs": [{"name": "score", "shape": [-1]},
                    {"name": "anomaly_map", "shape": [-1, cfg.input_size, cfg.input_size]}],
        "exporter": exporter,
    }


def _embed_onnx(path: Path, meta_json: str) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta_json
    onnx.save(model, str(path))


def _write_ir(onnx_path: Path, xml_path: Path, meta_json: str, fp16: bool) -> None:
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    model.set_rt_info(meta_json, ["model_info", METADATA_KEY])
    model.set_rt_info("fre", ["model_info", "model_type"])
    ov.save_model(model, str(xml_path), compress_to_fp16=fp16)


def export_bundle(fitted, out_dir: str | Path, *, formats=FORMATS, fp16: bool = False, head_form: str = "auto",
                  force: bool = False) -> dict:
    """Write the bundle (ONNX and/or OpenVINO IR + manifest) atomically; returns its manifest.

    ``head_form``: ``auto`` (the batch-1 rule of ``fre_edge.fit.model.head_form``), ``reconstruct`` or
    ``one_pass``; all give the same scores and maps up to float rounding, only the speed differs.
    """
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise FreEdgeError(f"unknown format(s) {','.join(bad) or '(none)'}; use openvino, onnx or both")
    if head_form not in HEAD_FORMS:
        raise FreEdgeError(f"unknown head form {head_form!r}; use {', '.join(HEAD_FORMS)}")
    detector = fitted.detector.with_head_form(head_form)
    out_dir = Path(out_dir)
    precision = "fp16" if fp16 else "fp32"
    with atomic_dir(out_dir, force, "bundle") as tmp:
        onnx_path = tmp / "model.onnx"
        exporter = export_onnx(detector, onnx_path, fitted.config.input_size, OUTPUTS)
        exporter["openvino_ir"] = "openvino.convert_model(model.onnx)"
        meta = bundle_metadata(fitted, precision, exporter, [h.form for h in detector.heads])
        meta_json = metadata_json(meta)
        _embed_onnx(onnx_path, meta_json)
        if "openvino" in formats:
            _write_ir(onnx_path, tmp / "model.xml", meta_json, fp16)
        if "onnx" not in formats:
            onnx_path.unlink()
        meta["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps(meta, indent=2))
    return meta
