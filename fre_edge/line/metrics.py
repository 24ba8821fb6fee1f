"""The station's numbers over HTTP: Prometheus text at ``/metrics``, the same as JSON at ``/status``.
Loopback unless the configuration names another address."""

from __future__ import annotations

import os

from .http import HttpService, refusal, respond, respond_json, respond_promote


def prometheus(status: dict, journal_dropped: dict) -> str:
    """The status as Prometheus' text exposition format (version 0.0.4)."""
    lines = []

    def metric(name: str, kind: str, help_: str, rows):
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in rows:
            lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")

    src, snk = status["sources"], status["sinks"]
    metric("fre_edge_line_parts_total", "counter", "Parts inspected.",
           [({"source": k}, v["parts"]) for k, v in src.items()])
    metric("fre_edge_line_rejects_total", "counter", "Parts not judged good (anomalous or unreadable).",
           [({"source": k}, v["rejects"]) for k, v in src.items()])
    metric("fre_edge_line_errors_total", "counter", "Parts that could not be read or scored.",
           [({"source": k}, v["errors"]) for k, v in src.items()])
    metric("fre_edge_line_frames_skipped_total", "counter", "Live camera frames dropped while inspection was behind.",
           [({"source": k}, v["skipped"]) for k, v in src.items()])
    lat = status["latency_ms"]
    metric("fre_edge_line_latency_seconds", "summary", "From a part's arrival to its journaled verdict (latest parts).",
           [({"quantile": q}, lat[k] / 1e3) for q, k in (("0.5", "p50"), ("0.99", "p99")) if lat[k] is not None])
    metric("fre_edge_line_sink_connected", "gauge", "1 when the sink's peer is reachable.",
           [({"sink": k}, int(v["state"] == "connected")) for k, v in snk.items()])
    metric("fre_edge_line_sink_backlog", "gauge", "Verdicts journaled and not yet delivered by the sink.",
           [({"sink": k}, v["backlog"]) for k, v in snk.items()])
    metric("fre_edge_line_sink_delivered_total", "counter", "Verdicts the sink's peer acknowledged.",
           [({"sink": k}, v["delivered"]) for k, v in snk.items()])
    metric("fre_edge_line_journal_dropped_total", "counter",
           "Verdicts deleted undelivered at the journal's disk bound.",
           [({"sink": k}, v) for k, v in journal_dropped.items()])
    d = status.get("drift")
    if d:
        metric("fre_edge_line_drift_statistic", "gauge", "The drift watch's CUSUM (alarm above fre_edge_line_drift_"
               "alarm_level).", [({}, d["statistic"])])
        metric("fre_edge_line_drift_alarm_level", "gauge", "Where the drift alarm is raised.", [({}, d["alarm_level"])])
        metric("fre_edge_line_drift_tail_statistic", "gauge", "The drift watch's CUSUM on the share of parts in the "
               "baseline's top 3% (alarm above fre_edge_line_drift_tail_alarm_level).",
               [({}, d["tail_statistic"])])
        metric("fre_edge_line_drift_tail_alarm_level", "gauge", "Where the tail test raises the drift alarm.",
               [({}, d["tail_alarm_level"])])
        metric("fre_edge_line_drift_alarm", "gauge", "1 once good parts have drifted (until restart).",
               [({}, int(d["state"] == "drift"))])
    return "\n".join(lines) + "\n"


class MetricsServer(HttpService):
    """``/metrics``, ``/status`` and ``POST /promote``; a promotion needs the token when FRE_EDGE_UI_TOKEN is set,
    and is refused beyond loopback without one (Prometheus may scrape from another PC; nobody there promotes)."""

    def __init__(self, station, host: str, port: int, token: str | None = None, tls=None):
        token = token if token is not None else os.environ.get("FRE_EDGE_UI_TOKEN")

        def get(req):
            path = req.path.split("?")[0]
            if path == "/metrics":
                respond(req, 200, prometheus(station.status(), station.journal.dropped).encode(),
                        "text/plain; version=0.0.4")
            elif path == "/status":
                respond_json(req, 200, station.status())
            else:
                respond_json(req, 404, {"error": "not found; use /metrics, /status or POST /promote"})

        def post(req):  # POST /promote: the shadow bundle becomes the live one
            if req.path.split("?")[0] != "/promote":
                return respond_json(req, 404, {"error": "not found; POST /promote"})
            why = refusal(req, host, token)
            if why:
                return respond_json(req, 403, {"error": why})
            respond_promote(req, station)

        super().__init__(host, port, get=get, post=post, what="metrics", fix="choose another --metrics-port", tls=tls,
                         background=True)
