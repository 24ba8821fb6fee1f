"""The inspection station as a user runs it: `fre-edge line` as a real process, a real Mosquitto broker, an
OPC UA client, a webhook receiver and a video made here, all on loopback, each stopped by its PID."""

from __future__ import annotations

import http.client
import importlib.util
import io
import json
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

if not all(importlib.util.find_spec(m) for m in ("paho", "asyncua", "cv2")):
    if os.environ.get("CI"):
        pytest.fail('the line extra is missing on CI: pip install -e ".[test]"')
    pytest.skip("paho-mqtt, asyncua or OpenCV not installed", allow_module_level=True)

from cli_helpers import one_error_line, run  # noqa: E402
from line_helpers import (  # noqa: E402
    Broker, Receiver, Station, Subscriber, free_port, make_certificates, opcua_certificates, wait_for)
from fre_edge.runtime import load_detector  # noqa: E402

TOPIC = "plant/line3"


@pytest.fixture(scope="module")
def pictures(sample_root):
    return sorted(sample_root.glob("test/*/*.png"))


@pytest.fixture(scope="module")
def expected(sample_bundle, pictures):
    det = load_detector(sample_bundle)
    return {p.name if False else f"{i:03d}.png": det.predict(p) for i, p in enumerate(pictures)}


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def drop(src, folder, name):
    """As camera software does: write under a temporary name, then rename (complete at once)."""
    tmp = folder / f".{name}.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, folder / name)


def test_n_pictures_give_n_messages_equal_to_predict_and_opcua_agrees(sample_bundle, pictures, expected, broker,
                                                                      tmp_path):
    from asyncua import ua
    from asyncua.sync import Client

    incoming, out = tmp_path / "in", tmp_path / "out"
    incoming.mkdir()
    opc_port = free_port()
    sub = Subscriber(broker.port, f"{TOPIC}/#")
    st = Station([sample_bundle, "--source", f"folder:{incoming}", "--sink", f"mqtt://127.0.0.1:{broker.port}/{TOPIC}",
                  "--sink", f"opcua://127.0.0.1:{opc_port}", "--sink", f"folder:{out}", "--journal", tmp_path / "j",
                  "--name", "line3"], tmp_path / "station.log").start()
    client = Client(f"opc.tcp://127.0.0.1:{opc_port}/fre-edge/", timeout=10)
    try:
        wait_for(lambda: st.status()["sinks"]["opcua2"]["state"] == "connected", 30, "the OPC UA server")
        client.connect()
        idx = client.get_namespace_index("urn:fre-edge:station")
        node = client.nodes.objects.get_child([f"{idx}:Station", f"{idx}:PartCounter"])
        seen = []

        class Handler:
            def datachange_notification(self, n, value, data):
                seen.append(value)

        subscription = client.create_subscription(50, Handler())
        subscription.subscribe_data_change(node)
        for i, p in enumerate(pictures):
            drop(p, incoming, f"{i:03d}.png")
            wait_for(lambda: st.parts() == i + 1, 30, f"part {i + 1} to be inspected")
        wait_for(lambda: len(sub.on(TOPIC)) == len(pictures), 30, "every MQTT message")
        msgs = sub.on(TOPIC)
        assert [m["part"] for m in msgs] == [f"{i:03d}.png" for i in range(len(pictures))]  # in order
        for m in msgs:
            e = expected[m["part"]]
            assert m["score"] == pytest.approx(e.score, rel=1e-5)
            assert m["verdict"] == ("anomalous" if e.anomalous else "good")
            assert m["box"] == e.to_dict()["bbox"] and m["id"] == f"line3-{m['seq']}"
            assert m["bundle_version"] and m["latency_ms"] > 0 and m["time"].endswith("Z")
        assert sub.on(f"{TOPIC}/status")[-1]["state"] == "online"
        rejects = sum(m["verdict"] != "good" for m in msgs)
        station = [f"{idx}:Station"]
        read = {name: client.nodes.objects.get_child(station + [f"{idx}:{name}"]).read_value()
                for name in ("PartCounter", "RejectCounter", "LastVerdict", "LastScore")}
        assert read["PartCounter"] == len(pictures) and read["RejectCounter"] == rejects
        assert read["LastVerdict"] == msgs[-1]["verdict"] and read["LastScore"] == pytest.approx(msgs[-1]["score"])
        wait_for(lambda: seen and seen[-1] == len(pictures), 10, "the subscription's last change")
        assert seen == sorted(seen) and isinstance(read["PartCounter"], int)
        lines = [json.loads(x) for f in sorted(out.glob("verdicts-*.jsonl")) for x in f.read_text().splitlines()]
        assert [x["id"] for x in lines] == [m["id"] for m in msgs]
        status = st.status()
        assert status["sources"]["source1"]["rejects"] == rejects and all(
            s["backlog"] == 0 and s["state"] == "connected" for s in status["sinks"].values())
        del ua
    finally:
        client.disconnect()
        code = st.stop()
        sub.close()
    assert code == 0, st.output()
    assert sub.on(f"{TOPIC}/status")[-1]["state"] == "offline"


def test_the_broker_away_for_10_s_loses_nothing(sample_bundle, pictures, broker, tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    sub = Subscriber(broker.port, TOPIC, client_id="away-test")
    st = Station([sample_bundle, "--source", f"folder:{incoming}", "--sink", f"mqtt://127.0.0.1:{broker.port}/{TOPIC}",
                  "--journal", tmp_path / "j"], tmp_path / "station.log").start()
    try:
        for i in range(4):
            drop(pictures[i], incoming, f"a{i}.png")
        wait_for(lambda: len(sub.on(TOPIC)) == 4, 30, "the first messages")
        broker.stop()
        t0 = time.monotonic()
        for i in range(6):  # inspection goes on while the broker is away
            drop(pictures[i], incoming, f"b{i}.png")
        wait_for(lambda: st.parts() == 10, 30, "inspection while the broker is away")
        wait_for(lambda: st.status()["sinks"]["mqtt1"]["backlog"] == 6, 10, "the backlog")
        assert st.status()["sinks"]["mqtt1"]["state"].startswith("disconnected")
        time.sleep(max(0.0, 10 - (time.monotonic() - t0)))
        broker.start()
        wait_for(lambda: len({m["id"] for m in sub.on(TOPIC)}) == 10, 60, "every message after the broker's return")
        ids = [m["seq"] for m in sub.on(TOPIC)]
        assert sorted(set(ids)) == list(range(1, 11))
        first = {}
        for seq in ids:  # in order: a repeat (same id) may come, never a later message before an earlier one
            first.setdefault(seq, len(first))
        assert list(first) == sorted(first)
    finally:
        assert st.stop() == 0, st.output()
        sub.close()


def test_mqtt_and_webhook_over_tls_and_a_broker_the_station_cannot_trust(sample_bundle, pictures, expected,
                                                                          tmp_path):
    """Mosquitto with a TLS listener that asks for a client certificate: the sink that trusts the broker's CA and
    presents the client certificate delivers every verdict; the sink told another CA refuses the broker, says why
    in its state, and keeps its verdicts in the journal. A webhook over https with the same CA gets every one."""
    import ssl

    certs = make_certificates(tmp_path / "certs")
    # user root: started as root, mosquitto would run as its own user, who cannot read the test's folder
    broker = Broker(tmp_path / "broker", conf=f"cafile {certs['ca']}\ncertfile {certs['broker']}\n"
                                              f"keyfile {certs['broker_key']}\nrequire_certificate true\n"
                                              f"user root\n").start()
    incoming = tmp_path / "in"
    incoming.mkdir()
    ctx = ssl.create_default_context(cafile=str(certs["ca"]))
    ctx.load_cert_chain(certs["client"], certs["client_key"])
    sub = Subscriber(broker.port, TOPIC, client_id="tls-test", tls=ctx)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(certs["broker"], certs["broker_key"])
    receiver = Receiver(tls=server_side)
    client = f"cert={certs['client']}&key={certs['client_key']}"
    st = Station([sample_bundle, "--source", f"folder:{incoming}", "--journal", tmp_path / "j", "--drain", "1",
                  "--sink", f"mqtts://127.0.0.1:{broker.port}/{TOPIC}?ca={certs['ca']}&{client}&name=tls",
                  "--sink", f"mqtts://127.0.0.1:{broker.port}/{TOPIC}/b?ca={certs['other_ca']}&{client}&name=wrongca",
                  "--sink", f"webhook+https://127.0.0.1:{receiver.port}/parts?ca={certs['ca']}&name=https"],
                 tmp_path / "station.log").start()
    try:
        for i, p in enumerate(pictures):
            drop(p, incoming, f"{i:03d}.png")
        wait_for(lambda: len(sub.on(TOPIC)) == len(pictures), 60, "every message over TLS")
        wait_for(lambda: len(receiver.bodies) == len(pictures), 60, "every POST over https")
        assert [b["id"] for b in receiver.bodies] == [m["id"] for m in sub.on(TOPIC)]
        msgs = sub.on(TOPIC)
        assert [m["part"] for m in msgs] == [f"{i:03d}.png" for i in range(len(pictures))]
        for m in msgs:
            assert m["score"] == pytest.approx(expected[m["part"]].score, rel=1e-5)
        sinks = st.status()["sinks"]
        assert sinks["tls"]["state"] == "connected" and sinks["tls"]["backlog"] == 0
        assert sinks["wrongca"]["backlog"] == len(pictures), sinks
        assert sinks["wrongca"]["state"].startswith("disconnected") and "CERTIFICATE_VERIFY_FAILED" in \
            sinks["wrongca"]["state"], sinks
    finally:
        code = st.stop()
        sub.close()
        receiver.close()
        broker.stop()
    assert code == 0, st.output()


def test_opc_ua_with_certificates_lets_in_only_the_trusted_plc_and_writes_to_its_secured_server(
        sample_bundle, pictures, expected, tmp_path, monkeypatch):
    """The station's OPC UA server with its own certificate and a trust folder: the PLC's certificate gets a
    SignAndEncrypt session and reads the counters; a stranger's certificate and a client without security are
    refused. The opcua-client sink writes every verdict into the PLC's own server over SignAndEncrypt with a
    user name and password, that server trusting only the station's certificate."""
    from asyncua import ua
    from asyncua.server.user_managers import User, UserManager, UserRole
    from asyncua.sync import Client, Server

    pki = opcua_certificates(tmp_path / "pki", {"station": "urn:fre-edge:station:line3", "plc": "urn:test:plc",
                                                "stranger": "urn:test:stranger"})
    for folder, who in (("station_trusts", "plc"), ("plc_trusts", "station")):
        (tmp_path / folder).mkdir()
        shutil.copy(pki[who][0], tmp_path / folder)

    class Users(UserManager):
        def get_user(self, iserver, username=None, password=None, certificate=None):
            return User(role=UserRole.User) if (username, password) == ("line3", "s3cret") else None

    plc_port, station_port = free_port(), free_port()
    plc = Server()  # the PLC's own server, as a Siemens or Beckhoff PLC offers it
    plc.set_endpoint(f"opc.tcp://127.0.0.1:{plc_port}/plc/")
    plc.set_application_uri("urn:test:plc")
    plc.load_certificate(str(pki["plc"][0]))
    plc.load_private_key(str(pki["plc"][1]))
    plc.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    from fre_edge.line.sinks import stop_client_loop, trusted_clients

    plc.aio_obj.set_certificate_validator(trusted_clients(str(tmp_path / "plc_trusts"), plc))
    plc.aio_obj.iserver.set_user_manager(Users())
    idx = plc.register_namespace("urn:test:plc")
    line = plc.nodes.objects.add_object(idx, "Line3")
    V = ua.VariantType
    targets = {key: line.add_variable(ua.NodeId(f"Line3.{key}", idx), key, ua.Variant(value, vt)) for key, value, vt in
               (("Verdict", "", V.String), ("Score", 0.0, V.Double), ("Seq", 0, V.UInt64))}
    for node in targets.values():
        node.set_writable()
    plc.start()
    incoming = tmp_path / "in"
    incoming.mkdir()
    identity = f"cert={pki['station'][0]}&key={pki['station'][1]}"
    toml = tmp_path / "station.toml"
    toml.write_text(f"""[station]
name = "line3"
[[source]]
url = "folder:{incoming}"
[[sink]]
url = "opcua://127.0.0.1:{station_port}?{identity}&trust={tmp_path / 'station_trusts'}"
[[sink]]
url = "opcua-client://127.0.0.1:{plc_port}/plc/?{identity}"
nodes = {{verdict = "ns={idx};s=Line3.Verdict", score = "ns={idx};s=Line3.Score", seq = "ns={idx};s=Line3.Seq"}}
""")
    monkeypatch.setenv("FRE_EDGE_OPCUA_USERNAME", "line3")
    monkeypatch.setenv("FRE_EDGE_OPCUA_PASSWORD", "s3cret")
    st = Station([sample_bundle, "--config", toml, "--journal", tmp_path / "j", "--drain", "1"],
                 tmp_path / "station.log").start()
    url = f"opc.tcp://127.0.0.1:{station_port}/fre-edge/"
    try:
        wait_for(lambda: all(s["state"] == "connected" for s in st.status()["sinks"].values()), 60, "both sinks")
        for i, p in enumerate(pictures):
            drop(p, incoming, f"{i:03d}.png")
        n = len(pictures)
        wait_for(lambda: st.parts() == n and all(s["backlog"] == 0 for s in st.status()["sinks"].values()), 60,
                 "every verdict delivered")
        last = expected[f"{n - 1:03d}.png"]
        assert targets["Seq"].read_value() == n
        assert targets["Verdict"].read_value() == ("anomalous" if last.anomalous else "good")
        assert targets["Score"].read_value() == pytest.approx(last.score, rel=1e-5)
        client = Client(url, timeout=10)
        client.application_uri = "urn:test:plc"
        client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{pki['plc'][0]},{pki['plc'][1]}")
        client.connect()
        try:
            ns = client.get_namespace_index("urn:fre-edge:station")
            counter = client.nodes.objects.get_child([f"{ns}:Station", f"{ns}:PartCounter"])
            assert counter.read_value() == n
        finally:
            client.disconnect()
        for who in ("stranger", None):
            client = Client(url, timeout=10)
            if who:
                client.application_uri = "urn:test:stranger"
                client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{pki[who][0]},{pki[who][1]}")
            with pytest.raises(Exception, match="Untrusted" if who else "endpoint|Security|policy"):
                client.connect()
            stop_client_loop(client)
            assert not client.tloop.is_alive()  # its loop thread would keep the process from exiting
    finally:
        code = st.stop()
        plc.stop()
    assert code == 0, st.output()


def test_a_plc_that_is_away_costs_no_thread_per_retry_and_the_station_still_stops(sample_bundle, tmp_path):
    """The opcua-client sink retrying a PLC that does not answer: each failed try's client loop is stopped, so the
    station's thread count stays flat and SIGTERM stops it (a leftover loop thread would keep it from exiting)."""
    incoming = tmp_path / "in"
    incoming.mkdir()
    toml = tmp_path / "station.toml"
    toml.write_text(f"""[[source]]
url = "folder:{incoming}"
[[sink]]
url = "opcua-client://127.0.0.1:{free_port()}/plc/"
nodes = {{verdict = "ns=2;s=Line3.Verdict"}}
""")
    st = Station([sample_bundle, "--config", toml, "--journal", tmp_path / "j", "--drain", "1"],
                 tmp_path / "station.log").start()

    def threads():
        return len(os.listdir(f"/proc/{st.proc.pid}/task"))

    try:
        wait_for(lambda: st.status()["sinks"]["plc1"]["state"].startswith("disconnected:"), 30, "the first failure")
        before = threads()
        time.sleep(8)  # retries back off 0.25, 0.5, 1, 2, 4 s: several failed tries meanwhile
        assert threads() <= before, (before, threads())
    finally:
        code = st.stop(timeout=60)
    assert code == 0, st.output()


def test_a_station_killed_mid_run_delivers_every_verdict_after_restart(sample_bundle, pictures, broker, tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    receiver = Receiver()
    sub = Subscriber(broker.port, TOPIC, client_id="kill-test")
    args = [sample_bundle, "--source", f"folder:{incoming}?existing=1&after=move", "--sink",
            f"mqtt://127.0.0.1:{broker.port}/{TOPIC}", "--sink", f"webhook+http://127.0.0.1:{receiver.port}/parts",
            "--journal", tmp_path / "j"]
    names = [f"{i:03d}.png" for i in range(30)]
    st = Station(args, tmp_path / "station.log").start()
    try:
        for i, name in enumerate(names):
            drop(pictures[i % len(pictures)], incoming, name)
            if i == 14:
                wait_for(lambda: st.parts() >= 10, 30, "some parts")
                st.stop(signal.SIGKILL)
                break
        for name in names[15:]:
            drop(pictures[0], incoming, name)
        st = Station(args, tmp_path / "station2.log").start()
        wait_for(lambda: not [p for p in incoming.glob("*.png")], 60, "every file inspected and moved")
        for got in (lambda: sub.on(TOPIC), lambda: receiver.bodies):
            wait_for(lambda: {m["part"] for m in got()} == set(names), 60, "a verdict for every part")
            by_id = {}
            for m in got():
                assert by_id.setdefault(m["id"], m["part"]) == m["part"]  # a repeat carries its id
            assert sorted(by_id.values()) == names  # one id per part: no part scored twice
    finally:
        assert st.stop() == 0, st.output()
        sub.close()
        receiver.close()
    assert len(list((incoming / "good").glob("*.png"))) + len(list((incoming / "reject").glob("*.png"))) == 30


def test_parts_that_wait_are_inspected_two_at_a_time_and_journaled_in_order(sample_bundle, pictures, expected,
                                                                               tmp_path):
    """A backlog (pictures already in the folder): two calls at once on OpenVINO streams, verdicts as predict's, in
    the parts' order."""
    incoming, out = tmp_path / "in", tmp_path / "out"
    incoming.mkdir()
    names = {}
    for k in range(3):
        for i, p in enumerate(pictures):
            name = f"{k}{i:03d}.png"
            shutil.copyfile(p, incoming / name)
            names[name] = f"{i:03d}.png"
    st = Station([sample_bundle, "--source", f"folder:{incoming}?existing=1", "--sink", f"folder:{out}",
                  "--journal", tmp_path / "j", "--parallel", "2", "--batch-size", "1"],
                 tmp_path / "station.log").start()
    try:
        wait_for(lambda: st.parts() == len(names), 120, "every picture")
        assert st.status()["parallel"] == 2
        wait_for(lambda: st.status()["sinks"]["folder1"]["backlog"] == 0, 30, "the folder sink")
    finally:
        assert st.stop() == 0, st.output()
    lines = [json.loads(x) for f in sorted(out.glob("verdicts-*.jsonl")) for x in f.read_text().splitlines()]
    assert [x["part"] for x in lines] == sorted(names)  # the folder's order, kept through parallel calls
    assert [x["seq"] for x in lines] == sorted(x["seq"] for x in lines)
    for x in lines:
        e = expected[names[x["part"]]]
        assert x["score"] == pytest.approx(e.score, rel=1e-4)
        assert x["verdict"] == ("anomalous" if e.anomalous else "good")


def test_the_journal_syncs_in_groups_and_shows_only_what_is_on_disk(tmp_path, monkeypatch):
    """A source is told, and a sink reads, a verdict only after an fsync that covered its line; appends faster
    than the disk share fsyncs; every callback runs, in order, by the time the journal is closed."""
    from fre_edge.line.journal import Journal

    real_fsync, synced, fsyncs = os.fsync, [0], []

    def slow_fsync(fd):  # a slow disk: the lines written when the fsync starts are on disk when it returns
        lines = sum(1 for f in (tmp_path / "j").glob("seg-*.jsonl") for _ in open(f, "rb"))
        time.sleep(0.02)
        real_fsync(fd)
        fsyncs.append(lines)
        synced[0] = max(synced[0], lines)

    journal = Journal(tmp_path / "j", ["s1"], station="st", segment_bytes=2000)  # segments of a few lines
    monkeypatch.setattr(os, "fsync", slow_fsync)
    told, early, read = [], [], []
    reader = journal.reader("s1")

    def read_all():
        while len(read) < 100:
            r = reader.next(timeout=5)
            if r is None:
                continue
            if r["seq"] > synced[0]:
                early.append(r["seq"])
            read.append(r["seq"])

    t = threading.Thread(target=read_all)
    t.start()
    for i in range(100):
        journal.append({"part": f"{i}.png"}, then=lambda r: told.append((r["seq"], synced[0])))
    t.join(30)
    journal.close()
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert read == list(range(1, 101)) and not early
    assert [s for s, _ in told] == list(range(1, 101))
    assert all(on_disk >= s for s, on_disk in told)
    assert 1 <= len(fsyncs) < 50  # shared by several verdicts
    assert sum(1 for f in (tmp_path / "j").glob("seg-*.jsonl") for _ in open(f, "rb")) == 100


def test_a_journal_on_a_disk_that_cannot_sync_is_refused_in_one_line(tmp_path, monkeypatch):
    import errno

    from fre_edge.errors import FreEdgeError
    from fre_edge.line.journal import Journal

    def failing(fd):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(FreEdgeError, match=r"cannot sync it to disk \(Invalid argument\); choose a folder"):
        Journal(tmp_path / "j", ["s1"])


def test_a_half_written_file_is_scored_only_when_complete(sample_bundle, pictures, tmp_path):
    incoming, out = tmp_path / "in", tmp_path / "out"
    incoming.mkdir()
    st = Station([sample_bundle, "--source", f"folder:{incoming}", "--sink", f"folder:{out}", "--journal",
                  tmp_path / "j"], tmp_path / "station.log").start()
    try:
        data = pictures[-1].read_bytes()
        with open(incoming / "slow.png", "wb") as f:
            f.write(data[:len(data) // 2])
            f.flush()
            time.sleep(1.5)  # a slow writer: longer than the settle time
            assert st.parts() == 0
            f.write(data[len(data) // 2:])
        wait_for(lambda: st.parts() == 1, 30, "the complete file")
        record = st.status()["sources"]["source1"]["last"]
        assert record["verdict"] in ("good", "anomalous") and record["score"] > 0
    finally:
        assert st.stop() == 0, st.output()


def _video(path, pictures, n):
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (224, 224))
    from PIL import Image

    for i in range(n):
        rgb = np.asarray(Image.open(pictures[i % len(pictures)]).convert("RGB").resize((224, 224)))
        w.write(rgb[..., ::-1].copy())
    w.release()


def test_a_video_file_and_a_dropping_stream(sample_bundle, pictures, tmp_path):
    video = tmp_path / "line.avi"
    _video(video, pictures, 12)
    frames = []
    from PIL import Image

    for p in pictures[:3]:
        buf = io.BytesIO()
        Image.open(p).convert("RGB").save(buf, "JPEG")
        frames.append(buf.getvalue())
    connections = []

    class Stream(BaseHTTPRequestHandler):  # an MJPEG camera that drops the connection after 4 frames
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            connections.append(1)
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            for k in range(4):
                f = frames[k % 3]
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(f) + f
                                 + b"\r\n")
                time.sleep(0.05)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Stream)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    out = tmp_path / "out"
    st = Station([sample_bundle, "--source", f"video:{video}?name=video", "--source",
                  f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg?name=cam", "--sink", f"folder:{out}",
                  "--journal", tmp_path / "j"], tmp_path / "station.log").start()
    try:
        wait_for(lambda: st.status()["sources"]["video"]["parts"] == 12, 60, "every frame of the video")
        wait_for(lambda: len(connections) >= 3 and st.status()["sources"]["cam"]["parts"] >= 8, 60,
                 "the stream reconnected and inspected")
    finally:
        assert st.stop() == 0, st.output()
        server.shutdown()
        server.server_close()
    lines = [json.loads(x) for f in out.glob("verdicts-*.jsonl") for x in f.read_text().splitlines()]
    video_parts = [x for x in lines if x["source"] == "video"]
    assert [x["part"] for x in video_parts] == [f"frame-{i:08d}" for i in range(1, 13)]
    assert all(x["verdict"] in ("good", "anomalous") for x in lines)


def test_webhook_retries_and_push_answers_with_the_verdict(sample_bundle, pictures, expected, tmp_path):
    receiver = Receiver(fail=3)
    port = free_port()
    st = Station([sample_bundle, "--source", f"push://127.0.0.1:{port}", "--sink",
                  f"webhook+http://127.0.0.1:{receiver.port}/parts?payload=verdict%2Bpicture&pictures=all",
                  "--journal", tmp_path / "j"], tmp_path / "station.log").start()
    try:
        answers = []
        for i, p in enumerate(pictures[:4]):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=p.read_bytes(), method="POST",
                                         headers={"Content-Type": "image/png", "X-Part-Id": f"{i:03d}.png"})
            with urllib.request.urlopen(req, timeout=60) as r:
                answers.append(json.loads(r.read()))
        for a in answers:
            e = expected[a["part"]]
            assert a["score"] == pytest.approx(e.score, rel=1e-5)
            assert a["verdict"] == ("anomalous" if e.anomalous else "good")
        bad = urllib.request.Request(f"http://127.0.0.1:{port}/", data=b"not a picture", method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=30)
        assert err.value.code == 400
        wait_for(lambda: len(receiver.bodies) == 4, 60, "the webhook after its failures")
        assert [b["part"] for b in receiver.bodies] == [a["part"] for a in answers]
        assert all(len(b["picture"]) > 1000 for b in receiver.bodies)  # base64 JPEG of the heatmap panel
    finally:
        assert st.stop() == 0, st.output()
        receiver.close()


BAD = [
    (["--source", "ftp://x", "--sink", "folder:{tmp}/o"], "unknown source"),
    (["--source", "folder:{tmp}/missing", "--sink", "folder:{tmp}/o"], "is not a folder"),
    (["--source", "folder:{tmp}?after=copy", "--sink", "folder:{tmp}/o"], "after="),
    (["--source", "folder:{tmp}?color=1", "--sink", "folder:{tmp}/o"], "unknown option"),
    (["--source", "push://127.0.0.1", "--sink", "folder:{tmp}/o"], "HOST:PORT"),
    (["--source", "video:{tmp}/none.avi", "--sink", "folder:{tmp}/o"], "no such video"),
    (["--source", "folder:{tmp}", "--sink", "mqtt://127.0.0.1/topic"], "HOST:PORT"),
    (["--source", "folder:{tmp}", "--sink", "mqtt://127.0.0.1:1883/"], "topic"),
    (["--source", "folder:{tmp}", "--sink", "mqtt://127.0.0.1:1883/a/#"], "wildcards"),
    (["--source", "folder:{tmp}", "--sink", "kafka://127.0.0.1:9092/x"], "use mqtt://"),
    (["--source", "folder:{tmp}", "--sink", "mqtt://127.0.0.1:1883/a?ca={tmp}/notes/mine.txt"], "is for TLS"),
    (["--source", "folder:{tmp}", "--sink", "mqtts://127.0.0.1:8883/a?ca={tmp}/ca.pem"], "no such file"),
    (["--source", "folder:{tmp}", "--sink", "mqtts://127.0.0.1:8883/a?cert={tmp}/notes/mine.txt"], "together"),
    (["--source", "folder:{tmp}", "--sink", "mqtts://127.0.0.1:8883/a?ca={tmp}/notes/mine.txt"], "not a PEM"),
    (["--source", "folder:{tmp}", "--sink",
      "mqtts://127.0.0.1:8883/a?cert={tmp}/notes/mine.txt&key={tmp}/notes/mine.txt"], "unencrypted private key"),
    (["--source", "folder:{tmp}", "--sink", "opcua://127.0.0.1:4840?cert={tmp}/notes/mine.txt"], "together"),
    (["--source", "folder:{tmp}", "--sink", "opcua://127.0.0.1:4840?trust={tmp}/notes"], "needs cert="),
    (["--source", "folder:{tmp}", "--sink",
      "opcua://127.0.0.1:4840?cert={tmp}/notes/mine.txt&key={tmp}/notes/mine.txt"], "not a certificate"),
    (["--source", "folder:{tmp}", "--sink",
      "opcua://127.0.0.1:4840?cert={tmp}/nope.der&key={tmp}/nope.pem"], "cannot read it"),
    (["--source", "folder:{tmp}", "--sink", "opcua-client://127.0.0.1:4840?trust={tmp}/notes"], "unknown option"),
    (["--source", "folder:{tmp}", "--sink", "webhook+http://127.0.0.1:80/p?ca={tmp}/notes/mine.txt"], "webhook+https"),
    (["--source", "folder:{tmp}", "--sink", "webhook+https://127.0.0.1/p?ca={tmp}/notes/mine.txt"], "not a PEM"),
    (["--source", "folder:{tmp}", "--sink", "folder:{tmp}/o?payload=everything"], "payload="),
    (["--source", "folder:{tmp}", "--sink", "folder:{tmp}/o?rate=-1"], "finite number"),
    (["--source", "folder:{tmp}", "--sink", "folder:{tmp}/a?name=x", "--sink", "folder:{tmp}/b?name=x"], "two sinks"),
    (["--source", "folder:{tmp}"], "no sink"),
    (["--sink", "folder:{tmp}/o"], "no source"),
    (["--source", "folder:{tmp}", "--sink", "folder:{tmp}/o", "--journal", "{tmp}/notes"], "not a journal"),
    (["--source", "folder:{tmp}/in", "--sink", "folder:{tmp}/o", "--journal", "{tmp}"], "holds the watched"),
    (["--source", "folder:{tmp}/in", "--sink", "folder:{tmp}/in"], "the watched folder"),
    (["--source", "folder:{tmp}/in", "--sink", "folder:{tmp}/o", "--journal", "{bundle}/j"], "the bundle"),
    (["--source", "folder:{tmp}/in", "--sink", "folder:{tmp}/o", "--ui", "0.0.0.0:8088"], "FRE_EDGE_UI_TOKEN"),
    (["--source", "folder:{tmp}/in", "--sink", "folder:{tmp}/o", "--shadow", "{tmp}/notes"], "not a bundle"),
    (["--source", "folder:{tmp}/in", "--sink", "folder:{tmp}/o", "--parallel", "17"], "--parallel"),
    (["--source", "folder:{tmp}/in", "--sink", "folder:{tmp}/o", "--ui", "127.0.0.1:9100", "--metrics-port",
      "9100"], "different ports"),
]


@pytest.mark.parametrize("args, words", BAD, ids=[b[1] for b in BAD])
def test_each_bad_configuration_entry_is_one_line(sample_bundle, tmp_path, args, words):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    (tmp_path / "in").mkdir()
    args = [a.replace("{tmp}", str(tmp_path)).replace("{bundle}", str(sample_bundle)) for a in args]
    if "--journal" not in args:
        args += ["--journal", tmp_path / "j"]
    line = one_error_line(run("line", sample_bundle, *args))
    assert words in line, line
    assert not (tmp_path / "j").exists() and (tmp_path / "notes" / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "notes"]


def test_a_bad_toml_file_is_one_line(sample_bundle, tmp_path):
    cases = [
        ("[station]\nbundl = 'x'\n", "unknown key 'bundl'"),
        ("[station]\n[[sink]]\nurl = 'folder:o'\n[[source]]\ntype = 'folder'\npath = '{tmp}'\ncolour = 1\n",
         "unknown key 'colour'"),
        ("[station\n", "not valid TOML"),
        ("[[source]]\nurl = 'folder:{tmp}'\n[[sink]]\ntype = 'mqtt'\nhost = '127.0.0.1'\nport = 1\n", "topic"),
        ("[[source]]\nurl = 'folder:{tmp}'\n[[sink]]\nurl = 'opcua-client://127.0.0.1:4840'\n", "nodes"),
        ("[[source]]\nurl = 'folder:{tmp}'\n[[sink]]\ntype = 'mqtt'\nhost = 'b'\nport = 8883\ntopic = 't'\n"
         "tls = 'yes'\n", "tls = 'yes'"),
        ("[[source]]\nurl = 'folder:{tmp}'\n[[sink]]\ntype = 'mqtt'\nhost = 'b'\nport = 1883\ntopic = 't'\n"
         "ca = 'ca.pem'\n", "are for TLS"),
        ("[station]\nparallel = 99\n[[source]]\nurl = 'folder:{tmp}'\n[[sink]]\nurl = 'folder:{tmp}/o'\n",
         "parallel 99"),
        ("[station]\ntls_cert = '{tmp}/station.toml'\n[[source]]\nurl = 'folder:{tmp}'\n[[sink]]\n"
         "url = 'folder:{tmp}/o'\n", "tls_cert and tls_key together"),
        ("[station]\ntls_cert = '{tmp}/station.toml'\ntls_key = '{tmp}/station.toml'\n[[source]]\n"
         "url = 'folder:{tmp}'\n[[sink]]\nurl = 'folder:{tmp}/o'\n", "not a PEM certificate"),
    ]
    for text, words in cases:
        f = tmp_path / "station.toml"
        f.write_text(text.replace("{tmp}", str(tmp_path)))
        line = one_error_line(run("line", sample_bundle, "--config", f, "--journal", tmp_path / "j"))
        assert words in line, line
    line = one_error_line(run("line", tmp_path, "--source", f"folder:{tmp_path}", "--sink", "folder:o"))
    assert "not a bundle" in line


def test_the_documented_two_camera_station_parses(sample_bundle, tmp_path):
    """docs/line.md's TOML, as a user copies it, is a valid configuration (its cameras and PLC are not here)."""
    from pathlib import Path

    from fre_edge.line.config import from_toml

    doc = (Path(__file__).resolve().parents[1] / "docs" / "line.md").read_text()
    text = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    f = tmp_path / "station.toml"
    f.write_text(text)
    cfg = from_toml(f, str(sample_bundle))
    assert [s.name for s in cfg.sources] == ["cam-top", "cam-side"] and cfg.sources[0].fps == 10
    assert [s.type for s in cfg.sinks] == ["opcua", "opcua-client", "mqtt"]
    assert cfg.sinks[1].nodes["reject"] == "ns=3;s=Line3.Reject" and cfg.sinks[2].payload == "verdict+picture"


def test_the_documented_systemd_unit_is_one_systemd_accepts(tmp_path):
    """docs/line.md's unit, with this machine's paths put in, passes ``systemd-analyze verify`` without a word
    (an unknown or misspelt key is reported there)."""
    import subprocess
    from pathlib import Path

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing on CI: .ci/run installs systemd")
        pytest.skip("systemd-analyze not installed")
    doc = (Path(__file__).resolve().parents[1] / "docs" / "line.md").read_text()
    unit = doc.split("```ini\n", 1)[1].split("```", 1)[0]
    assert "Restart=always" in unit and "RestartPreventExitStatus=2" in unit and "TimeoutStopSec=30" in unit
    (tmp_path / "line3.env").write_text("FRE_EDGE_MQTT_PASSWORD=x\n")
    import sys

    exe = shutil.which("fre-edge", path=str(Path(sys.executable).parent)) or shutil.which("fre-edge")
    assert exe, "the fre-edge command is not installed beside this Python"
    for doc_path, here in (("/opt/fre-edge/bin/fre-edge", exe), ("User=fre-edge", "User=root"),
                           ("/etc/fre-edge/line3.env", str(tmp_path / "line3.env")),
                           ("/var/lib/fre-edge", str(tmp_path))):
        unit = unit.replace(doc_path, here)
    path = tmp_path / "fre-edge-line3.service"
    path.write_text(unit)
    out = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr
    path.write_text(unit.replace("RestartSec=", "RestartSecs="))  # the check can fail
    out = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert "RestartSecs" in out.stdout + out.stderr


def test_the_live_page_streams_the_line_state_and_keeps_marks(sample_bundle, pictures, tmp_path, monkeypatch):
    """The page's data as a browser gets it: the page itself, the station's state pushed as a server-sent event at
    once and again when a part is inspected (at most twice a second in a burst), the part's heatmap picture, and a
    mark written where fit and eval read it; with a token, marking needs it."""
    incoming, review, port = tmp_path / "in", tmp_path / "review", free_port()
    incoming.mkdir()
    monkeypatch.setenv("FRE_EDGE_UI_TOKEN", "s3cret")
    st = Station([sample_bundle, "--source", f"folder:{incoming}", "--sink", f"folder:{tmp_path / 'out'}",
                  "--journal", tmp_path / "j", "--ui", f"127.0.0.1:{port}", "--review", review],
                 tmp_path / "station.log").start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: st.status()["sources"]["source1"]["state"].startswith("watching"), 30, "the watch")
        with urllib.request.urlopen(base + "/", timeout=10) as r:
            html = r.read().decode()
        assert "EventSource" in html and "<script" in html and "http" not in html.split("<script", 1)[1].split(
            "EventSource", 1)[0]  # no external assets
        events = urllib.request.urlopen(base + "/events", timeout=30)

        def next_event():
            lines = [events.readline()]
            while lines[-1] == b"\n":  # the gap after the last event
                lines = [events.readline()]
            while lines[-1] != b"\n":
                lines.append(events.readline())
            kind = next(line[7:].strip() for line in lines if line.startswith(b"event: "))
            return kind, json.loads(next(line for line in lines if line.startswith(b"data:"))[5:])

        assert events.readline().startswith(b"retry:")
        kind, state = next_event()  # the state at once, before any part
        assert kind == b"status" and state["latest_parts"] == [] and state["threshold"] > 0
        drop(pictures[0], incoming, "p0.png")
        t0 = time.monotonic()
        kind, state = next_event()  # pushed once the part is inspected
        assert time.monotonic() - t0 < 30 and kind == b"status"
        record = state["latest_parts"][-1]
        assert record["part"] == "p0.png" and state["sources"]["source1"]["parts"] == 1
        assert state["recent_scores"] == [[record["seq"], record["score"], record["verdict"]]]
        from fre_edge.line.ui import PUSH_EVERY

        t0, pushes = time.monotonic(), 0
        for i in range(30):  # a burst: the state goes out at most twice a second, not once a part
            drop(pictures[i % len(pictures)], incoming, f"q{i:02d}.png")
        while state["sources"]["source1"]["parts"] < 31:
            kind, state = next_event()
            pushes += kind == b"status"
            assert time.monotonic() - t0 < 60, "the burst's parts never all showed"
        assert pushes <= 2 + (time.monotonic() - t0) / PUSH_EVERY, (pushes, time.monotonic() - t0)
        assert [r["part"] for r in state["latest_parts"][-3:]] == ["q27.png", "q28.png", "q29.png"]
        events.close()
        record = state["latest_parts"][-1]  # the first part is no longer among the latest: the newest is marked
        with urllib.request.urlopen(f"{base}/parts/{record['seq']}.jpg", timeout=30) as r:
            assert r.headers["Content-Type"] == "image/jpeg" and r.read(3) == b"\xff\xd8\xff"
        body = json.dumps({"seq": record["seq"], "mark": "good", "who": "ana"}).encode()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(base + "/review", data=body, method="POST"), timeout=30)
        assert err.value.code == 403
        req = urllib.request.Request(base + "/review", data=body, method="POST", headers={"X-Token": "s3cret"})
        with urllib.request.urlopen(req, timeout=30) as r:
            mark = json.loads(r.read())
        assert (review / mark["picture"]).is_file() and mark["picture"].startswith("train/good/")
        line = json.loads((review / "reviews.jsonl").read_text().splitlines()[-1])
        assert line["who"] == "ana" and line["mark"] == "good" and line["id"] == record["id"]
        status = json.loads(urllib.request.urlopen(base + "/status", timeout=10).read())
        assert status["latest_parts"][-1]["seq"] == record["seq"] and status["drift"]["state"] == "learning"
    finally:
        assert st.stop() == 0, st.output()


@pytest.fixture(scope="module")
def refit_bundle(sample_root, tmp_path_factory):
    """A refit of the demo sample (another variance ratio) at the live bundle's input size."""
    from fre_edge.export import export_bundle
    from fre_edge.fit import FitConfig, fit_fre
    from fre_edge.fit.data import read_dataset

    ds = read_dataset(sample_root)
    fitted = fit_fre([s.path for s in ds.train], FitConfig(input_size=224, n_components=0.9), progress=False)
    out = tmp_path_factory.mktemp("refit") / "refit"
    export_bundle(fitted, out)
    return out


def test_an_observers_requests_run_below_inspection():
    """The page's and the metrics' request threads run at a lower priority (nice 10 on Linux) than the station's
    threads; a source's (a camera pushing pictures) at the station's own."""
    import sys

    from fre_edge.line.http import BACKGROUND_NICE, HttpService, respond_json

    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread nice values are Linux's")
    seen = {}

    def get(req):
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        respond_json(req, 200, {})

    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    for background, expected in ((False, base), (True, min(19, base + BACKGROUND_NICE))):
        server = HttpService("127.0.0.1", 0, get=get, what="test", background=background).start()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10).read()
        finally:
            server.stop()
        assert seen.pop("nice") == expected, background
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # the caller's own is untouched


def test_promoting_needs_the_token_and_nobody_on_the_network_promotes_without_one():
    """The rule for requests that change the station (a promotion, a mark): the token when one is set; without
    one, only on loopback. The metrics server (which may listen beyond loopback for Prometheus) applies it."""
    from fre_edge.errors import FreEdgeError
    from fre_edge.line.http import refusal
    from fre_edge.line.metrics import MetricsServer

    class Req:
        def __init__(self, headers):
            self.headers = headers

    assert refusal(Req({}), "127.0.0.1", None) is None
    assert "FRE_EDGE_UI_TOKEN" in refusal(Req({}), "0.0.0.0", None)
    assert refusal(Req({"X-Token": "s3cret"}), "0.0.0.0", "s3cret") is None
    assert "token" in refusal(Req({"X-Token": "guess"}), "127.0.0.1", "s3cret")

    class NoShadow:  # the station's answer when no shadow bundle runs
        def promote(self):
            raise FreEdgeError("no shadow bundle to promote; start the station with --shadow BUNDLE")

    server = MetricsServer(NoShadow(), "127.0.0.1", 0, token="s3cret").start()
    try:
        for headers, code in (({}, 403), ({"X-Token": "guess"}, 403), ({"X-Token": "s3cret"}, 409)):
            req = urllib.request.Request(f"http://127.0.0.1:{server.port}/promote", data=b"", method="POST",
                                         headers=headers)
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=10)
            assert err.value.code == code, headers
    finally:
        server.stop()


def test_the_page_and_the_metrics_over_https(sample_bundle, pictures, tmp_path, monkeypatch):
    """With tls_cert and tls_key the live page and the metrics answer over HTTPS only: the page, its events, a
    part's picture, /status and /metrics with the test's CA; a mark with the token; plain HTTP gets no answer."""
    import ssl

    certs = make_certificates(tmp_path / "certs")
    incoming, ui_port = tmp_path / "in", free_port()
    incoming.mkdir()
    toml = tmp_path / "station.toml"
    toml.write_text(f"""[station]
tls_cert = "{certs['broker']}"
tls_key = "{certs['broker_key']}"
ui = "127.0.0.1:{ui_port}"
review = "{tmp_path / 'review'}"
[[source]]
url = "folder:{incoming}"
[[sink]]
url = "folder:{tmp_path / 'out'}"
""")
    monkeypatch.setenv("FRE_EDGE_UI_TOKEN", "s3cret")
    ctx = ssl.create_default_context(cafile=str(certs["ca"]))
    st = Station([sample_bundle, "--config", toml, "--journal", tmp_path / "j"], tmp_path / "station.log",
                 tls=ctx).start()
    page = f"https://127.0.0.1:{ui_port}"

    def get(url):
        with urllib.request.urlopen(url, timeout=10, context=ctx) as r:
            return r.headers.get("Content-Type"), r.read()

    try:
        drop(pictures[0], incoming, "000.png")
        wait_for(lambda: st.parts() == 1, 60, "the part")
        assert get(page + "/")[1].lower().startswith(b"<!doctype html>")
        kind, body = get(f"https://127.0.0.1:{st.metrics_port}/metrics")
        assert kind.startswith("text/plain") and b'fre_edge_line_parts_total{source="source1"} 1' in body
        seq = json.loads(get(page + "/status")[1])["latest_parts"][-1]["seq"]
        kind, jpeg = get(f"{page}/parts/{seq}.jpg")
        assert kind == "image/jpeg" and jpeg[:2] == b"\xff\xd8"
        with urllib.request.urlopen(page + "/events", timeout=10, context=ctx) as r:
            assert r.headers.get("Content-Type") == "text/event-stream" and r.readline().startswith(b"retry:")
        mark = urllib.request.Request(page + "/review", method="POST", data=json.dumps(
            {"seq": seq, "mark": "good", "who": "test"}).encode(), headers={"Content-Type": "application/json",
                                                                           "X-Token": "s3cret"})
        with urllib.request.urlopen(mark, timeout=10, context=ctx) as r:
            assert r.status == 200
        assert list((tmp_path / "review" / "train" / "good").glob("*.png"))
        for port in (ui_port, st.metrics_port):  # plain HTTP: the TLS server answers no HTTP
            with pytest.raises((urllib.error.URLError, OSError, http.client.HTTPException)):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10)
    finally:
        code = st.stop()
    assert code == 0, st.output()


def test_a_shadow_bundle_is_compared_and_promoted_mid_stream(sample_bundle, refit_bundle, pictures, tmp_path):
    from fre_edge.runtime.bundle import bundle_digest, read_manifest, serving_version

    live_v, shadow_v = (serving_version(bundle_digest(read_manifest(b))) for b in (sample_bundle, refit_bundle))
    incoming, out = tmp_path / "in", tmp_path / "out"
    incoming.mkdir()
    st = Station([sample_bundle, "--shadow", refit_bundle, "--source", f"folder:{incoming}", "--sink",
                  f"folder:{out}", "--journal", tmp_path / "j"], tmp_path / "station.log").start()
    n = 24
    try:
        wait_for(lambda: st.status()["sources"]["source1"]["state"].startswith("watching"), 30, "the watch")
        for i in range(n):
            drop(pictures[i % len(pictures)], incoming, f"{i:03d}.png")
            if i == n // 2:  # promoted while parts keep coming
                req = urllib.request.Request(f"http://127.0.0.1:{st.metrics_port}/promote", data=b"", method="POST")
                with urllib.request.urlopen(req, timeout=60) as r:
                    assert json.loads(r.read())["live"]["bundle_version"] == shadow_v
            time.sleep(0.05)
        wait_for(lambda: st.parts() == n, 60, "every part")
        status = st.status()
        assert status["bundle_version"] == shadow_v and status["shadow"]["bundle_version"] == live_v
        assert status["shadow"]["bundle"] == str(sample_bundle)
    finally:
        assert st.stop() == 0, st.output()
    lines = [json.loads(x) for f in out.glob("verdicts-*.jsonl") for x in f.read_text().splitlines()]
    assert sorted(x["part"] for x in lines) == [f"{i:03d}.png" for i in range(n)]  # each part scored once
    versions = [x["bundle_version"] for x in sorted(lines, key=lambda x: x["seq"])]
    switch = versions.index(shadow_v)
    assert set(versions[:switch]) == {live_v} and set(versions[switch:]) == {shadow_v} and 0 < switch < n
