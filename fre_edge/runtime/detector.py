"""``AnomalyDetector``: images of any size and channel count in, score, verdict, map, mask and box out.

``load_detector`` loads a bundle for scoring; ``load_backbone_only`` loads the same graph cut before the
FRE head, for ``fre-edge bench --backbone-only`` alone (it scores nothing). Both sit on one
:class:`~fre_edge.runtime.adapters.InferenceAdapter` per backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..errors import FreEdgeError
from ..images import input_hw, model_input, resize_map, size_json
from ..tiling import Tiling, per_picture, tiles_of
from .adapters import BACKENDS, REMOTE, InferenceAdapter, make_adapter
from .bundle import MANIFEST, check_threshold, read_manifest, served_name, validate_metadata


class Prediction:
    """One image's result, at the image's own size.

    Attributes:
        score: the image score, the summed squared feature reconstruction error (higher = more anomalous).
        anomalous: True when ``score`` is above the detector's image threshold.
        anomaly_map: float32 [H, W], the squared reconstruction error per position, resized bilinearly to
            the image's height and width. Computed on first use: a caller that needs only the score never
            pays for a full-resolution map.
        mask: bool [H, W], ``anomaly_map`` above the pixel threshold (also on first use).
        model_map: float32 [S, S], the map as the graph returned it, at the model's input size.
    """

    __slots__ = ("score", "anomalous", "model_map", "image_size", "pixel_threshold", "_map", "_mask")

    def __init__(self, score: float, anomalous: bool, model_map: np.ndarray, image_size: tuple[int, int],
                 pixel_threshold: float):
        self.score, self.anomalous = float(score), bool(anomalous)
        self.model_map, self.image_size, self.pixel_threshold = model_map, tuple(image_size), pixel_threshold
        self._map = self._mask = None

    @classmethod
    def from_map(cls, score: float, anomalous: bool, anomaly_map: np.ndarray, mask: np.ndarray) -> "Prediction":
        """A Prediction whose full-size map and mask are already known."""
        p = cls(score, anomalous, anomaly_map, anomaly_map.shape, float("nan"))
        p._map, p._mask = anomaly_map, mask
        return p

    @property
    def anomaly_map(self) -> np.ndarray:
        if self._map is None:
            self._map = resize_map(self.model_map, *self.image_size)
        return self._map

    @property
    def mask(self) -> np.ndarray:
        if self._mask is None:
            self._mask = (self.anomaly_map > self.pixel_threshold if self._any_above()
                          else np.zeros(self.image_size, dtype=bool))
        return self._mask

    def _any_above(self) -> bool:
        """Whether any pixel of the full-size map can exceed the pixel threshold. Bilinear upsampling gives
        convex combinations of the model map's values, so when none of those exceeds it, no pixel does and
        the full-size map need not be made (the usual case on a line: a good part)."""
        return self._map is not None or float(self.model_map.max()) > self.pixel_threshold

    def __repr__(self) -> str:
        return (f"Prediction(score={self.score:.6g}, anomalous={self.anomalous}, "
                f"image_size={self.image_size[0]}x{self.image_size[1]})")

    def _model_mask(self) -> np.ndarray:
        """The cells of the model's map above the pixel threshold (a full-size mask given to ``from_map``)."""
        if self._mask is not None and self._mask.shape == self.model_map.shape:
            return self._mask
        return self.model_map > self.pixel_threshold

    @property
    def bbox(self) -> tuple[int, int, int, int] | None:
        """(x0, y0, x1, y1) in the picture's pixels (x1, y1 exclusive): the cells of the model's map above the
        pixel threshold, scaled to the picture; None if none. Made without the full-size map (which a 5 MP
        picture would take longer to make than the inference), so it is exact to one cell of the model map."""
        cells = self._model_mask()
        rows, cols = np.flatnonzero(cells.any(1)), np.flatnonzero(cells.any(0))
        if rows.size == 0:
            return None
        (h, w), (mh, mw) = self.image_size, cells.shape
        return (int(cols[0] * w // mw), int(rows[0] * h // mh), int(min(w, -(-(cols[-1] + 1) * w // mw))),
                int(min(h, -(-(rows[-1] + 1) * h // mh))))

    @property
    def anomalous_pixels(self) -> int:
        """How many of the picture's pixels are above the pixel threshold, counted on the model's map and
        scaled to the picture's size (exact to the model map's resolution)."""
        cells = self._model_mask()
        (h, w), (mh, mw) = self.image_size, cells.shape
        return int(round(int(cells.sum()) * h * w / (mh * mw)))

    @property
    def peak(self) -> float:
        """The map's highest value: the model map's maximum, which upsampling cannot exceed (the same at any
        picture size)."""
        return float(self.model_map.max())

    def to_dict(self) -> dict:
        """JSON-ready: score, label ("anomalous" or "good"), anomalous_pixels, peak, bbox [x0, y0, x1, y1]; all
        from the model's map, never the full-size one."""
        box = self.bbox
        return {"score": self.score, "label": "anomalous" if self.anomalous else "good",
                "anomalous_pixels": self.anomalous_pixels, "peak": self.peak,
                "bbox": None if box is None else list(box)}


def _model_file(path: Path, backend: str) -> tuple[Path, Path | None]:
    """(model file, bundle folder or None) for a bundle folder or a lone model file."""
    if path.is_dir():
        name = "model.xml" if backend == "openvino" else "model.onnx"
        f = path / name
        if not (path / MANIFEST).is_file():
            raise FreEdgeError(f"{path} is not a bundle (no {MANIFEST}); pass a folder written by `fre-edge export`")
        if not f.is_file():
            other = "onnxruntime" if backend == "openvino" else "openvino"
            raise FreEdgeError(f"{path}: this bundle has no {name}; use --backend {other} or re-export with it")
        return f, path
    if path.is_file():
        if path.suffix == ".xml" and backend == "openvino":
            if not path.with_suffix(".bin").is_file():
                raise FreEdgeError(f"{path}: its weights {path.with_suffix('.bin').name} are missing; "
                                   f"keep .xml and .bin together")
            return path, None
        if path.suffix == ".onnx":
            return path, None
        if path.suffix == ".xml":
            raise FreEdgeError(f"{path}: an OpenVINO IR needs --backend openvino")
        raise FreEdgeError(f"{path}: not a bundle folder, .xml or .onnx file")
    raise FreEdgeError(f"{path}: no such bundle; pass the folder written by `fre-edge export`")


class _Threshold:
    """A threshold attribute that is finite and above 0 whoever sets it (NaN would pass every image, inf
    every part)."""

    def __init__(self, name: str):
        self.name = name

    def __set_name__(self, owner, attr: str):
        self.attr = f"_{attr}"

    def __get__(self, obj, objtype=None):
        return self if obj is None else getattr(obj, self.attr)

    def __set__(self, obj, value) -> None:
        setattr(obj, self.attr, check_threshold(value, self.name, "AnomalyDetector", "set a finite number above 0"))


class _LoadedGraph:
    """A bundle's graph on one adapter, with its metadata."""

    def __init__(self, adapter: InferenceAdapter, metadata: dict, source: Path):
        self.adapter = adapter
        self.metadata = metadata
        self.source = source
        self.input_size = input_hw(metadata["input_size"])  # (height, width)
        self.tiling = Tiling.from_json(metadata["tiling"]) if metadata.get("tiling") else None

    def describe(self) -> dict:
        """Where the graph runs and how: backend, device, precision asked and used, versions."""
        return {"source": str(self.source), "backend": self.adapter.name, "device": self.adapter.device,
                "precision_requested": self.adapter.requested_precision,
                "precision_used": self.adapter.precision_used, "hint": self.adapter.hint,
                "backbone": self.metadata["backbone"], "input_size": size_json(self.input_size),
                "tiles_per_picture": per_picture(self.tiling),
                "weights_precision": self.metadata["precision"], **self._head_weights(), **self.adapter.versions()}

    def _head_weights(self) -> dict:
        """For a bundle with INT8 head weights on OpenVINO: what it stores and what the compiled head reads."""
        stored = (self.metadata.get("head_weights") or {}).get("dtype")
        at_run = getattr(self.adapter, "head_weights_at_run", lambda: [])()
        return {"head_weights": {"stored": stored, "at_run": at_run}} if stored and at_run else {}


class BackboneOnly(_LoadedGraph):
    """The graph cut where the FRE head begins: something to time, not a detector (no ``predict``)."""


class AnomalyDetector(_LoadedGraph):
    """A loaded bundle. Thread-safe: one instance can serve several cameras at once.

    ``image_threshold`` and ``pixel_threshold`` start as the bundle's and may be set (finite, above 0).
    ``input_size`` is the graph's (height, width); pictures of any size are resized to it, or, when the
    bundle was fitted with tiles, to ``tiling.canvas`` and cut into ``tiling.count`` overlapping tiles of
    that size (:mod:`fre_edge.tiling`: the score is the largest tile's, the map stitched).
    """

    def __init__(self, adapter: InferenceAdapter, metadata: dict, source: Path):
        super().__init__(adapter, metadata, source)
        th = metadata["thresholds"]
        self.image_threshold = th["image"]
        self.pixel_threshold = th["pixel"]

    image_threshold = _Threshold("image")
    pixel_threshold = _Threshold("pixel")

    # -- raw --------------------------------------------------------------------------------------
    def infer_prepared(self, batch_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Batch [N, H, W, 3] uint8 at the model's input size -> scores [N], maps [N, H, W]."""
        out = self.adapter.infer(np.ascontiguousarray(batch_u8, dtype=np.uint8))
        return out["score"].astype(np.float32), out["anomaly_map"].astype(np.float32)

    # -- convenient -------------------------------------------------------------------------------
    def predict_batch(self, images: Sequence) -> list[Prediction]:
        """Score several images in one inference call.

        Args:
            images: paths (str or Path) or arrays, any mix, of any size: H x W grey, H x W x 1/3/4
                (RGB, RGBA), uint8, uint16 or float in [0, 1]. Files are read upright (EXIF orientation).

        Returns:
            one :class:`Prediction` per image, in order, with maps and masks at each image's own size.
        """
        return self.predict_prepared([self.prepare(i) for i in images])

    def prepare(self, image) -> tuple[np.ndarray, tuple[int, int]]:
        """(the model's input, H x W x 3 uint8 (with tiles: [tiles, H, W, 3]), and the picture's (height,
        width)) for a path or an array."""
        return model_input(image, self.input_size) if self.tiling is None else tiles_of(image, self.tiling)

    def predict_prepared(self, prepared: Sequence[tuple[np.ndarray, tuple[int, int]]]) -> list[Prediction]:
        """Score pictures already made ready by :meth:`prepare` (in other threads, say), in one call."""
        if not prepared:
            return []
        if self.tiling is not None:  # every tile of every picture in one call, then each picture's score and map
            scores, maps = self.tiling.reduce(*self.infer_prepared(np.concatenate([x for x, _ in prepared])))
        else:
            scores, maps = self.infer_prepared(np.stack([x for x, _ in prepared]))
        return [Prediction(s, s > self.image_threshold, m, hw, self.pixel_threshold)
                for s, m, (_, hw) in zip(scores, maps, prepared)]

    def predict(self, image) -> Prediction:
        """One image (a path or an array, as in :meth:`predict_batch`) -> its :class:`Prediction`."""
        return self.predict_batch([image])[0]

    def iter_predict(self, images: Iterable, batch_size: int = 8, *, workers: int = 2,
                     on_error=None) -> Iterator[tuple[object, Prediction]]:
        """(image, Prediction) for each image of ``images``, scored ``batch_size`` at a time, in order.

        Reading and resizing run in ``workers`` threads ahead of inference (Pillow and the runtimes release
        the GIL), so decoding the next batch overlaps scoring this one. ``on_error(image, FreEdgeError)``:
        called for an image that cannot be read, which is then skipped; without it the error is raised.
        """
        from concurrent.futures import ThreadPoolExecutor

        items = iter(images)
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="fre-edge-read") as pool:
            pending = []  # (image, future), read ahead by up to two batches

            def fill():
                while len(pending) < 2 * batch_size:
                    item = next(items, _END)
                    if item is _END:
                        return
                    pending.append((item, pool.submit(self.prepare, item)))

            fill()
            while pending:
                chunk, ready = [], []
                while pending and len(chunk) < batch_size:
                    item, future = pending.pop(0)
                    try:
                        ready.append(future.result())
                        chunk.append(item)
                    except FreEdgeError as exc:
                        if on_error is None:
                            raise
                        on_error(item, exc)
                fill()  # the next reads start before this batch infers
                yield from zip(chunk, self.predict_prepared(ready))


_END = object()


def _open_remote(path, verify: bool, url: str | None, model_name: str | None,
                 timeout: float) -> tuple[InferenceAdapter, dict, Path]:
    """(adapter, manifest, path) for a bundle whose graph runs on a model server."""
    from .remote import KServeAdapter

    path = Path(path)
    if not url:
        raise FreEdgeError("the kserve backend needs the server's URL; pass url='grpc://HOST:PORT' (--server)")
    if not path.is_dir():
        raise FreEdgeError(f"{path}: the kserve backend needs the bundle folder (its manifest holds the thresholds "
                           f"and the digest the server is checked against)")
    manifest = read_manifest(path, verify=verify)
    name = model_name or served_name(path)
    return KServeAdapter(url, manifest, name, timeout=timeout), manifest, path


def _open(path, backend: str, verify: bool, **adapter_options) -> tuple[InferenceAdapter, dict, Path]:
    """(adapter, validated metadata, path): the bundle checked before its graph is compiled."""
    if backend not in BACKENDS:
        raise FreEdgeError(f"unknown backend {backend!r}; use openvino, onnxruntime or {REMOTE}")
    path = Path(path)
    model_file, bundle_dir = _model_file(path, backend)
    manifest = read_manifest(bundle_dir, verify=verify) if bundle_dir else None  # refuses unlisted model files
    adapter = make_adapter(backend, model_file, **adapter_options)
    if manifest is None:
        meta = adapter.metadata()
        if meta is None:
            raise FreEdgeError(f"{model_file}: carries no fre-edge metadata; export it with `fre-edge export`")
        manifest = validate_metadata(meta, str(model_file))
    h, w = input_hw(manifest["input_size"])
    if tuple(adapter.input_hw()) != (h, w):
        raise FreEdgeError(f"{path}: the metadata says {h} x {w} input, the graph takes "
                           f"{' x '.join(map(str, adapter.input_hw()))}; re-export the bundle")
    return adapter, manifest, path


def load_detector(path: str | Path, *, backend: str = "openvino", device: str = "CPU", precision: str = "f32",
                  hint: str = "latency", threads: int | None = None, batch: int | None = None,
                  verify: bool = True, url: str | None = None, model_name: str | None = None,
                  timeout: float = 30.0) -> AnomalyDetector:
    """Load a bundle for scoring.

    Args:
        path: a bundle folder written by ``fre-edge export`` (its checksums verified and its manifest
            cross-checked with the metadata inside the model files), or a lone ``model.xml`` (with its
            ``.bin``) or ``model.onnx``, whose metadata is read from inside.
        backend: ``"openvino"`` (default), ``"onnxruntime"``, or ``"kserve"``: the graph runs on a model
            server of the KServe v2 protocol (``fre-edge serve``, OVMS, Triton) at ``url``, while reading,
            resizing and thresholds stay here (``path`` must then be the bundle folder the server runs).
        device: OpenVINO device (``"CPU"``, ``"GPU"``, ``"AUTO"``, ...); ONNX Runtime runs on CPU only.
        precision: inference precision hint, ``"f32"`` (default), ``"bf16"`` or ``"f16"``; OpenVINO's CPU
            plugin would use bf16 on AMX machines unless told f32. ``describe()`` reports what was used.
        hint: OpenVINO performance hint, ``"latency"`` or ``"throughput"``.
        threads: inference threads (default: the runtime's choice).
        batch: fix the graph's batch dimension (default: dynamic).
        verify: check the bundle's checksums and manifest (default True; keep it on a line).
        url: with ``backend="kserve"``: ``"grpc://HOST:PORT"`` or ``"http://HOST:PORT"``.
        model_name: with ``backend="kserve"``: the name the server gives the model (default: the bundle
            folder's name, as ``fre-edge serve`` names it).
        timeout: with ``backend="kserve"``: seconds to wait for each answer.

    Raises:
        FreEdgeError: one line naming the problem and the fix (missing, damaged or edited bundle,
            unknown backend or device, ...).
    """
    if backend == REMOTE:
        adapter, metadata, path = _open_remote(path, verify, url, model_name, timeout)
    else:
        adapter, metadata, path = _open(path, backend, verify, device=device, precision=precision, hint=hint,
                                        threads=threads, batch=batch)
    return AnomalyDetector(adapter, metadata, path)


def load_backbone_only(path: str | Path, *, backend: str = "openvino", device: str = "CPU",
                       precision: str = "f32", hint: str = "latency", threads: int | None = None,
                       batch: int | None = None, verify: bool = True) -> BackboneOnly:
    """The bundle's graph cut before the FRE head (OpenVINO only), for timing the head's cost."""
    adapter, metadata, path = _open(path, backend, verify, device=device, precision=precision, hint=hint,
                                    threads=threads, batch=batch, backbone_only=True)
    return BackboneOnly(adapter, metadata, path)
