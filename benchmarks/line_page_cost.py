"""What the live page and the drift watch cost the line: the station's sustained rate with neither, and with
both while a page is open, in alternating rounds.

Three `fre-edge line` processes on the same bundle, each watching its own folder with a folder sink: "plain"
(``drift = false``, no page), "drift" (the drift watch, no page) and "page" (the drift watch and ``--ui``, with
a client doing what the page does: it reads the server-sent events, fetches /status at most twice a second and
the newest part's picture at each of them).
Each round feeds each station in turn ``--parts`` pictures at the model's input size as fast as it takes them
(at most 32 waiting), each station first in turn and the order flipped, three new processes every
``--restart-every`` rounds; the rate is parts over the time from the
first file to the last verdict (the station deletes each file once its verdict is journaled; the driver counts
the files left, so its polling costs the stations nothing).

    python -m benchmarks.line_page_cost [--rounds 40] [--parts 120] [--restart-every 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from ._bundles import bundle
from ._common import DATASETS, environment, header_md, write
from ._line import start_station


def get(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


class StationProcess:
    def __init__(self, bundle_dir: Path, work: Path, name: str, page: bool, drift: bool | None = None):
        from fre_edge.serve.process import free_port

        self.folder = work / name / "in"
        self.folder.mkdir(parents=True)
        self.metrics, self.ui = free_port(), free_port()
        config = work / name / "station.toml"
        config.write_text(f'[station]\nname = "{name}"\njournal = "{work / name / "j"}"\n'
                          f'metrics = "127.0.0.1:{self.metrics}"\n'
                          + (f'ui = "127.0.0.1:{self.ui}"\nreview = "{work / name / "review"}"\n' if page else "")
                          + ("" if (page if drift is None else drift) else "drift = false\n")
                          + f'[[source]]\nurl = "folder:{self.folder}?after=delete"\n'
                          f'[[sink]]\nurl = "folder:{work / name / "out"}"\n')
        self.proc = start_station([bundle_dir, "--config", config], self.metrics, work / name / "station.log")
        self.page_client = PageClient(self.ui) if page else None

    def cpu_seconds(self) -> float:
        """The station process's user + system time so far (every thread)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.page_client:
            self.page_client.stop()
        self.proc.terminate()
        self.proc.wait(60)


class PageClient:
    """What an open page does: events in, /status at most twice a second, the newest part's picture."""

    def __init__(self, port: int):
        self.base, self.stopping, self.pictures = f"http://127.0.0.1:{port}", threading.Event(), 0
        self.cpu = 0.0  # this client's own CPU seconds so far (a browser's work, done here in Python)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        events = urllib.request.urlopen(self.base + "/events", timeout=60)
        last, seen = 0.0, set()
        while not self.stopping.is_set():
            self.cpu = time.thread_time()
            line = events.readline()
            if not line.startswith(b"data:") or time.monotonic() - last < 0.5:
                continue
            last = time.monotonic()
            status = json.loads(get(self.base + "/status"))
            for record in status["latest_parts"][-1:]:  # the page asks for the newest part's picture (the
                if record["seq"] not in seen:               # others shown are in the browser's cache)
                    seen.add(record["seq"])
                    try:
                        get(f"{self.base}/parts/{record['seq']}.jpg")
                        self.pictures += 1
                    except OSError:  # already out of the latest parts
                        pass

    def stop(self):
        self.stopping.set()


def waiting(folder: Path) -> int:
    """Pictures in the folder not yet inspected (the station deletes each once its verdict is journaled): counted
    here, so the driver's polling costs the stations nothing."""
    return sum(1 for e in os.scandir(folder) if not e.name.startswith("."))


def feed(station: StationProcess, pictures: list[Path], n: int, tag: str) -> tuple[float, float]:
    """(parts/s, the station's CPU ms per part) for ``n`` pictures fed as fast as it takes them."""
    t0, c0 = time.perf_counter(), station.cpu_seconds()
    for i in range(n):
        while waiting(station.folder) >= 32:
            time.sleep(0.005)
        tmp = station.folder / f".{tag}{i:05d}.png"
        shutil.copyfile(pictures[i % len(pictures)], tmp)
        tmp.rename(station.folder / f"{tag}{i:05d}.png")
    while waiting(station.folder):
        time.sleep(0.002)
    return n / (time.perf_counter() - t0), (station.cpu_seconds() - c0) / n * 1e3


def main():
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--parts", type=int, default=120)
    ap.add_argument("--restart-every", type=int, default=4, help="rounds between fresh station processes")
    args = ap.parse_args()
    env = environment()
    bundle_dir = bundle("efficientnet_lite0")
    work = Path(tempfile.mkdtemp(prefix="fre-edge-page-bench-"))
    from fre_edge.runtime import load_detector

    side = load_detector(bundle_dir).input_size
    pictures = []
    for p in sorted((DATASETS / "mvtec_bottle" / "test").glob("*/*.png"))[:40]:
        q = work / f"{p.parent.name}_{p.name}"
        Image.open(p).convert("RGB").resize((side[1], side[0])).save(q)
        pictures.append(q)
    names = ("plain", "drift", "page")
    rates, cpu = {k: [] for k in names}, {k: [] for k in names}
    pictures_served, stations = 0, {}

    def start(generation: int) -> dict:
        """Three fresh station processes (a process's own speed differs by a few percent: new ones every
        ``--restart-every`` rounds, so that no configuration keeps a lucky or unlucky one)."""
        home = work / f"g{generation}"
        made = {"plain": StationProcess(bundle_dir, home, "plain", page=False),
                "drift": StationProcess(bundle_dir, home, "drift", page=False, drift=True),
                "page": StationProcess(bundle_dir, home, "page", page=True)}
        for st in made.values():  # warm-up
            feed(st, pictures, 20, "w")
        return made

    def stop(made: dict) -> int:
        served = made["page"].page_client.pictures if "page" in made else 0
        for st in made.values():
            st.stop()
        return served

    try:
        for r in range(args.rounds):
            if r % args.restart_every == 0:
                pictures_served += stop(stations)
                stations = start(r)
            order = list(names[r % 3:] + names[:r % 3])  # each first in turn, the order flipped
            for name in (order if (r // 3) % 2 == 0 else order[::-1]):
                client = stations["page"].page_client.cpu
                rate, ms = feed(stations[name], pictures, args.parts, f"r{r}")
                rates[name].append(rate)
                cpu[name].append(ms)
                if name == "page":
                    cpu.setdefault("client", []).append((stations["page"].page_client.cpu - client) / args.parts * 1e3)
    finally:
        pictures_served += stop(stations)
        shutil.rmtree(work, ignore_errors=True)
    ratios = {k: [p / q for p, q in zip(rates[k], rates["plain"])] for k in ("drift", "page")}
    cpu_ratios = {k: [p / q for p, q in zip(cpu[k], cpu["plain"])] for k in ("drift", "page")}
    result = {"environment": env, "bundle": bundle_dir.name, "rounds": args.rounds, "parts": args.parts,
              "restart_every": args.restart_every, "rates": rates, "ratio_per_round": ratios,
              "ratio_median": {k: statistics.median(v) for k, v in ratios.items()},
              "cpu_ms_per_part": cpu, "cpu_ratio_per_round": cpu_ratios,
              "cpu_ratio_median": {k: statistics.median(v) for k, v in cpu_ratios.items()},
              "page_pictures_served": pictures_served}
    md = ["# The live page's and the drift watch's cost to the line", "", header_md(env),
          f"Bundle `{bundle_dir.name}`; {args.parts} pictures at the input size per station per round, "
          f"{args.rounds} alternating rounds, three fresh station processes every {args.restart_every} rounds; "
          f"parts/s from the first file to the last verdict; CPU ms per part: the station process's user + system "
          f"time over its round (every thread).", "",
          "| station | parts/s (median of rounds) | / plain (median of rounds' ratios) | CPU ms / part (median) "
          "| / plain | rounds' CPU ratios: 10th-90th percentile |", "|---|---|---|---|---|---|"]
    labels = {"plain": "no page, no drift watch", "drift": "drift watch", "page": "drift watch + page open (events, "
              "/status, the newest part's picture)"}
    for name, label in labels.items():
        cells = ["1", "1", "-"] if name == "plain" else [
            f"{statistics.median(ratios[name]):.3f}", f"{statistics.median(cpu_ratios[name]):.3f}",
            " - ".join(f"{x:.3f}" for x in statistics.quantiles(cpu_ratios[name], n=10)[::8])]
        md.append(f"| {label} | {statistics.median(rates[name]):.1f} | {cells[0]} | "
                  f"{statistics.median(cpu[name]):.2f} | {cells[1]} | {cells[2]} |")
    own = ([p / q for p, q in zip(rates["page"], rates["drift"])], [p / q for p, q in zip(cpu["page"], cpu["drift"])])
    result["page_over_drift_median"] = {"rate": statistics.median(own[0]), "cpu": statistics.median(own[1])}
    md += ["", f"The page alone (page / drift watch, same rounds): parts/s {statistics.median(own[0]):.3f}, CPU per "
           f"part {statistics.median(own[1]):.3f}. The drift watch alone against plain shows how far two stations "
           f"of nearly the same work differ here (the drift watch is a few arithmetic steps a part)."]
    md += ["", "Goal: at most 3% of the line's rate (page / plain at least 0.97). The station is bound by its CPU on "
           "2 cores, so its CPU per part is what the page and the drift watch take from the line's rate; the "
           "rounds' wall-clock rates vary more than that (the JSON file has every round).",
           "", f"The page drew {pictures_served} pictures. The client that stands in for the browser (in the "
           f"benchmark's process) used {statistics.median(cpu['client']):.2f} CPU ms per part (median): a browser "
           f"on the station's own PC costs the line that much more, one on another PC nothing."]
    write("line_page_cost", result, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
