"""Fit and evaluate FRE on the real shared datasets with the default backbone.

    python -m benchmarks.fit_eval            # MTD (split.json) and MVTec bottle, defaults and single_map

Each configuration runs in its own process so that its peak memory is its own. Reports image AUROC,
pixel AUROC, AUPRO, the time of the feature pass alone, the rest of the fit, and peak memory, for the
defaults, for ``coarse_plus_fine`` (the map as the score's coarse map plus the map layers' unpooled ones, no
grid head: ``--no-map-grid``) and for ``single_map`` (one subspace for score and map: ``--map-layers none
--position-free off``).
How the fitting strategies compare in time and memory: ``fit_scale``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from fre_edge.images import size_json

from ._common import DATASETS, REPO, environment, header_md, write

RUNS = [
    {"dataset": "magnetic_tile", "model": "default"},
    {"dataset": "mvtec_bottle", "model": "default"},
    {"dataset": "magnetic_tile", "model": "coarse_plus_fine"},
    {"dataset": "mvtec_bottle", "model": "coarse_plus_fine"},
    {"dataset": "magnetic_tile", "model": "single_map"},
    {"dataset": "mvtec_bottle", "model": "single_map"},
]
MODELS = {"default": {}, "coarse_plus_fine": {"map_grid": False},
          "single_map": {"map_layers": (), "position_free": "off"}}


def one(dataset: str, model: str) -> dict:
    from fre_edge.fit.data import read_dataset
    from fre_edge.fit.evaluate import evaluate
    from fre_edge.fit import FitConfig, fit_fre

    ds = read_dataset(DATASETS / dataset)
    cfg = FitConfig(**MODELS[model])
    t0 = time.perf_counter()
    fitted = fit_fre([s.path for s in ds.train], cfg, progress=False, data_summary=ds.summary())
    fit_s = time.perf_counter() - t0
    metrics, _, _ = evaluate(fitted, ds.test, progress=False)
    t = fitted.info["timings_s"]
    return {
        "dataset": dataset, "model": model, "backbone": cfg.backbone, "layers": list(cfg.layers),
        "map_layers": list(fitted.config.head_layers[len(cfg.layers):]),
        "map_pools": fitted.config.map_head_pools,
        "image_score": fitted.info.get("image_score", {}).get("rule", "global"),
        "input_size": size_json(fitted.config.input_size),
        "pool": cfg.pool, "variance": cfg.n_components, "strategy": fitted.info["strategies"],
        "n_components": fitted.info["n_components"], "data": fitted.info["data"],
        "metrics": metrics, "fit_total_s": fit_s, "feature_pass_s": t["feature_pass"],
        "fit_beyond_features_s": fit_s - t["feature_pass"],
        "overhead_vs_feature_pass": (fit_s - t["feature_pass"]) / t["feature_pass"],
        "peak_rss_mb": fitted.info["peak_rss_mb"], "thresholds": fitted.info["thresholds"],
    }


def map_heads(r: dict) -> str:
    """The map's own heads of a run, layer/pool each (the score's coarse map is added to them)."""
    if not r["map_layers"]:
        return "the same"
    pools = r.get("map_pools") or [1] * len(r["map_layers"])
    return ",".join(f"{layer}/{p}" for layer, p in zip(r["map_layers"], pools))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", nargs=2, metavar=("DATASET", "MODEL"), help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="only the two default runs")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    env = environment()
    runs = RUNS[:2] if args.quick else RUNS
    rows = []
    for r in runs:
        cmd = [sys.executable, "-m", "benchmarks.fit_eval", "--one", r["dataset"], r["model"]]
        print("running", " ".join(cmd[3:]), file=sys.stderr, flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    md = ["# FRE fit + evaluation on real data (default backbone EfficientNet-Lite0)", "", header_md(env),
          "Targets: MTD image AUROC >= 0.99 (paper 99.2, EfficientNet-B5 @ 456); bottle image AUROC "
          ">= 0.99, pixel AUROC >= 0.97; fitting beyond the feature pass < 20% of it.", "",
          "| dataset | model | heads (score; map) | image score | strategy | k | image AUROC | pixel AUROC | AUPRO "
          "| feature pass s | fit total s | beyond features | peak RSS MiB (after features / after fit) "
          "| FRR / miss @ threshold |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m, p = r["metrics"], r["peak_rss_mb"]
        at = m.get("at_threshold", {})
        md.append(
            f"| {r['dataset']} | {r['model']} | {','.join(r['layers'])}; "
            f"{map_heads(r)} @ {r['input_size']} | {r['image_score']} | "
            f"{','.join(r['strategy'])} | "
            f"{','.join(map(str, r['n_components']))} | {m['image_auroc']:.4f} | "
            f"{m.get('pixel_auroc', float('nan')):.4f} | "
            f"{m.get('aupro', float('nan')):.4f} | {r['feature_pass_s']:.1f} | {r['fit_total_s']:.1f} | "
            f"{100 * r['overhead_vs_feature_pass']:.1f}% | {p['after_feature_pass']:.0f} / {p['after_fit']:.0f} | "
            f"{at.get('false_reject_rate', float('nan')):.3f} / {at.get('miss_rate', float('nan')):.3f} |")
    md += ["", "Fit data: MTD trains on split.json's 762 good images (10% held out for thresholds, so 686 fit the "
           "PCA); bottle on its 209 train/good images (188 fit). Test: MTD 190 good + 392 defective; bottle 20 + 63. "
           "Metrics at the model input size (256 x 256). AUPRO integrated to FPR 0.3. FRR / miss: false-reject rate "
           "on good test images and miss rate on defective ones at the image threshold set from held-out good images."]
    write("fit_eval", {"environment": env, "runs": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
