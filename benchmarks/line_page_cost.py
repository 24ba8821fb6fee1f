"""What the live page and the drift watch cost the line: the station's sustained rate with neither, and with
both while a page is open, in alternating rounds.

Two `fre-edge line` processes on the same bundle, each watching its own folder with a folder sink: "plain"
(``drift = false``, no page) and "page" (the drift watch and ``--ui``, with a client doing what the page
does: it reads the server-sent events, fetches /status at most twice a second and the pictures of the newest
three parts it has not drawn yet).
Each round feeds one station ``--parts`` pictures at the model's input size as fast as it takes them (at
most 32 waiting), then the other, the order flipped every round; the rate is parts over the time from the
first file to the last verdict (the station deletes each file once its verdict is journaled; the driver counts
the files left, so its polling costs the stations nothing).

    python -m benchmarks.line_page_cost [--rounds 3] [--parts 300]
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
from ._line import start_station, station_status


def get(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


class StationProcess:
    def __init__(self, bundle_dir: Path, work: Path, name: str, page: bool):
        from fre_edge.serve.process import free_port

        self.folder = work / name / "in"
        self.folder.mkdir(parents=True)
        self.metrics, self.ui = free_port(), free_port()
        config = work / name / "station.toml"
        config.write_text(f'[station]\nname = "{name}"\njournal = "{work / name / "j"}"\n'
                          f'metrics = "127.0.0.1:{self.metrics}"\n'
                          + (f'ui = "127.0.0.1:{self.ui}"\nreview = "{work / name / "review"}"\n' if page
                             else "drift = false\n")
                          + f'[[source]]\nurl = "folder:{self.folder}?after=delete"\n'
                          f'[[sink]]\nurl = "folder:{work / name / "out"}"\n')
        self.proc = start_station([bundle_dir, "--config", config], self.metrics, work / name / "station.log")
        self.page_client = PageClient(self.ui) if page else None

    def status(self) -> dict:
        return station_status(self.metrics)

    def stop(self):
        if self.page_client:
            self.page_client.stop()
        self.proc.terminate()
        self.proc.wait(60)


class PageClient:
    """What an open page does: events in, /status at most twice a second, the newest parts' pictures."""

    def __init__(self, port: int):
        self.base, self.stopping, self.pictures = f"http://127.0.0.1:{port}", threading.Event(), 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        events = urllib.request.urlopen(self.base + "/events", timeout=60)
        last, seen = 0.0, set()
        while not self.stopping.is_set():
            line = events.readline()
            if not line.startswith(b"data:") or time.monotonic() - last < 0.5:
                continue
            last = time.monotonic()
            status = json.loads(get(self.base + "/status"))
            for record in status["latest_parts"][-3:]:  # the page draws the newest three with their heatmaps
                if record["seq"] not in seen:
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


def feed(station: StationProcess, pictures: list[Path], n: int, tag: str) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        while waiting(station.folder) >= 32:
            time.sleep(0.005)
        tmp = station.folder / f".{tag}{i:05d}.png"
        shutil.copyfile(pictures[i % len(pictures)], tmp)
        tmp.rename(station.folder / f"{tag}{i:05d}.png")
    while waiting(station.folder):
        time.sleep(0.002)
    return n / (time.perf_counter() - t0)


def main():
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parts", type=int, default=300)
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
    stations = {"plain": StationProcess(bundle_dir, work, "plain", page=False),
                "page": StationProcess(bundle_dir, work, "page", page=True)}
    rates = {k: [] for k in stations}
    try:
        for name, st in stations.items():  # warm-up
            feed(st, pictures, 20, "w")
        for r in range(args.rounds):
            for name in (list(stations) if r % 2 == 0 else list(stations)[::-1]):
                rates[name].append(feed(stations[name], pictures, args.parts, f"r{r}"))
        pictures_served = stations["page"].page_client.pictures
    finally:
        for st in stations.values():
            st.stop()
        shutil.rmtree(work, ignore_errors=True)
    ratios = [p / q for p, q in zip(rates["page"], rates["plain"])]
    result = {"environment": env, "bundle": bundle_dir.name, "rounds": args.rounds, "parts": args.parts,
              "rates": rates, "ratio_per_round": ratios, "ratio_median": statistics.median(ratios),
              "page_pictures_served": pictures_served}
    md = ["# The live page's and the drift watch's cost to the line", "", header_md(env),
          f"Bundle `{bundle_dir.name}`; {args.parts} pictures at the input size per station per round, "
          f"{args.rounds} alternating rounds; parts/s from the first file to the last verdict.", "",
          "| station | parts/s per round | median |", "|---|---|---|"]
    for name, label in (("plain", "no page, no drift watch"), ("page", "drift watch + page open (events, /status, "
                                                                 "the newest parts' pictures)")):
        md.append(f"| {label} | {', '.join(f'{x:.1f}' for x in rates[name])} | {statistics.median(rates[name]):.1f} |")
    md += ["", f"Page / plain, per round: {', '.join(f'{x:.3f}' for x in ratios)}; median "
           f"{statistics.median(ratios):.3f} (goal: at least 0.97). The page drew {pictures_served} pictures."]
    write("line_page_cost", result, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
