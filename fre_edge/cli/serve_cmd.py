"""``fre-edge serve`` (torch-free; needs the serve extra)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from ..runtime.adapters import BACKENDS, PRECISIONS

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _named(bundles: tuple[str, ...]) -> list[tuple[str, Path]]:
    """(model name, bundle folder) for each BUNDLE or NAME=BUNDLE argument; names unique and URL-safe."""
    from ..errors import FreEdgeError
    from ..runtime.bundle import served_name

    named, seen = [], set()
    for arg in bundles:
        name, sep, path = arg.partition("=")
        path = Path(path if sep else arg)
        if not sep:
            name = served_name(path)
        if not NAME.match(name):
            raise FreEdgeError(f"model name {name!r} is not usable in a URL; name it: NAME={path} "
                               f"(letters, digits, '_', '.', '-')")
        if name in seen:
            raise FreEdgeError(f"two bundles would be served as {name!r}; name them: NAME1=PATH1 NAME2=PATH2")
        if not path.is_dir():
            raise FreEdgeError(f"{path}: no such bundle folder; pass folders written by `fre-edge export`")
        seen.add(name)
        named.append((name, path))
    return named


def _check_port(host: str, port: int, what: str) -> None:
    import socket

    from ..errors import FreEdgeError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FreEdgeError(f"--host {host}: not an address of this machine ({exc.strerror}); use 127.0.0.1 "
                           f"or 0.0.0.0") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            raise FreEdgeError(f"cannot listen on {host}:{port} for {what} ({exc.strerror}); choose another "
                               f"--{what.lower()}-port or stop what uses it") from None


@click.command("serve")
@click.argument("bundles", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on: loopback by default; 0.0.0.0 opens it to the network.")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="Port of the KServe v2 REST endpoints.")
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8081, show_default=True,
              help="Port of the KServe v2 gRPC service.")
@click.option("--backend", type=click.Choice(BACKENDS), default="openvino", show_default=True,
              help="Which runtime runs the bundle's graph (openvino: the IR; onnxruntime: the ONNX file).")
@click.option("--device", default="CPU", show_default=True, help="OpenVINO device: CPU, GPU, AUTO, ...")
@click.option("--precision", type=click.Choice(PRECISIONS), default="f32", show_default=True,
              help="Inference precision (OpenVINO); f32 keeps the scores on the bundle's thresholds.")
@click.option("--threads", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Requests handled at once (the runtime shares the CPU between them).")
def command(bundles, host, http_port, grpc_port, backend, device, precision, threads):
    """Serve BUNDLES over the KServe v2 protocol (HTTP and gRPC), on KServe's model server.

    Each BUNDLE is a folder written by `fre-edge export`, served under its folder name, or NAME=BUNDLE.
    Clients send the model's uint8 [N, S, S, 3] input and get `score` and `anomaly_map`; every response's
    model_version is derived from the bundle's digest. Point `fre-edge predict --server URL` at it.
    Stops cleanly on SIGTERM or Ctrl-C.
    """
    from ..errors import FreEdgeError

    if http_port == grpc_port:
        raise FreEdgeError(f"--http-port and --grpc-port are both {http_port}; give them different ports")
    named = _named(bundles)
    from ..serve.server import _import_kserve, build_server

    _import_kserve()  # a missing extra is reported before any bundle is loaded
    from ..serve.kserve_model import BundleModel

    for port, what in ((http_port, "HTTP"), (grpc_port, "gRPC")):  # cheap checks before the bundles load
        _check_port(host, port, what)
    models = []
    for name, path in named:
        model = BundleModel(name, path, backend=backend, device=device, precision=precision)
        model.load()
        models.append(model)
    server = build_server(models, host=host, http_port=http_port, grpc_port=grpc_port, threads=threads)
    for m in models:
        click.echo(f"serving {m.name} (version {m.version}, bundle {m.bundle}) on http://{host}:{http_port} "
                   f"and grpc://{host}:{grpc_port}", err=True)
    server.start(models)
