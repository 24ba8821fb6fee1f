"""What travels over the KServe v2 protocol for a bundle: one uint8 image batch in, score and map out.

Shared by the server (:mod:`.kserve_model`), the model repository writer (:mod:`.repository`) and the
remote client (:mod:`fre_edge.runtime.remote`), so the three cannot drift apart. Torch-free, kserve-free.
"""

from __future__ import annotations

from ..images import input_hw
from ..runtime.bundle import bundle_digest, serving_version
from ..runtime.remote import MAX_BATCH  # the client splits larger batches; the server refuses them

__all__ = ["MAX_BATCH", "check_request", "input_tensor", "output_tensors", "version_of"]


def input_tensor(manifest: dict) -> dict:
    """The graph's input in the protocol's terms: {"name", "datatype", "shape"} (-1 = any batch)."""
    return {"name": manifest["input"]["name"], "datatype": "UINT8", "shape": [-1, *input_hw(manifest["input_size"]), 3]}


def output_tensors(manifest: dict) -> list[dict]:
    """The graph's outputs in the protocol's terms, in the bundle's order (score [N], anomaly_map [N, H, W])."""
    return [{"name": o["name"], "datatype": "FP32", "shape": list(o["shape"])} for o in manifest["outputs"]]


def version_of(manifest: dict) -> str:
    """The model version every server reports for this bundle (see :func:`serving_version`)."""
    return serving_version(bundle_digest(manifest))


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
