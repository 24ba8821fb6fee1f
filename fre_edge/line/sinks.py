"""Where verdicts go. A sink is one small class with ``open()``, ``send(record, picture)`` and ``close()``;
``send`` returns once its peer has acknowledged the message and raises when it cannot deliver (the station
then keeps the verdict in the journal and tries again, backing off). A new sink is one class here.

A drift alarm (:mod:`.drift`) goes through the same journal as a record with ``"kind": "drift"``: MQTT
publishes it, retained, on ``TOPIC/drift``; the OPC UA server sets ``Drift`` and ``Status``; a webhook and a
folder get it as they get verdicts.

Each message is the verdict's JSON (:func:`message`): ``id`` (station name and sequence number: a
consumer drops a repeat by it), ``seq``, ``time``, ``source``, ``part``, ``score``, ``threshold``,
``verdict`` (good, anomalous or error), ``box``, ``anomalous_pixels``, ``peak``, ``bundle_version``,
``latency_ms`` (from arrival to verdict); with ``payload = "verdict+picture"`` also ``picture``, the
heatmap panel as base64 JPEG, for the parts that ``pictures`` selects.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import FreEdgeError
from .config import opcua_identity, pem_or_der, tls_context

log = logging.getLogger("fre_edge.line")
TIMEOUT_S = 5.0


def message(record: dict, picture: bytes | None = None) -> dict:
    out = {k: v for k, v in record.items() if k != "picture"}
    if picture is not None:
        out["picture"] = base64.b64encode(picture).decode()
    return out


class Sink:
    """The base class: a sink that delivers nothing until a subclass says how."""

    kind = "sink"

    def __init__(self, cfg, station):
        self.cfg, self.station = cfg, station
        self.connected = False

    def open(self) -> None:
        """Connect, or start serving; failures here are retried like failed sends."""

    def send(self, record: dict, picture: bytes | None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Let go of the peer (called once, when the station stops)."""

    def wants_picture(self, record: dict) -> bool:
        return self.cfg.payload == "verdict+picture" and (
            self.cfg.pictures == "all" or record.get("verdict") == "anomalous")


class MqttSink(Sink):
    """JSON per part on the topic at QoS 1 (paho-mqtt waits for the broker's PUBACK); the station's status,
    retained, on ``TOPIC/status`` (``online`` with the bundle's version; ``offline`` as the broker's will).
    Over TLS (mqtts://) the broker's certificate and host name are checked; why a connection fails (a refused
    certificate, a broker that turns the station away) shows in the sink's state."""

    kind = "mqtt"

    def open(self) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise FreEdgeError('the mqtt sink needs paho-mqtt; run: pip install "fre-edge[line]"') from None
        if getattr(self, "client", None) is None:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fre-edge-{self.station.name}-{self.cfg.name}")
            user = os.environ.get("FRE_EDGE_MQTT_USERNAME")
            if user:
                c.username_pw_set(user, os.environ.get("FRE_EDGE_MQTT_PASSWORD"))
            ctx = tls_context(self.cfg)
            if ctx is not None:
                c.tls_set_context(ctx)
            c.will_set(self.status_topic, json.dumps({"state": "offline", "station": self.station.name}), qos=1,
                       retain=True)
            c.on_connect = self._on_connect
            c.on_disconnect = self._on_disconnect
            c.on_connect_fail = self._on_connect_fail
            self.why = ""
            c.reconnect_delay_set(0.5, 5)
            c.connect_async(self.cfg.host, self.cfg.port, keepalive=15)
            c.loop_start()
            self.client = c

    @property
    def status_topic(self) -> str:
        return f"{self.cfg.topic}/status"

    def _on_connect(self, client, userdata, flags, reason, properties=None):
        self.connected = not reason.is_failure
        self.why = f"the broker refused: {reason}" if reason.is_failure else ""
        if self.connected:
            client.publish(self.status_topic, json.dumps(self.station.status_message()), qos=1, retain=True)

    def _on_disconnect(self, client, userdata, flags, reason, properties=None):
        self.connected = False

    def _on_connect_fail(self, client, userdata):
        exc = sys.exc_info()[1]  # paho calls this inside its handler of the failed connection
        self.why = f"{exc.__class__.__name__}: {exc}" if exc is not None else "the connection failed"

    def send(self, record: dict, picture: bytes | None) -> None:
        if not self.connected:
            why = f" ({self.why})" if getattr(self, "why", "") else ""
            raise ConnectionError(f"not connected to the broker {self.cfg.host}:{self.cfg.port}{why}")
        drift = record.get("kind") == "drift"  # the drift alarm: its own topic, retained
        info = self.client.publish(f"{self.cfg.topic}/drift" if drift else self.cfg.topic,
                                   json.dumps(message(record, picture)), qos=self.cfg.qos, retain=drift)
        info.wait_for_publish(TIMEOUT_S)
        if not info.is_published():
            raise ConnectionError(f"the broker {self.cfg.host}:{self.cfg.port} did not acknowledge in {TIMEOUT_S} s")

    def publish_status(self) -> None:
        if self.connected:
            self.client.publish(self.status_topic, json.dumps(self.station.status_message()), qos=1, retain=True)

    def close(self) -> None:
        c = getattr(self, "client", None)
        if c is not None:
            if self.connected:
                c.publish(self.status_topic, json.dumps({"state": "offline", "station": self.station.name}), qos=1,
                          retain=True).wait_for_publish(2)
            c.disconnect()
            c.loop_stop()


class WebhookSink(Sink):
    """POST of the JSON per part; any 2xx is an acknowledgement. Over https the server's certificate is checked
    against the system's CAs or ``ca``; ``cert`` and ``key`` are presented when the server asks."""

    kind = "webhook"

    def open(self) -> None:
        self.context = tls_context(self.cfg)

    def send(self, record: dict, picture: bytes | None) -> None:
        body = json.dumps(message(record, picture)).encode()
        req = urllib.request.Request(self.cfg.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "X-Fre-Edge-Id": record["id"]})
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S, context=getattr(self, "context", None)) as r:
                r.read()
                ok = 200 <= r.status < 300
        except (urllib.error.URLError, OSError) as exc:
            self.connected = False
            raise ConnectionError(f"{self.cfg.url}: {exc}") from None
        self.connected = ok
        if not ok:
            raise ConnectionError(f"{self.cfg.url} answered {r.status}")


class FolderSink(Sink):
    """``verdicts-YYYYMMDD.jsonl`` (a new file each day, and past 64 MB), and with a picture payload the
    heatmap panels as ``pictures/SEQ_PART.jpg``."""

    kind = "folder"
    ROTATE_BYTES = 64 << 20

    def open(self) -> None:
        self.folder = Path(self.cfg.path)
        try:
            (self.folder / "pictures").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConnectionError(f"{self.folder}: {exc.strerror}") from None
        self.connected = True

    def _file(self) -> Path:
        day = time.strftime("%Y%m%d", time.gmtime())
        n = 0
        while True:
            path = self.folder / (f"verdicts-{day}.jsonl" if n == 0 else f"verdicts-{day}.{n}.jsonl")
            if not path.exists() or path.stat().st_size < self.ROTATE_BYTES:
                return path
            n += 1

    def send(self, record: dict, picture: bytes | None) -> None:
        if picture is not None:
            safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in str(record.get("part", "")))[:80]
            (self.folder / "pictures" / f"{record['seq']:09d}_{Path(safe).stem}.jpg").write_bytes(picture)
        with open(self._file(), "a") as f:
            f.write(json.dumps(message(record)) + "\n")


class OpcUaServerSink(Sink):
    """The station as an OPC UA server (asyncua) that a PLC reads or subscribes to: under Objects/Station,
    ``LastVerdict`` (String), ``LastReject`` (Boolean), ``LastScore`` (Double), ``LastPart`` (String),
    ``PartCounter`` (UInt64: the verdict's sequence number, which carries on across restarts),
    ``RejectCounter`` (UInt64, since the station started), ``Status`` (String), ``Threshold`` (Double).

    Without ``cert``: security policy None, as most PLCs on a line network start. With ``cert`` and ``key``:
    Basic256Sha256 only (Sign, SignAndEncrypt), the application URI taken from the certificate; with ``trust``,
    only clients whose certificate is in that folder get a session."""

    kind = "opcua"
    NAMESPACE = "urn:fre-edge:station"

    def open(self) -> None:
        if getattr(self, "server", None) is not None:
            return
        try:
            from asyncua import ua
            from asyncua.sync import Server
        except ImportError:
            raise FreEdgeError('the opcua sink needs asyncua; run: pip install "fre-edge[line]"') from None
        server = Server()
        server.set_endpoint(f"opc.tcp://{self.cfg.host}:{self.cfg.port}/fre-edge/")
        server.set_server_name(f"fre-edge station {self.station.name}")
        identity = opcua_identity(self.cfg)
        if identity is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            cert, key, uri = identity
            if uri:
                server.set_application_uri(uri)
            server.load_certificate(cert, format=pem_or_der(cert))
            server.load_private_key(key, format=pem_or_der(key))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_Sign,
                                        ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            if self.cfg.trust:
                server.aio_obj.set_certificate_validator(trusted_clients(self.cfg.trust, server))
            else:
                log.warning("sink %s: any client certificate gets a session; add trust=DIR to let in only the "
                            "PLC's", self.cfg.name)
        idx = server.register_namespace(self.NAMESPACE)
        obj = server.nodes.objects.add_object(idx, "Station")
        V = ua.VariantType
        self.nodes = {name: obj.add_variable(idx, name, ua.Variant(value, vt)) for name, value, vt in (
            ("LastVerdict", "", V.String), ("LastReject", False, V.Boolean), ("LastScore", 0.0, V.Double),
            ("LastPart", "", V.String), ("PartCounter", 0, V.UInt64), ("RejectCounter", 0, V.UInt64),
            ("Status", "starting", V.String), ("Threshold", float(self.station.detector.image_threshold), V.Double),
            ("Drift", False, V.Boolean))}
        self.ua, self.rejects = ua, 0
        try:
            server.start()
        except OSError as exc:
            raise FreEdgeError(f"sink {self.cfg.name}: cannot listen on {self.cfg.host}:{self.cfg.port} "
                               f"({exc.strerror}); choose another port") from None
        self.server = server
        self.write("Status", "running", "String")
        self.connected = True

    def write(self, name: str, value, vt: str) -> None:
        self.nodes[name].write_value(self.ua.Variant(value, getattr(self.ua.VariantType, vt)))

    def send(self, record: dict, picture: bytes | None) -> None:
        if record.get("kind") == "drift":
            self.write("Drift", True, "Boolean")
            self.write("Status", f"drift: {record['shift_spreads']:+.2f} spreads", "String")
            return
        reject = record.get("verdict") != "good"
        self.rejects += reject
        self.write("LastScore", float(record.get("score") or 0.0), "Double")
        self.write("LastPart", str(record.get("part", "")), "String")
        self.write("LastReject", bool(reject), "Boolean")
        self.write("RejectCounter", self.rejects, "UInt64")
        self.write("LastVerdict", record.get("verdict", ""), "String")
        self.write("PartCounter", int(record["seq"]), "UInt64")  # last: a PLC subscribed to it reads the rest

    def set_status(self, text: str) -> None:
        if getattr(self, "server", None) is not None:
            self.write("Status", text, "String")

    def close(self) -> None:
        if getattr(self, "server", None) is not None:
            self.set_status("stopped")
            self.server.stop()
            self.server = None


def trusted_clients(folder: str, server):
    """A certificate validator that lets in only the client certificates in ``folder`` (.der or .pem), still
    valid, whose application URI matches the one they present."""
    from asyncua.crypto.truststore import TrustStore
    from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions as O

    store = TrustStore([Path(folder)], [])
    server.tloop.post(store.load())
    return CertificateValidator(O.TIME_RANGE | O.URI | O.TRUSTED | O.PEER_CLIENT, store)


def stop_client_loop(client) -> None:
    """Stop the event-loop thread asyncua's sync client runs for itself (not a daemon thread) after a connection
    that failed: left running, every retry while the PLC is away would add one, and the station could not exit.
    (disconnect() would first talk to a peer that is not there.)"""
    loop = getattr(client, "tloop", None)
    if loop is not None and getattr(client, "close_tloop", False):
        try:
            loop.stop()
        except Exception:  # noqa: BLE001 - already stopped
            pass


class OpcUaClientSink(Sink):
    """Writes each verdict to the PLC's own OPC UA server: the node ids in ``nodes`` (verdict: String,
    reject: Boolean, score: Double, part: String, seq: UInt64), any subset. With ``cert`` and ``key``, over
    Basic256Sha256 SignAndEncrypt; a user name and password from FRE_EDGE_OPCUA_USERNAME / _PASSWORD."""

    kind = "opcua-client"
    TYPES = {"verdict": "String", "reject": "Boolean", "score": "Double", "part": "String", "seq": "UInt64",
             "drift": "Boolean"}

    def open(self) -> None:
        try:
            from asyncua import ua
            from asyncua.sync import Client
        except ImportError:
            raise FreEdgeError('the opcua-client sink needs asyncua; run: pip install "fre-edge[line]"') from None
        unknown = set(self.cfg.nodes) - set(self.TYPES)
        if unknown:
            raise FreEdgeError(f"sink {self.cfg.name}: unknown node key {sorted(unknown)[0]!r}; use "
                               f"{', '.join(self.TYPES)}")
        self.ua = ua
        if getattr(self, "client", None) is None:
            client = Client(self.cfg.url, timeout=TIMEOUT_S)
            identity = opcua_identity(self.cfg)
            user = os.environ.get("FRE_EDGE_OPCUA_USERNAME")
            if user:
                client.set_user(user)
                client.set_password(os.environ.get("FRE_EDGE_OPCUA_PASSWORD", ""))
            try:
                if identity is not None:  # asks the server for its endpoints, so it may fail as connect() does
                    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
                    from asyncua.crypto.uacrypto import CertProperties

                    cert, key, uri = identity
                    client.application_uri = uri or client.application_uri
                    mode = ua.MessageSecurityMode.SignAndEncrypt
                    client.set_security(SecurityPolicyBasic256Sha256, CertProperties(cert, pem_or_der(cert)),
                                        CertProperties(key, pem_or_der(key)), mode=mode)
                client.connect()
            except Exception as exc:  # noqa: BLE001 - asyncua raises many kinds; the station retries
                stop_client_loop(client)
                raise ConnectionError(f"{self.cfg.url}: {exc}") from None
            self.client = client
            self.targets = {k: client.get_node(v) for k, v in self.cfg.nodes.items()}
            self.connected = True

    def send(self, record: dict, picture: bytes | None) -> None:
        if getattr(self, "client", None) is None:
            self.open()
        if record.get("kind") == "drift":
            values, keys = {"drift": True}, [k for k in self.targets if k == "drift"]
        else:
            values = {"verdict": record.get("verdict", ""), "reject": record.get("verdict") != "good",
                      "score": float(record.get("score") or 0.0), "part": str(record.get("part", "")),
                      "seq": int(record["seq"])}
            keys = [k for k in self.targets if k != "drift"]
        try:
            for key in keys:
                node = self.targets[key]
                node.write_value(self.ua.DataValue(self.ua.Variant(values[key],
                                                                   getattr(self.ua.VariantType, self.TYPES[key]))))
        except Exception as exc:  # noqa: BLE001
            self.close()
            raise ConnectionError(f"{self.cfg.url}: {exc}") from None

    def close(self) -> None:
        c = getattr(self, "client", None)
        self.client, self.connected = None, False
        if c is not None:
            try:
                c.disconnect()
            except Exception:  # noqa: BLE001 - already gone
                pass


SINKS = {"mqtt": MqttSink, "webhook": WebhookSink, "folder": FolderSink, "opcua": OpcUaServerSink,
         "opcua-client": OpcUaClientSink}
