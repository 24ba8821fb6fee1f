"""Where the FRE head's batch-1 time goes: its weights read from memory, cold after the backbone (issue 17)

The head's graph (features in, score and map out, as the bundle computes them) is compiled on its own
(OpenVINO, CPU, f32 inference, latency hint, batch 1), once with the f32 head of ``fre-edge export`` and once
with its INT8 head (``--head-weights int8``). Each round times, in this order:

- ``backbone``: the backbone alone (``images -> pooled features``), called in a loop;
- per head, ``hot``: the head alone called in a loop on one picture's features, so that what it reads stays in
  the CPU's caches between calls;
- per head, ``after backbone``: backbone and head called in turn (the backbone's features fed to the head), each
  call timed on its own: the head then starts with what the backbone left in the caches, as in the bundle's
  single graph; the backbone's calls in this loop show what the head's reads cost the next backbone call;
- ``full graph``: the bundle's graph with the INT8 head, for comparison with backbone + cold head.

Per-call times include the Python call (a few µs, the same for every graph). Bytes: what the head's matmuls read
per call once compiled (each matmul's weight tensor in the runtime model, element count x size: the plugin keeps
one weight buffer per matmul, so f32's V, stored once in the file, is read twice). Bytes per µs of the head's call
is a lower bound of the rate it reads at (the call also runs the residual, the sums and the map). The memory
reference is numpy summing a 256 MB array per thread, on one thread and on one per core (the head's matmuls run
on every core).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from ._common import DATASETS, HEAD_GOAL, environment, header_md, isa_class, write


def head_onnx(det, path: Path) -> None:
    """The detector's scoring of pooled features (head, map upsampling) as an ONNX graph, float features in."""
    import torch

    class Head(torch.nn.Module):
        def forward(self, feat):
            return det.score_features([feat])

    C, h, w = det.heads[0].shape
    program = torch.onnx.export(Head().eval(), (torch.zeros(1, C, h, w),), dynamo=True, input_names=["features"],
                                output_names=["score", "anomaly_map"], optimize=True, verbose=False)
    program.save(str(path), external_data=False)


def matmul_bytes_at_run(compiled, k: int, D: int) -> int:
    """Bytes the head matmuls read per call: each one's weight tensor in the compiled (runtime) model."""
    import numpy as np

    from fre_edge.export.head_weights import head_matmuls_at_run

    total = 0
    for op in head_matmuls_at_run(compiled, k, D):
        t = op.input(1).get_element_type()
        total += int(np.prod(op.input(1).get_partial_shape().get_min_shape())) * t.bitwidth // 8
    return total


def numpy_read_gb_s(threads: int, mb: int = 256, repeats: int = 5) -> float:
    """The best rate of ``repeats`` reads of one ``mb`` MB array per thread, each summed by numpy (which lets
    go of the GIL while it sums), all threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    arrays = [np.ones(mb * 2**20 // 8) for _ in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        best = min(_timed(lambda: list(pool.map(np.sum, arrays))) for _ in range(repeats))
    return sum(a.nbytes for a in arrays) / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="magnetic_tile")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--calls", type=int, default=40, help="calls per loop (each loop timed call by call)")
    args = ap.parse_args()

    import numpy as np
    import openvino as ov
    import torch

    from fre_edge.export.bundle_writer import share_transposed_constants
    from fre_edge.export.head_weights import compress_head
    from fre_edge.export.onnx_graph import export_onnx
    from fre_edge.fit.data import read_dataset
    from fre_edge.fit.features import load_batch
    from fre_edge.timing import markdown_table

    from ._bundles import fitted_model
    from ._openvino import latency_request

    env = environment()
    isa = isa_class(env["machine"]["isa"])
    det = fitted_model("efficientnet_lite0", args.dataset).detector.with_head_form("reconstruct")
    if len(det.heads) != 1:
        raise SystemExit("head_memory times one head; this model has several layers")
    k, D = det.heads[0].n_components, int(det.heads[0].components.shape[1])
    test = read_dataset(DATASETS / args.dataset).test
    x = load_batch([test[0].path], det.input_size).numpy()

    class Backbone(torch.nn.Module):
        def forward(self, images):
            return det.features(images)[0]

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        export_onnx(Backbone(), tmp / "backbone.onnx", det.input_size, ["features"])
        export_onnx(det, tmp / "full.onnx", det.input_size, ["score", "anomaly_map"])
        head_onnx(det, tmp / "head.onnx")
        head_f32 = ov.convert_model(str(tmp / "head.onnx"))
        share_transposed_constants(head_f32)  # as the f32 bundle: V stored once
        models = {"backbone": ov.convert_model(str(tmp / "backbone.onnx")), "head f32": head_f32,
                  "head int8": compress_head(ov.convert_model(str(tmp / "head.onnx"))),
                  "full graph int8": compress_head(ov.convert_model(str(tmp / "full.onnx")))}
    reqs = {n: latency_request(m, 1) for n, m in models.items()}
    heads = ("head f32", "head int8")
    read = {n: matmul_bytes_at_run(reqs[n].get_compiled_model(), k, D) for n in heads}
    feat = reqs["backbone"].infer({0: x})[0].copy()
    for n in heads:  # the head graph scores as the full graph does
        ref = reqs["full graph int8"].infer({0: x})[0] if n == "head int8" else None
        out = reqs[n].infer({0: feat})[0]
        if ref is not None and not np.allclose(out, ref, rtol=1e-4):
            raise SystemExit(f"{n} scores {out} where the full graph gives {ref}")

    pc = time.perf_counter

    def loop(*calls):
        times = [[] for _ in calls]
        for _ in range(args.calls):
            value = x
            for i, (req, feed) in enumerate(calls):
                t0 = pc()
                res = req.infer({0: value if feed is None else feed})
                times[i].append(pc() - t0)
                value = res[0]
        return [statistics.median(v) * 1e6 for v in times]

    for _ in range(3):  # warm-up
        loop((reqs["backbone"], None), (reqs["head int8"], None))
    per_round = []
    for _ in range(args.rounds):
        r = {"backbone": loop((reqs["backbone"], None))[0]}
        for n in heads:
            r[f"{n} hot"] = loop((reqs[n], feat))[0]
            r[f"backbone before {n}"], r[f"{n} after backbone"] = loop((reqs["backbone"], None), (reqs[n], None))
        r["full graph int8"] = loop((reqs["full graph int8"], None))[0]
        per_round.append(r)
    med = {key: statistics.median(r[key] for r in per_round) for key in per_round[0]}
    ratio = {key: statistics.median(r[key] / r["backbone"] for r in per_round) for key in per_round[0]}
    cores = os.cpu_count() or 1
    numpy_gb_s = {"1": numpy_read_gb_s(1), str(cores): numpy_read_gb_s(cores)}

    rows = []
    for n in heads:
        cold, hot = med[f"{n} after backbone"], med[f"{n} hot"]
        rows.append({"head": n.split()[1], "matmul_bytes_at_run": read[n], "hot_us": hot, "after_backbone_us": cold,
                     "hot_share_of_backbone": ratio[f"{n} hot"],
                     "after_backbone_share_of_backbone": ratio[f"{n} after backbone"],
                     "next_backbone_ratio": ratio[f"backbone before {n}"],
                     "bytes_per_us_hot": read[n] / hot, "bytes_per_us_after_backbone": read[n] / cold})
    cold_rate = rows[1]["bytes_per_us_after_backbone"]
    best_rate = max(r["bytes_per_us_after_backbone"] for r in rows)
    goal = HEAD_GOAL[isa]
    budget_us = (goal - 1) * med["backbone"]
    data = {"environment": env, "settings": vars(args), "k": k, "D": D, "backbone_us": med["backbone"],
            "full_graph_int8_ratio": ratio["full graph int8"], "numpy_read_gb_s_by_threads": numpy_gb_s,
            "goal": goal, "head_budget_us": budget_us, "bytes_in_budget_at_int8_cold_rate": budget_us * cold_rate,
            "bytes_in_budget_at_best_cold_rate": budget_us * best_rate,
            "rows": rows, "per_round": per_round}
    table = [[r["head"], f"{r['matmul_bytes_at_run'] / 1e6:.2f}", f"{r['hot_us']:.0f}",
              f"{r['hot_share_of_backbone']:.3f}", f"{r['after_backbone_us']:.0f}",
              f"{r['after_backbone_share_of_backbone']:.3f}", f"{r['bytes_per_us_hot'] / 1e3:.1f}",
              f"{r['bytes_per_us_after_backbone'] / 1e3:.1f}", f"{r['next_backbone_ratio']:.3f}"] for r in rows]
    md = ["# The FRE head's batch-1 time: its weights, hot and cold (issue 17)", "", header_md(env),
          __doc__.split("\n\n", 1)[1].strip(), "",
          f"{args.dataset}: k = {k}, D = {D}; {args.rounds} rounds of {args.calls} calls per loop; medians over rounds "
          f"of per-round medians; shares are per-round ratios to the backbone alone ({med['backbone']:.0f} µs).", "",
          markdown_table(["head", "matmul MB read per call", "hot µs", "hot / backbone", "after backbone µs",
                          "after backbone / backbone", "GB/s hot (at least)", "GB/s after backbone (at least)",
                          "next backbone call / backbone alone"], table), "",
          f"Full graph with the INT8 head / backbone alone, same rounds: {ratio['full graph int8']:.3f}. "
          "numpy summing 256 MB per thread: " + ", ".join(f"{n} thread{'s' if n != '1' else ''} {v:.1f} GB/s"
                                                           for n, v in numpy_gb_s.items()) + ".", "",
          f"Goal (issue 17) on {isa.upper().replace('AVX512', 'AVX-512')}: full graph <= {goal:.2f} x backbone, "
          f"so the head gets {budget_us:.0f} µs. At the INT8 head's rate after the backbone "
          f"({cold_rate / 1e3:.1f} GB/s, counting its whole call as reading) that is "
          f"{budget_us * cold_rate / 1e6:.2f} MB of weights per call; at the fastest rate a head read at after the "
          f"backbone here ({best_rate / 1e3:.1f} GB/s) {budget_us * best_rate / 1e6:.2f} MB; the INT8 head reads "
          f"{rows[1]['matmul_bytes_at_run'] / 1e6:.2f} MB (two matmuls, D k bytes each).", ""]
    write(f"head_memory_{isa}", data, "\n".join(md))


if __name__ == "__main__":
    main()
