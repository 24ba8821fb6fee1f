"""Accuracy and speed across precisions, from one run.

    python -m benchmarks.precision_table [--rounds 3] [--seconds 2]

Per backbone and dataset: OpenVINO f32, bf16 (f32 IR, INFERENCE_PRECISION_HINT=bf16), f16 weights (IR
compressed to FP16, f32 inference), INT8 (NNCF PTQ on good training images, FRE head kept float) and INT8 head
weights (``fre-edge export --head-weights int8``: the backbone f32, the head's two matmuls on INT8 weights,
checked on the first 16 good test pictures). Results go to ``precision_table_<isa>`` (``avx512`` where the CPU
has AVX-512F, else ``avx2``): bf16 and INT8 speeds depend on the class.
Accuracy: image AUROC, pixel AUROC on the test set (Lite0 only: the ResNets have no ImageNet weights
offline here, so their accuracy would mean nothing). Speed: batch-1 latency FPS (latency hint, one
request) and throughput FPS (throughput hint, async), in alternating rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

from ._bundles import bundle, int8_bundle
from ._common import DATASETS, environment, header_md, isa_class, write

VARIANTS = ["f32", "bf16", "f16-weights", "int8", "int8-head"]
CHECK_PICTURES = 16


def variant_path(backbone, dataset, variant):
    if variant == "int8":
        return int8_bundle(backbone, dataset)
    if variant == "int8-head":
        from fre_edge.fit.data import read_dataset

        good = sorted(s.path for s in read_dataset(DATASETS / dataset).test if s.label == 0)[:CHECK_PICTURES]
        return bundle(backbone, suffix="_int8_head", dataset=dataset, formats=("openvino",), head_weights="int8",
                      check_images=tuple(good))
    if variant == "f16-weights":
        return bundle(backbone, suffix="_fp16", dataset=dataset, fp16=True)
    return bundle(backbone, dataset=dataset)


def accuracy(det, samples, masks):
    from fre_edge.fit.evaluate import BundleScorer, score_images
    from fre_edge.fit.metrics import auroc

    scores, maps = score_images(BundleScorer(det), [s.path for s in samples], batch_size=8, progress=False)
    return {"image_auroc": auroc([s.label for s in samples], scores), "pixel_auroc": auroc(masks, maps)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    from fre_edge.bench import time_async, time_sync
    from fre_edge.fit.data import read_dataset
    from fre_edge.images import load_mask
    from fre_edge.runtime import load_detector

    env = environment()
    plan = [("efficientnet_lite0", "magnetic_tile", True), ("efficientnet_lite0", "mvtec_bottle", True),
            ("resnet18", "mvtec_bottle", False), ("resnet50", "mvtec_bottle", False)]
    rows = []
    for backbone, dataset, with_acc in plan:
        paths = {v: variant_path(backbone, dataset, v) for v in VARIANTS}
        hint_precision = {"f32": "f32", "bf16": "bf16", "f16-weights": "f32", "int8": "f32", "int8-head": "f32"}
        acc = {}
        if with_acc:
            ds = read_dataset(DATASETS / dataset)
            size = 256
            masks = np.stack([load_mask(s.mask, size, size) for s in ds.test])
            for v in VARIANTS:
                det = load_detector(paths[v], precision=hint_precision[v])
                acc[v] = accuracy(det, ds.test, masks)
                print(backbone, dataset, v, acc[v], file=sys.stderr, flush=True)
        lat = {v: load_detector(paths[v], precision=hint_precision[v], hint="latency", batch=1) for v in VARIANTS}
        thr = {v: load_detector(paths[v], precision=hint_precision[v], hint="throughput", batch=1) for v in VARIANTS}
        x = np.random.default_rng(0).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
        fps_l = {v: [] for v in VARIANTS}
        fps_t = {v: [] for v in VARIANTS}
        for v in VARIANTS:
            for _ in range(10):
                lat[v].adapter.infer(x)
                thr[v].adapter.infer(x)
        for r in range(args.rounds):
            for v in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
                fps_l[v].append(time_sync(lat[v], x, args.seconds)["fps"])
                fps_t[v].append(time_async(thr[v], x, args.seconds)["fps"])
        for v in VARIANTS:
            meta = lat[v].metadata
            rows.append({"backbone": backbone, "dataset": dataset, "variant": v,
                         "precision_used": lat[v].adapter.precision_used, "weights": meta.get("backbone_weights"),
                         **acc.get(v, {}), "latency_fps": statistics.median(fps_l[v]),
                         "throughput_fps": statistics.median(fps_t[v]), "quantization": meta.get("quantization"),
                         "head_weights": meta.get("head_weights"),
                         "fps_rounds": {"latency": fps_l[v], "throughput": fps_t[v]}})
            print({k: rows[-1][k] for k in ("backbone", "dataset", "variant", "latency_fps", "throughput_fps")},
                  file=sys.stderr, flush=True)
    md = ["# Precision trade-off: accuracy and speed (OpenVINO CPU)", "", header_md(env),
          f"Batch 1, input 256 px. {args.rounds} alternating rounds of {args.seconds:g} s per variant and mode, "
          "medians. INT8 (`fre-edge quantize` defaults): NNCF post-training quantization with MINMAX activation "
          "ranges, statistics from 300 good training images, FRE head kept float and refitted on the INT8 "
          "backbone's features of the good training images (10% kept out to set the INT8 thresholds). "
          "Target: INT8 loses at most 0.5 points of image AUROC against f32. INT8 head weights "
          "(`fre-edge export --head-weights int8`): the f32 bundle with the head's two matmuls on INT8 weights, "
          f"the export's score check on the first {CHECK_PICTURES} good test pictures (its largest relative score "
          "change in the last column); the goal is no loss of image or pixel AUROC.", "",
          "| backbone | dataset | variant | precision used | image AUROC | Δ vs f32 (points) | pixel AUROC "
          "| latency FPS | throughput FPS | head check: max rel. score change |", "|---" * 10 + "|"]
    for r in rows:
        base = next(x for x in rows if x["backbone"] == r["backbone"] and x["dataset"] == r["dataset"]
                    and x["variant"] == "f32")
        if "image_auroc" in r:
            acc_cols = (f"{r['image_auroc']:.4f} | {100 * (r['image_auroc'] - base['image_auroc']):+.2f} | "
                        f"{r['pixel_auroc']:.4f}")
        else:
            acc_cols = "n/a (random weights) | | n/a"
        check = (r.get("head_weights") or {}).get("max_rel_score_difference")
        md.append(f"| {r['backbone']} | {r['dataset']} | {r['variant']} | {r['precision_used']} | {acc_cols} | "
                  f"{r['latency_fps']:.1f} | {r['throughput_fps']:.1f} | "
                  f"{'-' if check is None else f'{check:.1e}'} |")
    md += ["", "The ResNets are built with random weights (torchvision's ImageNet weights cannot be fetched here) "
           "and fitted on MVTec bottle: their speed is real, their accuracy would not be, so it is not reported. "
           "The MTD and bottle Lite0 rows' speeds differ only by the number of PCA components (438 and 158). "
           "`precision used` is what OpenVINO reports for INFERENCE_PRECISION_HINT; the INT8 and f16-weights "
           "variants run their non-INT8 parts in f32."]
    write(f"precision_table_{isa_class(env['machine']['isa'])}", {"environment": env, "rows": rows},
          "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
