"""What each lever on the FRE head's batch-1 cost buys, measured on one real fit.

    python -m benchmarks.head_levers [--dataset magnetic_tile] [--rounds 20] [--block 0.2] [--kernels avx2]

Results go to ``head_levers_<isa>`` (``avx512`` where the CPU has AVX-512F, else ``avx2``): the goal differs
between the two classes (1.10 on AVX2, 1.05 on AVX-512), so a run on one class keeps the other's. With
``--kernels avx2`` (results ``head_levers_avx2_capped``) the script runs again under ``ONEDNN_MAX_CPU_ISA=AVX2``,
which caps OpenVINO's oneDNN kernels (convolutions, the INT8 head matmuls) at AVX2, and turns off the CPU
plugin's dynamic quantization (``DYNAMIC_QUANTIZATION_GROUP_SIZE`` 0): the plugin picks its VNNI path from the
CPU's flags, past the cap, and the INT8 matmuls then fail to compile. Kernels the cap does not reach (MLAS's
f32 matrix products, some reductions) are listed per graph: on an AVX-512 CPU this measures the INT8 head on
AVX2 kernels, not an AVX2 PC's memory system.

The default Lite0 model fitted on the dataset's good pictures (Magnetic Tile: k = 438 components of D = 7168,
the largest shared case), exported as `fre-edge export` does (ONNX -> OpenVINO, f32 inference, latency hint, batch
1). Graphs, all timed in the same alternating rounds against the backbone alone (fre_edge.timing):

- ``backbone``: the pooled features only (the denominator of every ratio).
- ``f32``: the bundle's graph (reconstruct head, V stored once, map upsampled in the graph).
- ``f32_grid_map``: the same head, the map left at the feature grid (h x w) for the host to upsample: what
  the upsampling and the full-size map output cost.
- ``score_only``: the floor of any head that reads V once: z = x V^T - b and |d|^2 - |z|^2 (V orthonormal),
  no map.
- ``int8``: what ``fre-edge export --head-weights int8`` writes: both matmuls on INT8 weights (NNCF weight
  compression, INT8_ASYM per output channel), each its own copy in the [out, in] order of its kernel (V for
  the projection, V^T for the reconstruction: 2 D k bytes); ``int8_grid_map`` the same on ``f32_grid_map``.
- ``int8_shared_v``: the earlier export: one INT8 V read by both matmuls, the residual written d - z V.
  OpenVINO folds that minus into the reconstruction's weights, and the CPU plugin then decompresses them to
  f32 at load: only the projection reads INT8 (see "weights at run time"). The head now writes the residual's
  negative, z V - d (e * e is the same); with one shared INT8 V that sign makes the plugin keep both matmuls
  compressed but apply the per-component scales to the reconstruction wrongly (scores off by up to 10x in a
  trial), hence the two copies of ``int8``.
- ``int8_projection``: only the projection's copy of V in INT8, the reconstruction's in f32 (the file then
  holds V in both precisions): the projection's coefficients minimise the reconstruction error, so their
  error reaches the score to second order only.
- ``int4``: as ``int8_shared_v`` with V in INT4 (NNCF INT4_ASYM, one scale and zero point per ``--int4-group``
  inputs; V^T's k = 438 inputs do not split into groups of 128, so no own copy for the reconstruction).
- ``int4_projection``: as ``int8`` with the projection's copy in INT4 (INT4_ASYM, one scale per ``--int4-group``
  of its D inputs): fewer bytes where the error reaches the score to second order only.
- ``split_int8_map``: the score from the f32 projection alone (|d|^2 - |z|^2, as ``score_only``), the map
  from a reconstruction through an INT8 copy of V: the score keeps the float value, only the map moves.

Score error: each variant's scores against the ``f32`` graph's (for the float forms, ``score_only`` and
``split_int8_map``, rounding alone) on every test picture of the dataset (relative, max and median over the
good ones, where the residual is smallest), and image AUROC from each; map error: the largest difference from
the ``f32`` graph's map over all test pictures, relative to that picture's largest ``f32`` map value, and
pixel AUROC and AUPRO (grid maps upsampled on the host as the graph would). Weights at run time: the element
type each head matmul reads in the compiled graph (projection, reconstruction), from OpenVINO's runtime model.
Bytes: the head's constants in the IR (.bin growth over the backbone's). Speed: the ratio of each graph's
median latency to the backbone's, and the median and quartiles of the per-round ratios (each round times every
graph once). Head kernels: what each head matmul ran; head µs: the head's nodes in OpenVINO's per-node profile
(every node run after the backbone's last convolution or pooling; medians of 50 profiled calls, summed), its
matmuls and the rest (reorders, residual, squares, sums, the map's upsampling): a profiled call runs slower
than a timed one, so these say where the head's time goes, not what it adds to the latency.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from ._common import DATASETS, HEAD_GOAL, environment, header_md, isa_class, write
from ._openvino import NO_DYNAMIC_QUANTIZATION

NAMES = ("f32", "f32_grid_map", "score_only", "int8", "int8_grid_map", "int8_shared_v", "int8_projection", "int4",
         "int4_projection", "split_int8_map")
EXACT = ("f32", "f32_grid_map", "score_only", "split_int8_map")  # the score as the float head computes it


def torch_graphs(det, tmp: Path) -> dict[str, Path]:
    """ONNX files of the torch-side variants (backbone, f32, f32_grid_map, score_only)."""
    import torch

    from fre_edge.export.onnx_graph import export_onnx

    head = det.heads[0].in_form("reconstruct")
    size = det.input_size

    class Backbone(torch.nn.Module):
        def forward(self, x):
            return tuple(det.features(x))

    class GridMap(torch.nn.Module):
        def forward(self, x):
            return head(det.features(x)[0])

    def one_read_score(x):
        """(z, d, score): the projection z = x V^T - b, the centred features d, and |d|^2 - |z|^2, which reads V
        once (V orthonormal)."""
        f = det.features(x)[0].reshape(x.shape[0], -1)
        z = torch.nn.functional.linear(f, head.components, -head.bias)
        d = f - head.mean
        return z, d, (d * d).sum(1) - (z * z).sum(1)

    def upsampled_map(e2):
        """The anomaly map from the squared residual [N, D], as the head computes it, upsampled in the graph."""
        C, h, w = head.shape
        return det.upsample(e2.reshape(e2.shape[0], C, h, w).sum(1) / C, 0)

    class ScoreOnly(torch.nn.Module):
        def forward(self, x):
            return one_read_score(x)[2]

    class SharedV(torch.nn.Module):
        """The bundle's graph with the residual written d - z V, as the head did before (int8_shared_v)."""

        def forward(self, x):
            z, d, _ = one_read_score(x)
            e = d - z @ head.components
            e2 = e * e
            return e2.sum(1), upsampled_map(e2)

    class Split(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("recon", head.components.clone())  # a second constant: compressed alone

        def forward(self, x):
            z, d, score = one_read_score(x)
            e = z @ self.recon - d  # the head's sign: the plugin keeps this INT8 matmul compressed
            return score, upsampled_map(e * e)

    out = {}
    for name, module, outputs in (("backbone", Backbone(), ["features"]),
                                  ("f32", det.with_head_form("reconstruct"), ["score", "anomaly_map"]),
                                  ("f32_grid_map", GridMap(), ["score", "anomaly_map"]),
                                  ("score_only", ScoreOnly(), ["score"]),
                                  ("shared_v", SharedV(), ["score", "anomaly_map"]),
                                  ("split_int8_map", Split(), ["score", "anomaly_map"])):
        out[name] = tmp / f"{name}.onnx"
        export_onnx(module, out[name], size, outputs)
    return out


def reconstructions(model) -> frozenset[str]:
    """The head matmuls whose output has D values (z V, the reconstruction) rather than k (the projection)."""
    from fre_edge.export.head_weights import head_matmuls

    head = head_matmuls(model)
    sizes = {op.get_friendly_name(): op.get_output_partial_shape(0)[-1].get_length() for op in model.get_ops()
             if op.get_friendly_name() in head}
    return frozenset(n for n, v in sizes.items() if v == max(sizes.values()))


def openvino_models(onnx: dict[str, Path], int4_group: int) -> dict:
    """The OpenVINO variants; INT8 ones through ``fre_edge.export.head_weights`` (what --head-weights int8 does)."""
    import openvino as ov

    from fre_edge.export.bundle_writer import share_transposed_constants
    from fre_edge.export.head_weights import compress_head, head_matmuls

    def converted(name, share=True):
        m = ov.convert_model(str(onnx[name]))
        if share:
            share_transposed_constants(m)
        return m

    models = {name: converted(name) for name in ("backbone", "f32", "f32_grid_map", "score_only")}
    models["int8"] = compress_head(converted("f32", share=False))
    models["int8_grid_map"] = compress_head(converted("f32_grid_map", share=False))
    models["int8_shared_v"] = compress_head(converted("shared_v"))
    plain = converted("f32", share=False)  # V and V^T as two constants: compress the projection's only
    models["int8_projection"] = compress_head(plain, keep=reconstructions(plain))
    models["int4"] = compress_head(converted("shared_v"), bits=4, group_size=int4_group)
    plain = converted("f32", share=False)
    plain = compress_head(plain, keep=reconstructions(plain), bits=4, group_size=int4_group)
    models["int4_projection"] = compress_head(plain)  # the projection reads no plain constant now: V^T only
    split = converted("split_int8_map", share=False)
    models["split_int8_map"] = compress_head(split, keep=frozenset(head_matmuls(split)) - reconstructions(split))
    return models


CAP = {"ONEDNN_MAX_CPU_ISA": "AVX2"}


BACKBONE_TYPES = ("Convolution", "GroupConvolution", "AvgPool", "MaxPool")  # the last of these ends the backbone


def profile_at_run(model, config: dict, k: int, D: int, x, calls: int = 50) -> dict:
    """OpenVINO's per-node profile of ``calls`` batch-1 calls: the head matmuls' kernels (projection first), the
    kernels past an AVX2 cap (AVX-512, AMX or MLAS's own dispatch), and the head's time, split into its
    matmuls and the rest (every node run after the backbone's last convolution or pooling; sums of per-node
    medians, µs)."""
    from fre_edge.export.head_weights import head_matmuls_at_run

    from ._openvino import latency_request

    req = latency_request(model, 1, {**config, "PERF_COUNT": True})
    times: dict[str, list[float]] = {}
    for _ in range(calls):
        req.infer({0: x})
        prof = req.profiling_info
        end = max(i for i, p in enumerate(prof) if p.node_type in BACKBONE_TYPES)
        for p in prof[end + 1:]:
            times.setdefault(p.node_name, []).append(p.real_time.total_seconds() * 1e6)
    kernel = {p.node_name: p.exec_type for p in prof}
    matmuls = [op.get_friendly_name() for op in head_matmuls_at_run(req.get_compiled_model(), k, D)]
    med = {n: statistics.median(t) for n, t in times.items()}
    return {"head_kernels": [kernel.get(n, "?") for n in matmuls],
            "kernels_past_avx2": sorted({f"{p.node_type} {p.exec_type}" for p in prof
                                         if any(t in p.exec_type for t in ("avx512", "amx", "mlas"))}),
            "head_us": {"matmuls": sum(v for n, v in med.items() if n in matmuls),
                        "rest": sum(v for n, v in med.items() if n not in matmuls)}}


def ir_bytes(model, tmp: Path, name: str) -> int:
    import openvino as ov

    xml = tmp / f"{name}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml.with_suffix(".bin").stat().st_size


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="magnetic_tile")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--block", type=float, default=0.2)
    ap.add_argument("--int4-group", type=int, default=-1, help="inputs per INT4 scale (-1: one per channel)")
    ap.add_argument("--kernels", choices=("native", "avx2"), default="native",
                    help="avx2: cap OpenVINO's oneDNN kernels at AVX2 (see above)")
    args = ap.parse_args()
    if args.kernels == "avx2" and any(os.environ.get(n) != v for n, v in CAP.items()):
        # oneDNN reads the cap once, when OpenVINO's CPU plugin loads: run again with it set
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.head_levers", *sys.argv[1:]],
                  {**os.environ, **CAP})
    config = NO_DYNAMIC_QUANTIZATION if args.kernels == "avx2" else {}

    import numpy as np
    import torch

    from fre_edge.export.head_weights import weight_types_at_run
    from fre_edge.fit.data import read_dataset
    from fre_edge.fit.evaluate import compute_metrics
    from fre_edge.fit.features import load_batch
    from fre_edge.fit.metrics import auroc
    from fre_edge.timing import alternate, markdown_table, ratio_spread

    from ._bundles import fitted_model
    from ._openvino import latency_request

    env = environment()
    isa = "avx2_capped" if args.kernels == "avx2" else isa_class(env["machine"]["isa"])
    fitted = fitted_model("efficientnet_lite0", args.dataset, single=True)
    det = fitted.detector
    k = det.heads[0].n_components
    test = read_dataset(DATASETS / args.dataset).test
    labels = np.array([s.label for s in test])
    pictures = load_batch([s.path for s in test], det.input_size).numpy()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        models = openvino_models(torch_graphs(det, tmp), args.int4_group)
        size = {n: ir_bytes(m, tmp, n) for n, m in models.items()}
        reqs = {n: latency_request(m, 1, config) for n, m in models.items()}
    D = int(det.heads[0].components.shape[1])
    profiles = {n: profile_at_run(models[n], config, k, D, pictures[:1]) for n in NAMES}
    run_weights = {n: ", ".join(weight_types_at_run(reqs[n].get_compiled_model(), k, D)) or "-" for n in NAMES}
    scores, map_metrics, ref_map = {}, {}, None
    for n in NAMES:
        outs = [reqs[n].infer({0: pictures[i:i + 1]}) for i in range(len(pictures))]
        scores[n] = np.array([float(o[0][0]) for o in outs])
        if n == "score_only":
            continue
        m = np.concatenate([o[1] for o in outs])
        if m.shape[1:] != pictures.shape[1:3]:  # a grid map: upsampled on the host, as the graph would
            m = det.upsample(torch.from_numpy(m), 0).numpy()
        if n == "f32":
            ref_map = m
        else:
            peak = ref_map.reshape(len(m), -1).max(1)
            diff = np.abs(m - ref_map).reshape(len(m), -1).max(1) / peak
            map_metrics[n] = {"max_rel_map_difference": float(diff.max())}
        metrics = compute_metrics(test, scores[n], m)
        map_metrics.setdefault(n, {}).update(pixel_auroc=metrics.get("pixel_auroc"), aupro=metrics.get("aupro"))
    x = pictures[:1]
    calls = {n: (lambda r=r: r.infer({0: x})) for n, r in reqs.items()}
    lat, per_round = alternate(calls, args.rounds, args.block)
    base = statistics.median(lat["backbone"])
    good = labels == 0
    ref = scores["f32"]
    rows = []
    for n in NAMES:
        rel = np.abs(scores[n] - ref) / np.abs(ref)
        sp = ratio_spread(per_round, n, "backbone")
        rows.append({"graph": n, "ms": statistics.median(lat[n]) * 1e3, "ratio": statistics.median(lat[n]) / base,
                     "ratio_round_median": statistics.median(sp["ratios"]),
                     "ratio_round_quartiles": [sp["q1"], sp["q3"]],
                     "head_bytes": size[n] - size["backbone"], "weights_at_run": run_weights[n],
                     "image_auroc": auroc(labels, scores[n]),
                     "rel_score_error_good": None if n == "f32" else
                     {"max": float(rel[good].max()), "median": float(np.median(rel[good]))},
                     "score_exact": n in EXACT, **profiles[n],
                     **map_metrics.get(n, {})})
    compiled = reqs["int8"].get_compiled_model()
    data = {"environment": env, "settings": vars(args), "kernel_cap": CAP if args.kernels == "avx2" else None,
            "compile_config": {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", **config},
            "dynamic_quantization_group_size": int(compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")),
            "k": k, "D": int(det.heads[0].components.shape[1]),
            "backbone_ms": base * 1e3, "test_pictures": len(test), "good_test_pictures": int(good.sum()),
            "rows": rows}
    table = []
    for r in rows:
        err = r["rel_score_error_good"]
        table.append([r["graph"], f"{r['ms']:.2f}", f"{r['ratio']:.3f}",
                      f"{r['ratio_round_median']:.3f} ({r['ratio_round_quartiles'][0]:.3f}-"
                      f"{r['ratio_round_quartiles'][1]:.3f})",
                      f"{r['head_bytes'] / 1e6:.2f}", r["weights_at_run"], f"{r['image_auroc']:.4f}",
                      "-" if err is None else f"{err['max']:.1e} / {err['median']:.1e}",
                      "-" if r.get("pixel_auroc") is None else f"{r['pixel_auroc']:.4f}",
                      "-" if r.get("aupro") is None else f"{r['aupro']:.4f}",
                      f"{r['max_rel_map_difference']:.1e}" if "max_rel_map_difference" in r else "-",
                      ", ".join(r["head_kernels"]) or "-",
                      f"{r['head_us']['matmuls']:.0f} + {r['head_us']['rest']:.0f}"])
    md = ["# Levers on the FRE head's batch-1 cost", "", header_md(env),
          __doc__.split("\n\n", 2)[2].strip(), "",
          f"{args.dataset}: k = {k}, D = {data['D']}; backbone alone {base * 1e3:.2f} ms (median); "
          f"{args.rounds} rounds of alternating {args.block:g} s blocks; score error on the "
          f"{data['good_test_pictures']} good test pictures (of {len(test)}). Goal at k = 438, batch 1: "
          f"<= {HEAD_GOAL[isa]:.2f} on {isa.upper().replace('AVX512', 'AVX-512').replace('_CAPPED', '')}. "
          f"Compiled with {data['compile_config']} (dynamic quantization group size at run time: "
          f"{data['dynamic_quantization_group_size']}; 0 is off)"
          + (f"; {CAP} set." if args.kernels == "avx2" else "."), "",
          markdown_table(["graph", "ms", "/ backbone (medians)", "per-round ratio: median (quartiles)",
                          "head MB in .bin", "weights at run time", "image AUROC",
                          "rel. score error vs f32, max / median (good)", "pixel AUROC", "AUPRO",
                          "map difference / peak, max", "head kernels",
                          "head µs in the node profile: matmuls + rest"], table), ""]
    if args.kernels == "avx2":
        md += ["Kernels the cap did not reach, per graph (one profiled call):", ""]
        md += [f"- {r['graph']}: {', '.join(r['kernels_past_avx2']) or 'none'}" for r in rows] + [""]
    write(f"head_levers_{isa}", data, "\n".join(md))


if __name__ == "__main__":
    main()
