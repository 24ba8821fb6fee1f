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

    def __init__(self, folder: Path, port: int | None = None, conf: str = ""):
        if MOSQUITTO is None:
            if os.environ.get("CI"):
                pytest.fail("mosquitto is missing on CI: .ci/run installs it")
            pytest.skip("mosquitto not installed (apt-get install mosquitto)")
        self.folder, self.port = folder, port or free_port()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nautosave_interval 1\n{conf}")
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

    def __init__(self, port: int, topic: str, client_id: str = "fre-edge-test-subscriber", tls=None):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.on_connect = lambda cl, u, f, rc, p=None: cl.subscribe(topic, qos=1)
        c.on_message = self._on_message
        c.reconnect_delay_set(0.2, 1)
        if tls is not None:
            c.tls_set_context(tls)
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
    """A webhook receiver on loopback; answers 500 to the first ``fail`` requests; HTTPS with ``tls`` (a server-side
    ssl.SSLContext)."""

    def __init__(self, fail: int = 0, tls=None):
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
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Station:
    """`fre-edge line ARGS` as a child process with its log; stopped by its PID. ``tls``: a client-side
    ssl.SSLContext for a station whose metrics answer over HTTPS."""

    def __init__(self, args: list, log: Path, metrics_port: int | None = None, tls=None):
        self.metrics_port, self.tls = metrics_port or free_port(), tls
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
        scheme = "https" if self.tls else "http"
        with urllib.request.urlopen(f"{scheme}://127.0.0.1:{self.metrics_port}/status", timeout=5,
                                    context=self.tls) as r:
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


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a broker certificate for 127.0.0.1 signed by it, a client certificate signed by it, and a second CA
    that signed nothing here: PEM files in ``folder`` (keys unencrypted), by name."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    out = {}

    def write(name, obj):
        path = folder / name
        if isinstance(obj, x509.Certificate):
            path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
        else:
            path.write_bytes(obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        out[path.stem + ("_key" if path.suffix == ".key" else "")] = path

    def cert(name, key, issuer_name, issuer_key, ca=False, san=None):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
             .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                  data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                  encipher_only=False, decipher_only=False)
            b = b.add_extension(usage, critical=True)
            b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        else:
            b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                critical=False)
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    for ca_name in ("ca", "other_ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fre-edge test {ca_name}")])
        write(f"{ca_name}.pem", cert(f"fre-edge test {ca_name}", key, name, key, ca=True))
        if ca_name == "ca":
            ca_key, ca_subject = key, name
    for who, san in (("broker", [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                     ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        write(f"{who}.pem", cert(who, key, ca_subject, ca_key, san=san))
        write(f"{who}.key", key)
    return out


def opcua_certificates(folder: Path, names: dict[str, str]) -> dict[str, tuple[Path, Path]]:
    """OPC UA application instance certificates (self-signed, DER, the application URI in their subject
    alternative name, usable as client and server) and their PEM keys, made by asyncua: {name: (cert, key)} for
    ``names`` {name: application URI}."""
    import asyncio

    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    folder.mkdir(parents=True, exist_ok=True)
    out = {name: (folder / f"{name}.der", folder / f"{name}_key.pem") for name in names}

    async def make():
        for name, uri in names.items():
            await setup_self_signed_certificate(out[name][1], out[name][0], uri, "localhost",
                                                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
                                                {"organizationName": "fre-edge test"})
    asyncio.run(make())
    return out
