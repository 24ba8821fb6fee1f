"""What travels over the KServe v2 protocol for a bundle: one uint8 image batch in, score and map out.

Shared by the server (:mod:`.kserve_model`), the model repository writer (:mod:`.repository`) and the
remote client (:mod:`fre_edge.runtime.remote`), so the three cannot drift apart. Torch-free, kserve-free.
"""

from __future__ import annotations

import math

import numpy as np

from ..images import input_hw
from ..runtime.bundle import bundle_digest, serving_version
from ..runtime.remote import MAX_BATCH  # the client splits larger batches; the server refuses them

__all__ = ["MAX_BATCH", "check_header", "check_request", "input_tensor", "message_limits", "output_tensors",
           "request_images", "version_of"]


def input_tensor(manifest: dict) -> dict:
    """The graph's input in the protocol's terms: {"name", "datatype", "shape"} (-1 = any batch)."""
    return {"name": manifest["input"]["name"], "datatype": "UINT8", "shape": [-1, *input_hw(manifest["input_size"]), 3]}


def output_tensors(manifest: dict) -> list[dict]:
    """The graph's outputs in the protocol's terms, in the bundle's order (score [N], anomaly_map [N, H, W])."""
    return [{"name": o["name"], "datatype": "FP32", "shape": list(o["shape"])} for o in manifest["outputs"]]


def version_of(manifest: dict) -> str:
    """The model version every server reports for this bundle (see :func:`serving_version`)."""
    return serving_version(bundle_digest(manifest))


def message_limits(manifests, max_batch: int = MAX_BATCH) -> tuple[int, int]:
    """(largest request, largest response) in bytes that gRPC must carry for the largest batch any of these
    bundles accepts: ``max_batch`` images in as raw uint8 (or as ``uint_contents``, up to two bytes a value),
    a score and an f32 map per image out, with 1 MiB for the message's own fields."""
    pixels = max(math.prod(input_hw(m["input_size"])) for m in manifests)
    return max_batch * pixels * 3 * 2 + (1 << 20), max_batch * (pixels + 1) * 4 + (1 << 20)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_header(head) -> None:
    """Raise ValueError(reason) when a v2 request's JSON header (as the binary extension sends it) is not a
    well-formed inference request: every field of the protocol is checked for its type."""
    if not isinstance(head, dict):
        raise ValueError("the request's JSON header is not an object; send a KServe v2 inference request")
    if not isinstance(head.get("inputs"), list) or not head["inputs"]:
        raise ValueError("the request has no 'inputs' list; send a KServe v2 inference request")
    if "id" in head and not isinstance(head["id"], str):
        raise ValueError("'id' must be a string")
    if head.get("parameters") is not None and not isinstance(head["parameters"], dict):
        raise ValueError("'parameters' must be an object")
    for spec in head["inputs"]:
        if not isinstance(spec, dict):
            raise ValueError("each entry of 'inputs' must be an object with 'name', 'shape' and 'datatype'")
        if not isinstance(spec.get("name"), str) or not isinstance(spec.get("datatype"), str):
            raise ValueError("each input needs 'name' and 'datatype' as strings")
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise ValueError(f"input {spec['name']!r}: 'shape' must be a list of whole numbers >= 0, got {shape!r}")
        if spec.get("parameters") is not None and not isinstance(spec["parameters"], dict):
            raise ValueError(f"input {spec['name']!r}: 'parameters' must be an object")
    outputs = head.get("outputs")
    if outputs is not None and (not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) and isinstance(o.get("parameters") or {}, dict)
            for o in outputs)):
        raise ValueError("'outputs' must be a list of objects, each with a 'name' string")


def request_images(payload, manifest: dict, max_batch: int = MAX_BATCH) -> np.ndarray:
    """The uint8 [N, H, W, 3] images of a decoded v2 request (kserve's ``InferRequest``: JSON, binary or gRPC),
    or ValueError(reason): one input of the graph's name, type and shape; values whole numbers 0-255 (a
    JSON value of 300, -1, 1.5 or ``true`` is refused, never wrapped, truncated or scored); the number of
    values or bytes that the shape says; requested outputs among the graph's."""
    want = input_tensor(manifest)
    if len(payload.inputs) != 1:
        raise ValueError(f"{len(payload.inputs)} inputs sent; send one, {want['name']!r}")
    outputs = {o["name"] for o in output_tensors(manifest)}
    for o in payload.request_outputs or []:
        if o.name not in outputs:
            raise ValueError(f"output {o.name!r} is unknown; ask for {', '.join(sorted(outputs))} or leave "
                             f"'outputs' out")
    tensor = payload.inputs[0]
    shape = list(tensor.shape)
    if not all(_is_int(d) for d in shape):
        raise ValueError(f"input {tensor.name!r}: 'shape' must be whole numbers, got {shape!r}")
    problem = check_request(tensor.name, tensor.datatype, shape, manifest, max_batch)
    if problem:
        raise ValueError(problem)
    count = math.prod(shape)
    raw = getattr(tensor, "_raw_data", None)
    if raw is not None:
        if len(raw) != count:
            raise ValueError(f"input {tensor.name!r}: {len(raw)} bytes for shape {shape} ({count} bytes); send "
                             f"one byte per value")
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    data = tensor.data
    if data is None:
        raise ValueError(f"input {tensor.name!r} has no data; send 'data' or binary data")
    try:
        values = np.asarray(data)
    except (ValueError, TypeError):
        raise ValueError(f"input {tensor.name!r}: 'data' is not a list of numbers") from None
    if values.dtype.kind not in "iu":
        kind = {"f": "fractions (pixels scaled to 0-1?)", "b": "true/false", "U": "strings", "O": "mixed values"}
        raise ValueError(f"input {tensor.name!r}: UINT8 data must be whole numbers 0-255, got "
                         f"{kind.get(values.dtype.kind, values.dtype.name)}; send RGB pixel values")
    if values.size != count:
        raise ValueError(f"input {tensor.name!r}: {values.size} values for shape {shape} ({count}); send one value "
                         f"per pixel and channel")
    if values.size and (values.min() < 0 or values.max() > 255):
        bad = values.min() if values.min() < 0 else values.max()
        raise ValueError(f"input {tensor.name!r}: value {int(bad)} is outside UINT8's 0-255; send RGB pixel values")
    return values.astype(np.uint8).reshape(shape)


def check_request(name: str, datatype: str, shape, manifest: dict, max_batch: int = MAX_BATCH) -> str | None:
    """Why a request's input tensor does not fit the bundle's graph, or None when it does."""
    want = input_tensor(manifest)
    h, w = want["shape"][1:3]
    if name != want["name"]:
        return f"input {name!r} is unknown; send one input named {want['name']!r}"
    if datatype != "UINT8":
        return f"input {name!r} has datatype {datatype}; send UINT8 RGB pixels"
    shape = list(shape)
    if len(shape) != 4 or shape[1:] != [h, w, 3]:
        return (f"input {name!r} has shape {shape}; send [N, {h}, {w}, 3] (RGB, resized to the model's "
                f"input size on the client)")
    if not 1 <= shape[0] <= max_batch:
        return f"input {name!r} holds a batch of {shape[0]}; send 1 to {max_batch} images per request"
    return None
