"""The station: sources in, the bundle's runtime, the journal, sinks out.

Parts from every source wait in one bounded queue; one inference thread takes what is waiting (up to
``batch_size`` parts, from any source, in one call of the graph: batching only when parts are already
waiting, so a lone part is never held back), journals each verdict, then tells the source (a push request
gets its answer, a folder's file is moved). With ``parallel`` above 1, while parts wait, that many calls run at
once (OpenVINO streams of a second compiled graph, its throughput mode) and their verdicts are journaled in the
parts' order; a lone part runs on the graph compiled for latency, as `predict` does. Each sink has its own
thread that reads the journal from its cursor and delivers at its own pace: a broker or PLC that is away holds
back only its own sink, never the camera or the other sinks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import FreEdgeError
from .config import StationConfig
from .drift import DriftWatch
from .journal import Journal
from .sinks import SINKS
from .sources import SOURCES, Part, now_iso

log = logging.getLogger("fre_edge.line")
QUEUE_PARTS = 64
BACKOFF_S = (0.25, 5.0)
CURSOR_EVERY_S = 0.2  # a sink's cursor on disk lags its deliveries by at most this while it is busy


class SinkWorker(threading.Thread):
    """Delivers one sink's verdicts from the journal, in order, retrying with backoff; moves its cursor only
    after an acknowledgement."""

    def __init__(self, sink, station):
        super().__init__(name=f"fre-edge-sink-{sink.cfg.name}", daemon=True)
        self.sink, self.station = sink, station
        self.reader = station.journal.reader(sink.cfg.name)
        self.stopping = threading.Event()
        self.delivered, self.failures, self.last_error = 0, 0, ""
        self.min_interval = 1.0 / sink.cfg.rate if sink.cfg.rate else 0.0

    @property
    def state(self) -> str:
        if self.sink.connected:
            return "connected"
        return f"disconnected: {self.last_error}" if self.last_error else "disconnected"

    def run(self) -> None:
        backoff, last_send, last_persist = BACKOFF_S[0], 0.0, 0.0
        while not self.stopping.is_set():
            try:
                self.sink.open()
                break
            except FreEdgeError as exc:  # a configuration the sink cannot use: said once, not retried
                self.last_error = str(exc)
                log.error("sink %s: %s", self.sink.cfg.name, exc)
                return
            except Exception as exc:  # noqa: BLE001 - a peer away: retried
                self.last_error = " ".join(str(exc).split())[:200]
                self.stopping.wait(backoff)
                backoff = min(BACKOFF_S[1], backoff * 2)
        record = None
        while not self.stopping.is_set():
            if record is None:
                record = self.reader.next(timeout=0.2)
                if record is None:
                    continue
                picture = self.reader.picture(record) if self.sink.wants_picture(record) else None
            wait = last_send + self.min_interval - time.monotonic()
            if wait > 0 and self.stopping.wait(wait):
                break
            try:
                self.sink.send(record, picture)
            except Exception as exc:  # noqa: BLE001 - kept in the journal, tried again
                self.failures += 1
                if not self.last_error:
                    log.warning("sink %s: cannot deliver (%s); verdicts wait in the journal", self.sink.cfg.name,
                                " ".join(str(exc).split())[:200])
                self.last_error = " ".join(str(exc).split())[:200]
                self.stopping.wait(backoff)
                backoff = min(BACKOFF_S[1], backoff * 2)
                continue
            if self.last_error:
                log.info("sink %s: delivering again", self.sink.cfg.name)
            self.last_error, backoff, last_send = "", BACKOFF_S[0], time.monotonic()
            persist = last_send - last_persist > CURSOR_EVERY_S or self.reader.caught_up()
            self.station.journal.commit(self.sink.cfg.name, record["seq"], persist=persist)
            if persist:
                last_persist = last_send
            self.delivered += 1
            record = None
        self.station.journal.commit(self.sink.cfg.name, self.station.journal.cursors[self.sink.cfg.name])

    def backlog(self) -> int:
        return self.station.journal.backlog(self.sink.cfg.name)


def batch_size_that_pays(detector, most: int) -> int:
    """``most`` when scoring that many waiting parts in one call takes under 0.9x the time per part of one
    at a time on this PC, else 1. (OpenVINO runs batch 1 on a graph compiled for it, often faster per part
    than a dynamic batch; a model server gains from batches.) Timed once at start, best of three."""
    if most <= 1:
        return 1
    if getattr(detector.adapter, "name", "") == "kserve":
        return most
    x = detector.prepare(np.zeros((*detector.input_size, 3), np.uint8))
    best = {}
    for n in (1, most):
        batch = [x] * n
        detector.predict_prepared(batch)  # warm-up (a first call compiles)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            detector.predict_prepared(batch)
            times.append((time.perf_counter() - t0) / n)
        best[n] = min(times)
    return most if best[most] < 0.9 * best[1] else 1


def streams_twin(detector, cfg: StationConfig, has_shadow: bool):
    """(the bundle compiled again for OpenVINO's throughput mode, how many calls run at once while parts wait).

    ``cfg.parallel`` 0 takes OpenVINO's optimal number of requests for that graph (its streams: 2 on a 2-core PC).
    1 (the default), a shadow bundle or a graph on another runtime or a model server: one call at a time, no twin.
    More than one pays where reading a picture is cheap against inferring it (pictures near the input size); where
    reading dominates (large PNGs) the two graphs cost more than they give (benchmarks/results/line_station.md)."""
    if cfg.parallel == 1 or has_shadow or getattr(detector.adapter, "name", "") != "openvino":
        return None, 1
    from ..runtime import load_detector

    adapter = detector.adapter
    twin = load_detector(detector.source, device=adapter.device, precision=adapter.requested_precision,
                         hint="throughput", verify=False)
    twin.image_threshold = detector.image_threshold
    n = cfg.parallel or int(twin.adapter.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    return (twin, n) if n > 1 else (None, 1)


class Station:
    """``Station(config, detector).start()``; :meth:`stop` drains and stops."""

    def __init__(self, cfg: StationConfig, detector, *, version: str, shadow=None):
        self.cfg, self.detector, self.name, self.version = cfg, detector, cfg.name, version
        self.shadow = shadow  # a .shadow.Shadow scoring the same parts, or None
        self.live_bundle = cfg.bundle
        self._promote = threading.Event()
        self._promoted = threading.Event()
        if cfg.threshold is not None:
            detector.image_threshold = cfg.threshold
        self.queue: queue.Queue[Part] = queue.Queue(QUEUE_PARTS)
        self.sinks = [SINKS[s.type](s, self) for s in cfg.sinks]
        self.wants_pictures = bool(cfg.ui) or any(s.payload == "verdict+picture" for s in cfg.sinks)
        self.journal = Journal(cfg.journal, [s.name for s in cfg.sinks], station=cfg.name,
                               max_bytes=int(cfg.journal_max_mb * 2 ** 20), sync=cfg.journal_sync)
        self.sources = [SOURCES[s.type](s, self) for s in cfg.sources]
        self.workers = [SinkWorker(s, self) for s in self.sinks]
        self.parts, self.rejects, self.errors = Counter(), Counter(), Counter()
        self.last: dict[str, dict] = {}
        self.latencies = deque(maxlen=2048)  # seconds from arrival to the verdict on disk, the latest parts
        self.skipped = Counter()  # live camera frames dropped because inspection was behind
        self.stopping = threading.Event()
        self._infer = threading.Thread(target=self._run, name="fre-edge-inference", daemon=True)
        self.started = time.time()
        self.batch_size = batch_size_that_pays(detector, cfg.batch_size)
        self.streams, self.parallel = streams_twin(detector, cfg, shadow is not None)
        self.drift = self._drift_watch()
        self.listeners: list = []  # callables(record, part, prediction) after each journaled record (the page)

    # -- parts in ----------------------------------------------------------------------------------
    def submit(self, part: Part, block: bool = True) -> None:
        """Queue a part. ``block=False`` (a live camera): when inspection is behind, the part is dropped and
        counted, so the newest frames are the ones inspected."""
        if block:
            while not self.stopping.is_set():
                try:
                    self.queue.put(part, timeout=0.2)
                    return
                except queue.Full:
                    continue
        else:
            try:
                self.queue.put_nowait(part)
            except queue.Full:
                self.skipped[part.source] += 1

    def _take(self, wait: float) -> list[Part]:
        """What waits in the queue, up to ``batch_size`` parts; the first waited for up to ``wait`` seconds."""
        try:
            batch = [self.queue.get(timeout=wait) if wait > 0 else self.queue.get_nowait()]
        except queue.Empty:
            return []
        while len(batch) < self.batch_size:
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        pending: deque = deque()  # (parts, future of their predictions), oldest first
        pool = None if self.streams is None else ThreadPoolExecutor(self.parallel, thread_name_prefix="fre-edge-infer")
        try:
            while True:
                if self._promote.is_set() and not pending:  # nothing in flight: no part is scored by neither bundle
                    self._swap()
                batch = self._take(0.0 if pending else 0.2)
                if batch and pool is not None and not self.queue.empty():  # a backlog: the streams pay
                    pending.append((batch, pool.submit(self._score, batch, self.streams, self._shadow_detector())))
                    if len(pending) < self.parallel:
                        continue
                elif batch:  # no backlog: the latency graph, after what is in flight (the parts' order)
                    while pending:
                        done, future = pending.popleft()
                        self._inspect(done, *future.result())
                    self._inspect(batch, *self._score(batch, self.detector, self._shadow_detector()))
                    continue
                if pending:
                    done, future = pending.popleft()
                    self._inspect(done, *future.result())
                elif self.stopping.is_set():
                    return
        finally:
            if pool is not None:
                pool.shutdown()

    def _shadow_detector(self):
        return None if self.shadow is None else self.shadow.detector

    @staticmethod
    def _score(batch: list[Part], detector, shadow) -> tuple[dict, dict]:
        """({id(part): Prediction} of the live bundle, the same of the shadow bundle); a part the live bundle
        could not score (a model server away, say) is left out with its ``error`` set."""
        ready = [p for p in batch if p.prepared is not None]

        def predict(det) -> dict:
            return dict(zip(map(id, ready), det.predict_prepared([p.prepared for p in ready])))

        try:
            preds = predict(detector)
        except FreEdgeError as exc:
            log.error("inspection failed: %s", exc)
            preds = {}
            for p in ready:
                p.error = str(exc)
        shadow_preds = {}
        if shadow is not None and ready:
            try:
                shadow_preds = predict(shadow)
            except FreEdgeError as exc:
                log.error("shadow bundle: %s", exc)
        return preds, shadow_preds

    def _inspect(self, batch: list[Part], preds: dict, shadow_preds: dict) -> None:
        """Journal each part's verdict in order, then tell its source, the listeners, the shadow and the drift
        watch."""
        for part in batch:
            pred = preds.get(id(part))
            record = self._record(part, pred)
            picture = self._picture(part, pred, record)
            record = self.journal.append(record, picture, then=lambda r, part=part: self._durable(r, part))
            self.parts[part.source] += 1
            self.rejects[part.source] += record["verdict"] != "good"
            self.errors[part.source] += record["verdict"] == "error"
            self.last[part.source] = record
            for listener in self.listeners:
                listener(record, part, pred)
            if id(part) in shadow_preds and pred is not None:
                self.shadow.compare(record, shadow_preds[id(part)])
            alarm = self.drift.add(record["score"]) if self.cfg.drift else None
            if alarm:  # journaled like a verdict: every sink tells its peer, in order
                log.warning("station %s: drift (%s test): good parts score %.2f spreads higher than the line's "
                            "baseline; %.1f%% of the last parts above the threshold (baseline %.1f%%)", self.name,
                            alarm["test"], alarm["shift_spreads"], 100 * alarm["share_above_threshold"],
                            100 * (alarm["baseline_share_above_threshold"] or 0))
                alarm_record = self.journal.append({**alarm, "time": now_iso(), "source": "station",
                                                    "bundle_version": self.version})
                for listener in self.listeners:
                    listener(alarm_record, None, None)

    def _durable(self, record: dict, part: Part) -> None:
        """Once the part's verdict is on disk (in the journal's sync thread): its source is told."""
        self.latencies.append(time.monotonic() - part.arrived)
        for done in part.on_done:
            done(record)

    def _record(self, part: Part, pred) -> dict:
        base = {"time": part.time, "source": part.source, "part": part.part,
                "threshold": float(self.detector.image_threshold), "bundle_version": self.version}
        if pred is None:
            out = {**base, "score": None, "verdict": "error", "error": part.error or "not scored", "box": None,
                   "anomalous_pixels": 0, "peak": None}
        else:
            d = pred.to_dict()
            out = {**base, "score": d["score"], "verdict": d["label"], "box": d["bbox"],
                   "anomalous_pixels": d["anomalous_pixels"], "peak": d["peak"]}
        out["latency_ms"] = round((time.monotonic() - part.arrived) * 1e3, 3)
        return out

    def _picture(self, part: Part, pred, record: dict) -> bytes | None:
        """The heatmap panel as JPEG, when a sink sends pictures of this part."""
        if pred is None or part.image is None or not any(s.wants_picture(record) for s in self.sinks):
            return None
        from ..visualize import jpeg_bytes, picture_title, scaled_panel

        return jpeg_bytes(scaled_panel(
            part.image, pred.model_map, self.detector.pixel_threshold, max_side=640, anomalous=pred.anomalous,
            title=picture_title(part.part, pred.score, self.detector.image_threshold, pred.anomalous)))

    def _drift_watch(self) -> DriftWatch:
        """A drift watch for the live bundle: its threshold and the reference scores it carries."""
        thresholds = (getattr(self.detector, "metadata", None) or {}).get("thresholds", {})
        return DriftWatch(self.detector.image_threshold, thresholds.get("reference_scores"),
                          baseline_parts=self.cfg.drift_baseline)

    def promote(self, timeout: float = 60.0) -> dict:
        """Make the shadow bundle the live one (and the live one the shadow), between two inference calls."""
        if self.shadow is None:
            raise FreEdgeError("no shadow bundle to promote; start the station with --shadow BUNDLE")
        self._promoted.clear()
        self._promote.set()
        if not self._promoted.wait(timeout):
            raise FreEdgeError("the promotion did not happen in time; the station is busy or stopping")
        return {"live": {"bundle_version": self.version}, "shadow": {"bundle_version": self.shadow.version}}

    def _swap(self) -> None:
        old, old_version = self.detector, self.version
        self.detector, self.version = self.shadow.detector, self.shadow.version
        self.shadow.detector, self.shadow.version = old, old_version
        self.live_bundle, self.shadow.bundle = self.shadow.bundle, self.live_bundle
        self.shadow.reset()
        self.drift = self._drift_watch()  # a new score scale: a new baseline
        log.info("station %s: promoted bundle version %s (was %s, now the shadow)", self.name, self.version,
                 old_version)
        self._promote.clear()
        self._promoted.set()

    def status_message(self) -> dict:
        return {"state": "online", "station": self.name, "bundle_version": self.version,
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started))}

    # -- life ----------------------------------------------------------------------------------------
    def start(self) -> "Station":
        for w in self.workers:
            w.start()
        self._infer.start()
        for s in self.sources:
            s.start()
        log.info("station %s: %d source(s), %d sink(s), bundle version %s", self.name, len(self.sources),
                 len(self.sinks), self.version)
        return self

    def stop(self, drain_s: float | None = None) -> dict:
        """Stop taking parts, inspect what is queued, give the sinks up to ``drain_s`` seconds to deliver
        what they can (the rest stays in the journal for the next start), and stop."""
        drain_s = self.cfg.drain_s if drain_s is None else drain_s
        for s in self.sources:
            s.stop()
        self.stopping.set()
        self._infer.join(timeout=60)
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline and any(w.backlog() for w in self.workers if w.is_alive()):
            time.sleep(0.05)
        for w in self.workers:
            w.stopping.set()
        for w in self.workers:
            w.join(timeout=10)
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - stopping anyway
                log.warning("sink %s: %s while closing", sink.cfg.name, exc)
        left = {w.sink.cfg.name: w.backlog() for w in self.workers}
        self.journal.close()
        return {"parts": sum(self.parts.values()), "rejects": sum(self.rejects.values()), "undelivered": left}

    # -- what it sees --------------------------------------------------------------------------------
    def status(self) -> dict:
        lat = np.array(list(self.latencies)) * 1e3  # a copy: the journal's thread adds to it
        return {
            "station": self.name, "bundle": self.live_bundle, "bundle_version": self.version,
            "uptime_s": round(time.time() - self.started, 1),
            "batch_size": self.batch_size, "parallel": self.parallel,
            "sources": {s.cfg.name: {"type": s.cfg.type, "state": s.state, "parts": self.parts[s.cfg.name],
                                     "rejects": self.rejects[s.cfg.name], "errors": self.errors[s.cfg.name],
                                     "skipped": self.skipped[s.cfg.name], "last": self.last.get(s.cfg.name)}
                        for s in self.sources},
            "latency_ms": {"p50": float(np.percentile(lat, 50)) if lat.size else None,
                           "p99": float(np.percentile(lat, 99)) if lat.size else None},
            "sinks": {w.sink.cfg.name: {"type": w.sink.kind, "state": w.state, "backlog": w.backlog(),
                                        "delivered": w.delivered, "dropped": self.journal.dropped[w.sink.cfg.name]}
                      for w in self.workers},
            "journal": {"folder": str(self.journal.folder), "last_seq": self.journal.last_seq},
            "drift": self.drift.status() if self.cfg.drift else {"state": "off", "statistic": 0.0,
                                                                 "alarm_level": self.drift.h, "tail_statistic": 0.0,
                                                                 "tail_alarm_level": self.drift.tail_h},
            "shadow": None if self.shadow is None else self.shadow.status(),
        }
