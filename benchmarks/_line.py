"""The station as the line benchmarks run it: a `fre-edge line` process, waited for until its first source's
folder is watched (its /status on the metrics port says so), stopped by its PID."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

from fre_edge.serve.process import fre_edge_cmd


def station_status(metrics_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/status", timeout=10) as r:
        return json.loads(r.read())


def start_station(args: list, metrics_port: int, log: Path, timeout: float = 180) -> subprocess.Popen:
    """``fre-edge line ARGS`` (which must serve its metrics on ``metrics_port``), once its folder is watched."""
    proc = subprocess.Popen(fre_edge_cmd("line", *map(str, args)), stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if station_status(metrics_port)["sources"]["source1"]["state"].startswith("watching"):
                return proc
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the station did not start; see {log}")
