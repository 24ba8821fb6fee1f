"""The station's small HTTP servers (metrics and /status, the live page, the push source): one way to listen,
answer and stop, on the standard library's threading server."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..errors import FreEdgeError
from .config import LOOPBACK


def respond(req, status: int, body: bytes, kind: str = "application/json", cache: str = "no-store") -> None:
    """One whole answer: status, type, length, and no caching unless told (what is served is live, but for what
    never changes, such as a part's picture)."""
    req.send_response(status)
    req.send_header("Content-Type", kind)
    req.send_header("Content-Length", str(len(body)))
    req.send_header("Cache-Control", cache)
    req.end_headers()
    req.wfile.write(body)


def respond_json(req, status: int, data) -> None:
    respond(req, status, json.dumps(data).encode())


def refusal(req, host: str, token: str | None) -> str | None:
    """Why a request that changes the station (a mark, a promotion) is refused, or None: with a token set, the
    request must carry it (``X-Token``); without one, only a server on loopback takes such requests."""
    if token:
        return None if req.headers.get("X-Token") == token else "this needs the station's token (X-Token)"
    if host not in LOOPBACK:
        return (f"this server listens on {host}, beyond this PC: changing the station from the network needs "
                f"FRE_EDGE_UI_TOKEN set when it starts (then sent as X-Token)")
    return None


def respond_promote(req, station) -> None:
    """``POST /promote``: the shadow bundle becomes the live one (409 with the reason when it cannot)."""
    try:
        respond_json(req, 200, station.promote())
    except FreEdgeError as exc:
        respond_json(req, 409, {"error": str(exc)})


BACKGROUND_NICE = 10  # how far below inspection an observer's requests (the page, the metrics) are scheduled


def lower_priority() -> None:
    """Run the calling thread ``BACKGROUND_NICE`` nice steps below the threads that inspect (at most 19; on
    Linux a thread has a nice value of its own); where that cannot be done, as before."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICE))
    except (AttributeError, OSError):  # not Linux / not allowed: the request runs at the station's priority
        pass


class _Server(ThreadingHTTPServer):
    """With ``background``, each request's thread runs below the station's inspection threads: a page or a
    scraper that asks while the line runs flat out waits for spare CPU instead of preempting inspection."""

    background = False
    tls = None

    def process_request_thread(self, request, client_address):
        if self.background:
            lower_priority()
        super().process_request_thread(request, client_address)


class _TlsServer(_Server):
    """HTTPS: each connection's TLS handshake in that connection's own thread, bounded in time, so a slow or
    confused client never holds up the others."""

    HANDSHAKE_S = 10.0

    def finish_request(self, request, client_address):
        request.settimeout(self.HANDSHAKE_S)
        secure = self.tls.wrap_socket(request, server_side=True)  # takes the connection over from ``request``
        try:
            secure.settimeout(None)
            super().finish_request(secure, client_address)
        finally:
            secure.close()

    def handle_error(self, request, client_address):  # a client that fails the handshake: nothing to report
        pass


class HttpService:
    """``get(req)`` and ``post(req)`` (either may be None: the method is not served) on ``host:port``, over HTTPS
    with ``tls`` (a server-side ssl.SSLContext), each request below inspection's priority with ``background``
    (observers: the page, the metrics; never a source); one line naming ``what`` and the fix when it cannot listen.
    :meth:`start` serves from a thread of its own, :meth:`serve_forever` from the caller's."""

    def __init__(self, host: str, port: int, *, get=None, post=None, what: str, fix: str = "choose another port",
                 tls=None, background: bool = False):
        methods = {"log_message": lambda self, *args: None}  # the station logs what matters
        if get is not None:
            methods["do_GET"] = lambda self: get(self)
        if post is not None:
            methods["do_POST"] = lambda self: post(self)
        Handler = type("Handler", (BaseHTTPRequestHandler,), methods)  # noqa: N806

        try:
            self.server = (_Server if tls is None else _TlsServer)((host, port), Handler)
            self.server.tls, self.server.background = tls, background
        except OSError as exc:
            raise FreEdgeError(f"{what}: cannot listen on {host}:{port} ({exc.strerror}); {fix}") from None
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.serve_forever, name=f"fre-edge-{what}", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def serve_forever(self) -> None:
        self.server.serve_forever(poll_interval=0.2)

    def start(self) -> "HttpService":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
