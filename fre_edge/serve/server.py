"""``fre-edge serve``: bundles on KServe's Python model server, REST and gRPC, bound where the user says.

KServe's ModelServer listens on every interface (0.0.0.0 and [::]), drops model versions from its
metadata, decodes a REST request's binary tensor into a Python list of numbers (one Python object per
pixel value), lets any client unload a model (``/v2/repository/models/NAME/unload``), carries gRPC messages
of 8 MB at most, and logs a traceback for every rejected request. This module changes that:

- both servers bind ``host`` (loopback unless the user opens it);
- only what v2 inference needs is served: health, server and model metadata, model readiness, infer, and
  ``/metrics``. No model control (repository load/unload, over REST or gRPC), no v1 protocol, no API docs:
  what a server serves changes only when it is restarted;
- every request is checked field by field (:func:`~fre_edge.serve.contract.check_header`,
  :func:`~fre_edge.serve.contract.request_images`) and a bad one is answered 400 (gRPC INVALID_ARGUMENT)
  with its reason and logged as one line; a 500 is a bug and keeps its traceback;
- gRPC carries the largest request the models accept (:func:`~fre_edge.serve.contract.message_limits`);
- the metadata lists the bundle's serving version, and binary REST inputs stay bytes until the model reads
  them as one numpy array.

Signals, metrics and the endpoints kept are KServe's own, so the same process runs as a KServe
InferenceService predictor.
"""

from __future__ import annotations

import logging
import sys
from concurrent import futures

from ..errors import FreEdgeError
from .contract import check_header, message_limits

NO_MODEL_CONTROL = "fre-edge serve has no model control; restart it to change the models it serves"
log = logging.getLogger("kserve.fre_edge")  # KServe's log handlers and format


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
    import grpc
    from grpc import aio
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from grpc_interceptor import AsyncExceptionToStatusInterceptor
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

        async def RepositoryModelLoad(self, request, context):
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, NO_MODEL_CONTROL)

        async def RepositoryModelUnload(self, request, context):
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, NO_MODEL_CONTROL)

    class OneLineErrors(AsyncExceptionToStatusInterceptor):
        """A client's error: its gRPC status and one log line; anything else: INTERNAL with its traceback."""

        async def handle_exception(self, ex, request_or_iterator, context, method_name):
            status = grpc_status(ex)
            if status is None:
                log.error("gRPC %s failed (a bug)", method_name, exc_info=ex)
                await context.abort(grpc.StatusCode.INTERNAL, f"{type(ex).__name__}: {ex}")
            log.warning("gRPC %s %s: %s", method_name, status.name, one_line(ex))
            await context.abort(status, one_line(ex))

    class BoundGRPCServer(GRPCServer):
        async def start(self, max_workers):  # GRPCServer.start with the listen address and servicer changed
            self._server = aio.server(
                futures.ThreadPoolExecutor(max_workers=max_workers),
                interceptors=(OneLineErrors(),),
                options=[("grpc.max_send_message_length", send_limit),
                         ("grpc.max_receive_message_length", receive_limit)])
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
                VersionedServicer(self._data_plane, self._model_repository_extension), self._server)
            if self._server.add_insecure_port(f"{_bracketed(host)}:{self._port}") == 0:
                raise FreEdgeError(f"cannot listen on {host}:{self._port} (gRPC); choose another --grpc-port")
            await self._server.start()
            await self._server.wait_for_termination()

    class InferenceOnlyREST(RESTServer):
        def _register_endpoints(self, app):  # the v2 inference protocol and /metrics, KServe's own handlers
            from fastapi.responses import JSONResponse
            from kserve.protocol.rest.server import metrics_handler
            from kserve.protocol.rest.v2_endpoints import V2Endpoints

            app.router.routes[:] = []  # FastAPI's /openapi.json
            app.openapi_url = app.docs_url = app.redoc_url = None
            v2 = V2Endpoints(self.dataplane)
            app.add_api_route("/metrics", metrics_handler, methods=["GET"])
            for path, handler, method in (
                    ("", v2.metadata, "GET"), ("/health/live", v2.live, "GET"), ("/health/ready", v2.ready, "GET"),
                    ("/models", v2.models, "GET"), ("/models/{model_name}", v2.model_metadata, "GET"),
                    ("/models/{model_name}/versions/{model_version}", v2.model_metadata, "GET"),
                    ("/models/{model_name}/ready", v2.model_ready, "GET"),
                    ("/models/{model_name}/versions/{model_version}/ready", v2.model_ready, "GET"),
                    ("/models/{model_name}/infer", v2.infer, "POST"),
                    ("/models/{model_name}/versions/{model_version}/infer", v2.infer, "POST")):
                app.add_api_route(f"/v2{path}", handler, methods=[method], response_model=None,
                                  response_class=JSONResponse)

        def _add_exception_handlers(self, app):
            super()._add_exception_handlers(app)
            from fastapi.exceptions import RequestValidationError

            for exc_class, status in client_errors().items():
                app.add_exception_handler(exc_class, one_line_handler(status))
            app.add_exception_handler(RequestValidationError, invalid_request)

    class BoundModelServer(ms.ModelServer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dataplane = VersionedDataPlane(model_registry=self.registered_models)

        def start(self, models) -> None:  # ModelServer.start, one REST worker, bound to host
            import asyncio

            self._register_and_check_atleast_one_model_is_ready(models)
            self._rest_server = InferenceOnlyREST(ms.FASTAPI_APP_IMPORT_STRING, self.dataplane,
                                           self.model_repository_extension, self.http_port,
                                           grace_period=self.grace_period, event_loop=self.event_loop,
                                           timeout_keep_alive=self.timeout_keep_alive)
            self._rest_server.config.host = host
            logging.getLogger("uvicorn.access").setLevel(logging.WARNING)  # a rejected request: one line, ours
            logging.getLogger("kserve.trace").setLevel(logging.WARNING)  # KServe's timing lines, two per request
            self.servers.append(self._rest_server.start())
            self._grpc_server = BoundGRPCServer(self.grpc_port, self.dataplane, self.model_repository_extension,
                                                kwargs=vars(ms.args), grace_period=self.grace_period)
            self.servers.append(self._grpc_server.start(self.max_threads))
            self.setup_event_loop()
            self.register_signal_handler()
            asyncio.run(self._serve())

    receive_limit, send_limit = message_limits([m.manifest for m in models], max(m.max_batch for m in models))
    return BoundModelServer(http_port=http_port, grpc_port=grpc_port, workers=1, max_threads=threads,
                            max_asyncio_workers=threads, enable_grpc=True, grace_period=5)


def one_line(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "reason", None) or exc).split())[:500]


def client_errors() -> dict:
    """KServe's errors that a client causes (or a model not ready yet), with their HTTP status."""
    from kserve.errors import (InvalidInput, ModelNotFound, ModelNotReady, ServerNotLive, ServerNotReady,
                               UnsupportedProtocol)

    return {InvalidInput: 400, UnsupportedProtocol: 400, ModelNotFound: 404, NotImplementedError: 501,
            ModelNotReady: 503, ServerNotReady: 503, ServerNotLive: 503}


def grpc_status(exc: BaseException):
    """The gRPC status of a client's error (bad request, unknown model, not ready), or None for a bug."""
    import grpc

    codes = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
             501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE}
    for exc_class, status in client_errors().items():
        if isinstance(exc, exc_class):
            return codes[status]
    return None


def one_line_handler(status: int):
    """The response to a client's error, as KServe's handlers answer it, logged as one line (theirs log a
    traceback, so any client could flood the log)."""
    async def handle(request, exc):
        from fastapi.responses import JSONResponse

        log.warning("%s %s %s: %s", status, request.method, request.url.path, one_line(exc))
        return JSONResponse(status_code=status, content={"error": str(exc)})
    return handle


async def invalid_request(request, exc):
    """A body that is not a v2 inference request: 400 with the first field at fault (FastAPI would send 422)."""
    from fastapi.responses import JSONResponse

    first = (exc.errors() or [{}])[0]
    where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("body", "InferenceRequest"))
    reason = f"{where or 'the request'}: {first.get('msg', 'not a KServe v2 inference request')}"
    log.warning("400 %s %s: %s", request.method, request.url.path, reason)
    return JSONResponse(status_code=400, content={"error": reason})


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
        check_header(head)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request's JSON header is not valid JSON ({exc})") from None
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    start, inputs = int(length), []
    for spec in head["inputs"]:
        params = spec.get("parameters") or {}
        tensor = InferInput(name=spec["name"], shape=spec["shape"], datatype=spec["datatype"], parameters=params)
        if "data" in spec:
            tensor.data = spec["data"]
        else:
            size = params.get("binary_data_size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or start + size > len(body):
                raise InvalidInput(f"input {spec['name']!r}: its binary_data_size does not fit the request body")
            tensor._raw_data = body[start:start + size]
            start += size
        inputs.append(tensor)
    outputs = [RequestedOutput(name=o["name"], parameters=o.get("parameters")) for o in head.get("outputs") or []]
    return InferRequest(model_name=model_name, request_id=head.get("id"), parameters=head.get("parameters"),
                        infer_inputs=inputs, request_outputs=outputs or None)
