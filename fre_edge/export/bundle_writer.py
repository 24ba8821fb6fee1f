"""Assemble a bundle folder: ONNX + OpenVINO IR + manifest, each with the metadata inside."""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..errors import FreEdgeError
from ..fit.model import HEAD_FORMS
from ..images import input_hw, size_json
from ..outputs import atomic_dir
from ..runtime.adapters import HEAD_WEIGHT_VALUES
from ..runtime.bundle import MANIFEST, METADATA_KEY, SCHEMA_VERSION, metadata_json, sha256_file
from .head_weights import DEFAULT_BOUND, HEAD_WEIGHTS, check_inputs, compress_head, score_difference
from .onnx_graph import export_onnx

FORMATS = ("openvino", "onnx")
OUTPUTS = ["score", "anomaly_map"]


def weights_record(cfg) -> dict:
    """What the manifest says of the backbone's weights: the package's ImageNet weights, random ones (timing
    only), or the file given with --weights, by name and sha256 (whatever that file holds)."""
    if not cfg.pretrained:
        return {"backbone_weights": "random (timing only)"}
    if not cfg.weights:
        return {"backbone_weights": "imagenet"}
    return {"backbone_weights": f"file {Path(cfg.weights).name}", "backbone_weights_sha256": sha256_file(cfg.weights)}


def bundle_metadata(fitted, precision: str, exporter: dict, head_forms: list[str]) -> dict:
    from ..fit.backbones import get_spec

    cfg, info = fitted.config, fitted.info
    spec = get_spec(cfg.backbone)
    return {
        "schema_version": SCHEMA_VERSION,
        "fre_edge_version": __version__,
        "model_type": "fre",
        "backbone": cfg.backbone,
        **weights_record(cfg),
        "layers": list(cfg.layers),
        "pool": cfg.pool,
        # the map heads' layers and pooling kernels (one for all, or one each where the grid heads differ)
        **({"map_layers": list(cfg.head_layers[len(cfg.layers):]),
            "map_pool": cfg.map_pool if len(set(cfg.map_head_pools)) == 1 else cfg.map_head_pools}
           if cfg.map_layers else {}),
        **({"image_score": info["image_score"]} if info.get("image_score") else {}),
        **({"position_free": info["position_free"]} if info.get("position_free") else {}),
        "input_size": size_json(cfg.input_size),  # a side when square, else [height, width]
        "input": {"name": "images", "layout": "NHWC", "dtype": "uint8", "color": "RGB",
                  "resize": "lanczos", "shape": [-1, *input_hw(cfg.input_size), 3]},
        "normalization": {"mean": list(spec.mean), "std": list(spec.std), "inside_graph": True},
        "n_components": info["n_components"],
        "head_forms": head_forms,  # fre_edge.fit.model.head_form
        "blur_sigma": cfg.blur_sigma,
        "thresholds": info["thresholds"],
        "data": info.get("data", {}),
        "precision": precision,
        "outputs": [{"name": "score", "shape": [-1]},
                    {"name": "anomaly_map", "shape": [-1, *input_hw(cfg.input_size)]}],
        "exporter": exporter,
        **({} if fitted.tiling is None else {"tiling": fitted.tiling.to_json()}),
    }


def _embed_onnx(path: Path, meta_json: str) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta_json
    onnx.save(model, str(path))


def share_transposed_constants(model, min_elements: int = HEAD_WEIGHT_VALUES) -> int:
    """Make MatMuls that read a large constant's transpose read the constant itself (flipping transpose_b),
    so the IR stores it once; returns how many were rewired.

    OpenVINO's converter gives every MatMul with a constant operand its weights in [out, in] order, so the
    FRE head's two matmuls, x V^T and z V, get V and a folded copy of V^T (4 D k bytes each). The CPU plugin
    lays weights out as it likes when it compiles, so the file only needs one of them.
    """
    import numpy as np
    import openvino.opset13 as ops

    consts = [op for op in model.get_ops() if op.get_type_name() == "Constant"
              and len(op.get_output_shape(0)) == 2 and int(np.prod(op.get_output_shape(0))) >= min_elements]
    by_shape = {}
    for c in consts:
        by_shape.setdefault(tuple(c.get_output_shape(0)), []).append(c)
    rewired = 0
    for c in consts:
        rows, cols = c.get_output_shape(0)
        if rows <= cols:
            continue  # keep the wide one (V, [k, D], as fitted); rewire the users of its tall transpose
        for other in by_shape.get((cols, rows), []):
            if not np.array_equal(other.get_data().T, c.get_data()):
                continue
            for target in list(c.output(0).get_target_inputs()):
                mm = target.get_node()
                if mm.get_type_name() != "MatMul" or target.get_index() != 1:
                    continue
                attrs = mm.get_attributes()
                new = ops.matmul(mm.input_value(0), other.output(0), attrs["transpose_a"], not attrs["transpose_b"])
                new.set_friendly_name(mm.get_friendly_name())
                mm.output(0).replace(new.output(0))
                rewired += 1
    return rewired


def _convert(onnx_path: Path, share: bool = True):
    """The IR of ``onnx_path``; ``share``: one copy of V for both head matmuls (see share_transposed_constants)."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    if share:
        share_transposed_constants(model)
    return model


def _write_ir(model, xml_path: Path, meta_json: str, fp16: bool) -> None:
    import openvino as ov

    model.set_rt_info(meta_json, ["model_info", METADATA_KEY])
    model.set_rt_info("fre", ["model_info", "model_type"])
    ov.save_model(model, str(xml_path), compress_to_fp16=fp16)


def export_bundle(fitted, out_dir: str | Path, *, formats=FORMATS, fp16: bool = False, head_form: str = "auto",
                  force: bool = False, head_weights: str = "f32", check_images=(),
                  bound: float = DEFAULT_BOUND) -> dict:
    """Write the bundle (ONNX and/or OpenVINO IR + manifest) atomically; returns its manifest.

    ``head_form``: ``auto`` (the batch-1 rule of ``fre_edge.fit.model.head_form``), ``reconstruct`` or
    ``one_pass``; all give the same scores and maps up to float rounding, only the speed differs.
    ``head_weights="int8"`` stores the head's components as INT8 in the IR (OpenVINO only; see
    ``fre_edge.export.head_weights``): checked on ``check_images`` (good pictures the model was not fitted on)
    against the float graph, refused when a score moves by more than ``bound`` (relative).
    """
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise FreEdgeError(f"unknown format(s) {','.join(bad) or '(none)'}; use openvino, onnx or both")
    if head_form not in HEAD_FORMS:
        raise FreEdgeError(f"unknown head form {head_form!r}; use {', '.join(HEAD_FORMS)}")
    if head_weights not in HEAD_WEIGHTS:
        raise FreEdgeError(f"unknown head weights {head_weights!r}; use {' or '.join(HEAD_WEIGHTS)}")
    rows = None
    if head_weights == "int8":
        if formats != ("openvino",):
            raise FreEdgeError("--head-weights int8 is for the OpenVINO IR only (the ONNX graph would keep other "
                               "scores); add --format openvino")
        if fp16:
            raise FreEdgeError("--head-weights int8 and --fp16 do not go together; choose one")
        if head_form == "one_pass":
            raise FreEdgeError("--head-weights int8 compresses the reconstruct head's matmuls; use --head-form "
                               "reconstruct or auto")
        head_form = "reconstruct"  # two matmuls, each its own INT8 copy: 2 D k bytes, half of one f32 V
        if not (isinstance(bound, (int, float)) and 0 < bound < 1):
            raise FreEdgeError(f"score bound {bound!r}; use a fraction above 0 and below 1, e.g. 0.01")
        rows = check_inputs(list(check_images), fitted.config.input_size, fitted.tiling)  # before any work
    detector = fitted.detector.with_head_form(head_form)
    out_dir = Path(out_dir)
    precision = "fp16" if fp16 else "fp32"
    with atomic_dir(out_dir, force, "bundle") as tmp:
        onnx_path = tmp / "model.onnx"
        exporter = export_onnx(detector, onnx_path, fitted.config.input_size, OUTPUTS)
        exporter["openvino_ir"] = "openvino.convert_model(model.onnx)"
        meta = bundle_metadata(fitted, precision, exporter, [h.form for h in detector.heads])
        # INT8: V and V^T each in the [out, in] order of its matmul's kernel. OpenVINO's CPU plugin keeps the
        # weights compressed only in that order; one shared INT8 V read transposed by the reconstruction gave
        # wrong scores (openvino 2026.4; head_levers.py)
        model = _convert(onnx_path, share=head_weights != "int8") if "openvino" in formats else None
        if head_weights == "int8":
            f32_model = model.clone()
            model = compress_head(model)
            check = score_difference(f32_model, model, rows)
            if check["max_rel_score_difference"] > bound:
                raise FreEdgeError(f"INT8 head weights moved a check picture's score by "
                                   f"{check['max_rel_score_difference']:.2g} (relative), over the bound {bound:g}; "
                                   "export with --head-weights f32, or allow more with --score-bound")
            meta["head_weights"] = {"dtype": "int8", "method": "NNCF compress_weights INT8_ASYM, per output "
                                    "channel, the head's two matmuls only, each its own copy", "bound": bound,
                                    "check_inputs": int(len(rows)), **check}
        meta_json = metadata_json(meta)
        _embed_onnx(onnx_path, meta_json)
        if model is not None:
            _write_ir(model, tmp / "model.xml", meta_json, fp16)
        if "onnx" not in formats:
            onnx_path.unlink()
        meta["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps(meta, indent=2))
    return meta
