"""``AnomalyDetector``: images of any size and channel count in, score / label / map / mask out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import FreEdgeError
from ..images import load_image, prepare, resize_map, to_rgb_uint8
from .adapters import BACKENDS, make_adapter
from .bundle import check_threshold, read_manifest, validate_metadata


@dataclass
class Prediction:
    score: float
    label: bool  # True: anomalous (score above the image threshold)
    anomaly_map: np.ndarray  # float32, the original image's height x width
    mask: np.ndarray  # bool, anomaly_map above the pixel threshold

    @property
    def bbox(self) -> tuple[int, int, int, int] | None:
        """(x0, y0, x1, y1), the smallest box around every mask pixel (x1, y1 exclusive); None if none."""
        rows, cols = np.flatnonzero(self.mask.any(1)), np.flatnonzero(self.mask.any(0))
        if rows.size == 0:
            return None
        return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1

    def to_dict(self) -> dict:
        box = self.bbox
        return {"score": self.score, "label": "anomalous" if self.label else "good",
                "anomalous_pixels": int(self.mask.sum()), "peak": float(self.anomaly_map.max()),
                "bbox": None if box is None else list(box)}  # [x0, y0, x1, y1] at the image's own size


def _model_file(path: Path, backend: str) -> tuple[Path, Path | None]:
    """(model file, bundle folder or None) for a bundle folder or a lone model file."""
    if path.is_dir():
        name = "model.xml" if backend == "openvino" else "model.onnx"
        f = path / name
        if not f.is_file():
            other = "onnxruntime" if backend == "openvino" else "openvino"
            raise FreEdgeError(f"{path}: this bundle has no {name}; use --backend {other} or re-export with it")
        return f, path
    if path.is_file():
        if path.suffix == ".xml" and backend == "openvino":
            if not path.with_suffix(".bin").is_file():
                raise FreEdgeError(f"{path}: its weights {path.with_suffix('.bin').name} are missing; keep .xml and .bin together")
            return path, None
        if path.suffix == ".onnx":
            return path, None
        if path.suffix == ".xml":
            raise FreEdgeError(f"{path}: an OpenVINO IR needs --backend openvino")
        raise FreEdgeError(f"{path}: not a bundle folder, .xml or .onnx file")
    raise FreEdgeError(f"{path}: no such bundle; pass the folder written by `fre-edge export`")


class AnomalyDetector:
    """A loaded bundle. Thread-safe: one instance can serve several cameras at once."""

    def __init__(self, adapter, metadata: dict, source: Path):
        self.adapter = adapter
        self.metadata = metadata
        self.source = source
        self.input_size = int(metadata["input_size"])
        th = metadata["thresholds"]
        self.image_threshold = th["image"]
        self.pixel_threshold = th["pixel"]

    # thresholds: finite and above 0 whoever sets them (NaN would pass every image, inf every part)
    @property
    def image_threshold(self) -> float:
        return self._image_threshold

    @image_threshold.setter
    def image_threshold(self, value: float) -> None:
        self._image_threshold = check_threshold(value, "image", "AnomalyDetector", "set a finite number above 0")

    @property
    def pixel_threshold(self) -> float:
        return self._pixel_threshold

    @pixel_threshold.setter
    def pixel_threshold(self, value: float) -> None:
        self._pixel_threshold = check_threshold(value, "pixel", "AnomalyDetector", "set a finite number above 0")

    # -- raw --------------------------------------------------------------------------------------
    def infer_prepared(self, batch_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Batch [N, S, S, 3] uint8 at the model's input size -> scores [N], maps [N, S, S]."""
        out = self.adapter.infer(np.ascontiguousarray(batch_u8, dtype=np.uint8))
        return out["score"].astype(np.float32), out["anomaly_map"].astype(np.float32)

    # -- convenient -------------------------------------------------------------------------------
    def predict_batch(self, images: Sequence) -> list[Prediction]:
        """Paths or arrays (any size, grey/RGB/RGBA, uint8/uint16/float) -> one Prediction each."""
        originals = [load_image(i) if isinstance(i, (str, Path)) else to_rgb_uint8(i) for i in images]
        if not originals:
            return []
        batch = np.stack([prepare(img, self.input_size) for img in originals])
        scores, maps = self.infer_prepared(batch)
        results = []
        for img, s, m in zip(originals, scores, maps):
            full = resize_map(m, img.shape[0], img.shape[1])
            results.append(Prediction(float(s), bool(s > self.image_threshold), full, full > self.pixel_threshold))
        return results

    def predict(self, image) -> Prediction:
        return self.predict_batch([image])[0]

    def iter_predict(self, images: Iterable, batch_size: int = 8):
        chunk = []
        for img in images:
            chunk.append(img)
            if len(chunk) == batch_size:
                yield from zip(chunk, self.predict_batch(chunk))
                chunk = []
        if chunk:
            yield from zip(chunk, self.predict_batch(chunk))

    def describe(self) -> dict:
        return {"source": str(self.source), "backend": self.adapter.name, "device": self.adapter.device,
                "precision_requested": self.adapter.requested_precision,
                "precision_used": self.adapter.precision_used, "hint": self.adapter.hint,
                "backbone": self.metadata["backbone"], "input_size": self.input_size,
                "weights_precision": self.metadata["precision"], **self.adapter.versions()}


def load_detector(path: str | Path, *, backend: str = "openvino", device: str = "CPU", precision: str = "f32",
                  hint: str = "latency", threads: int | None = None, batch: int | None = None,
                  verify: bool = True, backbone_only: bool = False) -> AnomalyDetector:
    """Load a bundle folder (checksums verified) or a lone .xml/.onnx (metadata read from inside)."""
    if backend not in BACKENDS:
        raise FreEdgeError(f"unknown backend {backend!r}; use openvino or onnxruntime")
    path = Path(path)
    model_file, bundle_dir = _model_file(path, backend)
    manifest = read_manifest(bundle_dir, verify=verify) if bundle_dir else None
    if manifest is not None and model_file.name not in manifest["files"]:
        raise FreEdgeError(f"{model_file}: not covered by the manifest's checksums; re-export the bundle")
    adapter = make_adapter(backend, model_file, device=device, precision=precision, hint=hint, threads=threads,
                           batch=batch, backbone_only=backbone_only)
    if manifest is None:
        meta = adapter.metadata()
        if meta is None:
            raise FreEdgeError(f"{model_file}: carries no fre-edge metadata; export it with `fre-edge export`")
        manifest = validate_metadata(meta, str(model_file))
    size = manifest["input_size"]
    if adapter.input_hw() != (size, size):
        raise FreEdgeError(f"{path}: the metadata says {size} x {size} input, the graph takes "
                           f"{' x '.join(map(str, adapter.input_hw()))}; re-export the bundle")
    return AnomalyDetector(adapter, manifest, path)
