"""Latency and FPS of a loaded bundle, with the machine's facts and the paper's figures beside them.

Torch-free. Inputs are a fixed pseudo-random uint8 batch at the model's input size: FRE's cost does not
depend on pixel values. ``sync``: one request at a time, latency per call; ``async``: several requests
in flight (OpenVINO: the plugin's optimal number of requests, round-robin; ONNX Runtime: a thread pool),
images per second over wall time.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .images import size_text

# The poster's inference FPS (PatchCore / AST / FRE); backbone, input size and batch not published.
PAPER_FPS = [
    {"platform": "NVidia 2080-Ti", "PatchCore": 18.4, "AST": 19.6, "FRE": 313.1},
    {"platform": "Intel Xeon 8280", "PatchCore": 7.11, "AST": 11.8, "FRE": 52.6},
    {"platform": "Intel i7-1270P", "PatchCore": 1.28, "AST": 2.8, "FRE": 16.4},
]


def cpu_info() -> dict:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                if name and flags:
                    break
    except OSError:
        pass
    isa = sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                                            "amx_bf16", "amx_int8", "amx_tile"})
    return {"cpu": name, "logical_cores": os.cpu_count(), "isa": isa, "caches": _caches(),
            "python": platform.python_version(), "os": f"{platform.system()} {platform.release()}"}


def machine_identity() -> dict:
    """The fields of ``cpu_info`` that tell one machine's timings from another's: CPU, cores, ISA, caches."""
    return {k: v for k, v in cpu_info().items() if k in ("cpu", "logical_cores", "isa", "caches")}


def _caches() -> dict:
    """{"L2": "2048K", "L3": "32768K", ...} as cpu 0 sees them (Linux sysfs; empty elsewhere)."""
    out = {}
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((d / f).read_text().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        if kind != "Instruction":
            out[f"L{level}"] = size
    return out


def _stats(lat_s: list[float], batch: int) -> dict:
    a = np.asarray(lat_s) * 1e3
    return {"iterations": int(a.size), "latency_ms": {"median": float(np.median(a)), "mean": float(a.mean()),
            "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)), "min": float(a.min())},
            "fps": float(batch * 1e3 / a.mean())}


def time_sync(det, batch_u8: np.ndarray, duration: float, min_iters: int = 10) -> dict:
    from .timing import timed_calls

    lat = timed_calls(lambda: det.adapter.infer(batch_u8), duration, min_iters)
    return _stats(lat, batch_u8.shape[0])


def openvino_round_robin(compiled, inputs: dict, duration: float) -> tuple[int, int, float]:
    """(requests in flight, calls completed, wall seconds): the plugin's optimal number of requests kept busy
    round-robin for ``duration`` s. No callbacks: an AsyncInferQueue's callback thread can deadlock against
    the GIL when its compiled model is released."""
    nreq = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    requests = [compiled.create_infer_request() for _ in range(nreq)]
    done, t0 = 0, time.perf_counter()
    for r in requests:
        r.start_async(inputs)
    while time.perf_counter() - t0 < duration:
        for r in requests:
            r.wait()
            done += 1
            r.start_async(inputs)
    for r in requests:
        r.wait()
        done += 1
    return nreq, done, time.perf_counter() - t0


def time_async(det, batch_u8: np.ndarray, duration: float, clients: int | None = None) -> dict:
    """Images/s with several requests in flight: OpenVINO's optimal number round-robin, or ``clients``
    threads calling at once (ONNX Runtime; a model server, one client connection per thread)."""
    adapter = det.adapter
    n = batch_u8.shape[0]
    if adapter.name == "openvino" and clients is None:
        nreq, done, wall = openvino_round_robin(adapter.compiled, {0: batch_u8}, duration)
        return {"requests_in_flight": nreq, "batches": done, "fps": done * n / wall}
    workers = clients or max(2, (os.cpu_count() or 2) // 2)
    stop = time.perf_counter() + duration
    count = [0]
    lock = threading.Lock()

    def loop():
        while time.perf_counter() < stop:
            adapter.infer(batch_u8)
            with lock:
                count[0] += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(loop) for _ in range(workers)]:
            f.result()
    wall = time.perf_counter() - t0
    return {"requests_in_flight": workers, "batches": count[0], "fps": count[0] * n / wall}


def run_bench(det, *, batch: int = 1, duration: float = 10.0, warmup: int = 5, modes=("sync", "async"),
              clients: int | None = None) -> dict:
    x = np.random.default_rng(0).integers(0, 256, (batch, *det.input_size, 3), dtype=np.uint8)
    for _ in range(warmup):
        det.adapter.infer(x)
    out = {"batch": batch, "duration_s": duration, "warmup_iterations": warmup}
    if "sync" in modes:
        out["sync"] = time_sync(det, x, duration)
    if "async" in modes:
        out["async"] = time_async(det, x, duration, clients)
    return out


def run_images(det, paths, *, batch_size: int = 8, duration: float = 10.0, overlays: bool | str = False,
               workers: int = 2) -> dict:
    """End to end from image files, as ``fre-edge predict`` does it: reading and resizing in ``workers``
    threads ahead of inference, inference in batches, the map at each picture's own size with its mask and
    box, and overlays (True or "all", "anomalous", False or "none") drawn by ``visualize.OverlayWriter``'s
    thread. Passes over ``paths`` until ``duration`` seconds have gone (at least one pass); images per
    second over wall time."""
    import tempfile

    from .visualize import OverlayWriter

    which = {True: "all", False: "none"}.get(overlays, overlays)
    done, passes = 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        while passes == 0 or time.perf_counter() - t0 < duration:
            with OverlayWriter(tmp, det.pixel_threshold, which) as pictures:
                for i, (path, pred) in enumerate(det.iter_predict(paths, batch_size=batch_size, workers=workers)):
                    pred.to_dict()  # score, verdict, anomalous pixels, peak and box: the map at full size
                    pictures.add(i, path, pred)
                    done += 1
            passes += 1
        wall = time.perf_counter() - t0
    return {"images": len(paths), "passes": passes, "batch_size": batch_size, "read_workers": workers,
            "overlays": overlays, "images_per_s": done / wall}


HEAD_COST_HINT = 1.10  # above this ratio, --head-cost points an f32-head bundle to --head-weights int8


def run_head_cost(full, backbone, *, batch: int = 1, duration: float = 10.0, rounds: int = 10) -> dict:
    """The whole graph against the same bundle's backbone alone (``load_backbone_only``) on this machine, in
    ``rounds`` rounds of alternating blocks (``fre_edge.timing.alternate``, ``duration`` seconds in all): what the
    FRE head adds per call. ratio = median full-graph latency / median backbone latency; its spread is the
    quartiles of the per-round ratios. Each side is timed as the runtime calls it (outputs copied out)."""
    from .timing import alternate, ratio_spread

    x = np.random.default_rng(0).integers(0, 256, (batch, *full.input_size, 3), dtype=np.uint8)
    calls = {"full": lambda: full.adapter.infer(x), "backbone": lambda: backbone.adapter.infer(x)}
    block = max(0.02, duration / (2 * rounds))
    lat, per_round = alternate(calls, rounds, block)
    med = {name: float(np.median(v)) * 1e3 for name, v in lat.items()}
    sp = ratio_spread(per_round, "full", "backbone")
    ratio = med["full"] / med["backbone"]
    return {"batch": batch, "rounds": rounds, "block_s": block, "calls": {n: len(v) for n, v in lat.items()},
            "full_ms": med["full"], "backbone_ms": med["backbone"], "head_ms": med["full"] - med["backbone"],
            "ratio": ratio, "ratio_round_quartiles": [sp["q1"], sp["q3"]],
            "within_noise": within_noise(ratio, sp["q1"], sp["q3"])}


def within_noise(ratio: float, q1: float, q3: float) -> bool:
    """Whether a head-cost ratio says nothing: the head cannot cost negative time, the rounds' middle half
    includes 1 (no cost), or it is wider than the effect measured."""
    return ratio < 1.0 or q1 <= 1.0 <= q3 or (q3 - q1) > abs(ratio - 1.0)


def _head_weights_line(hw: dict | None) -> list[str]:
    if not hw:
        return []
    line = f"head weights: {hw['stored']} in the bundle, read as {', '.join(hw['at_run'])} once compiled"
    if any(t.startswith("f") for t in hw["at_run"]):
        line += " (decompressed at load: no faster than f32 weights on this CPU)"
    return [line]


def format_table(result: dict) -> str:
    r, m, b = result["runtime"], result["machine"], result["bench"]
    lines = [
        f"fre-edge bench: {r['backbone']} @ {size_text(r['input_size'])} px, {r['backend']} on {r['device']}, "
        f"precision {r['precision_used']} (asked {r['precision_requested']}), hint {r['hint']}, batch {b['batch']}"
        + ("  [backbone only]" if result.get("backbone_only") else ""),
        f"machine: {m['cpu']}, {m['logical_cores']} logical cores, ISA {' '.join(m['isa']) or '-'}",
        *_head_weights_line(r.get("head_weights")),
        "",
        f"{'':24s}{'median ms':>10s}{'mean ms':>10s}{'p90 ms':>10s}{'p99 ms':>10s}{'FPS':>10s}",
    ]
    if "sync" in b:
        s = b["sync"]["latency_ms"]
        lines.append(f"{'sync (1 request)':24s}{s['median']:10.2f}{s['mean']:10.2f}{s['p90']:10.2f}"
                     f"{s['p99']:10.2f}{b['sync']['fps']:10.1f}")
    if "async" in b:
        a = b["async"]
        lines.append(f"{'async (' + str(a['requests_in_flight']) + ' in flight)':24s}{'':40s}{a['fps']:10.1f}")
    best = max(b.get("sync", {}).get("fps", 0.0), b.get("async", {}).get("fps", 0.0))
    tiles = r.get("tiles_per_picture", 1)
    if tiles > 1 and not result.get("backbone_only"):
        lines.append(f"{'pictures (' + str(tiles) + ' tiles each)':24s}{'':40s}{best / tiles:10.1f}"
                     f"  (FPS above counts tiles; a picture is {tiles} tiles)")
    lines += ["", "Paper (FPS; its backbone, input size and batch are not published):",
              f"{'platform':24s}{'PatchCore':>10s}{'AST':>10s}{'FRE':>10s}"]
    for row in PAPER_FPS:
        lines.append(f"{row['platform']:24s}{row['PatchCore']:10.2f}{row['AST']:10.2f}{row['FRE']:10.1f}")
    lines.append(f"{'this machine (fre-edge)':24s}{'-':>10s}{'-':>10s}{best:10.1f}")
    if result.get("head_cost"):
        h = result["head_cost"]
        q1, q3 = h["ratio_round_quartiles"]
        lines += ["", f"FRE head: full graph {h['full_ms']:.2f} ms / backbone alone {h['backbone_ms']:.2f} ms = "
                  f"{h['ratio']:.3f}, {h['head_ms']:.2f} ms per call (per-round ratios {q1:.3f}-{q3:.3f}; "
                  f"{h['rounds']} alternating rounds, batch {h['batch']})"]
        if h.get("within_noise"):
            lines.append(f"  within noise: the rounds disagree by more than the head's cost ({q1:.3f}-{q3:.3f}); the "
                         f"PC was busy or the run short. For a firmer figure: close other work and run longer "
                         f"(--duration 60)")
        elif h["ratio"] > HEAD_COST_HINT and not r.get("head_weights"):  # f32 head weights
            lines.append(f"  the head adds more than {HEAD_COST_HINT - 1:.0%} here: `fre-edge export MODEL --format "
                         "openvino --head-weights int8 --check-images GOOD_DIR` has it read a quarter of the bytes")
    if result.get("end_to_end"):
        e = result["end_to_end"]
        lines += ["", f"End to end from {e[0]['images']} image files (read, resize, infer, map at each picture's size; "
                  f"batch {e[0]['batch_size']}, {e[0]['read_workers']} reading threads):"]
        for row in e:
            lines.append(f"{'with overlays' if row['overlays'] else 'scores and maps':24s}{'':40s}"
                         f"{row['images_per_s']:10.1f} images/s")
    return "\n".join(lines)
