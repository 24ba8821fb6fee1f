"""Tiles: one subspace shared by every tile position (what fre-edge builds) or one subspace per position
(as FRE keeps a pixel's position inside its one vector)? Both measured on the same tiles.

    python -m benchmarks.tile_subspaces [--sets mvtec_bottle,mtd_wide] [--tiles 2x2]

Per set: one `fre-edge fit --tiles RxC` (defaults otherwise: input auto, blocks.10, pool 2, variance 0.97), then
from the same fitting tiles (the fit's own split; its held-out pictures are not used) a second model with one
FRE per tile position, each fitted on that position's tiles only (variance 0.97 each). Both score the test
pictures through the same code: the fit's backbone, each tile's head (the shared one, or its position's),
the map upsampled to the tile and stitched over the canvas, the picture's score the largest tile score.
The shared row is checked against `fre_edge.fit.evaluate.score_images` (the code the runtime follows). The
metrics are computed on each map resized to 256 x 256 and each mask to 256 x 256, as in sensitivity.py.
Head bytes: the float32 component matrices the graph would have to hold (one, or one per position).
Accuracy only: no timing, so this can run beside other work.
"""

from __future__ import annotations

import argparse
import math

from ._common import environment, header_md, write
from ._sets import EVAL_HW, dataset

SETS = ("mvtec_bottle", "mtd_wide")


def score(det, heads, tiling, paths, batch_size: int = 16):
    """Picture scores [n] and canvas maps [n, H, W]: tile t of a picture scored by heads[t % len(heads)]."""
    import numpy as np
    import torch

    from fre_edge.fit.features import load_batch
    from fre_edge.tiling import pictures_per_batch

    scores, maps = [], []
    step = pictures_per_batch(batch_size, tiling)
    with torch.inference_mode():
        for i in range(0, len(paths), step):
            (f,) = det.features(load_batch(paths[i:i + step], det.input_size, tiling))
            s = torch.empty(f.shape[0])
            m = torch.empty(f.shape[0], *det.input_size)
            for p, head in enumerate(heads):
                sp, mp = head(f[p::len(heads)])
                s[p::len(heads)], m[p::len(heads)] = sp, det.upsample(mp, 0)
            s, m = tiling.reduce(s.numpy(), m.numpy())
            scores.append(s)
            maps.append(m)
    return np.concatenate(scores), np.concatenate(maps)


def run_set(set_name: str, grid: str) -> list[dict]:
    import numpy as np
    import torch

    from fre_edge.fit import FitConfig, fit_fre
    from fre_edge.fit.estimator import FRE
    from fre_edge.fit.evaluate import compute_metrics, score_images
    from fre_edge.fit.features import extract_features
    from fre_edge.fit.pipeline import _split
    from fre_edge.images import resize_map, size_json

    train, test, summary = dataset(set_name)
    cfg = FitConfig(tiles=grid)
    fitted = fit_fre(train, cfg, progress=False, data_summary=summary)
    det, tiling = fitted.detector, fitted.tiling
    if len(det.heads) != 1:
        raise SystemExit("this comparison is written for one layer (the default)")
    fit_paths, _ = _split(train, cfg.holdout, cfg.seed)  # the fit's own split
    (feats,) = extract_features(det, fit_paths, progress=False, tiling=tiling)
    per_position = []
    for p in range(tiling.count):
        with torch.inference_mode(False):
            per_position.append(FRE(cfg.n_components).fit(feats[p::tiling.count]).head())
    test_paths = [s.path for s in test]
    rows = []
    for name, heads in (("shared", list(det.heads)), ("per_position", per_position)):
        scores, maps = score(det, heads, tiling, test_paths)
        if name == "shared":  # the same code path as the runtime's and eval's scoring
            ref_s, ref_m = score_images(det, test_paths, progress=False, tiling=tiling)
            np.testing.assert_allclose(scores, ref_s, rtol=1e-5)
            np.testing.assert_allclose(maps, ref_m, atol=1e-5 * float(ref_m.max()))
        maps = np.stack([resize_map(m, *EVAL_HW) for m in maps])
        metrics = compute_metrics(test, scores, maps)
        ks = [h.n_components for h in heads]
        rows.append({"set": set_name, "subspace": name, "tiles": list(tiling.grid), "tile": size_json(tiling.tile),
                     "canvas": list(tiling.canvas), "fit_pictures": len(fit_paths), "test_pictures": len(test),
                     "n_components": ks, "head_mb": sum(4 * k * feats[0].numel() for k in ks) / 1e6,
                     "image_auroc": metrics["image_auroc"], "pixel_auroc": metrics.get("pixel_auroc", math.nan),
                     "aupro": metrics.get("aupro", math.nan)})
        print(set_name, name, {k: rows[-1][k] for k in ("n_components", "image_auroc", "pixel_auroc", "aupro")},
              flush=True)
    return rows


def markdown(env: dict, rows: list[dict]) -> str:
    from fre_edge.timing import markdown_table

    about = __doc__.split("\n\n", 2)[2].strip()
    md = ["# Tiles: one subspace shared by every position, or one per position", "", header_md(env), about, ""]
    table = []
    for r in rows:
        base = next(x for x in rows if x["set"] == r["set"] and x["subspace"] == "shared")

        def f(k):
            return f"{r[k]:.4f}" + ("" if r is base else f" ({r[k] - base[k]:+.4f})")

        table.append([r["set"], f"{r['tiles'][0]}x{r['tiles'][1]} of {r['tile']}", r["subspace"],
                      ",".join(map(str, r["n_components"])), f"{r['head_mb']:.1f}", f("image_auroc"),
                      f("pixel_auroc"), f("aupro")])
    md.append(markdown_table(["set", "tiles", "subspace", "k", "head MB", "image AUROC", "pixel AUROC", "AUPRO"],
                             table))
    return "\n".join(md) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--tiles", default="2x2")
    args = ap.parse_args()
    env = environment()
    rows = []
    for s in args.sets.split(","):
        rows += run_set(s, args.tiles)
    write("tile_subspaces", {"environment": env, "settings": {"sets": args.sets.split(","), "tiles": args.tiles},
                             "rows": rows}, markdown(env, rows))


if __name__ == "__main__":
    main()
