"""One bundle as a KServe model: v2 ``infer`` in, the graph's score and anomaly map out (needs kserve).

The server does only what the graph does: the client reads and resizes the picture (only S x S x 3
uint8 travels) and applies the thresholds of its own copy of the bundle. Every response names the
model version derived from the bundle's digest (:func:`fre_edge.runtime.bundle.serving_version`), so a
client can tell it is talking to the bundle it holds.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from ..runtime import load_detector
from ..runtime.bundle import bundle_digest, read_manifest
from .contract import MAX_BATCH, input_tensor, output_tensors, request_images, version_of


class BundleModel(Model):
    """A bundle folder served under ``name``; loaded (checksums verified) by :meth:`load`."""

    def __init__(self, name: str, bundle: Path, *, backend: str = "openvino", device: str = "CPU",
                 precision: str = "f32", threads: int | None = None, max_batch: int = MAX_BATCH):
        super().__init__(name)
        self.bundle, self.backend, self.device = Path(bundle), backend, device
        self.precision, self.threads, self.max_batch = precision, threads, max_batch
        self.detector = self.manifest = self.version = self.digest = None

    def load(self) -> bool:
        # the throughput hint: several requests in flight share the CPU's streams
        self.detector = load_detector(self.bundle, backend=self.backend, device=self.device,
                                      precision=self.precision, hint="throughput", threads=self.threads)
        self.manifest = read_manifest(self.bundle, verify=False)  # load_detector has verified it
        self.digest, self.version = bundle_digest(self.manifest), version_of(self.manifest)
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict]:
        return [input_tensor(self.manifest)]

    def get_output_types(self) -> list[dict]:
        return output_tensors(self.manifest)

    def _images(self, payload: InferRequest):
        if not isinstance(payload, InferRequest):
            raise InvalidInput("send a KServe v2 inference request (the v1 'instances' form is not served)")
        try:
            return request_images(payload, self.manifest, self.max_batch)
        except ValueError as exc:  # every field checked against the model's metadata: a 400 with its reason
            raise InvalidInput(str(exc)) from None

    async def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
        images = self._images(payload)
        # off the event loop, so that requests from several clients run at once
        scores, maps = await asyncio.get_running_loop().run_in_executor(None, self.detector.infer_prepared, images)
        binary = payload.from_grpc or payload.use_binary_outputs or _asks_binary(payload)
        outputs = []
        for spec, data in zip(output_tensors(self.manifest), (scores, maps)):
            out = InferOutput(name=spec["name"], shape=list(data.shape), datatype="FP32")
            out.set_data_from_numpy(data, binary_data=binary)
            outputs.append(out)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs,
                             model_version=self.version, use_binary_outputs=binary,
                             requested_outputs=payload.request_outputs)


def _asks_binary(payload: InferRequest) -> bool:
    """Whether a REST request asked for its outputs in the binary extension (Triton's client does)."""
    return any((o.parameters or {}).get("binary_data") for o in (payload.request_outputs or []))
