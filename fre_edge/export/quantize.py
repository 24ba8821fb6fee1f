"""INT8 post-training quantization of a bundle's OpenVINO model with NNCF, calibrated on good images.

- Calibration uses good images only (the fitting images or any folder of good images), prepared by the
  same host code as inference.
- ``keep_head=True`` (default) keeps the FRE head in floating point: its matmuls and projecting
  grouped convolution (and the map upsampling matmuls) go to NNCF's ignored scope. The head is cheap
  and it is where a squared residual turns small activation errors into score errors; the backbone's
  convolutions get INT8.
- Activation ranges are the min/max seen on the calibration images (NNCF's MINMAX estimator), not the
  default averaged/quantile ranges: calibration sees good images only, and anomalies are precisely the
  activations outside the good images' usual range; clipping them to it squashes defect scores
  (``benchmarks/precision_table.py`` reports the INT8 AUROCs, ``benchmarks/results/precision_table_<isa>.md``).
- Accuracy-controlled mode (``validation`` given: labelled samples): NNCF's
  ``quantize_with_accuracy_control`` reverts the layers that cost most until the image AUROC drop is at
  most ``max_drop`` (absolute).
- ``refit=True`` (default, basic mode): the FRE head is fitted again on the INT8 backbone's features of
  the calibration images (``int8_head.py``), and thresholds come from INT8 scores of good images kept out
  of that refit. Without it, INT8 rounding is scored as a small anomaly (``precision_table_<isa>.md`` have the
  AUROCs with the refit).
- Either way, the check that was run is written into the manifest: score agreement between the f32 and
  INT8 models on good images the calibration did not see, and the AUROCs when labelled data was given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import FreEdgeError
from ..images import input_hw
from ..tiling import Tiling, inputs_of
from ..outputs import atomic_dir, check_output
from ..runtime.adapters import head_starts, reason
from ..runtime.bundle import MANIFEST, METADATA_KEY, metadata_json, read_manifest, sha256_file

MIN_CALIBRATION = 8


def _prepared(paths: Sequence, size, tiling: Tiling | None = None) -> list[np.ndarray]:
    """One model input per picture: [1, H, W, 3], or with ``tiling`` its tiles [tiles, H, W, 3]."""
    return [inputs_of(p, size, tiling) for p in paths]


def _infer(compiled, batches: list[np.ndarray], tiling: Tiling | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each picture's score and map (with ``tiling``: the largest tile score, the stitched map)."""
    req = compiled.create_infer_request()
    scores, maps = [], []
    for b in batches:
        req.infer({0: b})
        s, m = req.get_tensor("score").data.copy(), req.get_tensor("anomaly_map").data.copy()
        if tiling is not None:
            s, m = tiling.reduce(s, m)
        scores.append(float(s[0]))
        maps.append(m[0])
    return np.array(scores), np.stack(maps)


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else None  # JSON null, never NaN


def quantize_bundle(bundle_dir: str | Path, out_dir: str | Path, calibration: Sequence, *,
                    keep_head: bool = True, refit: bool = True, subset_size: int = 300, validation=None,
                    max_drop: float = 0.005,
                    check_size: int = 32, seed: int = 0, force: bool = False, progress: bool = False) -> dict:
    """Write an INT8 copy of ``bundle_dir`` (OpenVINO IR only) to ``out_dir``; returns its manifest.

    ``calibration``: paths or arrays of good images. ``validation``: optional labelled samples
    (objects with ``.path`` and ``.label``) for the accuracy-controlled mode.
    """
    import openvino as ov

    from .quiet import import_nncf, nncf_output

    nncf = import_nncf(progress)

    from ..fit.metrics import auroc

    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    check_output(out_dir, kind="bundle", force=force, inputs=[bundle_dir])  # before any work
    manifest = read_manifest(bundle_dir)
    if manifest["precision"] == "int8":
        raise FreEdgeError(f"{bundle_dir} is already INT8; quantize the f32 bundle it came from")
    if manifest.get("head_weights"):
        raise FreEdgeError(f"{bundle_dir} has INT8 head weights; quantize a bundle exported with --head-weights f32")
    if "model.xml" not in manifest["files"]:
        raise FreEdgeError(f"{bundle_dir} has no OpenVINO IR; re-export it with --format openvino")
    calibration = list(calibration)
    if len(calibration) < MIN_CALIBRATION:
        raise FreEdgeError(f"{len(calibration)} calibration image(s); INT8 calibration needs at least "
                           f"{MIN_CALIBRATION} good images (300 recommended)")
    size = input_hw(manifest["input_size"])
    tiling = Tiling.from_json(manifest["tiling"]) if manifest.get("tiling") else None
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(calibration))
    # good images kept out of calibration and refit, to set INT8 thresholds: 10% as at fit time, at least
    # min(check_size, a quarter)
    n_check = max(min(check_size, len(calibration) // 4), int(round(0.1 * len(calibration))))
    check_idx, rest_idx = order[:n_check], order[n_check:]
    rest = _prepared([calibration[i] for i in rest_idx], size, tiling)  # reads every image: bad files fail here
    check = _prepared([calibration[i] for i in check_idx], size, tiling)
    calib = rest[:subset_size]  # NNCF's statistics need a few hundred; the head refit uses them all

    core = ov.Core()
    model = core.read_model(str(bundle_dir / "model.xml"))
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    # the head: its matmuls (projection, reconstruction, Gram term, map upsampling) and, in the one_pass
    # form, the grouped convolution that projects (not every GroupConvolution: Lite0's depthwise convs are)
    head_convs = [op.get_friendly_name() for op, _ in head_starts(model) if op.get_type_name() == "GroupConvolution"]
    ignored = nncf.IgnoredScope(types=["MatMul"], names=head_convs) if keep_head else None
    advanced = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    mode = "basic"
    val_metric = {}
    if validation is not None:
        val_items = [(x, int(s.label)) for x, s in zip(_prepared([s.path for s in validation], size, tiling),
                                                       validation)]
        labels = [y for _, y in val_items]
        if len(set(labels)) < 2:
            raise FreEdgeError("the validation set needs both good and anomalous images for accuracy control")

        def validate(compiled, data) -> float:
            data = list(data)
            return auroc([y for _, y in data], _infer(compiled, [x for x, _ in data], tiling)[0])

        with nncf_output(progress):
            quantized = nncf.quantize_with_accuracy_control(
                model, nncf.Dataset(calib), nncf.Dataset(val_items, lambda item: item[0]), validate,
                max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(calib), ignored_scope=ignored,
                advanced_quantization_parameters=advanced)
        mode = "accuracy-controlled"
    else:
        with nncf_output(progress):
            quantized = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib), ignored_scope=ignored,
                                      advanced_parameters=advanced)

    f32_c = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    refitted = refit and mode == "basic" and keep_head and bool(check)
    if validation is not None or not refitted:  # a refitted model is compiled once its head is rebuilt
        try:
            q_c = core.compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        except RuntimeError as exc:
            raise FreEdgeError(f"the INT8 model does not compile on this CPU ({reason(exc)}); "
                               "keep the FRE head in floating point (--keep-head)") from None
    if validation is not None:
        val_metric = {"image_auroc_f32": validate(f32_c, val_items), "image_auroc_int8": validate(q_c, val_items),
                      "max_drop": max_drop, "n_images": len(val_items)}
    if refitted:
        from ..fit.thresholds import thresholds_from_scores
        from .int8_head import refit_int8_model

        quantized, _ = refit_int8_model(quantized, manifest, rest, check)
        q_c = core.compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    agreement, thresholds = {}, dict(manifest["thresholds"])
    if check:
        (s32, m32), (s8, m8) = _infer(f32_c, check, tiling), _infer(q_c, check, tiling)
        if refitted:
            # the refitted head has its own scale: thresholds from its scores on good images it did not see
            thresholds = thresholds_from_scores(
                s8, m8, f"INT8 scores of {len(check)} good calibration images kept out of the refit")
        else:
            # INT8 rounding lands partly outside the PCA subspace and is scored like a small anomaly:
            # shift the thresholds by the typical INT8 - f32 difference on good images
            thresholds["image"] = float(manifest["thresholds"]["image"] + np.median(s8 - s32))
            thresholds["pixel"] = float(manifest["thresholds"]["pixel"] + np.median(m8 - m32))
            thresholds["rule"] = manifest["thresholds"]["rule"] + "; shifted by the median INT8 - f32 difference"
        # score error as a fraction of the image threshold (scores of fitted images can be near 0)
        rel = np.abs(s8 / thresholds["image"] - s32 / manifest["thresholds"]["image"])
        agreement = {"n_images": len(check), "median_abs_diff_score_over_threshold": float(np.median(rel)),
                     "max_abs_diff_score_over_threshold": float(rel.max()), "spearman": _spearman(s32, s8),
                     "label_agreement": float(np.mean((s32 > manifest["thresholds"]["image"]) ==
                                                      (s8 > thresholds["image"])))}
    meta = {k: v for k, v in manifest.items() if k != "files"}
    meta["precision"] = "int8"
    meta["thresholds"] = thresholds
    meta["quantization"] = {
        "tool": f"nncf {nncf.__version__}", "mode": mode, "keep_head_float": keep_head,
        "head_refit_on_int8_features": refitted,
        "calibration": {"n_images": len(calib), "source": "good images",
                        "head_refit_images": len(rest) if refitted else 0, "held_out_check_images": len(check)},
        "thresholds_f32": manifest["thresholds"],
        "check_on_unseen_good_images": agreement, "accuracy_control": val_metric,
    }
    meta_json = metadata_json(meta)
    with atomic_dir(out_dir, force, "bundle", inputs=[bundle_dir]) as tmp:
        quantized.set_rt_info(meta_json, ["model_info", METADATA_KEY])
        ov.save_model(quantized, str(tmp / "model.xml"), compress_to_fp16=False)
        meta["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps(meta, indent=2))
    return meta
