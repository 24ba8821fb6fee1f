"""What the live page and the drift watch cost the line: the station's sustained rate with and without an open
page, alone on the PC and beside other station processes, and the drift watch's own work.

`fre-edge line` processes on the same bundle, each watching its own folder with a folder sink. First one station
alone ("ui": the drift watch and ``--ui``) in ``--alone-rounds`` rounds, each with the page closed and with a client
in a process of its own doing what an open page does (it reads the state the station pushes over server-sent events,
at most twice a second, and fetches the newest part's picture at most once a second), in turn. Then the same beside
two more processes, "plain" (``drift = false``, no page) and "drift" (the drift watch, no page), all four fed in
turn in ``--rounds`` rounds, each first in turn and the order flipped. The page's cost is one process's rate with
the page open over its rate with the page closed, so no difference between two processes enters it; the drift
watch's own work is timed directly (``DriftWatch.add``).
Each round feeds ``--parts`` pictures at the model's input size as fast as the station takes them (at most 32
waiting), after a pause of ``--settle`` s; new processes every ``--restart-every`` rounds; the rate is parts
over the time from the first file to the last verdict (the station deletes each file once its verdict is
journaled; the driver counts the files left, so its polling costs the stations nothing).

    python -m benchmarks.line_page_cost [--alone-rounds 96] [--rounds 96] [--parts 120] [--restart-every 4]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from ._bundles import bundle
from ._common import DATASETS, RESULTS, environment, header_md, write
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
            self.page_client.end()
        self.proc.terminate()
        self.proc.wait(60)


class PageClient:
    """What an open page does, in a process of its own as a browser is: the station's state pushed over server-sent
    events (at most twice a second), the newest part's picture at most once a second. The process starts once, with
    the station, and opens and leaves the page on the driver's word (``open()``, ``close()``), so one station
    process runs rounds with the page open and with it closed, and no round pays for starting a process."""

    def __init__(self, port: int):
        ctx = multiprocessing.get_context("fork")  # the driver has no other thread when it forks
        self.want, self.connected, self.ending = ctx.Event(), ctx.Event(), ctx.Event()
        self.result = ctx.Array("d", 2)  # pictures fetched, CPU seconds: the process's totals, after each visit
        self.proc = ctx.Process(target=page_client, args=(port, self.want, self.connected, self.ending, self.result),
                                daemon=True)
        self.proc.start()
        self.pictures, self.cpu = 0, 0.0

    def open(self):
        self.want.set()
        if not self.connected.wait(30):
            raise RuntimeError("the page client did not get the station's first state")

    def close(self):
        """Leave the page: the client closes its event stream (so the station stops sending) and reports."""
        if self.want.is_set():
            self.want.clear()
            deadline = time.monotonic() + 30
            while self.connected.is_set() and time.monotonic() < deadline:
                time.sleep(0.01)
            self.pictures, self.cpu = int(self.result[0]), self.result[1]

    def end(self):
        self.close()
        self.ending.set()
        self.want.set()
        self.proc.join(30)


def page_client(port: int, want, connected, ending, result) -> None:
    """The client process: each time ``want`` is set, it opens the page and runs the page's loop until ``want`` is
    cleared; its pictures and CPU seconds so far in ``result`` after each visit."""
    base, pictures = f"http://127.0.0.1:{port}", 0
    while want.wait() and not ending.is_set():
        pictured, buffered = 0.0, b""
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.settimeout(0.1)
        try:
            while want.is_set():
                try:
                    chunk = sock.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    break
                *events, buffered = (buffered + chunk).split(b"\n\n")
                states = [e for e in events if e.startswith(b"event: status\n")]
                if not states:
                    continue
                connected.set()  # the state the station sends at once: the page is open
                status = json.loads(states[-1].split(b"\ndata: ", 1)[1])  # as the page, the newest state
                newest = status["latest_parts"][-1:]
                now = time.monotonic()
                if newest and now - pictured >= 1.0:  # the page asks for the newest part's picture, at most one
                    pictured = now  # new a second (those shown before are in the browser's cache)
                    try:
                        get(f"{base}/parts/{newest[0]['seq']}.jpg")
                        pictures += 1
                    except OSError:  # already out of the latest parts
                        pass
        finally:
            sock.close()
            result[0], result[1] = pictures, time.process_time()
            connected.clear()


def waiting(folder: Path) -> int:
    """Pictures in the folder not yet inspected (the station deletes each once its verdict is journaled): counted
    here, so the driver's polling costs the stations nothing."""
    return sum(1 for e in os.scandir(folder) if not e.name.startswith("."))


DRIFT_PARTS = 20000  # parts past its baseline over which the drift watch's own work is timed


def drift_watch_cost(det, parts: int = DRIFT_PARTS) -> float:
    """The drift watch's own CPU microseconds a part (``DriftWatch.add`` as the station calls it once a verdict
    is journaled), past its baseline, on scores drawn from the bundle's own held-out good scores."""
    import numpy as np

    from fre_edge.line.drift import BASELINE_PARTS, DriftWatch

    reference = det.metadata["thresholds"]["reference_scores"]
    watch = DriftWatch(det.image_threshold, reference)
    scores = np.random.default_rng(0).choice(reference, BASELINE_PARTS + parts).tolist()
    for score in scores[:BASELINE_PARTS]:
        watch.add(score)
    t0 = time.process_time()
    for score in scores[BASELINE_PARTS:]:
        watch.add(score)
    return (time.process_time() - t0) / parts * 1e6


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


def median_interval(values: list[float], draws: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Where 95% of the medians of ``draws`` resamplings of ``values`` (with replacement) fall."""
    import numpy as np

    x = np.asarray(values)
    medians = np.median(np.random.default_rng(seed).choice(x, (draws, x.size)), axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def report(result: dict) -> str:
    """The Markdown table of a run's result (``--report`` writes it again from the JSON file)."""
    rates, cpu, ratios = result["rates"], result["cpu_ms_per_part"], result["ratios"]
    md = ["# The live page's and the drift watch's cost to the line", "", header_md(result["environment"]),
          f"Bundle `{result['bundle']}`; {result['parts']} pictures at the input size per station per round, "
          f"{result['settle_s']} s idle before each; first {result['alone_rounds']} rounds of one station alone "
          f"(drift watch + `--ui`), the page open and closed in turn; then {result['rounds']} rounds of three "
          f"stations fed in turn; fresh station processes every {result['restart_every']} rounds; parts/s from the "
          f"first file to the last verdict; CPU ms per part: the station process's user + system time over its round "
          f"(every thread).", "",
          "| station | parts/s (median of rounds) | CPU ms / part (median) |", "|---|---|---|"]
    labels = {"alone_closed": "alone: drift watch + `--ui`, page closed",
              "alone_open": "alone: the same process, page open (its state pushed twice a second, a new picture "
                            "once a second)",
              "plain": "beside two others: no page, no drift watch", "drift": "beside two others: drift watch",
              "closed": "beside two others: drift watch + `--ui`, page closed",
              "open": "beside two others: the same process, page open"}
    for name, label in labels.items():
        md.append(f"| {label} | {statistics.median(rates[name]):.1f} | {statistics.median(cpu[name]):.2f} |")
    md += ["", "| what it costs | compared | same process | parts/s ratio: median (95% of resampled medians; "
           "rounds' 10th-90th pct) | CPU per part ratio: median (10th-90th pct) |", "|---|---|---|---|---|"]
    rows = [("the page open, the station alone on the PC", "page open / page closed", "alone_page_open_over_closed",
             "yes"),
            ("the page open, beside two other station processes", "page open / page closed", "page_open_over_closed",
             "yes"),
            ("`--ui` with no page open", "page closed / drift watch", "ui_closed_over_drift", "no"),
            ("the drift watch", "drift watch / plain", "drift_over_plain", "no"),
            ("drift watch + page open, together", "page open / plain", "page_open_over_plain", "no")]
    for what, compared, key, same in rows:
        x = ratios[key]
        lo, hi = median_interval(x["per_round"]["rate"])
        md.append(f"| {what} | {compared} | {same} | {x['rate_median']:.3f} ({lo:.3f} - {hi:.3f}; "
                  f"{x['rate_p10_p90'][0]:.3f} - {x['rate_p10_p90'][1]:.3f}) | {x['cpu_median']:.3f} "
                  f"({x['cpu_p10_p90'][0]:.3f} - {x['cpu_p10_p90'][1]:.3f}) |")
    drift_us = result["drift_watch_us_per_part"]
    md += ["", "Goal: at most 3% of the line's rate. The page's own cost is measured within one process (the rounds "
           "with the page open against the same process's rounds with it closed); the other rows compare two "
           "processes, whose speeds differ by a few percent here even for nearly the same work (the drift watch is a "
           "few arithmetic steps a part). The station is bound by its CPU on 2 cores, so its CPU per part is what "
           "the page and the drift watch take from the line's rate (the JSON file has every round; the interval is "
           "where 95% of the medians of 10,000 resamplings of the rounds fall).",
           "", f"The drift watch's own work, timed alone in this process (`DriftWatch.add`, {DRIFT_PARTS:,} parts "
           f"past its baseline): {drift_us:.1f} CPU microseconds a part, "
           f"{drift_us / 1e3 / statistics.median(cpu['plain']):.3%} of the plain station's CPU per part.",
           "", f"The page drew {result['page_pictures_served']} pictures. The client that stands in for the browser "
           f"(a process of its own) used {statistics.median(result['client_cpu_ms_per_part']):.2f} CPU ms per part "
           f"(median): a browser on the station's own PC costs the line that much more, one on another PC nothing."]
    return "\n".join(md) + "\n"


def main():
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=96)
    ap.add_argument("--parts", type=int, default=120)
    ap.add_argument("--restart-every", type=int, default=4, help="rounds between fresh station processes")
    ap.add_argument("--alone-rounds", type=int, default=96,
                    help="rounds of the page open and closed on one station with no other station process running")
    ap.add_argument("--settle", type=float, default=0.5,
                    help="seconds idle before each feed (the previous station's inference threads wind down)")
    ap.add_argument("--report", action="store_true", help="write the Markdown table again from the JSON file")
    args = ap.parse_args()
    if args.report:
        result = json.loads((RESULTS / "line_page_cost.json").read_text())
        write("line_page_cost", result, report(result))
        return
    env = environment()
    bundle_dir = bundle("efficientnet_lite0")
    work = Path(tempfile.mkdtemp(prefix="fre-edge-page-bench-"))
    from fre_edge.runtime import load_detector

    detector = load_detector(bundle_dir)
    side = detector.input_size
    pictures = []
    for p in sorted((DATASETS / "mvtec_bottle" / "test").glob("*/*.png"))[:40]:
        q = work / f"{p.parent.name}_{p.name}"
        Image.open(p).convert("RGB").resize((side[1], side[0])).save(q)
        pictures.append(q)
    names = ("plain", "drift", "closed", "open")
    process = {"plain": "plain", "drift": "drift", "closed": "ui", "open": "ui"}
    alone = ("alone_closed", "alone_open")
    rates, cpu, client_cpu = {k: [] for k in names + alone}, {k: [] for k in names + alone}, []
    pictures_served, stations = 0, {}

    def start(generation: int) -> dict:
        """Three fresh station processes (a process's own speed differs by a few percent: new ones every
        ``--restart-every`` rounds, so that no configuration keeps a lucky or unlucky one)."""
        home = work / f"g{generation}"
        made = {"plain": StationProcess(bundle_dir, home, "plain", page=False),
                "drift": StationProcess(bundle_dir, home, "drift", page=False, drift=True),
                "ui": StationProcess(bundle_dir, home, "ui", page=True)}
        for st in made.values():
            warm_up(st)
        return made

    def warm_up(station: StationProcess) -> None:
        """A few parts through a new station, and with a page a first visit (the client process's own start-up
        work is done before the rounds)."""
        feed(station, pictures, 20, "w")
        if station.page_client:
            station.page_client.open()
            feed(station, pictures, 20, "wp")
            station.page_client.close()

    def stop(made: dict) -> int:
        served = made["ui"].page_client.pictures if "ui" in made else 0
        for st in made.values():
            st.stop()
        return served

    def one_round(station: StationProcess, name: str, tag: str) -> None:
        if name.endswith("open"):
            before = station.page_client.cpu
            station.page_client.open()
        time.sleep(args.settle)
        rate, ms = feed(station, pictures, args.parts, tag)
        if name.endswith("open"):
            station.page_client.close()
            client_cpu.append((station.page_client.cpu - before) / args.parts * 1e3)
        rates[name].append(rate)
        cpu[name].append(ms)

    try:
        for r in range(args.alone_rounds):  # first the station alone on the PC, as on a line
            if r % args.restart_every == 0:
                pictures_served += stop(stations)
                stations = {"ui": StationProcess(bundle_dir, work / f"a{r}", "ui", page=True)}
                warm_up(stations["ui"])
            for name in (alone if r % 2 == 0 else alone[::-1]):
                one_round(stations["ui"], name, f"a{r}{name}")
        for r in range(args.rounds):  # then beside two other station processes: plain, and with the drift watch
            if r % args.restart_every == 0:
                pictures_served += stop(stations)
                stations = start(r)
            order = list(names[r % 4:] + names[:r % 4])  # each first in turn, the order flipped
            for name in (order if (r // 4) % 2 == 0 else order[::-1]):
                one_round(stations[process[name]], name, f"r{r}{name}")
    finally:
        pictures_served += stop(stations)
        shutil.rmtree(work, ignore_errors=True)

    def ratio(a: str, b: str) -> dict:
        per_round = {"rate": [p / q for p, q in zip(rates[a], rates[b])],
                     "cpu": [p / q for p, q in zip(cpu[a], cpu[b])]}
        return {**{f"{k}_median": statistics.median(v) for k, v in per_round.items()},
                "cpu_p10_p90": statistics.quantiles(per_round["cpu"], n=10)[::8],
                "rate_p10_p90": statistics.quantiles(per_round["rate"], n=10)[::8], "per_round": per_round}

    drift_us = drift_watch_cost(detector)
    pairs = {"alone_page_open_over_closed": ratio("alone_open", "alone_closed"),
             "page_open_over_closed": ratio("open", "closed"), "ui_closed_over_drift": ratio("closed", "drift"),
             "drift_over_plain": ratio("drift", "plain"), "page_open_over_plain": ratio("open", "plain")}
    result = {"environment": env, "bundle": bundle_dir.name, "rounds": args.rounds, "alone_rounds": args.alone_rounds,
              "parts": args.parts,
              "restart_every": args.restart_every, "settle_s": args.settle, "rates": rates, "cpu_ms_per_part": cpu,
              "ratios": pairs,
              "drift_watch_us_per_part": drift_us, "client_cpu_ms_per_part": client_cpu,
              "page_pictures_served": pictures_served}
    write("line_page_cost", result, report(result))


if __name__ == "__main__":
    main()
