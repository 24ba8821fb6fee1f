"""What the station's tests start on loopback, each stopped by its PID: a Mosquitto broker, an MQTT
subscriber, a webhook receiver, the station itself as a `fre-edge line` process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fre_edge.serve.process import fre_edge_cmd

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Broker:
    """Mosquitto on 127.0.0.1 with persistence (a restart keeps sessions and queued QoS 1 messages)."""

    def __init__(self, folder: Path, port: int | None = None):
        if MOSQUITTO is None:
            if os.environ.get("CI"):
                pytest.fail("mosquitto is missing on CI: .ci/run installs it")
            pytest.skip("mosquitto not installed (apt-get install mosquitto)")
        self.folder, self.port = folder, port or free_port()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nautosave_interval 1\n")
        self.proc = None

    def start(self) -> "Broker":
        self.log = open(self.folder / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.folder / "mosquitto.conf")], stdout=self.log,
                                     stderr=subprocess.STDOUT)

        def up():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        wait_for(up, 10, "mosquitto to listen")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        if self.proc:
            self.log.close()


class Subscriber:
    """An MQTT client with a persistent session (QoS 1), collecting every message by topic."""

    def __init__(self, port: int, topic: str, client_id: str = "fre-edge-test-subscriber"):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.on_connect = lambda cl, u, f, rc, p=None: cl.subscribe(topic, qos=1)
        c.on_message = self._on_message
        c.reconnect_delay_set(0.2, 1)
        c.connect("127.0.0.1", port, keepalive=10)
        c.loop_start()
        self.client = c

    def _on_message(self, client, userdata, m):
        with self.lock:
            self.messages.append((m.topic, json.loads(m.payload)))

    def on(self, topic: str) -> list[dict]:
        with self.lock:
            return [payload for t, payload in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Receiver:
    """A webhook receiver on loopback; answers 500 to the first ``fail`` requests."""

    def __init__(self, fail: int = 0):
        self.bodies, self.fail = [], fail
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if receiver.fail > 0:
                    receiver.fail -= 1
                    self.send_response(500)
                else:
                    receiver.bodies.append(body)
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Station:
    """`fre-edge line ARGS` as a child process with its log; stopped by its PID."""

    def __init__(self, args: list, log: Path, metrics_port: int | None = None):
        self.metrics_port = metrics_port or free_port()
        self.args = [str(a) for a in args] + ["--metrics-port", str(self.metrics_port)]
        self.log_path = log

    def start(self) -> "Station":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(fre_edge_cmd("line", *self.args), stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or self._up(), 120, "the station's /status")
        assert self.proc.poll() is None, self.output()
        return self

    def _up(self) -> bool:
        try:
            self.status()
            return True
        except OSError:
            return False

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/status", timeout=5) as r:
            return json.loads(r.read())

    def parts(self) -> int:
        return sum(s["parts"] for s in self.status()["sources"].values())

    def output(self) -> str:
        self.log.flush()
        return Path(self.log_path).read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        code = self.proc.wait(timeout=timeout)
        self.log.close()
        return code
