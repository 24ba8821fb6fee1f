"""The inspection station (`fre-edge line`) against the bundle's own runtime, on this machine.

- Latency at a steady rate: pictures renamed into the station's watched folder at ``--rate`` parts/s; per
  part, from the rename to the MQTT message received by a subscriber (a real Mosquitto broker on loopback),
  against the bundle's own latency for the same pictures in this process (``detector.predict(path)``: read,
  resize, infer at batch 1), in alternating blocks (order flipped each round).
- The highest sustained rate: pictures dropped as fast as the station takes them (at most 64 waiting), the
  rate over the second half of the run (so start-up is out and a growing backlog shows), against the
  bundle's batch-1 FPS (the graph alone, one request at a time, as `fre-edge bench` reports it) and the
  runtime's own pictures/s from the same files in one thread; for the bottle pictures (900 px PNG) and for
  pictures at the model's input size.
- Memory: the station process's resident memory every 1,000 parts over ``--soak`` parts.

    python -m benchmarks.line_station [--rounds 3] [--parts 60] [--rate 10] [--soak 10000]

Needs mosquitto (Debian package) and the line extra.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ._bundles import bundle
from ._common import DATASETS, environment, header_md, write
from ._line import start_station, station_status

TOPIC = "bench/line"


def percentiles(values: list[float]) -> dict:
    a = np.array(values) * 1e3
    return {"n": len(values), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean())}


class Broker:
    def __init__(self, folder: Path, port: int):
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        (folder / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc = subprocess.Popen([exe, "-c", str(folder / "m.conf")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


class Receipts:
    """An MQTT subscriber noting when each part's message arrived (time.perf_counter)."""

    def __init__(self, port: int):
        import json

        import paho.mqtt.client as mqtt

        self.at, self.lock = {}, threading.Lock()
        self.cond, self.counts = threading.Condition(self.lock), {}

        def on_message(client, userdata, m):
            t = time.perf_counter()
            part = json.loads(m.payload)["part"]
            with self.cond:
                if part not in self.at:
                    self.counts[part[0]] = self.counts.get(part[0], 0) + 1
                self.at[part] = t
                self.cond.notify_all()

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.on_message = on_message
        c.on_connect = lambda cl, u, f, rc, p=None: cl.subscribe(TOPIC, qos=1)
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c

    def wait(self, part: str, timeout: float = 60) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: part in self.at, timeout):
                raise RuntimeError(f"no message for {part} in {timeout} s")
            return self.at[part]

    def count(self) -> int:
        with self.lock:
            return len(self.at)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


class StationProcess:
    def __init__(self, bundle_dir: Path, folder: Path, work: Path, port: int, after: str = "keep", *extra):
        from fre_edge.serve.process import free_port

        self.metrics, self.folder = metrics, folder = free_port(), folder
        folder.mkdir(exist_ok=True)
        self.proc = start_station([bundle_dir, "--source", f"folder:{folder}?after={after}", "--sink",
                                   f"mqtt://127.0.0.1:{port}/{TOPIC}", "--journal", work / f"journal-{folder.name}",
                                   "--drain", "5", "--metrics-port", metrics, *extra], metrics,
                                   work / f"station-{folder.name}.log")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)


def drop(src: Path, folder: Path, name: str) -> float:
    """Write under a hidden temporary name and rename into place; the time of the rename."""
    tmp = folder / f".{name}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, folder / name)
    return time.perf_counter()


def steady(det, receipts, pictures, folder, args) -> dict:
    lat = {"bundle": [], "station": []}
    per_round = []
    counter = [0]

    def block(kind: str) -> list[float]:
        out, period = [], 1.0 / args.rate
        start = time.perf_counter()
        for i in range(args.parts):
            target = start + i * period
            time.sleep(max(0.0, target - time.perf_counter()))
            src = pictures[i % len(pictures)]
            if kind == "bundle":
                t0 = time.perf_counter()
                det.predict(src)
                out.append(time.perf_counter() - t0)
            else:
                counter[0] += 1
                name = f"s{counter[0]:06d}.png"
                t0 = drop(src, folder, name)
                out.append(receipts.wait(name) - t0)
        return out

    for r in range(args.rounds):
        medians = {}
        for kind in (("bundle", "station") if r % 2 == 0 else ("station", "bundle")):
            ts = block(kind)
            lat[kind] += ts
            medians[kind] = {"p50_ms": float(np.percentile(ts, 50)) * 1e3, "p99_ms": float(np.percentile(ts, 99)) * 1e3}
        per_round.append(medians)
    b, s = percentiles(lat["bundle"]), percentiles(lat["station"])
    return {"rate": args.rate, "parts_per_block": args.parts, "rounds": args.rounds, "bundle": b, "station": s,
            "added_p50_ms": s["p50_ms"] - b["p50_ms"], "added_p99_ms": s["p99_ms"] - b["p99_ms"],
            "per_round": per_round}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sustained(det, receipts, pictures, folder, n: int, prefix: str, pid: int) -> dict:
    """Drop ``n`` pictures as fast as the station takes them (at most 64 waiting); parts/s and the station's CPU
    time per part over the second half."""
    sent, cpu_half = {}, None
    for i in range(n):
        name = f"{prefix}{i:06d}.png"
        while i - receipts_done(receipts, prefix) >= 64:
            time.sleep(0.002)
        if i == n // 2 + 64:  # about when the part named half is delivered
            cpu_half = (cpu_seconds(pid), receipts_done(receipts, prefix))
        sent[name] = drop(pictures[i % len(pictures)], folder, name)
    names = sorted(sent)
    last = receipts.wait(names[-1], 120)
    cpu_end = cpu_seconds(pid)
    half = names[n // 2]
    t_half = receipts.wait(half)
    return {"parts": n, "parts_per_s": (n - n // 2 - 1) / (last - t_half),
            "first_half_parts_per_s": (n // 2) / (t_half - sent[names[0]]),
            "station_cpu_ms_per_part": 1e3 * (cpu_end - cpu_half[0]) / (n - cpu_half[1])}


def receipts_done(receipts, prefix: str) -> int:
    """Messages received for parts named with this one-letter prefix."""
    with receipts.lock:
        return receipts.counts.get(prefix, 0)


def runtime_rates(det, pictures, seconds: float = 5.0) -> dict:
    """The bundle's batch-1 FPS (graph alone, one request at a time) and pictures/s from the files."""
    x, _ = det.prepare(pictures[0])
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        det.infer_prepared(x[None])
        n += 1
    graph = n / (time.perf_counter() - t0)
    graph_cpu_ms = 1e3 * (time.process_time() - c0) / n
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        det.predict(pictures[n % len(pictures)])
        n += 1
    return {"graph_fps_batch1": graph, "graph_cpu_ms_per_picture": graph_cpu_ms,
            "predict_from_files_per_s": n / (time.perf_counter() - t0)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parts", type=int, default=60, help="parts per block at the steady rate")
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--burst", type=int, default=600, help="parts for the highest sustained rate")
    ap.add_argument("--burst-rounds", type=int, default=2, help="bursts per station and kind of picture")
    ap.add_argument("--soak", type=int, default=10000, help="parts for the memory run")
    args = ap.parse_args()
    from PIL import Image

    from fre_edge.runtime import load_detector
    from fre_edge.serve.process import free_port

    env = environment()
    bundle_dir = bundle("efficientnet_lite0")
    det = load_detector(bundle_dir)
    bottle = sorted((DATASETS / "mvtec_bottle" / "test").glob("*/*.png"))
    work = Path(tempfile.mkdtemp(prefix="fre-edge-line-bench-"))
    small_dir = work / "small"
    small_dir.mkdir()
    side = det.input_size
    small = []
    for p in bottle[:40]:
        q = small_dir / p.name.replace(".png", f"_{p.parent.name}.png")
        Image.open(p).convert("RGB").resize((side[1], side[0])).save(q)
        small.append(q)
    port = free_port()
    broker = Broker(work, port)
    receipts = Receipts(port)
    folder = work / "in"
    station = streams = None
    try:
        station = StationProcess(bundle_dir, folder, work, port, "delete")
        streams = StationProcess(bundle_dir, work / "in-streams", work, port, "delete", "--parallel", "0",
                                 "--name", "streams")
        for p in bottle[:3]:  # the runtime's first calls compile its batch-1 graph: not part of any figure
            det.predict(p)
        drop(bottle[0], folder, "warm.png")
        receipts.wait("warm.png", 180)
        status = station_status(station.metrics)
        result = {"environment": env, "bundle": bundle_dir.name, "input_size": list(side),
                  "station": {"parallel": status["parallel"], "batch_size": status["batch_size"],
                              "streams_parallel": station_status(streams.metrics)["parallel"]},
                  "steady": steady(det, receipts, bottle, folder, args)}
        rates = {"bottle_900px_png": runtime_rates(det, bottle), "input_size_png": runtime_rates(det, small)}
        drop(bottle[0], work / "in-streams", "warm1.png")
        receipts.wait("warm1.png", 180)
        letters = iter("bcdefghijlmnopqr")  # one per burst (receipts count parts by their first letter)
        for key, pics in (("bottle_900px_png", bottle), ("input_size_png", small)):
            runs = {"station": [], "streams": []}
            for r in range(args.burst_rounds):  # the two stations' bursts alternate, order flipped each round
                for name in (("station", "streams") if r % 2 == 0 else ("streams", "station")):
                    st = station if name == "station" else streams
                    runs[name].append(sustained(det, receipts, pics, st.folder, args.burst, next(letters),
                                                st.proc.pid))
            for name, xs in runs.items():
                rates[key][name] = {"rounds": xs, **{k: float(np.median([x[k] for x in xs])) for k in (
                    "parts_per_s", "first_half_parts_per_s", "station_cpu_ms_per_part")}}
        result["sustained"] = rates
        rss = []
        t0 = time.perf_counter()
        for i in range(args.soak):
            while i - receipts_done(receipts, "k") >= 64:
                time.sleep(0.002)
            drop(small[i % len(small)], folder, f"k{i:06d}.png")
            if (i + 1) % 1000 == 0:
                receipts.wait(f"k{i:06d}.png", 120)
                rss.append({"parts": i + 1, "rss_mb": station.rss_mb()})
        receipts.wait(f"k{args.soak - 1:06d}.png", 120)
        result["memory"] = {"parts": args.soak, "seconds": time.perf_counter() - t0, "rss": rss,
                            "received": receipts_done(receipts, "k"), "streams_station_rss_mb": streams.rss_mb()}
    finally:
        for st in (station, streams):
            if st is not None:
                st.stop()
        receipts.close()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    write("line_station", result, markdown(result))


def markdown(r: dict) -> str:
    s = r["steady"]
    md = ["# The inspection station against the bundle's own runtime", "", header_md(r["environment"]),
          f"Bundle `{r['bundle']}` (Lite0, MVTec bottle, input {r['input_size'][0]} x {r['input_size'][1]}), "
          "OpenVINO f32 on CPU. Station: `fre-edge line` as its own process, a watched folder (files renamed in) "
          "and an MQTT sink (QoS 1) to Mosquitto on loopback; every verdict fsynced to the journal first.", "",
          f"## Latency at {s['rate']:g} parts/s ({s['rounds']} rounds of {s['parts_per_block']} parts a block, "
          "blocks alternating)", "",
          "| path | parts | p50 ms | p99 ms | mean ms |", "|---|---|---|---|---|",
          f"| bundle: `detector.predict(path)` in this process (read, resize, infer, batch 1) | {s['bundle']['n']} | "
          f"{s['bundle']['p50_ms']:.1f} | {s['bundle']['p99_ms']:.1f} | {s['bundle']['mean_ms']:.1f} |",
          f"| station: file renamed in -> MQTT message received | {s['station']['n']} | {s['station']['p50_ms']:.1f} "
          f"| {s['station']['p99_ms']:.1f} | {s['station']['mean_ms']:.1f} |", "",
          f"The station adds {s['added_p50_ms']:.1f} ms at p50 and {s['added_p99_ms']:.1f} ms at p99 (goal: at most "
          f"5 ms at p99). Per round (p50 / p99 ms, bundle | station): "
          + "; ".join(f"{x['bundle']['p50_ms']:.1f}/{x['bundle']['p99_ms']:.1f} | {x['station']['p50_ms']:.1f}/"
                      f"{x['station']['p99_ms']:.1f}" for x in s["per_round"]) + ".", "",
          "## Highest sustained rate, one source", "",
          f"The station with its defaults (one inference call at a time on the graph compiled for latency, batches "
          f"of up to {r['station']['batch_size']} only where that was faster per part on this PC, here "
          f"{r['station']['parallel']} call) against `--parallel 0` (a second station process beside it: while parts "
          f"wait, {r['station']['streams_parallel']} calls at once on OpenVINO streams of the graph compiled again "
          "for throughput; a lone part on the latency graph). Their bursts alternate, order flipped each round; "
          "medians of the rounds. CPU ms per part: the station process's user + system time over the second half "
          "(every thread: reading, inference, journal, MQTT); the graph's own process time at batch 1. Two cores' "
          "ceiling for a station: 2000 / its CPU ms per part.", "",
          "| pictures | bundle batch-1 FPS (graph alone) | graph CPU ms / picture | runtime from files, one thread, "
          "pictures/s | station parts/s (rounds) | station / batch-1 FPS | station CPU ms / part (ceiling parts/s) "
          "| `--parallel 0` parts/s (rounds) | `--parallel 0` / batch-1 FPS | `--parallel 0` CPU ms / part "
          "(ceiling) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, label in (("bottle_900px_png", "bottle test PNGs, 900 px"), ("input_size_png", "PNGs at the input size")):
        x = r["sustained"][key]
        cells = []
        for name in ("station", "streams"):
            st = x[name]
            rounds = ", ".join(f"{y['parts_per_s']:.0f}" for y in st["rounds"])
            cells.append(f"{st['parts_per_s']:.1f} ({rounds}) | {st['parts_per_s'] / x['graph_fps_batch1']:.2f} | "
                         f"{st['station_cpu_ms_per_part']:.1f} ({2000 / st['station_cpu_ms_per_part']:.0f})")
        md.append(f"| {label} | {x['graph_fps_batch1']:.1f} | {x['graph_cpu_ms_per_picture']:.1f} | "
                  f"{x['predict_from_files_per_s']:.1f} | {cells[0]} | {cells[1]} |")
    m = r["memory"]
    rss = m["rss"]
    md += ["", "Goal: at least 0.8x the bundle's batch-1 FPS. On 2 cores the station's rate is bounded by its CPU time "
           "per part: the graph's own time plus reading and resizing the picture, the journal and the MQTT message, "
           "all on the same two cores as the benchmark's file copier, subscriber and broker.", "",
           f"## Memory over {m['parts']} parts ({m['seconds']:.0f} s, {m['received']} messages received)", "",
           "| parts | station RSS MB |", "|---|---|"] + [f"| {x['parts']} | {x['rss_mb']:.0f} |" for x in rss]
    if len(rss) >= 2:
        growth = rss[-1]["rss_mb"] - rss[0]["rss_mb"]
        md += ["", f"From {rss[0]['parts']} to {rss[-1]['parts']} parts: {growth:+.0f} MB. The `--parallel 0` "
               f"station beside it (a second compiled graph): {m['streams_station_rss_mb']:.0f} MB."]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
