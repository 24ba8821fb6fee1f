"""Serving overhead: the local runtime against the same bundle served by ``fre-edge serve`` over
HTTP and gRPC on loopback, batch 1 and 8, 1/4/8 concurrent clients, in alternating rounds.

Each cell: ``clients`` threads call ``detector.infer_prepared`` on a fixed uint8 batch for ``--block``
seconds; images/s over the wall time and the median request latency. Local and server run the graph with
OpenVINO's throughput hint at f32 (the server's setting), so the ratio is the cost of serving alone. The
transports are timed in turn within each (batch, clients) cell, the order flipped every round; figures
are medians over rounds with the quartiles of the per-round ratios. Where the time of one batch-1 request
goes: inference (local, same setting), KServe's predict handler beyond inference (from the server's own
Prometheus histogram ``request_predict_seconds``), and the rest (protocol encoding and decoding on both
sides, the web/gRPC layers, loopback).

    python -m benchmarks.serve_overhead [--rounds 3] [--block 2] [--dataset mvtec_bottle]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from ._bundles import bundle
from ._common import environment, header_md, write

TRANSPORTS = ("local", "http", "grpc")
CELLS = [(1, 1), (1, 4), (1, 8), (8, 1), (8, 4), (8, 8)]  # (batch, clients)


def run_clients(det, x, clients: int, seconds: float) -> tuple[float, list[float]]:
    """(images/s, request latencies in s) of ``clients`` threads calling ``det.infer_prepared(x)``."""
    lat, lock = [], threading.Lock()
    stop = time.perf_counter() + seconds

    def loop():
        mine = []
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            det.infer_prepared(x)
            mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(lat) * x.shape[0] / (time.perf_counter() - t0), lat


def predict_histogram(metrics_url: str, model: str) -> tuple[float, float]:
    """(sum s, count) of KServe's request_predict_seconds for ``model``."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    out = {}
    for what in ("sum", "count"):
        m = re.search(rf'^request_predict_seconds_{what}{{model_name="{re.escape(model)}"}} ([0-9.e+-]+)$', text, re.M)
        out[what] = float(m.group(1)) if m else 0.0
    return out["sum"], out["count"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--block", type=float, default=2.0, help="seconds per timed cell")
    ap.add_argument("--dataset", default="mvtec_bottle")
    ap.add_argument("--threads", type=int, default=8, help="fre-edge serve --threads")
    args = ap.parse_args()
    if args.rounds < 2:
        ap.error("--rounds must be at least 2: the spread is taken over per-round ratios")
    import numpy as np

    from fre_edge.runtime import load_detector
    from fre_edge.serve.process import ServeProcess
    from fre_edge.timing import markdown_table, spread

    env = environment()
    path = bundle("efficientnet_lite0", dataset=args.dataset)
    name = "lite0"
    with tempfile.TemporaryDirectory() as tmp, \
            ServeProcess(f"{name}={path}", log=Path(tmp) / "serve.log", threads=args.threads) as server:
        dets = {"local": load_detector(path, hint="throughput"),
                "http": load_detector(path, backend="kserve", url=server.http_url, model_name=name),
                "grpc": load_detector(path, backend="kserve", url=server.grpc_url, model_name=name)}
        size = dets["local"].input_size
        rng = np.random.default_rng(0)
        batches = {b: rng.integers(0, 256, (b, *size, 3), dtype=np.uint8) for b in (1, 8)}
        for d in dets.values():  # warm every path and connection
            for b in batches.values():
                d.infer_prepared(b)
        results = {cell: {t: [] for t in TRANSPORTS} for cell in CELLS}
        latencies = {cell: {t: [] for t in TRANSPORTS} for cell in CELLS}
        handler = {t: [0.0, 0.0] for t in ("http", "grpc")}  # predict-handler seconds, requests (1 client, batch 1)
        for r in range(args.rounds):
            for cell in CELLS:
                batch, clients = cell
                order = TRANSPORTS if r % 2 == 0 else TRANSPORTS[::-1]
                for t in order:
                    watch = cell == (1, 1) and t != "local"
                    before = predict_histogram(f"{server.http_url}/metrics", name) if watch else None
                    fps, lat = run_clients(dets[t], batches[batch], clients, args.block)
                    if before is not None:
                        after = predict_histogram(f"{server.http_url}/metrics", name)
                        handler[t][0] += after[0] - before[0]
                        handler[t][1] += after[1] - before[1]
                    results[cell][t].append(fps)
                    latencies[cell][t] += lat
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        stopped = server.stop()
    rows, table = [], []
    for cell in CELLS:
        batch, clients = cell
        local = results[cell]["local"]
        for t in TRANSPORTS:
            ratios = [a / b for a, b in zip(results[cell][t], local)]
            s = spread(ratios)
            row = {"batch": batch, "clients": clients, "transport": t,
                   "images_per_s": statistics.median(results[cell][t]),
                   "images_per_s_rounds": results[cell][t],
                   "latency_ms_median": 1e3 * statistics.median(latencies[cell][t]),
                   "ratio_to_local": s["median"], "ratio_q1": s["q1"], "ratio_q3": s["q3"]}
            rows.append(row)
            table.append([batch, clients, t, f"{row['images_per_s']:.1f}", f"{row['latency_ms_median']:.1f}",
                          "1 (reference)" if t == "local" else
                          f"{row['ratio_to_local']:.2f} ({row['ratio_q1']:.2f}-{row['ratio_q3']:.2f})"])
    local_ms = 1e3 * statistics.median(latencies[(1, 1)]["local"])
    breakdown = {}
    for t in ("http", "grpc"):
        total_ms = 1e3 * statistics.median(latencies[(1, 1)][t])
        handler_ms = 1e3 * handler[t][0] / max(handler[t][1], 1)
        breakdown[t] = {"request_ms": total_ms, "inference_ms_local": local_ms,
                        "predict_handler_ms": handler_ms, "handler_beyond_inference_ms": handler_ms - local_ms,
                        "protocol_and_transport_ms": total_ms - handler_ms,
                        "overhead_ms": total_ms - local_ms, "requests_in_handler_stats": handler[t][1]}
    goal = next(r for r in rows if r["batch"] == 1 and r["clients"] == 8 and r["transport"] == "grpc")
    data = {"environment": env,
            "settings": {"rounds": args.rounds, "block_s": args.block, "dataset": args.dataset,
                         "bundle": path.name, "server_threads": args.threads, "precision": "f32",
                         "hint": "throughput", "server_exit_status": stopped},
            "rows": rows, "batch1_breakdown": breakdown,
            "goal": {"what": "gRPC, 8 clients, batch 1: images/s >= 0.7 x local", "ratio": goal["ratio_to_local"],
                     "met": goal["ratio_to_local"] >= 0.7}}
    md = ["# Serving overhead: local runtime vs fre-edge serve (KServe v2) on loopback", "", header_md(env),
          f"Lite0 bundle fitted on {args.dataset} ({path.name}), OpenVINO f32 with the throughput hint on both sides; "
          f"fre-edge serve --threads {args.threads}; {args.rounds} rounds of {args.block} s per cell, transports "
          f"alternating (order flipped each round). Ratio: images/s served / local, median over rounds "
          f"(quartiles of the per-round ratios). Client and server share this machine's cores.", "",
          markdown_table(["batch", "clients", "transport", "images/s", "median latency ms", "ratio to local"], table),
          "", "Where one batch-1 request's time goes (1 client; medians):", "",
          markdown_table(["transport", "request ms", "inference (local) ms", "KServe predict handler ms",
                          "protocol + transport ms", "overhead over local ms"],
                         [[t, f"{b['request_ms']:.2f}", f"{b['inference_ms_local']:.2f}",
                           f"{b['predict_handler_ms']:.2f}", f"{b['protocol_and_transport_ms']:.2f}",
                           f"{b['overhead_ms']:.2f}"] for t, b in breakdown.items()]),
          "", f"Goal (gRPC at 8 clients >= 0.7 x local throughput, batch 1): {goal['ratio_to_local']:.2f} -> "
          f"{'met' if data['goal']['met'] else 'NOT met'}.", ""]
    write("serve_overhead", data, "\n".join(md))


if __name__ == "__main__":
    main()
