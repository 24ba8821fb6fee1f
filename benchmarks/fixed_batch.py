"""A bundle's graph with its dynamic batch against the same graph compiled at the batch size in use

    python -m benchmarks.fixed_batch [--rounds 16] [--block 0.3] [--batches 1,2,8] [--backbones ...]

Bundles carry a dynamic batch dimension so that one file serves any batch. ``load_detector`` without ``batch=``
runs that dynamic graph, except at the batch sizes in ``fre_edge.runtime.adapters.FIXED_BATCHES``, which the
OpenVINO adapter compiles again at that fixed size the first time they come. Timed here, for each bundle and
batch size, in alternating rounds (``fre_edge.timing``): the graph compiled at the batch size (as the adapter
compiles it for those sizes) and the dynamic graph (the same request code, outputs copied the same way), to
choose the sizes. Also recorded: the largest
difference between the two graphs' scores and maps, and the time to compile the fixed graph and run it once.
OpenVINO CPU, f32 (checked), latency hint. Memory: the process's resident memory before and after that first
call (the dynamic graph already run at the same batch), beside the bundle's model.bin.
"""

from __future__ import annotations

import argparse
import statistics
import time

from ._bundles import BACKBONES, bundle
from ._common import environment, header_md, write


def rss_mb() -> float:
    """This process's resident memory, MB (Linux)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def infer_on(req, adapter, x):
    """``adapter.infer`` on the request ``req``: outputs copied out."""
    req.infer({0: x})
    return {name: req.get_output_tensor(i).data.copy() for i, name in enumerate(adapter.output_names)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--block", type=float, default=0.3, help="seconds per timed block")
    ap.add_argument("--batches", default="1,2,8")
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    args = ap.parse_args()
    if args.rounds < 2:
        ap.error("--rounds must be at least 2: the spread is taken over per-round ratios")

    import numpy as np

    from fre_edge.runtime import load_detector
    from fre_edge.timing import alternate, markdown_table, ratio_spread

    env = environment()
    rows = []
    for name in args.backbones.split(","):
        if name not in BACKBONES:
            ap.error(f"unknown backbone {name!r}; use {', '.join(BACKBONES)}")
        path = bundle(name)
        for batch in (int(b) for b in args.batches.split(",")):
            det = load_detector(path, precision="f32", hint="latency")
            adapter = det.adapter
            assert adapter.precision_used == "f32"
            x = np.random.default_rng(0).integers(0, 256, (batch, *det.input_size, 3), dtype=np.uint8)
            dynamic = adapter.request()  # the graph as loaded
            dyn_out = infer_on(dynamic, adapter, x)  # the dynamic graph's memory for this batch comes first
            rss0 = rss_mb()
            t0 = time.perf_counter()
            fixed = adapter.compile_at(batch).create_infer_request()  # as the adapter compiles FIXED_BATCHES
            fixed_out = infer_on(fixed, adapter, x)
            first_ms = (time.perf_counter() - t0) * 1e3
            fixed_mb = rss_mb() - rss0
            diff = {k: float(np.abs(fixed_out[k] - dyn_out[k]).max() / max(np.abs(dyn_out[k]).max(), 1e-30))
                    for k in fixed_out}
            calls = {"fixed": lambda r=fixed, a=adapter: infer_on(r, a, x),
                     "dynamic": lambda r=dynamic, a=adapter: infer_on(r, a, x)}
            lat, per_round = alternate(calls, args.rounds, args.block)
            sp = ratio_spread(per_round, "fixed", "dynamic")
            med = {k: statistics.median(v) * 1e3 for k, v in lat.items()}
            rows.append({"backbone": name, "batch": batch, "head_forms": det.metadata.get("head_forms"),
                         "fixed_ms": med["fixed"], "dynamic_ms": med["dynamic"],
                         "ratio": med["fixed"] / med["dynamic"],
                         "ratio_round_median": statistics.median(sp["ratios"]),
                         "ratio_round_quartiles": [sp["q1"], sp["q3"]],
                         "compile_and_first_call_ms": first_ms, "fixed_graph_rss_mb": fixed_mb,
                         "bin_mb": (path / "model.bin").stat().st_size / 2**20, "max_rel_difference": diff})
    data = {"environment": env, "settings": vars(args), "rows": rows}
    table = [[r["backbone"], r["batch"], f"{r['dynamic_ms']:.2f}", f"{r['fixed_ms']:.2f}", f"{r['ratio']:.3f}",
              "{:.3f} ({:.3f}-{:.3f})".format(r["ratio_round_median"], *r["ratio_round_quartiles"]),
              f"{r['compile_and_first_call_ms']:.0f}", f"{r['fixed_graph_rss_mb']:.0f} ({r['bin_mb']:.0f})",
              ", ".join(f"{k} {v:.1e}" for k, v in r["max_rel_difference"].items())] for r in rows]
    md = ["# Dynamic batch vs the batch size in use", "", header_md(env), __doc__.split("\n\n", 2)[2].strip(), "",
          f"{args.rounds} rounds of alternating {args.block:g} s blocks; ms: medians of all timed calls.", "",
          markdown_table(["backbone", "batch", "dynamic graph ms", "fixed shape ms", "fixed / dynamic (medians)",
                          "per-round ratio: median (quartiles)", "compile + first call, ms",
                          "memory the fixed graph adds, MB (model.bin)",
                          "largest difference / largest value"], table), ""]
    write("fixed_batch", data, "\n".join(md))


if __name__ == "__main__":
    main()
