"""Which route to the OpenVINO IR: torch -> ONNX (dynamo exporter) -> IR, or OpenVINO's direct conversion.

    python -m benchmarks.export_route [--rounds 20] [--block 0.25]

For each backbone (the bundles' fitted models, see _bundles.py), the same FREDetector is converted both
ways: (a) ``fre_edge.export.onnx_graph.export_onnx`` then ``openvino.convert_model(model.onnx)``, as
``fre-edge export`` does; (b) ``openvino.convert_model(module, example_input=...)`` on the torch module.
Reported per route: conversion time, IR .bin size, operation count, batch-1 f32 latency on OpenVINO CPU
(both graphs in short alternating blocks, as in export_head_cost.py) and the largest relative score
difference between the two on the same input.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fre_edge.images import size_json

from ._bundles import BACKBONES, fitted_model
from ._common import environment, header_md, write
from ._openvino import alternate_requests, latency_request


def convert(det, size: tuple[int, int], route: str, out: Path):
    import openvino as ov
    import torch

    from fre_edge.export.onnx_graph import export_onnx

    t0 = time.perf_counter()
    if route == "onnx":
        export_onnx(det, out / "model.onnx", size, ["score", "anomaly_map"])
        model = ov.convert_model(str(out / "model.onnx"))
    else:
        with torch.inference_mode():
            model = ov.convert_model(det.eval(), example_input=torch.zeros(1, *size, 3, dtype=torch.uint8),
                                     input=[(ov.PartialShape([-1, size, size, 3]), ov.Type.u8)])
    ov.save_model(model, str(out / "model.xml"), compress_to_fp16=False)
    seconds = time.perf_counter() - t0
    return {"convert_s": seconds, "bin_mb": (out / "model.bin").stat().st_size / 1e6,
            "ops": len(model.get_ordered_ops())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--block", type=float, default=0.25)
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    args = ap.parse_args()
    import numpy as np
    import openvino as ov

    env = environment()
    core = ov.Core()
    rows = []
    for name in args.backbones.split(","):
        fitted = fitted_model(name, single=True)
        det, size = fitted.detector.eval(), fitted.config.input_size
        x = np.random.default_rng(0).integers(0, 256, (1, *size, 3), dtype=np.uint8)
        with tempfile.TemporaryDirectory() as tmp:
            facts, reqs = {}, {}
            for route in ("onnx", "direct"):
                (Path(tmp) / route).mkdir()
                facts[route] = convert(det, size, route, Path(tmp) / route)
                reqs[route] = latency_request(core.read_model(str(Path(tmp) / route / "model.xml")), 1)
            scores = {r: np.array(q.infer({0: x})[0]).copy() for r, q in reqs.items()}
            lat, _ = alternate_requests(reqs, x, args.rounds, args.block)
        med = {r: statistics.median(v) * 1e3 for r, v in lat.items()}
        rows.append({"backbone": name, "input_size": size_json(size), "head_forms": [h.form for h in det.heads],
                     "routes": {r: {**facts[r], "latency_ms": med[r]} for r in facts},
                     "direct_over_onnx_latency": med["direct"] / med["onnx"],
                     "score_max_rel_diff": float(np.max(np.abs(scores["direct"] / scores["onnx"] - 1)))})
        print(rows[-1], file=sys.stderr)
    md = ["# Export route: torch -> ONNX -> OpenVINO IR vs OpenVINO's direct conversion", "", header_md(env),
          f"Batch-1 latency on OpenVINO CPU, f32 (checked), latency hint, {args.rounds} rounds of alternating "
          f"{args.block:g} s blocks, medians over all calls. Conversion time includes writing the IR.", "",
          "| backbone | head form | route | convert s | IR .bin MB | ops | latency ms | direct / onnx latency | "
          "max rel score diff |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for route, f in r["routes"].items():
            md.append(f"| {r['backbone']} | {','.join(r['head_forms'])} | {route} | {f['convert_s']:.1f} | "
                      f"{f['bin_mb']:.1f} | {f['ops']} | {f['latency_ms']:.2f} | "
                      f"{r['direct_over_onnx_latency']:.3f} | {r['score_max_rel_diff']:.1e} |")
    write("export_route", {"environment": env, "rows": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
