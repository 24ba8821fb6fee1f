"""One small adapter per inference backend, all behind the :class:`InferenceAdapter` protocol.

``infer(batch_uint8_nhwc) -> {"score": [N], "anomaly_map": [N, S, S]}``; a new backend (a remote model
server, say) is one more class with these members, and the detector above it does not change. Each
adapter is safe to call from several threads at once: OpenVINO keeps one infer request per thread; an
ONNX Runtime session's ``run`` is thread-safe.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import FreEdgeError
from .bundle import METADATA_KEY

BACKENDS = ("openvino", "onnxruntime")  # in this process
REMOTE = "kserve"  # on a model server: fre_edge.runtime.remote
PRECISIONS = ("f32", "bf16", "f16")
HINTS = ("latency", "throughput")


@runtime_checkable
class InferenceAdapter(Protocol):
    """What the detector needs from a backend."""

    name: str  # "openvino", "onnxruntime", ...
    device: str  # where it runs, as the user named it
    requested_precision: str  # "f32", "bf16", "f16"
    hint: str  # "latency" or "throughput"

    @property
    def precision_used(self) -> str:
        """The inference precision the backend actually runs ("f32", "bf16", ... or "unknown")."""

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 [N, S, S, 3] RGB -> the graph's outputs by name (score [N], anomaly_map [N, S, S])."""

    def metadata(self) -> dict | None:
        """The fre-edge metadata inside the model, or None."""

    def input_hw(self) -> tuple:
        """(height, width) of the image input, -1 where dynamic."""

    def versions(self) -> dict:
        """{package: version} of the runtime, for reports."""


def reason(exc: BaseException, limit: int = 400) -> str:
    """A runtime's error message on one line, with its real cause: OpenVINO puts the source location
    ("Exception from src/...cpp:84:") and internal checks first and the reason after them."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith("Exception from src/")
            and not (line.startswith("Check '") and " failed at " in line)]
    text = " ".join(kept or lines) or exc.__class__.__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _need(module: str, pip_name: str):
    try:
        return __import__(module)
    except ImportError:
        raise FreEdgeError(f"the {pip_name} runtime is not installed; run: pip install {pip_name}") from None


def _head_input(op):
    """The pooled-feature tensor a head's first big op reads, or None if ``op`` does not start a head.

    A head starts with ``MatMul(Reshape(features), V)`` (``reconstruct``) or with
    ``GroupConvolution(Reshape(Transpose(Reshape(features)) - mean), V)`` (``one_pass``; the converter
    may turn the subtraction into an Add of the negated mean).
    """
    if op.get_type_name() not in ("MatMul", "GroupConvolution"):
        return None
    reshape = op.input(0).get_source_output().get_node()
    if reshape.get_type_name() != "Reshape":
        return None
    x = reshape.input(0).get_source_output()
    node = x.get_node()
    if (op.get_type_name() == "GroupConvolution" and node.get_type_name() in ("Add", "Subtract")
            and node.input(1).get_source_output().get_node().get_type_name() == "Constant"):
        transpose = node.input(0).get_source_output().get_node()
        if transpose.get_type_name() != "Transpose":
            return None
        x = transpose.input(0).get_source_output()
        if x.get_node().get_type_name() == "Reshape":
            x = x.get_node().input(0).get_source_output()
    return x if x.get_partial_shape().rank.get_length() == 4 else None


def head_starts(model) -> list:
    """(first big op, pooled-feature tensor) of each FRE head in an OpenVINO model, in graph order."""
    found = []
    for op in model.get_ordered_ops():
        x = _head_input(op)
        if x is not None:
            found.append((op, x))
    return found


def cut_to_backbone(model):
    """The same OpenVINO model ending at the pooled features that enter each FRE head."""
    import openvino as ov

    outs = []
    for _, x in head_starts(model):
        if all(x != o for o in outs):
            outs.append(x)
    if not outs:
        raise FreEdgeError("cannot find the FRE head in this model; --backbone-only needs an fre-edge bundle")
    return ov.Model(outs, model.get_parameters(), "fre_backbone_only")


HEAD_WEIGHT_VALUES = 1 << 16  # an FRE head matmul reads D x k values; the map's upsampling matrices far fewer


def big_matmuls_at_run(compiled, min_values: int = HEAD_WEIGHT_VALUES) -> list:
    """The matmuls of a compiled OpenVINO model (its runtime model's FullyConnected nodes) that read weights of
    at least ``min_values`` values, in execution order: in an FRE bundle, the head's."""
    out = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        if op.get_rt_info()["layerType"].astype(str).startswith("FullyConnected"):
            if int(np.prod(op.input(1).get_partial_shape().get_min_shape())) >= min_values:
                out.append(op)
    return out


def set_batch(model, n: int):
    """``model`` (an OpenVINO model, reshaped in place) with its input's batch dimension fixed at ``n``."""
    shape = model.input(0).get_partial_shape()
    shape[0] = n
    model.reshape({model.input(0).get_any_name(): shape})
    return model


# the batch sizes an adapter loaded with a dynamic batch compiles again at a fixed shape, when they come: batch 1,
# a line's picture per trigger, where OpenVINO's CPU plugin runs a fixed shape faster than the dynamic one; each
# compiled graph holds its own weights, so larger sizes, where the gain was small, keep the dynamic graph
FIXED_BATCHES = (1,)


class OpenVINOAdapter:
    name = "openvino"

    def __init__(self, model_path: Path, *, device: str = "CPU", precision: str = "f32",
                 hint: str = "latency", threads: int | None = None, batch: int | None = None,
                 backbone_only: bool = False):
        ov = _need("openvino", "openvino")
        self.core = ov.Core()
        available = self.core.available_devices
        base = device.split(":")[0].split(".")[0]
        if base not in ("AUTO", "MULTI", "HETERO") and not any(d.startswith(base) for d in available):
            raise FreEdgeError(f"OpenVINO device {device!r} is not available here; use one of "
                               f"{', '.join(available + ['AUTO'])}")
        if precision not in PRECISIONS:
            raise FreEdgeError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        if hint not in HINTS:
            raise FreEdgeError(f"unknown performance hint {hint!r}; use latency or throughput")
        try:
            self.model = self.core.read_model(str(model_path))
        except RuntimeError as exc:
            raise FreEdgeError(f"{model_path}: OpenVINO cannot read it ({reason(exc)}); re-export") from None
        self.full_model = self.model
        if backbone_only:
            self.model = cut_to_backbone(self.model)
        if batch:
            set_batch(self.model, batch)
        config = {"PERFORMANCE_HINT": hint.upper()}
        if base in ("CPU", "GPU", "AUTO"):
            config["INFERENCE_PRECISION_HINT"] = precision
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = self.core.compile_model(self.model, device, config)
        except RuntimeError as exc:
            raise FreEdgeError(f"OpenVINO cannot compile for {device} with precision {precision} "
                               f"({reason(exc)}); check --device and --precision") from None
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self._local = threading.local()
        self._config = config
        # with a dynamic batch: the sizes in FIXED_BATCHES, compiled again at that size when they come (_compiled_for)
        self._fixed = {} if self.model.input(0).get_partial_shape()[0].is_dynamic else None
        self._fixed_lock = threading.Lock()
        self.device = device
        self.requested_precision = precision
        self.hint = hint

    @property
    def precision_used(self) -> str:
        try:
            value = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        except RuntimeError:
            return "unknown"
        try:  # an openvino Type: 'f32', 'bf16', 'f16'
            return value.to_string()
        except AttributeError:
            return str(value)

    def metadata(self) -> dict | None:
        # IR: rt_info model_info/fre_edge; ONNX read by OpenVINO: metadata_props land in framework/
        for path in (["model_info", METADATA_KEY], ["framework", METADATA_KEY]):
            if self.full_model.has_rt_info(path):
                raw = self.full_model.get_rt_info(path)
                return json.loads(raw.astype(str) if hasattr(raw, "astype") else str(raw))
        return None

    def input_hw(self) -> tuple:
        """(height, width) of the graph's image input (-1 where dynamic)."""
        shape = self.model.input(0).get_partial_shape()
        return tuple(d.get_length() if d.is_static else -1 for d in list(shape)[1:3])

    def _compiled_for(self, n: int):
        """The compiled model for a batch of ``n``. A graph with a dynamic batch is compiled again at a fixed
        batch of ``n`` the first time ``n`` comes, for the sizes in ``FIXED_BATCHES``: OpenVINO's CPU plugin runs
        the fixed shape faster there. Other sizes, and one the device cannot
        compile, run on the dynamic graph."""
        if self._fixed is None or n not in FIXED_BATCHES:
            return self.compiled
        compiled = self._fixed.get(n)
        if compiled is None:
            with self._fixed_lock:
                compiled = self._fixed.get(n)
                if compiled is None:
                    try:
                        compiled = self.compile_at(n)
                    except RuntimeError:
                        compiled = self.compiled
                    self._fixed[n] = compiled
        return compiled

    def compile_at(self, n: int):
        """The loaded graph compiled again, as loaded, at a fixed batch of ``n`` (OpenVINO's RuntimeError if the
        device cannot)."""
        return self.core.compile_model(set_batch(self.model.clone(), n), self.device, self._config)

    def request(self, n: int | None = None):
        """This thread's infer request: on the graph as loaded, or with ``n``, on the one for a batch of ``n``."""
        compiled = self.compiled if n is None else self._compiled_for(n)
        reqs = getattr(self._local, "reqs", None)
        if reqs is None:
            reqs = self._local.reqs = {}
        req = reqs.get(id(compiled))
        if req is None:
            req = reqs[id(compiled)] = compiled.create_infer_request()
        return req

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        req = self.request(int(batch.shape[0]))
        req.infer({0: batch})
        return {name: req.get_output_tensor(i).data.copy() for i, name in enumerate(self.output_names)}

    def head_weights_at_run(self) -> list[str]:
        """The element type each head matmul reads once compiled: ``u8`` where the CPU plugin kept a bundle's INT8
        head weights, ``f32`` where it decompressed them at load (then they save no time)."""
        return [op.input(1).get_element_type().get_type_name() for op in big_matmuls_at_run(self.compiled)]

    def versions(self) -> dict:
        import openvino as ov

        return {"openvino": ov.get_version()}


class OnnxRuntimeAdapter:
    name = "onnxruntime"

    def __init__(self, model_path: Path, *, device: str = "CPU", precision: str = "f32", hint: str = "latency",
                 threads: int | None = None, batch: int | None = None, backbone_only: bool = False):
        ort = _need("onnxruntime", "onnxruntime")
        if backbone_only:
            raise FreEdgeError("--backbone-only is available with --backend openvino; use that backend")
        if device.upper() != "CPU":
            raise FreEdgeError(f"device {device!r}: the onnxruntime backend here runs on CPU only; use --device CPU")
        if precision != "f32":
            raise FreEdgeError(f"precision {precision!r}: the onnxruntime backend runs f32; use --precision f32")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: no coloured warnings on the user's terminal
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises several types
            raise FreEdgeError(f"{model_path}: ONNX Runtime cannot load it ({reason(exc)}); re-export") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.device, self.hint = "CPU", hint
        self.requested_precision = precision

    precision_used = "f32"

    def metadata(self) -> dict | None:
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        return json.loads(raw) if raw else None

    def input_hw(self) -> tuple:
        shape = self.session.get_inputs()[0].shape
        return tuple(d if isinstance(d, int) else -1 for d in shape[1:3])

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {self.input_name: batch})
        return dict(zip(self.output_names, outs))

    def versions(self) -> dict:
        import onnxruntime as ort

        return {"onnxruntime": ort.__version__}


def make_adapter(backend: str, model_path: Path, **kwargs):
    if backend == "openvino":
        return OpenVINOAdapter(model_path, **kwargs)
    if backend == "onnxruntime":
        return OnnxRuntimeAdapter(model_path, **kwargs)
    raise FreEdgeError(f"unknown backend {backend!r}; use openvino or onnxruntime")
