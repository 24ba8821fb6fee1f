"""``fre-edge serve`` as a child process: free loopback ports, a bounded wait until ready, stopped by its PID.

For scripts, benchmarks and tests that need a server of their own::

    with ServeProcess("bundle/", log="serve.log") as s:
        det = load_detector("bundle/", backend="kserve", url=s.grpc_url)

Needs only the standard library here; the child needs the serve extra.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import FreEdgeError

START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fre_edge_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from fre_edge.cli import main; main()", *args]


def http(url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    """(status, JSON body) of one request; an HTTP error status is returned, not raised."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw or b"{}")
        except ValueError:
            return e.code, {"raw": raw.decode(errors="replace")}


class ServeProcess:
    """``fre-edge serve`` on 127.0.0.1 with free ports; ``with ServeProcess(...) as s:`` waits until it is ready."""

    def __init__(self, *bundles: str | Path, log: str | Path, threads: int = 4):
        self.http_port, self.grpc_port = free_port(), free_port()
        self.bundles, self.log_path = [str(b) for b in bundles], log
        self.proc: subprocess.Popen | None = None
        self.command = fre_edge_cmd("serve", *self.bundles, "--host", "127.0.0.1", "--http-port", str(self.http_port),
                                    "--grpc-port", str(self.grpc_port), "--threads", str(threads))

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def __enter__(self) -> "ServeProcess":
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.close()
                raise FreEdgeError(f"fre-edge serve exited with status {self.proc.returncode} before it was ready; "
                                   f"its output is in {self.log_path}")
            try:
                if http(f"{self.http_url}/v2/health/ready", timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        self.__exit__(None, None, None)  # stopped by its PID, the log closed
        raise FreEdgeError(f"fre-edge serve was not ready after {START_TIMEOUT_S} s; its output is in {self.log_path}")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log_path).read_text(errors="replace")

    def stop(self) -> int | None:
        """SIGTERM to its PID; SIGKILL if it has not stopped within the bound. Its exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)
            raise

    def __exit__(self, *exc):
        try:
            self.stop()
        finally:
            self.log.close()
