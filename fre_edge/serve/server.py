"""``fre-edge serve``: bundles on KServe's Python model server, REST and gRPC, bound where the user says.

KServe's ModelServer listens on every interface (0.0.0.0 and [::]), drops model versions from its
metadata, and decodes a REST request's binary tensor into a Python list of numbers, one Python object
per pixel value (slower than the inference for a 256 px image). This module changes only that: both servers
bind ``host`` (loopback unless the user opens it), the metadata lists the bundle's serving version, and
binary REST inputs stay bytes until the model reads them as one numpy array. Everything else (endpoints,
errors, signals, metrics) is KServe's own, so the same process runs unchanged as a KServe
InferenceService predictor.
"""

from __future__ import annotations

import sys
from concurrent import futures

from ..errors import FreEdgeError


def _import_kserve():
    """kserve parses sys.argv when imported: hide fre-edge's own arguments from it."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve  # noqa: F401
        from kserve import model_server
    except ImportError:
        raise FreEdgeError('serving needs the kserve package; run: pip install "fre-edge[serve]"') from None
    finally:
        sys.argv = argv
    return model_server


def build_server(models, *, host: str, http_port: int, grpc_port: int, threads: int = 4):
    """A KServe ModelServer for ``models`` (:class:`~fre_edge.serve.kserve_model.BundleModel`) bound to ``host``."""
    ms = _import_kserve()
    from grpc import aio
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
    from kserve.protocol.grpc.server import GRPCServer
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.rest.server import RESTServer

    class VersionedDataPlane(DataPlane):
        def decode_inference_request(self, body, headers, model_name):
            if isinstance(body, bytes):  # the binary extension: keep the tensor as bytes (see decode_binary)
                return decode_binary(body, headers, model_name)
            return super().decode_inference_request(body, headers, model_name)

        async def model_metadata(self, model_name: str) -> dict:
            meta = await super().model_metadata(model_name)
            model = self.get_model_from_registry(model_name)
            meta["versions"] = [model.version]
            meta["platform"] = f"fre-edge_{model.backend}"
            return meta

    class VersionedServicer(InferenceServicer):
        async def ModelMetadata(self, request, context):
            meta = await self._data_plane.model_metadata(model_name=request.name)
            return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"],
                                            platform=meta["platform"], inputs=meta["inputs"],
                                            outputs=meta["outputs"])

    class BoundGRPCServer(GRPCServer):
        async def start(self, max_workers):  # GRPCServer.start with the listen address and servicer changed
            self._server = aio.server(
                futures.ThreadPoolExecutor(max_workers=max_workers),
                interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
                options=[("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                         ("grpc.max_receive_message_length", self._kwargs.get("grpc_max_receive_message_length"))])
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
                VersionedServicer(self._data_plane, self._model_repository_extension), self._server)
            if self._server.add_insecure_port(f"{_bracketed(host)}:{self._port}") == 0:
                raise FreEdgeError(f"cannot listen on {host}:{self._port} (gRPC); choose another --grpc-port")
            await self._server.start()
            await self._server.wait_for_termination()

    class BoundModelServer(ms.ModelServer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dataplane = VersionedDataPlane(model_registry=self.registered_models)

        def start(self, models) -> None:  # ModelServer.start, one REST worker, bound to host
            import asyncio

            self._register_and_check_atleast_one_model_is_ready(models)
            self._rest_server = RESTServer(ms.FASTAPI_APP_IMPORT_STRING, self.dataplane,
                                           self.model_repository_extension, self.http_port,
                                           grace_period=self.grace_period, event_loop=self.event_loop,
                                           timeout_keep_alive=self.timeout_keep_alive)
            self._rest_server.config.host = host
            self.servers.append(self._rest_server.start())
            self._grpc_server = BoundGRPCServer(self.grpc_port, self.dataplane, self.model_repository_extension,
                                                kwargs=vars(ms.args), grace_period=self.grace_period)
            self.servers.append(self._grpc_server.start(self.max_threads))
            self.setup_event_loop()
            self.register_signal_handler()
            asyncio.run(self._serve())

    return BoundModelServer(http_port=http_port, grpc_port=grpc_port, workers=1, max_threads=threads,
                            max_asyncio_workers=threads, enable_grpc=True, grace_period=5)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def decode_binary(body: bytes, headers: dict, model_name: str):
    """A REST v2 request with binary tensors (JSON header + raw bytes) as an InferRequest whose inputs keep
    their bytes: KServe's own ``InferRequest.from_bytes`` turns each into a list of Python numbers."""
    import orjson
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

    length = headers.get("inference-header-content-length")
    if length is None or not length.isdigit() or int(length) > len(body):
        raise InvalidInput("a binary request needs an inference-header-content-length header no longer than its "
                           "body; send the JSON header's length")
    try:
        head = orjson.loads(body[:int(length)])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request's JSON header is not valid JSON ({exc})") from None
    if not isinstance(head, dict) or not isinstance(head.get("inputs"), list):
        raise InvalidInput("the request's JSON header has no 'inputs' list; send a KServe v2 inference request")
    start, inputs = int(length), []
    for spec in head["inputs"]:
        if not isinstance(spec, dict) or not {"name", "shape", "datatype"} <= set(spec):
            raise InvalidInput("each input needs 'name', 'shape' and 'datatype'")
        params = spec.get("parameters") or {}
        tensor = InferInput(name=spec["name"], shape=spec["shape"], datatype=spec["datatype"], parameters=params)
        if "data" in spec:
            tensor.data = spec["data"]
        else:
            size = params.get("binary_data_size")
            if not isinstance(size, int) or size < 0 or start + size > len(body):
                raise InvalidInput(f"input {spec['name']!r}: its binary_data_size does not fit the request body")
            tensor._raw_data = body[start:start + size]
            start += size
        inputs.append(tensor)
    outputs = [RequestedOutput(name=o.get("name"), parameters=o.get("parameters")) for o in head.get("outputs") or []
               if isinstance(o, dict)]
    return InferRequest(model_name=model_name, request_id=head.get("id"), parameters=head.get("parameters"),
                        infer_inputs=inputs, request_outputs=outputs or None)
