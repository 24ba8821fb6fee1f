"""Where the FRE head's time goes at batch 1: OpenVINO's per-node counters, full graph vs backbone alone.

    python -m benchmarks.export_head_profile [--backbones efficientnet_lite0,resnet18,resnet50] [--rounds 20]

The same alternation as export_head_cost.py (f32, latency hint, raw infer calls, short alternating blocks),
with PERF_COUNT on. Per node, the median of its time over all timed calls. Reported: the head's own
nodes (those the backbone-only graph does not have) one by one, and the backbone's nodes summed, alone
and inside the full graph; their difference is what running next to the head costs the backbone (most
likely through the cache: the head's weights pass through it between the backbone's calls). Node times do
not add up to the wall-clock latency exactly (scheduling and copies are not nodes).
"""

from __future__ import annotations

import argparse
import statistics

from ._bundles import BACKBONES, bundle
from ._common import environment, header_md, write
from ._openvino import NO_DYNAMIC_QUANTIZATION, alternate_requests, latency_request


def profile(backbone: str, rounds: int, block: float) -> dict:
    import numpy as np
    import openvino as ov

    from fre_edge.runtime.adapters import cut_to_backbone

    xml = str(bundle(backbone) / "model.xml")
    core = ov.Core()
    perf = {"PERF_COUNT": True}
    reqs = {"full": latency_request(core.read_model(xml), 1, perf),
            "backbone": latency_request(cut_to_backbone(core.read_model(xml)).clone(), 1, perf)}
    size = BACKBONES[backbone]["input_size"]
    x = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    nodes = {k: {} for k in reqs}

    def collect(name, req):
        for p in req.profiling_info:
            nodes[name].setdefault(f"{p.node_name} [{p.node_type}, {p.exec_type}]", []).append(
                p.real_time.total_seconds() * 1e6)

    lat, _ = alternate_requests(reqs, x, rounds, block, after_call=collect)
    med = {k: {n: statistics.median(v) for n, v in d.items()} for k, d in nodes.items()}
    in_bb = set(med["backbone"])
    head = sorted(((t, n) for n, t in med["full"].items() if n not in in_bb), reverse=True)
    row = {"backbone": backbone, "batch": 1, "input_size": size, "precision_used": "f32",
           "latency_median_ms": {k: statistics.median(v) * 1e3 for k, v in lat.items()},
           "calls": {k: len(v) for k, v in lat.items()},
           "backbone_nodes_us": {"alone": sum(med["backbone"].values()),
                                 "in_full_graph": sum(t for n, t in med["full"].items() if n in in_bb)},
           "head_nodes_us": {n: t for t, n in head}}
    row["ratio"] = row["latency_median_ms"]["full"] / row["latency_median_ms"]["backbone"]
    return row


def weight_probe(backbone: str, rounds: int, block: float) -> dict:
    """The head's projection alone, z = d V^T with the bundle's real V, in f32 inference precision, with its
    weights stored as f32, FP16 (what save_model(compress_to_fp16=True) does) or INT8 (NNCF compress_weights,
    INT8_ASYM per channel; OpenVINO CPU then also quantizes the input per group unless
    DYNAMIC_QUANTIZATION_GROUP_SIZE is 0): is storing the head's weights in fewer bytes a way to a cheaper
    head, and what does it do to the scores? d: real centred features of MVTec bottle test images."""
    import nncf
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops
    from openvino._offline_transformations import compress_model_transformation

    from ._bundles import fitted_model
    from ._common import DATASETS
    from fre_edge.fit.data import read_dataset
    from fre_edge.fit.features import load_batch
    from fre_edge.runtime import load_backbone_only

    head = fitted_model(backbone).detector.heads[0]
    V, mu = head.components.numpy().astype(np.float64), head.mean.numpy().astype(np.float64)
    k, D = V.shape
    det = load_backbone_only(bundle(backbone), precision="f32")
    paths = [s.path for s in read_dataset(DATASETS / "mvtec_bottle").test][::8]
    feats = det.adapter.infer(load_batch(paths, det.input_size).numpy())
    d = (next(iter(feats.values())).reshape(len(paths), -1) - mu).astype(np.float32)  # [n, D]

    def model(weights: str):
        x = ops.parameter([1, D], np.float32)
        m = ov.Model([ops.matmul(x, ops.constant(V.astype(np.float32)), False, True).output(0)], [x], "projection")
        if weights == "fp16":
            compress_model_transformation(m)
        elif weights.startswith("int8"):
            m = nncf.compress_weights(m, mode=nncf.CompressWeightsMode.INT8_ASYM)
        return m

    variants = {"f32": ("f32", None), "fp16": ("fp16", None), "int8": ("int8", None),
                "int8_no_dynamic_quantization": ("int8", NO_DYNAMIC_QUANTIZATION)}
    reqs = {name: latency_request(model(w), 1, extra) for name, (w, extra) in variants.items()}

    def score(z):  # the exact score given this z: |d - V^T z|^2, float64
        e = d.astype(np.float64) - z.astype(np.float64) @ V
        return (e * e).sum(1)

    zs = {name: np.concatenate([req.infer({0: d[i : i + 1]})[0].copy() for i in range(len(d))])
          for name, req in reqs.items()}
    ref = score(zs["f32"])
    lat, _ = alternate_requests(reqs, d[:1], rounds, block)
    return {"backbone": backbone, "shape": [k, D], "weights_mb_f32": 4 * k * D / 1e6, "n_images": len(d),
            "median_ms": {n: statistics.median(v) * 1e3 for n, v in lat.items()},
            "score_max_rel_diff": {n: float(np.max(np.abs(score(z) - ref) / ref)) for n, z in zs.items() if n != "f32"}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--block", type=float, default=0.25, help="seconds per timed block")
    args = ap.parse_args()
    env = environment()
    rows = [profile(b, args.rounds, args.block) for b in args.backbones.split(",")]
    probe = weight_probe("resnet50" if "resnet50" in args.backbones else rows[-1]["backbone"], args.rounds, args.block)
    md = ["# Where the FRE head's time goes (per-node profile)", "", header_md(env),
          f"Batch 1, OpenVINO CPU f32, latency hint, PERF_COUNT on; {args.rounds} rounds of alternating "
          f"{args.block:g} s blocks; per node, the median over all timed calls. Backbone nodes: summed, alone and "
          "inside the full graph; a positive difference is what running next to the head costs the backbone "
          "(most likely through the cache: the head's weights pass through it between the backbone's calls).", "",
          "| backbone | full / backbone latency | backbone nodes alone µs | in full graph µs | head nodes µs "
          "| largest head nodes (µs) |", "|---|---|---|---|---|---|"]
    for r in rows:
        b, h = r["backbone_nodes_us"], r["head_nodes_us"]
        top = "; ".join(f"{n} {t:.0f}" for n, t in list(h.items())[:3])
        md.append(f"| {r['backbone']} @ {r['input_size']} | {r['latency_median_ms']['full']:.3f} / "
                  f"{r['latency_median_ms']['backbone']:.3f} ms = {r['ratio']:.3f} | {b['alone']:.0f} | "
                  f"{b['in_full_graph']:.0f} ({b['in_full_graph'] - b['alone']:+.0f}) | {sum(h.values()):.0f} | "
                  f"{top} |")
    m, err = probe["median_ms"], probe["score_max_rel_diff"]
    md += ["", f"Head weights in fewer bytes ({probe['backbone']}'s projection alone, V {probe['shape'][0]} x "
           f"{probe['shape'][1]}, {probe['weights_mb_f32']:.1f} MB in f32; f32 inference precision; same alternation; "
           f"score error: the exact score from each variant's z on {probe['n_images']} MVTec bottle test images, "
           "max relative difference from f32; see `weight_probe`):", "",
           "| weights | projection ms | vs f32 | score max rel. diff |", "|---|---|---|---|"]
    md += [f"| {n} | {t:.3f} | {t / m['f32']:.2f}x | {err[n]:.1e} |" if n in err else f"| {n} | {t:.3f} | 1.00x | 0 |"
           for n, t in m.items()]
    write("export_head_profile", {"environment": env, "rows": rows, "weight_probe": probe}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
