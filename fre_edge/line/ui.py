"""The station's live page (``--ui HOST:PORT``): one HTML page with its script inline, no external assets, so
it works offline on a plant network. It updates by itself over server-sent events.

Routes: ``/`` the page; ``/status`` the station's state as JSON; ``/events`` server-sent events (``status``:
the same JSON, pushed when parts were inspected, the first at once and then at most twice a second however fast
the line runs; ``drift`` when the alarm is raised); ``/parts/SEQ.jpg`` the heatmap panel of one of the latest
parts (drawn when asked for, so a station nobody watches draws nothing); ``POST /review`` an operator's mark.
Every verdict, one message each, is for the sinks (MQTT, webhook, OPC UA); the page gets the line's state.
Loopback by default; when opened to the network, marking needs the token set with ``FRE_EDGE_UI_TOKEN`` (sent
as the ``X-Token`` header), and the page asks for it once.

Review: a part marked good is saved as ``REVIEW/train/good/SEQ_PART.png`` (pictures to refit with), one
marked defective as ``REVIEW/test/defective/SEQ_PART.png`` (to evaluate with); each mark is a JSON line in
``REVIEW/reviews.jsonl`` with who, when, the part's verdict and score.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import FreEdgeError
from .config import LOOPBACK
from .http import HttpService, lower_priority, refusal, respond, respond_json, respond_promote

KEEP_PARTS = 24  # the latest parts whose pictures the page can show and an operator can mark
CLIENTS = 16  # server-sent event streams at once
PUSH_EVERY = 0.5  # seconds between two pushes of the state to the open pages: at most two a second, whatever the rate
EVENTS_WAITING = 16  # pushes kept for a page between writes (a page that stops reading misses some; the next has all)


class LivePage:
    def __init__(self, station, host: str, port: int, review: str | Path, token: str | None = None, tls=None):
        self.station, self.review, self.host = station, Path(review), host
        self.token = token if token is not None else os.environ.get("FRE_EDGE_UI_TOKEN")
        if host not in LOOPBACK and not self.token:
            raise FreEdgeError(f"--ui {host}:{port} opens the page to the network; set FRE_EDGE_UI_TOKEN so that "
                               f"marking parts needs it, or use 127.0.0.1")
        self.parts: OrderedDict[int, tuple] = OrderedDict()  # seq -> (record, picture RGB, model map)
        self.drawn: dict[int, bytes] = {}  # seq -> its heatmap panel as JPEG, once a page asked for it
        self.lock = threading.Lock()
        self.clients: list[queue.Queue] = []
        self.scores = []  # (seq, score, verdict) of the latest parts, for the chart
        self.stopping = threading.Event()
        self.changed = threading.Event()  # parts were inspected since the last push (set only while pages are open)
        self.pusher = threading.Thread(target=self.push, name="fre-edge-page-push", daemon=True)
        station.listeners.append(self.on_record)
        self.http = HttpService(host, port, get=self.get, post=self.post, what="--ui", tls=tls, background=True)

    # -- what the station tells it ------------------------------------------------------------------
    def on_record(self, record: dict, part, pred) -> None:
        if record.get("kind") != "drift" and part is not None:
            # the picture as the model saw it (a folder source may move or delete the file right after the
            # verdict); tiles are no picture, so a tiled bundle's page reads the file again
            seen = (part.prepared[0] if part.prepared is not None and pred is not None
                    and self.station.detector.tiling is None else part.image)
            with self.lock:
                self.parts[record["seq"]] = (record, seen, None if pred is None else pred.model_map, part.image)
                while len(self.parts) > KEEP_PARTS:
                    self.drawn.pop(self.parts.popitem(last=False)[0], None)
                self.scores.append((record["seq"], record.get("score"), record.get("verdict")))
                del self.scores[:-500]
        if not self.clients:  # nobody watching: nothing more to do
            return
        if record.get("kind") == "drift":
            self.broadcast("drift", record)
        self.changed.set()  # the pusher sends the new state, at most twice a second

    def push(self) -> None:
        """The pusher's loop: once parts were inspected, the state to every open page, the first at once and then
        at most every ``PUSH_EVERY`` seconds; below inspection's priority, encoded once for all pages."""
        lower_priority()
        last = 0.0
        while not self.stopping.is_set():
            self.changed.wait()  # (stop() sets it too)
            if self.stopping.wait(max(0.0, last + PUSH_EVERY - time.monotonic())):
                break
            self.changed.clear()
            if self.clients:  # (the last page may have left meanwhile: nothing to build)
                last = time.monotonic()
                self.broadcast("status", self.status())

    def status(self) -> dict:
        """The station's state as the page shows it (``/status`` and each push)."""
        status = self.station.status()
        with self.lock:
            status["recent_scores"] = list(self.scores)
            status["latest_parts"] = [item[0] for item in self.parts.values()]
        status["threshold"] = float(self.station.detector.image_threshold)
        status["review_needs_token"] = bool(self.token)
        return status

    def broadcast(self, event: str, data: dict) -> None:
        text = event_text(event, data)
        with self.lock:
            for q in self.clients:
                try:
                    q.put_nowait(text)
                except queue.Full:  # a client that does not read: it misses events, never holds up the line
                    pass

    # -- HTTP ----------------------------------------------------------------------------------------
    def get(self, req) -> None:
        path = req.path.split("?")[0]
        if path == "/":
            return respond(req, 200, PAGE.encode(), "text/html; charset=utf-8")
        if path == "/status":
            return respond_json(req, 200, self.status())
        if path == "/events":
            return self.events(req)
        if path.startswith("/parts/") and path.endswith(".jpg"):
            seq = path[len("/parts/"):-4]
            jpeg = self.picture(int(seq)) if seq.isdigit() else None
            if jpeg is None:
                return respond_json(req, 404, {"error": "no picture of that part (only the latest are kept)"})
            return respond(req, 200, jpeg, "image/jpeg", cache="private, max-age=600, immutable")  # never changes
        respond_json(req, 404, {"error": "not found; the page is at /"})

    def events(self, req) -> None:
        q: queue.Queue = queue.Queue(EVENTS_WAITING)
        with self.lock:
            if len(self.clients) >= CLIENTS:
                return respond_json(req, 503, {"error": f"at most {CLIENTS} pages at once"})
            self.clients.append(q)
        try:
            req.send_response(200)
            req.send_header("Content-Type", "text/event-stream")
            req.send_header("Cache-Control", "no-store")
            req.end_headers()
            req.wfile.write(b"retry: 1000\n\n" + event_text("status", self.status()))  # the state at once
            req.wfile.flush()
            while not self.stopping.is_set():
                try:
                    texts = [q.get(timeout=15)]
                except queue.Empty:
                    texts = [b": keep-alive\n\n"]
                while True:  # what else waits goes in the same write
                    try:
                        texts.append(q.get_nowait())
                    except queue.Empty:
                        break
                req.wfile.write(b"".join(texts))
                req.wfile.flush()
        except OSError:
            pass
        finally:
            with self.lock:
                self.clients.remove(q)

    def picture(self, seq: int) -> bytes | None:
        """The part's heatmap panel as JPEG, drawn the first time a page asks for it and kept with the part."""
        with self.lock:
            item = self.parts.get(seq)
            drawn = self.drawn.get(seq)
        if drawn is not None:
            return drawn
        if item is None or item[1] is None:
            return None
        from ..visualize import jpeg_bytes, scaled_panel

        record, image, model_map, _ = item
        anomalous = record.get("verdict") == "anomalous"
        try:  # untitled: the page writes the part, its score and verdict beside it (a title is a third of the work)
            jpeg = jpeg_bytes(scaled_panel(
                image, model_map, self.station.detector.pixel_threshold, max_side=320, anomalous=anomalous,
                title=""))
        except FreEdgeError:  # the file is gone or unreadable now
            return None
        with self.lock:
            if seq in self.parts:
                self.drawn[seq] = jpeg
        return jpeg

    def post(self, req) -> None:
        path = req.path.split("?")[0]
        if path not in ("/review", "/promote"):
            return respond_json(req, 404, {"error": "not found; POST /review or /promote"})
        why = refusal(req, self.host, self.token)
        if why:
            return respond_json(req, 403, {"error": why})
        if path == "/promote":
            return respond_promote(req, self.station)
        try:
            body = json.loads(req.rfile.read(min(int(req.headers.get("Content-Length") or 0), 1 << 16)))
            seq, mark, who = int(body["seq"]), body["mark"], str(body.get("who") or "operator")[:80]
            if mark not in ("good", "defective"):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return respond_json(req, 400, {"error": 'send {"seq": N, "mark": "good"|"defective", "who": NAME}'})
        with self.lock:
            item = self.parts.get(seq)
        if item is None or item[1] is None:
            return respond_json(req, 404, {"error": f"part {seq} is no longer among the latest; mark it sooner"})
        record, image, original = item[0], item[1], item[3]
        from PIL import Image

        from ..images import read_image

        if isinstance(original, (str, Path)) and Path(original).is_file():
            image = original  # the picture at its own size, while the file is still there
        try:
            rgb = read_image(image)[0] if not isinstance(image, np.ndarray) else image
        except FreEdgeError as exc:
            return respond_json(req, 410, {"error": str(exc)})
        folder = self.review / ("train/good" if mark == "good" else "test/defective")
        folder.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(str(record.get("part", ""))).stem)[:60]
        target = folder / f"{seq:09d}_{safe}.png"
        tmp = target.with_name(f".{target.name}.partial")
        Image.fromarray(rgb).save(tmp, format="PNG")
        os.replace(tmp, target)
        line = {"seq": seq, "id": record.get("id"), "part": record.get("part"), "source": record.get("source"),
                "verdict": record.get("verdict"), "score": record.get("score"), "mark": mark, "who": who,
                "when": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
                "picture": str(target.relative_to(self.review))}
        with open(self.review / "reviews.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        respond_json(req, 200, line)

    def start(self) -> "LivePage":
        self.pusher.start()
        self.http.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.changed.set()  # wakes the pusher, which then sees it is stopping
        self.http.stop()


def event_text(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fre-edge station</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:0;background:#f4f5f7;color:#222}
header{background:#1f2933;color:#fff;padding:8px 16px;display:flex;gap:24px;align-items:baseline}
header h1{font-size:18px;margin:0} .ok{color:#2e7d32} .bad{color:#c62828} .warn{color:#ef6c00}
main{display:grid;grid-template-columns:2fr 1fr;gap:12px;padding:12px}
section{background:#fff;border-radius:6px;padding:10px;box-shadow:0 1px 2px #0002}
h2{font-size:14px;margin:0 0 8px} table{border-collapse:collapse;width:100%} td,th{padding:3px 6px;text-align:left}
#parts{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:8px;align-items:start}
.part{border:2px solid #ddd;border-radius:4px;padding:4px} .part.anomalous{border-color:#c62828}
.part img{width:100%;display:block;min-height:60px;background:#eee} .part .v{font-weight:600}
button{margin:2px 4px 0 0} #drift{font-weight:600}
</style></head><body>
<header><h1>fre-edge station <span id="name"></span></h1><span id="bundle"></span><span id="lat"></span>
<span>drift: <span id="drift">-</span></span></header>
<main><div>
<section><h2>Score over time (red line: threshold)</h2><canvas id="chart" width="900" height="180"
 style="width:100%"></canvas></section>
<section style="margin-top:12px"><h2>Latest parts</h2><div id="parts"></div></section></div>
<div><section><h2>Sources</h2><table id="sources"></table></section>
<section style="margin-top:12px"><h2>Sinks</h2><table id="sinks"></table></section>
<section style="margin-top:12px"><h2>Shadow bundle</h2><div id="shadow">none</div></section>
<section style="margin-top:12px"><h2>Last part</h2><div id="last">-</div><div id="notice"></div></section>
</div></main>
<script>
"use strict";
let status = null, token = null;
const $ = id => document.getElementById(id);
function esc(s){return String(s).replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;","\\"":"&quot;"}[c]));}
async function refresh(){ status = await (await fetch("/status")).json(); draw(); }
function draw(){
  if(!status) return;
  $("name").textContent = status.station; $("bundle").textContent = "bundle " + status.bundle_version;
  const l = status.latency_ms; $("lat").textContent = l.p50 == null ? "" :
    `latency p50 ${l.p50.toFixed(1)} ms, p99 ${l.p99.toFixed(1)} ms`;
  const d = status.drift; $("drift").textContent = d.state + (d.state === "learning" ?
    ` (${d.parts_learned}/${d.baseline_parts})` : ` (level ${d.statistic.toFixed(1)} / ${d.alarm_level}, ` +
    `tail ${d.tail_statistic.toFixed(1)} / ${d.tail_alarm_level})`);
  $("drift").className = d.state === "drift" ? "bad" : "ok";
  $("sources").innerHTML = "<tr><th>source</th><th>parts</th><th>rejects</th><th>rate</th><th>state</th></tr>" +
    Object.entries(status.sources).map(([n, s]) => `<tr><td>${esc(n)}</td><td>${s.parts}</td><td>${s.rejects}</td>
    <td>${s.parts ? (100 * s.rejects / s.parts).toFixed(1) + "%" : "-"}</td><td>${esc(s.state)}</td></tr>`).join("");
  $("sinks").innerHTML = "<tr><th>sink</th><th>state</th><th>backlog</th></tr>" +
    Object.entries(status.sinks).map(([n, s]) => `<tr><td>${esc(n)}</td><td class="${s.state === "connected" ?
    "ok" : "bad"}">${esc(s.state)}</td><td>${s.backlog}</td></tr>`).join("");
  const sh = status.shadow;
  $("shadow").innerHTML = !sh ? "none" : `${esc(sh.bundle)} (version ${esc(sh.bundle_version)}): ${sh.parts} parts,
    reject rate ${sh.reject_rate == null ? "-" : (100 * sh.reject_rate).toFixed(1) + "%"} against the live
    ${sh.live_reject_rate == null ? "-" : (100 * sh.live_reject_rate).toFixed(1) + "%"}; ${sh.disagreements}
    disagreement(s)` + sh.recent_disagreements.slice(-5).reverse().map(d => `<div><small>${esc(d.part)}: live
    ${esc(d.live.verdict)} ${d.live.score.toPrecision(5)}, shadow ${esc(d.shadow.verdict)}
    ${d.shadow.score.toPrecision(5)}</small></div>`).join("") + `<div><button onclick="promote()">promote the
    shadow bundle</button></div>`;
  const parts = status.latest_parts.slice().reverse();
  if(parts.length && !drawn.has(parts[0].seq)) {  // the newest part's picture: at most one new a second, however
    const wait = pictured + 1000 - Date.now();  // fast the line; the newest when the line stops
    if(wait <= 0) { drawn.add(parts[0].seq); pictured = Date.now(); }
    else if(!later) later = setTimeout(() => { later = null; draw(); }, wait);
  }
  if(parts.length) { const r = parts[0]; $("last").textContent = `${r.part}: ${r.verdict} (${r.score == null ? "-" :
    r.score.toPrecision(6)})`; }
  for(const seq of drawn) if(!parts.some(r => r.seq === seq)) drawn.delete(seq);
  let shown = 0;  // pictures on the page: the newest PICTURES parts that were drawn
  $("parts").innerHTML = parts.map(r => `<div class="part ${esc(r.verdict)}" id="part-${r.seq}">
    ${drawn.has(r.seq) && shown++ < PICTURES ? `<img src="/parts/${r.seq}.jpg" alt="">` : ""}
    <div><span class="v ${r.verdict === "good" ? "ok" : "bad"}">${esc(r.verdict)}</span>
    ${r.score == null ? "" : r.score.toPrecision(6)} <small>${esc(r.source)} ${esc(r.part)}</small></div>
    <button onclick="mark(${r.seq},'good')">mark good</button>
    <button onclick="mark(${r.seq},'defective')">mark defective</button></div>`).join("");
  chart();
}
function chart(){
  const c = $("chart"), g = c.getContext("2d"), pts = status.recent_scores.filter(p => p[1] != null);
  g.clearRect(0, 0, c.width, c.height);
  if(!pts.length) return;
  const ys = pts.map(p => Math.log(p[1])), th = Math.log(status.threshold);
  const lo = Math.min(th, ...ys) - 0.1, hi = Math.max(th, ...ys) + 0.1;
  const x = i => 10 + i * (c.width - 20) / Math.max(1, pts.length - 1), y = v => c.height - 10 -
    (v - lo) / (hi - lo) * (c.height - 20);
  g.strokeStyle = "#c62828"; g.beginPath(); g.moveTo(0, y(th)); g.lineTo(c.width, y(th)); g.stroke();
  pts.forEach((p, i) => { g.fillStyle = p[2] === "good" ? "#1565c0" : "#c62828";
    g.fillRect(x(i) - 2, y(Math.log(p[1])) - 2, 4, 4); });
}
async function mark(seq, mark){
  if(status.review_needs_token && !token) token = prompt("The station's token, to mark parts");
  const r = await fetch("/review", {method: "POST", headers: {"Content-Type": "application/json",
    ...(token ? {"X-Token": token} : {})}, body: JSON.stringify({seq, mark, who: "operator"})});
  $("notice").textContent = r.ok ? `part ${seq} marked ${mark}` : (await r.json()).error;
}
async function promote(){
  if(!confirm("Make the shadow bundle the live one?")) return;
  if(status.review_needs_token && !token) token = prompt("The station's token");
  const r = await fetch("/promote", {method: "POST", headers: token ? {"X-Token": token} : {}});
  $("notice").textContent = r.ok ? "promoted: live version " + (await r.json()).live.bundle_version :
    (await r.json()).error;
  refresh();
}
const PICTURES = 3;  // parts shown with their heatmaps: the newest parts drawn (pictures cached)
const drawn = new Set();
let pictured = 0, later = null;  // when the page last asked for a new picture; the timer that asks for the next
const es = new EventSource("/events");  // the station pushes its state: at once, then at most twice a second
es.addEventListener("status", e => { status = JSON.parse(e.data); draw(); });
es.addEventListener("drift", e => { const a = JSON.parse(e.data), pct = v => (100 * (v || 0)).toFixed(0) + "%";
  $("notice").innerHTML = `<span class="bad">drift alarm</span> (${esc(a.test)} test, ${esc(a.time)}): good parts
    score ${a.shift_spreads.toFixed(2)} spreads higher than the line's baseline; ${pct(a.share_above_threshold)} of
    the last parts above the threshold (baseline ${pct(a.baseline_share_above_threshold)})`; });
</script></body></html>
"""
