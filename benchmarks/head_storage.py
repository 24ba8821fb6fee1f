"""The FRE head's weights stored once (issue 17, item 1): bundle size and batch-1 latency, before and after.

For each backbone, the same exported ONNX (``reconstruct`` head form, the one that reads V twice) is
converted to an OpenVINO IR two ways: as OpenVINO's converter leaves it ("duplicated": V and a folded copy
of V^T, one per matmul) and as ``fre-edge export`` now writes it ("shared": both matmuls read V, one with
transpose_b flipped; ``fre_edge.export.bundle_writer.share_transposed_constants``). Reported: the .bin
sizes beside the backbone-only .bin and 4 D k, the largest score difference between the two, and the
batch-1 f32 latency of both, timed in alternating blocks round after round (ratio of medians, and the
quartiles of the per-round ratios).

    python -m benchmarks.head_storage [--rounds 20] [--block 0.25] [--backbones efficientnet_lite0,resnet18,resnet50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from ._bundles import BACKBONES, bundle
from ._common import environment, header_md, write
from ._openvino import alternate_requests


def _bin_bytes(model, folder: Path, name: str) -> int:
    import openvino as ov

    ov.save_model(model, str(folder / f"{name}.xml"), compress_to_fp16=False)
    return (folder / f"{name}.bin").stat().st_size


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--block", type=float, default=0.25, help="seconds per timed block")
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    args = ap.parse_args()
    if args.rounds < 2:
        ap.error("--rounds must be at least 2: the spread is taken over per-round ratios")
    import numpy as np
    import openvino as ov

    from fre_edge.export.bundle_writer import share_transposed_constants
    from fre_edge.runtime.adapters import cut_to_backbone
    from fre_edge.runtime.bundle import read_manifest
    from fre_edge.timing import markdown_table, ratio_spread

    env = environment()
    core = ov.Core()
    f32 = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}  # as _openvino.latency_request
    rows = []
    for name in args.backbones.split(","):
        path = bundle(name, suffix="_reconstruct", head_form="reconstruct")
        meta = read_manifest(path)
        size, k = meta["input_size"], meta["n_components"][0]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            dup = ov.convert_model(str(path / "model.onnx"))
            shared = ov.convert_model(str(path / "model.onnx"))
            rewired = share_transposed_constants(shared)
            sizes = {"duplicated": _bin_bytes(dup, tmp, "dup"), "shared": _bin_bytes(shared, tmp, "shared"),
                     "backbone_only": _bin_bytes(cut_to_backbone(dup).clone(), tmp, "bb")}
        D = int(np.prod(cut_to_backbone(dup).outputs[0].get_partial_shape()[1:].to_shape()))
        x = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
        reqs = {n: core.compile_model(m, "CPU", f32).create_infer_request() for n, m in
                (("duplicated", dup), ("shared", shared))}
        scores = {n: float(r.infer({0: x})["score"][0]) for n, r in reqs.items()}
        lat, per_round = alternate_requests(reqs, x, args.rounds, args.block)
        spread = ratio_spread(per_round, "shared", "duplicated")
        q1, q3 = spread["q1"], spread["q3"]
        row = {"backbone": name, "input_size": size, "D": D, "k": k, "matmuls_rewired": rewired,
               "bin_bytes": sizes, "four_D_k_bytes": 4 * D * k,
               "shared_over_backbone_plus_4Dk": sizes["shared"] / (sizes["backbone_only"] + 4 * D * k),
               "score_rel_diff": abs(scores["shared"] / scores["duplicated"] - 1),
               "median_ms": {n: statistics.median(v) * 1e3 for n, v in lat.items()},
               "calls": {n: len(v) for n, v in lat.items()}, "ratio_round_quartiles": [q1, q3],
               "weights": meta.get("backbone_weights")}
        row["latency_ratio"] = row["median_ms"]["shared"] / row["median_ms"]["duplicated"]
        rows.append(row)
        print(row, file=sys.stderr)
    mb = 1 / 1e6
    md = ["# The FRE head's weights stored once", "", header_md(env),
          f"OpenVINO CPU, f32, latency hint, batch 1; `reconstruct` head form (the form whose two matmuls read V); "
          f"{args.rounds} rounds of alternating {args.block:g} s blocks; latency ratio = median shared / median "
          "duplicated over all timed calls; spread = quartiles of the per-round ratios.", "",
          markdown_table(
              ["backbone", "input", "D", "k", "weights", "backbone-only .bin MB", "4 D k MB", "duplicated .bin MB",
               "shared .bin MB", "shared / (backbone + 4 D k)", "score rel. diff", "duplicated ms", "shared ms",
               "latency ratio", "quartiles"],
              [[r["backbone"], r["input_size"], r["D"], r["k"], r["weights"],
                f"{r['bin_bytes']['backbone_only'] * mb:.2f}", f"{r['four_D_k_bytes'] * mb:.2f}",
                f"{r['bin_bytes']['duplicated'] * mb:.2f}", f"{r['bin_bytes']['shared'] * mb:.2f}",
                f"{r['shared_over_backbone_plus_4Dk']:.4f}", f"{r['score_rel_diff']:.1e}",
                f"{r['median_ms']['duplicated']:.2f}", f"{r['median_ms']['shared']:.2f}", f"{r['latency_ratio']:.3f}",
                f"{r['ratio_round_quartiles'][0]:.3f}-{r['ratio_round_quartiles'][1]:.3f}"] for r in rows])]
    md += ["", "Random weights (resnet18/50): torchvision's ImageNet weights are not available offline here; sizes "
           "and latency do not depend on weight values. k is the PCA rank from fitting on MVTec bottle's 188 "
           "fitting images. The file holds V once; the CPU plugin lays the weights out for each matmul when it "
           "compiles, so what runs is the same graph."]
    write("head_storage", {"environment": env, "rows": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
