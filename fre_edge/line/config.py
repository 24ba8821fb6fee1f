"""A station's configuration: one TOML file, or the command line's URL forms, checked whole before anything
starts (one line naming the entry at fault and the fix).

Sources (``--source`` or ``[[source]]`` with ``type``):

    folder:DIR[?existing=1&after=keep|move|delete&settle=0.2]   pictures dropped into DIR (complete files only)
    camera:INDEX | video:FILE | rtsp://... | http(s)://...[?fps=N]   OpenCV; reconnects when the stream drops
    push://HOST:PORT                                          camera software POSTs pictures, gets the verdict

Sinks (``--sink`` or ``[[sink]]``), each with ``?payload=verdict|verdict+picture&pictures=anomalous|all&rate=N``:

    mqtt://HOST:PORT/TOPIC     JSON per part, QoS 1; retained status on TOPIC/status
    mqtts://HOST:PORT/TOPIC[?ca=FILE&cert=FILE&key=FILE]   the same over TLS (the broker checked against the
                               system's CAs or ca=; cert= and key= for brokers that ask for a client certificate)
    opcua://HOST:PORT[?cert=FILE&key=FILE&trust=DIR]   the station as an OPC UA server a PLC reads or subscribes
                               to; with cert= and key= it offers Basic256Sha256 (Sign, SignAndEncrypt) only, and
                               with trust= only the client certificates in DIR get in
    opcua-client://HOST:PORT[?cert=FILE&key=FILE]   writes each verdict to the PLC's own server (nodes in the TOML
                               file); with cert= and key=, over Basic256Sha256 SignAndEncrypt
    webhook+http(s)://HOST:PORT/PATH[?ca=FILE&cert=FILE&key=FILE]   POST per part, retried (https: the server
                               checked against the system's CAs or ca=, a client certificate with cert= and key=)
    folder:DIR                 JSON lines (rotated), and pictures of rejects with payload=verdict+picture

Credentials come from the environment, never from the file: FRE_EDGE_MQTT_USERNAME, FRE_EDGE_MQTT_PASSWORD,
FRE_EDGE_OPCUA_USERNAME, FRE_EDGE_OPCUA_PASSWORD (the PLC's server, for opcua-client).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from ..errors import FreEdgeError

SOURCE_TYPES = ("folder", "camera", "push")
SINK_TYPES = ("mqtt", "opcua", "opcua-client", "webhook", "folder")
PAYLOADS = ("verdict", "verdict+picture")
PICTURES = ("anomalous", "all")
AFTER = ("keep", "move", "delete")
LOOPBACK = ("127.0.0.1", "::1", "localhost")  # addresses that keep a server to this PC
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class SourceConfig:
    type: str
    name: str
    path: str = ""  # folder: the folder; camera: index, file or URL
    existing: bool = False  # folder: also score the pictures already there
    after: str = "keep"  # folder: keep, move (to good/ and reject/ beside the folder's pictures) or delete
    settle: float = 0.2  # folder: seconds a file's size must stay the same before it is complete
    fps: float = 0.0  # camera: frames per second at most (0: as they come)
    host: str = "127.0.0.1"  # push
    port: int = 0  # push


@dataclass
class SinkConfig:
    type: str
    name: str
    url: str = ""
    host: str = ""
    port: int = 0
    topic: str = ""
    path: str = ""
    payload: str = "verdict"
    pictures: str = "anomalous"
    rate: float = 0.0  # messages per second at most (0: no limit); the rest wait in the journal
    nodes: dict = field(default_factory=dict)  # opcua-client: {"verdict": NODE_ID, "score": ..., ...}
    qos: int = 1
    tls: bool = False  # mqtt: TLS (mqtts://); a webhook's comes from its https:// URL
    ca: str = ""  # mqtts, webhook+https: PEM file of the CA(s) the peer is checked against ("": the system's)
    cert: str = ""  # mqtts, webhook+https: the station's client certificate (PEM); opcua, opcua-client: its application
    #                 instance certificate (DER or PEM)
    key: str = ""  # that certificate's private key (PEM, unencrypted)
    trust: str = ""  # opcua: folder of the client certificates (.der, .pem) let in; "" with cert: any client's


@dataclass
class StationConfig:
    bundle: str
    sources: list[SourceConfig]
    sinks: list[SinkConfig]
    name: str = "station"
    journal: str = "fre-edge-journal"
    journal_max_mb: float = 1024.0
    journal_sync: bool = True
    metrics: str = ""  # HOST:PORT, or "" for none
    threshold: float | None = None
    batch_size: int = 8
    parallel: int = 1  # calls at once while parts wait; 0: OpenVINO's optimal number of requests
    drain_s: float = 10.0
    server: str | None = None  # run the graph on a model server (grpc://HOST:PORT or http://...)
    ui: str = ""  # HOST:PORT of the live page, or "" for none
    review: str = "fre-edge-review"  # where the page's marks go, laid out for fit and eval
    drift_baseline: int = 1000  # parts the drift watch learns the line's baseline from
    drift: bool = True  # watch for drift
    shadow: str | None = None  # a second bundle scoring the same parts, its verdicts kept to itself
    tls_cert: str = ""  # the live page and the metrics over HTTPS: the server's certificate chain (PEM)
    tls_key: str = ""  # and its private key (PEM, unencrypted)


def _bad(where: str, message: str) -> FreEdgeError:
    return FreEdgeError(f"{where}: {message}")


def _port(where: str, text) -> int:
    try:
        port = int(text)
    except (TypeError, ValueError):
        port = -1
    if not 0 <= port <= 65535:
        raise _bad(where, f"port {text!r} is not a number from 0 to 65535")
    return port


def _host_port(where: str, netloc: str, need_port: bool = True) -> tuple[str, int]:
    parts = urlsplit(f"//{netloc}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or (need_port and port is None):
        raise _bad(where, "write HOST:PORT, e.g. 127.0.0.1:1883")
    return parts.hostname, port or 0


def _options(where: str, query: str, allowed: set[str]) -> dict:
    opts = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(opts) - allowed
    if unknown:
        raise _bad(where, f"unknown option {sorted(unknown)[0]!r}; use {', '.join(sorted(allowed)) or 'none'}")
    return opts


def _flag(where: str, text: str) -> bool:
    if str(text).lower() in ("1", "true", "yes"):
        return True
    if str(text).lower() in ("0", "false", "no", ""):
        return False
    raise _bad(where, f"{text!r} is not true or false")


def _number(where: str, text, low: float = 0.0) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise _bad(where, f"{text!r} is not a number") from None
    if not value >= low or value != value or value == float("inf"):
        raise _bad(where, f"{text!r} must be a finite number of {low:g} or more")
    return value


def parse_source(spec: str, index: int, check: bool = True) -> SourceConfig:
    """One ``--source`` URL form as a :class:`SourceConfig`."""
    where = f"--source {spec}"
    scheme, sep, rest = spec.partition(":")
    if not sep:
        raise _bad(where, "write folder:DIR, camera:INDEX, video:FILE, rtsp://..., http://... or push://HOST:PORT")
    path, _, query = rest.partition("?")
    name = f"source{index + 1}"
    if scheme == "folder":
        o = _options(where, query, {"existing", "after", "settle", "name"})
        src = SourceConfig("folder", o.get("name", name), path=path, existing=_flag(where, o.get("existing", "0")),
                           after=o.get("after", "keep"), settle=_number(where, o.get("settle", 0.2)))
    elif scheme in ("camera", "video", "rtsp", "rtsps", "http", "https"):
        o = _options(where, query, {"fps", "name"})
        target = path if scheme in ("camera", "video") else spec.split("?")[0]
        src = SourceConfig("camera", o.get("name", name), path=target, fps=_number(where, o.get("fps", 0)))
    elif scheme == "push":
        o = _options(where, query, {"name"})
        host, port = _host_port(where, path.lstrip("/"))
        src = SourceConfig("push", o.get("name", name), host=host, port=port)
    else:
        raise _bad(where, f"unknown source {scheme!r}; use folder:, camera:, video:, rtsp://, http:// or push://")
    return check_source(src, where) if check else src


def parse_sink(spec: str, index: int, check: bool = True) -> SinkConfig:
    """One ``--sink`` URL form as a :class:`SinkConfig`."""
    where = f"--sink {spec}"
    if spec.startswith("folder:"):
        path, _, query = spec[len("folder:"):].partition("?")
        o = _options(where, query, {"payload", "pictures", "rate", "name"})
        sink = SinkConfig("folder", o.get("name", f"folder{index + 1}"), path=path,
                          payload=o.get("payload", "verdict").replace(" ", "+"),
                          pictures=o.get("pictures", "anomalous"), rate=_number(where, o.get("rate", 0)))
        return check_sink(sink, where) if check else sink
    parts = urlsplit(spec)
    tls, opc = {"ca", "cert", "key"}, {"cert", "key", "trust"}
    extra = {"mqtt": tls, "mqtts": tls, "webhook+http": tls, "webhook+https": tls, "opcua": opc, "opc.tcp": opc,
             "opcua-client": opc - {"trust"}}.get(parts.scheme, set())
    o = _options(where, parts.query, {"payload", "pictures", "rate", "name", "qos"} | extra)
    if parts.scheme in ("mqtt", "webhook+http") and extra & set(o):
        raise _bad(where, f"{sorted(extra & set(o))[0]}= is for TLS; write "
                          f"{'mqtts://HOST:PORT/TOPIC' if parts.scheme == 'mqtt' else 'webhook+https://HOST:PORT/PATH'}?...")
    identity = {k: o[k] for k in ("cert", "key", "trust") if k in o and parts.scheme.startswith("opc")}
    common = dict(payload=o.get("payload", "verdict").replace(" ", "+"), pictures=o.get("pictures", "anomalous"),
                  rate=_number(where, o.get("rate", 0)))
    if parts.scheme in ("mqtt", "mqtts"):
        host, port = _host_port(where, parts.netloc)
        topic = parts.path.lstrip("/") + ("#" + parts.fragment if "#" in spec else "")  # '#' parses as a fragment
        sink = SinkConfig("mqtt", o.get("name", f"mqtt{index + 1}"), host=host, port=port, topic=topic,
                          qos=int(_number(where, o.get("qos", 1))), tls=parts.scheme == "mqtts", ca=o.get("ca", ""),
                          cert=o.get("cert", ""), key=o.get("key", ""), **common)
    elif parts.scheme in ("opcua", "opc.tcp"):
        host, port = _host_port(where, parts.netloc)
        sink = SinkConfig("opcua", o.get("name", f"opcua{index + 1}"), host=host, port=port, **identity, **common)
    elif parts.scheme == "opcua-client":
        host, port = _host_port(where, parts.netloc)
        sink = SinkConfig("opcua-client", o.get("name", f"plc{index + 1}"), url=f"opc.tcp://{parts.netloc}",
                          host=host, port=port, **identity, **common)
    elif parts.scheme in ("webhook+http", "webhook+https"):
        host, port = _host_port(where, parts.netloc, need_port=False)
        url = spec.split("?")[0].replace("webhook+", "", 1)
        sink = SinkConfig("webhook", o.get("name", f"webhook{index + 1}"), url=url, host=host, port=port,
                          ca=o.get("ca", ""), cert=o.get("cert", ""), key=o.get("key", ""), **common)
    else:
        raise _bad(where, "use mqtt://HOST:PORT/TOPIC, mqtts://..., opcua://HOST:PORT, opcua-client://HOST:PORT, "
                          "webhook+http://HOST:PORT/PATH or folder:DIR")
    return check_sink(sink, where) if check else sink


def check_source(src: SourceConfig, where: str) -> SourceConfig:
    if not NAME.match(src.name):
        raise _bad(where, f"name {src.name!r}: use letters, digits, '_', '.', '-'")
    if src.type == "folder":
        if not src.path:
            raise _bad(where, "no folder; write folder:DIR")
        if not Path(src.path).is_dir():
            raise _bad(where, f"{src.path} is not a folder; create it or check the path")
        if src.after not in AFTER:
            raise _bad(where, f"after={src.after!r}; use {', '.join(AFTER)}")
    elif src.type == "camera":
        if not src.path:
            raise _bad(where, "no camera; write camera:0, video:FILE or a stream URL")
        if not (src.path.isdigit() or "://" in src.path or Path(src.path).is_file()):
            raise _bad(where, f"{src.path}: no such video file; check the path")
    elif src.type == "push":
        if src.port == 0:
            raise _bad(where, "give the port to listen on, e.g. push://127.0.0.1:8090")
    else:
        raise _bad(where, f"unknown source type {src.type!r}; use {', '.join(SOURCE_TYPES)}")
    return src


def check_sink(sink: SinkConfig, where: str) -> SinkConfig:
    if not NAME.match(sink.name):
        raise _bad(where, f"name {sink.name!r}: use letters, digits, '_', '.', '-'")
    if sink.type not in SINK_TYPES:
        raise _bad(where, f"unknown sink type {sink.type!r}; use {', '.join(SINK_TYPES)}")
    if sink.payload not in PAYLOADS:
        raise _bad(where, f"payload={sink.payload!r}; use {' or '.join(PAYLOADS)}")
    if sink.pictures not in PICTURES:
        raise _bad(where, f"pictures={sink.pictures!r}; use {' or '.join(PICTURES)}")
    if sink.type == "mqtt":
        if not sink.topic or any(c in sink.topic for c in "#+"):
            raise _bad(where, "give the topic to publish to, without wildcards: mqtt://HOST:PORT/plant/line3")
        if sink.qos not in (0, 1, 2):
            raise _bad(where, f"qos={sink.qos}; use 1 (at least once), 2, or 0 (may lose messages)")
        if not isinstance(sink.tls, bool):
            raise _bad(where, f"tls = {sink.tls!r}; use true or false")
        tls_context(sink, where)
    if sink.type in ("opcua", "opcua-client"):
        opcua_identity(sink, where)
    elif sink.trust:
        raise _bad(where, "trust= is for the opcua sink (the client certificates it lets in)")
    if sink.type == "webhook":
        tls_context(sink, where)
    if sink.type == "folder" and (sink.ca or sink.cert or sink.key):
        raise _bad(where, "ca, cert and key are for mqtts, webhook+https and opcua sinks")
    if sink.type == "folder" and not sink.path:
        raise _bad(where, "no folder; write folder:DIR")
    if sink.type == "opcua-client" and not sink.nodes:
        raise _bad(where, "name the PLC's nodes to write in the TOML file: nodes = {verdict = \"ns=2;s=...\"}")
    return sink


def tls_context(sink: SinkConfig, where: str = ""):
    """The TLS context of an mqtts or webhook+https sink (None without TLS): the peer's certificate and name checked
    against the system's CAs or ``ca``; ``cert`` and ``key`` presented when the peer asks. Every file is loaded here, so
    a missing or unreadable one is refused at start in one line."""
    where = where or f"sink {sink.name}"
    if not (sink.url.startswith("https://") if sink.type == "webhook" else sink.tls):
        if sink.ca or sink.cert or sink.key:
            raise _bad(where, "ca, cert and key are for TLS; write mqtts://HOST:PORT/TOPIC (or tls = true), or an "
                              "https:// webhook")
        return None
    import ssl

    if bool(sink.cert) != bool(sink.key):
        raise _bad(where, "give cert= and key= together (the client certificate and its private key)")
    for what in ("ca", "cert", "key"):
        path = getattr(sink, what)
        if path and not Path(path).is_file():
            raise _bad(where, f"{what}={path}: no such file; check the path")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        if sink.ca:
            ctx.load_verify_locations(cafile=sink.ca)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise _bad(where, f"ca={sink.ca}: not a PEM certificate ({exc}); give the CA's certificate") from None
    try:
        if sink.cert:
            ctx.load_cert_chain(sink.cert, sink.key, password=lambda: b"")
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise _bad(where, f"cert={sink.cert}, key={sink.key}: not a PEM certificate and its unencrypted private "
                          f"key ({exc}); check the two files") from None
    return ctx


def server_tls(cfg: StationConfig, where: str = "fre-edge line"):
    """The TLS context the live page and the metrics server answer with (``tls_cert`` and ``tls_key``), or None
    for plain HTTP; both files loaded here, so a bad one is refused at start in one line."""
    if not cfg.tls_cert and not cfg.tls_key:
        return None
    if not cfg.tls_cert or not cfg.tls_key:
        raise FreEdgeError(f"{where}: give tls_cert and tls_key together (the page's certificate and its key)")
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key, password=lambda: b"")
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise FreEdgeError(f"{where}: tls_cert {cfg.tls_cert}, tls_key {cfg.tls_key}: not a PEM certificate and its "
                           f"unencrypted key ({exc}); check the two files") from None
    return ctx


def pem_or_der(content: bytes) -> str:
    """How a certificate or key file is encoded: "pem" (text) or "der" (binary)."""
    return "pem" if content.lstrip().startswith(b"-----BEGIN") else "der"


def opcua_identity(sink: SinkConfig, where: str = "") -> tuple[bytes, bytes, str] | None:
    """(certificate, private key, application URI from the certificate) of an OPC UA sink with ``cert`` and
    ``key``, each loaded here so a bad file is refused at start in one line; None without them."""
    where = where or f"sink {sink.name}"
    if sink.ca:
        raise _bad(where, "ca= is for mqtts; an OPC UA peer's certificate is trusted through trust=DIR")
    if sink.trust and sink.type != "opcua":
        raise _bad(where, "trust= is for the opcua sink (the client certificates it lets in)")
    if sink.trust and not sink.cert:
        raise _bad(where, "trust= needs cert= and key= (the station's own certificate): no security without them")
    if not sink.cert and not sink.key:
        return None
    if bool(sink.cert) != bool(sink.key):
        raise _bad(where, "give cert= and key= together (the station's certificate and its private key)")
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        raise _bad(where, 'the opcua sinks need asyncua; run: pip install "fre-edge[line]"') from None
    try:
        cert, key = Path(sink.cert).read_bytes(), Path(sink.key).read_bytes()
    except OSError as exc:
        raise _bad(where, f"{exc.filename}: cannot read it ({exc.strerror}); check the path") from None
    try:
        c = x509.load_pem_x509_certificate(cert) if pem_or_der(cert) == "pem" else x509.load_der_x509_certificate(cert)
    except ValueError:
        raise _bad(where, f"cert={sink.cert}: not a certificate (DER or PEM); give the station's certificate") from None
    try:
        if pem_or_der(key) == "pem":
            serialization.load_pem_private_key(key, None)
        else:
            serialization.load_der_private_key(key, None)
    except (ValueError, TypeError) as exc:
        raise _bad(where, f"key={sink.key}: not an unencrypted private key ({exc}); give the certificate's key "
                          f"without a passphrase") from None
    if sink.trust and not Path(sink.trust).is_dir():
        raise _bad(where, f"trust={sink.trust}: not a folder; put the trusted clients' certificates in a folder")
    try:
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    return cert, key, (uris[0] if uris else "")


def from_args(bundle: str, sources: list[str], sinks: list[str], **settings) -> StationConfig:
    cfg = StationConfig(bundle=bundle, sources=[parse_source(s, i) for i, s in enumerate(sources)],
                        sinks=[parse_sink(s, i) for i, s in enumerate(sinks)], **settings)
    return check_station(cfg)


STATION_KEYS = {"bundle", "name", "journal", "journal_max_mb", "journal_sync", "metrics", "threshold", "batch_size",
                "parallel", "ui", "review", "drift_baseline", "drift", "shadow",
                "drain_s", "server", "tls_cert", "tls_key"}


def from_toml(path: str | Path, bundle: str | None = None) -> StationConfig:
    """A station from a TOML file: ``[station]``, ``[[source]]`` and ``[[sink]]`` tables (each a URL form in
    ``url`` or its fields by name)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise FreEdgeError(f"{path}: cannot read it ({exc.strerror}); check the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise FreEdgeError(f"{path}: not valid TOML ({exc}); fix that line") from None
    unknown = set(data) - {"station", "source", "sink"}
    if unknown:
        raise FreEdgeError(f"{path}: unknown table [{sorted(unknown)[0]}]; use [station], [[source]], [[sink]]")
    station = dict(data.get("station", {}))
    bad = set(station) - STATION_KEYS
    if bad:
        raise FreEdgeError(f"{path} [station]: unknown key {sorted(bad)[0]!r}; use {', '.join(sorted(STATION_KEYS))}")
    if bundle:
        station["bundle"] = bundle
    if "bundle" not in station:
        raise FreEdgeError(f"{path} [station]: no bundle; add bundle = \"PATH\" or pass BUNDLE")
    sources = [_table(path, "source", i, t, SourceConfig, parse_source, check_source)
               for i, t in enumerate(data.get("source", []))]
    sinks = [_table(path, "sink", i, t, SinkConfig, parse_sink, check_sink) for i, t in enumerate(data.get("sink", []))]
    try:
        cfg = StationConfig(sources=sources, sinks=sinks, **station)
    except TypeError as exc:
        raise FreEdgeError(f"{path} [station]: {exc}") from None
    return check_station(cfg, str(path))


def _table(path: Path, kind: str, i: int, table, cls, parse, check):
    where = f"{path} [[{kind}]] #{i + 1}"
    if not isinstance(table, dict):
        raise FreEdgeError(f"{where}: not a table")
    table = dict(table)
    if "url" in table:
        url = table.pop("url")
        extra = {k: v for k, v in table.items() if k not in ("name", "nodes")}
        if extra:
            raise FreEdgeError(f"{where}: give either url or fields, not both ({sorted(extra)[0]!r})")
        item = parse(str(url), i, check=False)
        item.name = table.get("name", item.name)
        if "nodes" in table:
            item.nodes = dict(table["nodes"])
        return check(item, where)
    if "type" not in table:
        raise FreEdgeError(f"{where}: no type; add type = \"{'folder' if kind == 'source' else 'mqtt'}\" or url = ...")
    table.setdefault("name", f"{kind}{i + 1}")
    known = set(cls.__dataclass_fields__)
    bad = set(table) - known
    if bad:
        raise FreEdgeError(f"{where}: unknown key {sorted(bad)[0]!r}; use {', '.join(sorted(known))}")
    return check(cls(**table), where)


def check_journal(cfg: StationConfig) -> None:
    """The journal and the folder sinks write only where nothing of the user's is: not in or around the
    bundle, not a watched folder or around one (its subfolders are fine: a watched folder is read without
    them), and the journal only into a new or empty folder or a journal of fre-edge's."""
    from ..outputs import check_writable

    bundle = Path(cfg.bundle).resolve()
    watched = [Path(s.path).resolve() for s in cfg.sources if s.type == "folder"]
    for what, path in [("--journal", cfg.journal)] + [("--review", cfg.review)] * bool(cfg.ui) + [
            (f"sink {s.name}", s.path) for s in cfg.sinks if s.type == "folder"]:
        real = Path(path).resolve()
        if real == bundle or bundle in real.parents or real in bundle.parents:
            raise FreEdgeError(f"{what} {path}: in or around the bundle {cfg.bundle}; choose a folder outside it")
        for w in watched:
            if real == w or real in w.parents:
                raise FreEdgeError(f"{what} {path}: is or holds the watched folder {w}; choose another folder")
        check_writable(path)
    journal = Path(cfg.journal)
    if journal.exists() and (not journal.is_dir() or (any(journal.iterdir()) and not (journal / "cursors").is_dir())):
        raise FreEdgeError(f"--journal {journal}: not a journal of fre-edge's (no cursors/ in it); choose a new or "
                           f"empty folder")


def check_station(cfg: StationConfig, where: str = "fre-edge line") -> StationConfig:
    if not cfg.sources:
        raise FreEdgeError(f"{where}: no source; add --source folder:DIR (or a [[source]] table)")
    if not cfg.sinks:
        raise FreEdgeError(f"{where}: no sink; add --sink mqtt://HOST:PORT/TOPIC, opcua://HOST:PORT or folder:DIR")
    for kind, items in (("source", cfg.sources), ("sink", cfg.sinks)):
        names = [x.name for x in items]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise FreEdgeError(f"{where}: two {kind}s are named {sorted(dup)[0]!r}; give each its own ?name=")
    if not (Path(cfg.bundle) / "manifest.json").is_file():
        raise FreEdgeError(f"{cfg.bundle} is not a bundle (no manifest.json); pass a folder written by "
                           f"`fre-edge export`")
    if cfg.shadow is not None and not (Path(cfg.shadow) / "manifest.json").is_file():
        raise FreEdgeError(f"--shadow {cfg.shadow} is not a bundle (no manifest.json); pass a folder written by "
                           f"`fre-edge export`")
    check_journal(cfg)
    if cfg.metrics:
        _host_port("metrics", cfg.metrics)
    if cfg.ui:
        import os

        host, _ = _host_port("--ui", cfg.ui)
        if host not in LOOPBACK and not os.environ.get("FRE_EDGE_UI_TOKEN"):
            raise FreEdgeError(f"--ui {cfg.ui} opens the live page to the network; set FRE_EDGE_UI_TOKEN (marking "
                               f"parts then needs it) or use 127.0.0.1")
        if cfg.metrics and cfg.metrics == cfg.ui:
            raise FreEdgeError(f"{where}: the live page and the metrics both on {cfg.ui}; give them different ports")
    server_tls(cfg, where)
    if not isinstance(cfg.drift_baseline, int) or cfg.drift_baseline < 10:
        raise FreEdgeError(f"{where}: drift_baseline {cfg.drift_baseline!r}; use a whole number of parts, 10 or more")
    if not 1 <= int(cfg.batch_size) <= 64:
        raise FreEdgeError(f"{where}: batch_size {cfg.batch_size}; use 1 to 64")
    if not isinstance(cfg.parallel, int) or not 0 <= cfg.parallel <= 16:
        raise FreEdgeError(f"{where}: parallel {cfg.parallel!r}; use 0 (OpenVINO's choice) or 1 to 16 calls at once")
    return cfg
