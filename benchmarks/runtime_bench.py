"""Runtime latency and FPS per backbone, backend, precision and mode, from one run.

    python -m benchmarks.runtime_bench [--rounds 3] [--seconds 3] [--batch 1]

For each bundle (efficientnet_lite0, resnet18, resnet50; see _bundles.py), measures OpenVINO f32 and bf16
with the latency and the throughput hint, and ONNX Runtime f32: synchronous latency (one request at a
time) and asynchronous FPS (several requests in flight). Configurations are measured in alternation,
round after round; the figures are medians over rounds. The precision OpenVINO actually used is read
back from the compiled model and recorded.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from fre_edge.images import size_json

from ._bundles import BACKBONES, bundle
from ._common import environment, header_md, write

CONFIGS = [
    ("openvino", "f32", "latency"),
    ("openvino", "f32", "throughput"),
    ("openvino", "bf16", "latency"),
    ("openvino", "bf16", "throughput"),
    ("onnxruntime", "f32", "latency"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    args = ap.parse_args()
    from fre_edge.bench import PAPER_FPS, run_bench
    from fre_edge.runtime import load_detector

    env = environment()
    rows = []
    for name in args.backbones.split(","):
        path = bundle(name)
        dets = {c: load_detector(path, backend=c[0], precision=c[1], hint=c[2], batch=args.batch) for c in CONFIGS}
        runs = {c: [] for c in CONFIGS}
        for r in range(args.rounds):
            order = CONFIGS if r % 2 == 0 else CONFIGS[::-1]
            for c in order:
                runs[c].append(run_bench(dets[c], batch=args.batch, duration=args.seconds, warmup=10))
        for c in CONFIGS:
            rs = runs[c]
            det = dets[c]
            rows.append({
                "backbone": name, "input_size": size_json(det.input_size),
                "weights": det.metadata.get("backbone_weights"),
                "backend": c[0], "precision_requested": c[1], "precision_used": det.adapter.precision_used,
                "hint": c[2] if c[0] == "openvino" else "none (sync, then async threads)", "batch": args.batch,
                "latency_ms_median": statistics.median(x["sync"]["latency_ms"]["median"] for x in rs),
                "latency_ms_p90": statistics.median(x["sync"]["latency_ms"]["p90"] for x in rs),
                "latency_ms_p99": statistics.median(x["sync"]["latency_ms"]["p99"] for x in rs),
                "sync_fps": statistics.median(x["sync"]["fps"] for x in rs),
                "async_fps": statistics.median(x["async"]["fps"] for x in rs),
                "requests_in_flight": rs[0]["async"]["requests_in_flight"],
                "rounds": rs,
            })
            print({k: v for k, v in rows[-1].items() if k != "rounds"}, file=sys.stderr)
    md = ["# Runtime latency and FPS on this machine", "", header_md(env),
          f"Batch {args.batch}; {args.rounds} alternating rounds of {args.seconds:g} s per configuration and mode; "
          "medians over rounds. `sync`: one request at a time; `async`: requests in flight (OpenVINO's optimal "
          "number for the hint; ONNX Runtime: a thread pool). Precision used is read back from OpenVINO.", "",
          "| backbone | input | weights | backend | precision asked / used | hint | latency median ms | p90 | p99 "
          "| sync FPS | async FPS (in flight) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['backbone']} | {r['input_size']} | {r['weights']} | {r['backend']} | "
                  f"{r['precision_requested']} / {r['precision_used']} | {r['hint']} | {r['latency_ms_median']:.2f} | "
                  f"{r['latency_ms_p90']:.2f} | {r['latency_ms_p99']:.2f} | {r['sync_fps']:.1f} | "
                  f"{r['async_fps']:.1f} ({r['requests_in_flight']}) |")
    md += ["", "The paper's FPS (its backbone, input size and batch are not published):", "",
           "| platform | PatchCore | AST | FRE |", "|---|---|---|---|"]
    md += [f"| {p['platform']} | {p['PatchCore']} | {p['AST']} | {p['FRE']} |" for p in PAPER_FPS]
    md += ["", "resnet18/resnet50 run with random weights (torchvision ImageNet weights are not available offline "
           "here): latency does not depend on weight values; no accuracy is claimed for them."]
    write("runtime_bench", {"environment": env, "rows": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
