"""The ``kserve`` backend: a bundle's graph run by a model server over the KServe v2 protocol.

Works against ``fre-edge serve``, OpenVINO Model Server and Triton (any server of that protocol), over
HTTP or gRPC, with tritonclient (the ``remote`` extra; never torch). The detector above it is the same as
for local inference: pictures are read and resized here, only the model's uint8 [N, S, S, 3] input
travels, and thresholds come from the local copy of the bundle. The server must run that same bundle:
its model version (:func:`~fre_edge.runtime.bundle.serving_version` of the bundle's digest) is checked in
the metadata when connecting and again in every response.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import numpy as np

from ..errors import FreEdgeError
from ..images import input_hw
from .bundle import bundle_digest, serving_version

SCHEMES = ("http", "grpc")
MAX_BATCH = 64  # images per request: larger batches are split here; fre-edge serve refuses more
TIMEOUT_S = 30.0


def parse_url(url: str) -> tuple[str, str]:
    """(scheme, "host:port") of ``http://HOST:PORT`` or ``grpc://HOST:PORT``."""
    parts = urlsplit(url if "://" in url else f"//{url}")
    if parts.scheme not in SCHEMES or not parts.hostname or parts.path not in ("", "/"):
        raise FreEdgeError(f"server URL {url!r}: write it as http://HOST:PORT or grpc://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        raise FreEdgeError(f"server URL {url!r} has no valid port; write it as {parts.scheme or 'grpc'}://HOST:PORT")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return parts.scheme, f"{host}:{port}"


def _client_module(scheme: str):
    try:
        if scheme == "grpc":
            import tritonclient.grpc as client
        else:
            import tritonclient.http as client
        from tritonclient.utils import InferenceServerException
    except ImportError:
        raise FreEdgeError('the kserve backend needs tritonclient; run: pip install "fre-edge[remote]"') from None
    return client, InferenceServerException


class KServeAdapter:
    """An :class:`~fre_edge.runtime.adapters.InferenceAdapter` whose graph runs on a v2 model server.

    One client per thread (tritonclient's clients are not shared between threads), so one adapter can
    serve several cameras at once.
    """

    name = "kserve"
    requested_precision = "f32"
    hint = "server"

    def __init__(self, url: str, manifest: dict, model_name: str, *, timeout: float = TIMEOUT_S):
        self.scheme, self.address = parse_url(url)
        self.url, self.model_name, self.timeout = url, model_name, float(timeout)
        self.client_module, self.error = _client_module(self.scheme)
        self.manifest = manifest
        self.version = serving_version(bundle_digest(manifest))
        self.input_name = manifest["input"]["name"]
        self.output_names = [o["name"] for o in manifest["outputs"]]
        self.device = url
        self._local = threading.local()
        self._check_server()

    # -- connection ---------------------------------------------------------------------------------
    def client(self):
        c = getattr(self._local, "client", None)
        if c is None:
            if self.scheme == "grpc":
                c = self.client_module.InferenceServerClient(self.address)
            else:
                c = self.client_module.InferenceServerClient(self.address, connection_timeout=self.timeout,
                                                             network_timeout=self.timeout)
            self._local.client = c
        return c

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except self.error as exc:
            text = " ".join(str(exc.message() if hasattr(exc, "message") else exc).split())[:300]
            raise FreEdgeError(f"server {self.url}, model {self.model_name!r}: {what} failed ({text}); check "
                               f"that the server runs and serves this bundle") from None
        except (OSError, ConnectionError) as exc:
            raise FreEdgeError(f"server {self.url}: cannot reach it ({exc}); check the URL and that the server "
                               f"runs") from None

    def _check_server(self) -> None:
        c = self.client()
        if not self._call("the readiness check", c.is_model_ready, self.model_name,
                          **({"client_timeout": self.timeout} if self.scheme == "grpc" else {})):
            raise FreEdgeError(f"server {self.url} has no ready model {self.model_name!r}; serve the bundle "
                               f"under that name or pass its name")
        meta = self._metadata(c)
        versions = [str(v) for v in meta.get("versions") or []]
        if versions and self.version not in versions:
            raise FreEdgeError(f"server {self.url} serves {self.model_name!r} as version {', '.join(versions)}, "
                               f"this bundle is version {self.version}: it runs another bundle; serve this bundle "
                               f"there or point to its server")
        h, w = input_hw(self.manifest["input_size"])
        inputs = {t["name"]: t for t in meta.get("inputs", [])}
        got = inputs.get(self.input_name)
        shape = [int(d) for d in got.get("shape", [])] if got else []
        if got is None or got.get("datatype") != "UINT8" or shape[-3:] != [h, w, 3]:
            raise FreEdgeError(f"server {self.url}: model {self.model_name!r} does not take this bundle's "
                               f"{self.input_name!r} UINT8 [N, {h}, {w}, 3] input; it serves another model")
        missing = set(self.output_names) - {t["name"] for t in meta.get("outputs", [])}
        if missing:
            raise FreEdgeError(f"server {self.url}: model {self.model_name!r} has no {sorted(missing)[0]!r} output; "
                               f"it serves another model")

    def _metadata(self, c) -> dict:
        if self.scheme == "grpc":
            return self._call("reading the model metadata", c.get_model_metadata, self.model_name, as_json=True,
                              client_timeout=self.timeout)
        return self._call("reading the model metadata", c.get_model_metadata, self.model_name)

    # -- the adapter contract ---------------------------------------------------------------------------
    @property
    def precision_used(self) -> str:
        return "unknown (server)"

    def metadata(self) -> dict | None:
        return None  # the local bundle's manifest describes the model

    def input_hw(self) -> tuple:
        return input_hw(self.manifest["input_size"])

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        parts = [self._infer(batch[i:i + MAX_BATCH]) for i in range(0, len(batch), MAX_BATCH)]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.output_names}

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        cm = self.client_module
        tensor = cm.InferInput(self.input_name, list(batch.shape), "UINT8")
        outputs = [cm.InferRequestedOutput(n) for n in self.output_names]
        if self.scheme == "grpc":
            tensor.set_data_from_numpy(batch)
            result = self._call("inference", self.client().infer, self.model_name, [tensor], outputs=outputs,
                                client_timeout=self.timeout)
            version = result.get_response().model_version
        else:
            tensor.set_data_from_numpy(batch, binary_data=True)
            outputs = [cm.InferRequestedOutput(n, binary_data=True) for n in self.output_names]
            result = self._call("inference", self.client().infer, self.model_name, [tensor], outputs=outputs)
            version = result.get_response().get("model_version")
        if str(version) != self.version:
            raise FreEdgeError(f"server {self.url} answered as version {version} of {self.model_name!r}, this bundle "
                               f"is version {self.version}: the server runs another bundle now; serve this one")
        out = {}
        for name in self.output_names:
            data = result.as_numpy(name)
            if data is None or len(data) != len(batch):
                raise FreEdgeError(f"server {self.url}: the answer lacks {name!r} for {len(batch)} image(s); it "
                                   f"serves another model")
            out[name] = data
        return out

    def versions(self) -> dict:
        import importlib.metadata as md

        return {"tritonclient": md.version("tritonclient"), "server_model_version": self.version}
