"""The FRE head's cost against the number of components k, on OpenVINO and ONNX Runtime (issue 17, items 3-4).

    python -m benchmarks.head_k_sweep [--rounds 12] [--block 0.2] [--ks 24,158,438,1000] [--batches 1,8]

Lite0 (ImageNet weights) cut at blocks.10, 256 px, pool 2: D = 112 x 8 x 8 = 7168. For each k the head holds k
random orthonormal components (a QR of a Gaussian D x k matrix) and a random mean: the graph, its shapes and its
bytes are those of a fit with k components, and a graph's latency does not depend on its weights' values, so no
fit with 1000+ images is needed (accuracy is not measured here). Every graph is exported from torch to ONNX
once; OpenVINO converts that ONNX as `fre-edge export` does (f32, checked; latency hint), ONNX Runtime runs
it (all graph optimisations). A third runtime, ``openvino int8 head``, is what ``fre-edge export --head-weights
int8`` writes for each k: the ``reconstruct`` form (for every k) with both head matmuls' weights in INT8 (NNCF
weight compression, ``fre_edge.export.head_weights.compress_head``), on OpenVINO.
The backbone-only graph is the same detector's pooled features, exported the same way. For each batch, every
runtime's backbone and full graphs run in the same rounds of alternating blocks (fre_edge.timing), so ratios
and the runtimes' latencies are compared within one run; ratio = median full-graph latency / median backbone
latency of the same runtime (the INT8 head's: OpenVINO's backbone); spread = quartiles of the per-round ratios.

ISA: the rows run on this machine's own kernels; results go to ``head_k_sweep_<isa class>`` (avx2, avx512).
Where the CPU has AVX-512, ``--isa-cap avx2`` re-runs the OpenVINO rows in a child process with
``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN reads it at start-up; OpenVINO's own JIT kernels are capped only by
OV_CPU_MAX_ISA, which release wheels ignore) and with the CPU plugin's dynamic quantization off (it picks its
VNNI path from the CPU's flags, past the cap, and the INT8 matmuls then fail to compile). ONNX Runtime's MLAS picks its
kernels from CPUID and has no run-time cap. Which kernels ran is read from OpenVINO's execution graph
(``primitive types``), so a cap that is not honoured shows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ._common import HEAD_GOAL, environment, header_md, isa_class, write

D_SHAPE = (112, 8, 8)
INT8 = "openvino int8 head"


def build_graphs(ks: list[int], tmp: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """ONNX files: "backbone" and "k=K" for each K (see the module docstring); and "k=K" in the ``reconstruct``
    form, for the INT8 head."""
    import torch

    from fre_edge.export.onnx_graph import export_onnx
    from fre_edge.fit.model import FREHead
    from fre_edge.fit.pca import Subspace
    from fre_edge.fit.pipeline import FitConfig, assemble_detector, build_detector

    cfg = FitConfig(input_size=256).validate()
    shell = build_detector(cfg, [], [])

    class Features(torch.nn.Module):
        def __init__(self, det):
            super().__init__()
            self.det = det

        def forward(self, x):
            return tuple(self.det.features(x))

    out, recon = {"backbone": tmp / "backbone.onnx"}, {}
    export_onnx(Features(shell), out["backbone"], 256, ["features"])
    gen = torch.Generator().manual_seed(0)
    d = D_SHAPE[0] * D_SHAPE[1] * D_SHAPE[2]
    for k in ks:
        q, _ = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
        sub = Subspace(torch.rand(d, generator=gen).float(), q.T.float().contiguous(), torch.ones(k), "random")
        det = assemble_detector(cfg, shell.backbone, [FREHead(sub, D_SHAPE)])
        out[f"k={k}"] = tmp / f"k{k}.onnx"
        export_onnx(det, out[f"k={k}"], 256, ["score", "anomaly_map"])
        recon[f"k={k}"] = tmp / f"k{k}_reconstruct.onnx"
        export_onnx(det.with_head_form("reconstruct"), recon[f"k={k}"], 256, ["score", "anomaly_map"])
    return out, recon


def primitive_types(compiled) -> list[str]:
    """The distinct kernel names OpenVINO chose (execution graph's runtime info), e.g. jit_avx2_FP32."""
    kinds = set()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "primitiveType" in info:
            kinds.add(info["primitiveType"].astype(str))
    return sorted(kinds)


def measure(graphs: dict[str, Path], recon: dict[str, Path], batches: list[int], rounds: int, block: float,
            runtimes: list[str]) -> list:
    import numpy as np
    import openvino as ov
    import onnxruntime as ort

    from fre_edge.export.bundle_writer import share_transposed_constants
    from fre_edge.export.head_weights import compress_head
    from fre_edge.timing import alternate, ratio_spread

    from ._openvino import NO_DYNAMIC_QUANTIZATION, latency_request

    capped = os.environ.get("ONEDNN_MAX_CPU_ISA")
    config = NO_DYNAMIC_QUANTIZATION if capped else {}
    rows = []
    for batch in batches:
        x = np.random.default_rng(0).integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)
        calls, kinds = {}, {r: set() for r in runtimes}  # every runtime's graphs in the same rounds
        for runtime in runtimes:
            for name, path in graphs.items():
                key = f"{runtime}|{name}"
                if runtime == INT8 and name == "backbone":  # the same graph as OpenVINO's: timed once
                    continue
                if runtime == INT8:  # as export --head-weights int8 writes it
                    req = latency_request(compress_head(ov.convert_model(str(recon[name]))), batch, config)
                elif runtime != "onnxruntime":  # converted as export_bundle converts (V stored once)
                    model = ov.convert_model(str(path))
                    share_transposed_constants(model)
                    req = latency_request(model, batch, config)
                else:
                    opts = ort.SessionOptions()
                    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                    calls[key] = (lambda s=sess: s.run(None, {"images": x}))
                    continue
                kinds[runtime].update(primitive_types(req.get_compiled_model()))
                calls[key] = (lambda r=req: r.infer({0: x}))
        lat, per_round = alternate(calls, rounds, block)
        for runtime in runtimes:
            den = ("openvino" if runtime == INT8 else runtime) + "|backbone"
            base = statistics.median(lat[den])
            for name in graphs:
                if name == "backbone":
                    continue
                key = f"{runtime}|{name}"
                sp = ratio_spread(per_round, key, den)
                rows.append({"runtime": runtime, "batch": batch, "k": int(name[2:]),
                             "backbone_ms": base * 1e3, "full_ms": statistics.median(lat[key]) * 1e3,
                             "ratio": statistics.median(lat[key]) / base,
                             "ratio_round_quartiles": [sp["q1"], sp["q3"]],
                             "head_mb_reconstruct": 2 * (1 if runtime == INT8 else 4) * 7168 * int(name[2:]) / 1e6,
                             "isa_cap": capped,
                             "openvino_kernels": sorted(kinds[runtime]) if runtime != "onnxruntime" else None})
        print(f"batch {batch} done", file=sys.stderr, flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--block", type=float, default=0.2)
    ap.add_argument("--ks", default="24,158,438,1000")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--isa-cap", default=None, help="also run the OpenVINO rows with ONEDNN_MAX_CPU_ISA=THIS")
    ap.add_argument("--child", metavar="JSON", help=argparse.SUPPRESS)  # internal: graphs to time, print rows
    args = ap.parse_args()
    ks, batches = [int(k) for k in args.ks.split(",")], [int(b) for b in args.batches.split(",")]
    if args.child:
        given = json.loads(args.child)
        graphs, recon = ({k: Path(v) for k, v in given[part].items()} for part in ("graphs", "recon"))
        print(json.dumps(measure(graphs, recon, batches, args.rounds, args.block, ["openvino", INT8])))
        return
    from fre_edge.bench import cpu_info
    from fre_edge.fit.model import head_form
    from fre_edge.timing import markdown_table

    env = environment()
    with tempfile.TemporaryDirectory() as t:
        graphs, recon = build_graphs(ks, Path(t))
        rows = measure(graphs, recon, batches, args.rounds, args.block, ["openvino", "onnxruntime", INT8])
        capped = []
        if args.isa_cap:
            child = subprocess.run([sys.executable, "-m", "benchmarks.head_k_sweep", "--rounds", str(args.rounds),
                                    "--block", str(args.block), "--batches", args.batches,
                                    "--child", json.dumps({"graphs": {k: str(v) for k, v in graphs.items()},
                                                           "recon": {k: str(v) for k, v in recon.items()}})],
                                   capture_output=True, text=True,
                                   env={**os.environ, "ONEDNN_MAX_CPU_ISA": args.isa_cap})
            if child.returncode != 0:
                raise SystemExit(child.stderr[-2000:])
            capped = json.loads(child.stdout.strip().splitlines()[-1])
    data = {"environment": env, "settings": {"rounds": args.rounds, "block": args.block, "ks": ks,
                                             "batches": batches, "isa_cap": args.isa_cap}, "rows": rows,
            "capped_rows": capped}
    isa = " ".join(cpu_info()["isa"]) or "-"
    table = []
    for r in rows + capped:
        table.append([r["runtime"] + (f" (ONEDNN_MAX_CPU_ISA={r['isa_cap']})" if r["isa_cap"] else ""), r["batch"],
                      r["k"], "reconstruct" if r["runtime"] == INT8 else head_form(r["k"], D_SHAPE[0]),
                      f"{r['head_mb_reconstruct']:.1f}" if r["runtime"] == INT8 or head_form(r["k"], D_SHAPE[0])
                      == "reconstruct" else "-", f"{r['backbone_ms']:.2f}", f"{r['full_ms']:.2f}",
                      f"{r['ratio']:.3f}", f"{r['ratio_round_quartiles'][0]:.3f}-{r['ratio_round_quartiles'][1]:.3f}"])
    best = []
    for batch in batches:
        for k in ks:
            cand = {r["runtime"]: r["full_ms"] for r in rows
                    if r["batch"] == batch and r["k"] == k and r["runtime"] != INT8}
            fast = min(cand, key=cand.get)
            best.append([batch, k, fast, " / ".join(f"{cand[n]:.2f}" for n in ("openvino", "onnxruntime"))])
    native = sorted({k for r in rows for k in (r["openvino_kernels"] or [])})
    capped_kinds = sorted({k for r in capped for k in (r["openvino_kernels"] or [])})
    cls = isa_class(cpu_info()["isa"])
    md = ["# The FRE head's cost against k: OpenVINO and ONNX Runtime", "", header_md(env),
          f"Lite0 blocks.10, 256 px, pool 2 (D = 7168); k random orthonormal components per graph (timing only); "
          f"f32 inference (the {INT8} rows: INT8 head weights); {args.rounds} rounds of alternating {args.block:g} s "
          f"blocks per batch, all runtimes in the same rounds; ratio = median full graph / median backbone-only "
          f"latency of the same runtime; spread = quartiles of the per-round ratios; head MB: what the reconstruct "
          f"form's two matmuls read. This machine's ISA: {isa}. Goal (issue 17): <= 1.10 at k = 438, batch 1, "
          f"on AVX2 kernels, <= 1.05 on AVX-512 (this machine's class: {HEAD_GOAL[cls]:.2f}).", "",
          markdown_table(["runtime", "batch", "k", "head form", "head MB", "backbone ms", "full graph ms", "ratio",
                          "per-round quartiles"], table), "",
          "Faster runtime for the full graph with the f32 head, per batch and k (median ms, OpenVINO / ONNX "
          "Runtime):", "",
          markdown_table(["batch", "k", "faster", "OpenVINO / ONNX Runtime ms"], best), "",
          f"OpenVINO kernels seen (execution graph), native: {', '.join(native)}"
          + (f"; with ONEDNN_MAX_CPU_ISA={args.isa_cap}: {', '.join(capped_kinds)}" if capped else "") + ".", ""]
    write(f"head_k_sweep_{cls}", data, "\n".join(md))


if __name__ == "__main__":
    main()
