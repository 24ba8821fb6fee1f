"""``fre-edge line`` (torch-free; MQTT, OPC UA and cameras need the line extra)."""

from __future__ import annotations

from pathlib import Path

import click

from ..runtime.adapters import BACKENDS
from .params import FiniteFloat, batch_size_option


@click.command("line")
@click.argument("bundle", required=False, type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The station's TOML file ([station], [[source]], [[sink]]); BUNDLE, if given, replaces its "
                   "bundle.")
@click.option("--source", "sources", multiple=True, metavar="URL",
              help="Where pictures come from, repeatable: folder:DIR, camera:INDEX, video:FILE, rtsp://..., "
                   "http://... (a camera stream) or push://HOST:PORT (pictures POSTed).")
@click.option("--sink", "sinks", multiple=True, metavar="URL",
              help="Where verdicts go, repeatable: mqtt://HOST:PORT/TOPIC (mqtts://...?ca=FILE for TLS), "
                   "opcua://HOST:PORT, webhook+http://HOST:PORT/PATH or folder:DIR.")
@click.option("--journal", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the journal every verdict is written to before any sink sends it (default "
                   "./fre-edge-journal); a restarted station resumes its undelivered verdicts from it.")
@click.option("--name", default=None, help="The station's name, in every message's id (default: station).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Serve Prometheus metrics at /metrics and the station's state at /status on this port "
                   "(loopback).")
@click.option("--ui", default=None, metavar="HOST:PORT",
              help="Serve the live page here (e.g. 127.0.0.1:8088): latest parts with their heatmaps, counts, the "
                   "score over time, sinks and drift; operators mark parts. Beyond loopback it needs "
                   "FRE_EDGE_UI_TOKEN set.")
@click.option("--review", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Where the page's marks go, laid out for fit (train/good) and eval (test/defective) "
                   "(default ./fre-edge-review).")
@click.option("--shadow", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="A second bundle (a refit, say) that scores the same parts beside BUNDLE; only BUNDLE's verdicts "
                   "reach the sinks. Where they disagree: /status, the page, JOURNAL/shadow.jsonl. POST /promote "
                   "(metrics port or page) swaps them without stopping the line.")
@click.option("--threshold", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Image threshold instead of the bundle's.")
@click.option("--backend", type=click.Choice(BACKENDS), default="openvino", show_default=True,
              help="Which runtime runs the bundle's graph.")
@click.option("--server", default=None, metavar="URL",
              help="Run the graph on this model server (grpc://HOST:PORT or http://HOST:PORT) instead.")
@batch_size_option(8, "Parts scored in one call when several are waiting (a lone part is never held back).",
                   maximum=64)
@click.option("--parallel", type=click.IntRange(0, 16), default=None,
              help="Inference calls at once while parts wait, on OpenVINO streams of a second graph (0: OpenVINO's "
                   "optimal number for this PC; default 1: one at a time). Pays when pictures are near the input "
                   "size; a lone part always runs on the graph compiled for latency.")
@click.option("--drain", "drain_s", type=FiniteFloat(0, 3600), default=10.0, show_default=True,
              help="On SIGTERM or Ctrl-C: seconds to deliver what waits before stopping (the rest stays in the "
                   "journal).")
def command(bundle, config_path, sources, sinks, journal, name, metrics_port, ui, review, shadow, threshold, backend,
            server, batch_size, parallel, drain_s):
    """Run BUNDLE on a line: pictures from sources, verdicts to sinks, nothing lost.

    Every verdict is written to the journal on disk first; each sink delivers from it in order, retrying
    while its peer (broker, PLC, web service) is away, without ever holding up inspection: at least once,
    in order per sink, each message with an id to drop a repeat by. Runs until SIGTERM or Ctrl-C, then
    delivers what it can within --drain seconds and stops. Example:

    fre-edge line bundles/line3 --source folder:incoming --sink mqtt://127.0.0.1:1883/plant/line3
    --sink opcua://127.0.0.1:4840 --metrics-port 9100
    """
    import logging
    import signal
    import threading

    from ..errors import FreEdgeError
    from ..line import config as conf

    settings = {k: v for k, v in {"journal": str(journal) if journal else None, "name": name,
                                   "threshold": threshold, "batch_size": batch_size, "drain_s": drain_s,
                                   "parallel": parallel,
                                   "server": server, "metrics": f"127.0.0.1:{metrics_port}" if metrics_port
                                   else None, "ui": ui, "review": str(review) if review else None,
                                   "shadow": str(shadow) if shadow else None}.items()
                if v is not None}
    if config_path is not None:
        if sources or sinks:
            raise FreEdgeError("--config holds the sources and sinks; drop --source and --sink, or --config")
        cfg = conf.from_toml(config_path, str(bundle) if bundle else None)
        ctx = click.get_current_context()
        for key, value in settings.items():  # what the command line gives replaces the file's
            if key not in ("batch_size", "drain_s") or ctx.get_parameter_source(key).name == "COMMANDLINE":
                setattr(cfg, key, value)
    else:
        if bundle is None:
            raise FreEdgeError("no bundle; pass BUNDLE (a folder written by `fre-edge export`) or --config FILE")
        cfg = conf.from_args(str(bundle), list(sources), list(sinks), **settings)
    from ..line.station import Station
    from ..runtime import load_detector
    from ..runtime.bundle import bundle_digest, read_manifest, serving_version

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("asyncua", "paho"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    det = (load_detector(cfg.bundle, backend="kserve", url=cfg.server) if cfg.server else
           load_detector(cfg.bundle, backend=backend))
    version = serving_version(bundle_digest(read_manifest(cfg.bundle, verify=False)))
    twin = None
    if cfg.shadow:
        from ..line.shadow import Shadow

        other = (load_detector(cfg.shadow, backend="kserve", url=cfg.server) if cfg.server else
                 load_detector(cfg.shadow, backend=backend))
        Shadow.check(det, other, cfg.shadow)
        twin = Shadow(other, serving_version(bundle_digest(read_manifest(cfg.shadow, verify=False))), cfg.shadow,
                      Path(cfg.journal) / "shadow.jsonl")
    station = Station(cfg, det, version=version, shadow=twin)
    from ..line.config import server_tls

    tls = server_tls(cfg)
    metrics = None
    if cfg.metrics:
        from ..line.metrics import MetricsServer

        host, port = cfg.metrics.rsplit(":", 1)
        metrics = MetricsServer(station, host, int(port), tls=tls).start()
    page = None
    if cfg.ui:
        from ..line.ui import LivePage

        host, port = cfg.ui.rsplit(":", 1)
        page = LivePage(station, host.strip("[]"), int(port), cfg.review, tls=tls).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    station.start()
    click.echo(f"station {cfg.name}: inspecting with {cfg.bundle} (version {version}); SIGTERM or Ctrl-C stops it",
               err=True)
    while not stop.wait(0.5):
        pass
    click.echo(f"station {cfg.name}: stopping, delivering for up to {cfg.drain_s:g} s", err=True)
    summary = station.stop()
    for server in (metrics, page):
        if server:
            server.stop()
    left = {k: v for k, v in summary["undelivered"].items() if v}
    click.echo(f"station {cfg.name}: {summary['parts']} part(s), {summary['rejects']} reject(s)"
               + (f"; undelivered, kept in the journal for the next start: {left}" if left else
                  "; everything delivered"), err=True)
