"""How much each setting of FRE matters: one knob at a time away from the defaults, on the shared
sets, with image AUROC, pixel AUROC, AUPRO, graph FPS and bundle size.

    python -m benchmarks.sensitivity                 # every knob on the three sets (about an hour on 2 cores)
    python -m benchmarks.sensitivity --sets mtd_wide --knobs default,square256,square320
    python -m benchmarks.sensitivity --knobs tiles2x2 --merge   # add rows to the committed ones, re-time all

Sets: MVTec bottle (512 x 512 pictures); Magnetic Tile with its fixed split (mixed aspects, 0.4-2.6 w/h); and
``mtd_wide``: the Magnetic Tile pictures of that split that are at least 1.5 times as wide as high (a real
long-part set: 127 good pictures to fit on, 34 good and 100 defective to test, median aspect 1.65).

Every fit uses fre-edge's defaults except the one knob a row names. The metrics are computed on each map
resized (bilinear) to 256 x 256 and each mask to 256 x 256 (nearest), whatever the model's input, so rows with
other input sizes or aspects are scored on the same pixels: for the default 256 x 256 input these are
exactly `fre-edge eval`'s figures. FPS: the exported OpenVINO IR, f32, batch 1 and batch 8 (pictures per
second), sync, latency hint, graph only (no decode/resize), every bundle of a set timed in the same
alternating rounds (fre_edge.timing). Image score: the rule the fit kept (``--position-free auto``).
With tiles, FPS counts pictures (the graph's
tile rate / tiles a picture, batch 1 tile). Bundle size: model.xml + model.bin. Each fit runs in its own
process.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ._common import REPO, WORK, environment, header_md, write
from ._sets import EVAL_HW, dataset

# name -> (FitConfig overrides, what it varies)
KNOBS: dict[str, tuple[dict, str]] = {
    "default": ({}, "defaults: score from blocks.10, pool 2, variance 0.97; map also from blocks.4 and blocks.10 "
                    "unpooled, 16 components each, and from blocks.4 pooled to the score's grid, variance 0.97; "
                    "position-free score auto; input auto (256 x 256 unless the pictures are 1.25 or more from "
                    "square), no blur"),
    "coarse_plus_fine": ({"map_grid": False}, "the map as the score's coarse map plus blocks.4 and blocks.10 "
                                              "unpooled (no grid head: --no-map-grid)"),
    "single_map": ({"map_layers": (), "position_free": "off"}, "one subspace for score and map (no map heads, "
                                                               "no position-free score)"),
    "map_k64": ({"map_components": 64}, "map heads' components"),
    "position_free_on": ({"position_free": "on"}, "position-free score always on"),
    "variance0.90": ({"n_components": 0.90}, "variance ratio"),
    "variance0.95": ({"n_components": 0.95}, "variance ratio"),
    "variance0.99": ({"n_components": 0.99}, "variance ratio"),
    "pool1": ({"pool": 1, "map_layers": (), "position_free": "off"}, "pooling (single_map)"),
    "pool4": ({"pool": 4}, "pooling of the score's layer"),
    "stride8+16": ({"layers": ("blocks.4", "blocks.10"), "map_layers": (), "position_free": "off"},
                   "the score's layers, map from them (single_map)"),
    "deeper3": ({"layers": ("blocks.7", "blocks.10", "blocks.14"), "map_layers": (), "position_free": "off"},
                "the score's layers, map from them (single_map)"),
    "square192": ({"input_size": 192}, "input size"),
    "square256": ({"input_size": 256}, "input size and aspect"),
    "square320": ({"input_size": 320}, "input size"),
    "blur4": ({"blur_sigma": 4.0}, "blur"),
    "tiles2x2": ({"tiles": (2, 2)}, "tiling: 2 x 2 tiles of the auto input, overlap 0.25 (4 tiles a picture)"),
}
SETS = ("mvtec_bottle", "magnetic_tile", "mtd_wide")
# which defaults a row's knob moved away from; rows kept by --merge from a run with other defaults (no tag: the map
# as the score's coarse map plus the unpooled heads) are compared with the knob that reproduces those defaults
DEFAULTS = "map pyramid"
EARLIER_DEFAULTS = {None: "coarse_plus_fine"}


def one(set_name: str, knob: str, out: Path) -> dict:
    """Fit, evaluate and export one (set, knob); the bundle goes to ``out``."""
    import numpy as np

    from fre_edge.export import export_bundle
    from fre_edge.fit import FitConfig, fit_fre
    from fre_edge.fit.evaluate import compute_metrics, score_images
    from fre_edge.images import resize_map, size_json
    from fre_edge.tiling import per_picture

    train, test, summary = dataset(set_name)
    cfg = FitConfig(**KNOBS[knob][0])
    t0 = time.perf_counter()
    fitted = fit_fre(train, cfg, progress=False, data_summary=summary)
    fit_s = time.perf_counter() - t0
    scores, maps = score_images(fitted.detector, [s.path for s in test], progress=False, tiling=fitted.tiling)
    if maps.shape[1:] != EVAL_HW:
        maps = np.stack([resize_map(m, *EVAL_HW) for m in maps])
    metrics = compute_metrics(test, scores, maps, fitted.image_threshold)
    export_bundle(fitted, out, force=True)
    row = {"set": set_name, "knob": knob, "varies": KNOBS[knob][1], "config": KNOBS[knob][0],
           "defaults": DEFAULTS,
            "input_size": size_json(fitted.config.input_size), "input_rule": fitted.info["input_size"],
            "layers": list(fitted.config.layers), "pool": fitted.config.pool,
            "n_components": fitted.info["n_components"], "fit_images": len(train), "test_images": len(test),
            "image_score": fitted.info.get("image_score", {}).get("rule", "global"),
            "tiles_per_picture": per_picture(fitted.tiling),
            "image_auroc": metrics["image_auroc"], "pixel_auroc": metrics.get("pixel_auroc", math.nan),
            "aupro": metrics.get("aupro", math.nan), "at_threshold": metrics.get("at_threshold"),
            "fit_s": fit_s, "bundle_bytes": sum((out / f).stat().st_size for f in ("model.xml", "model.bin")),
            "bundle": str(out)}
    (out / "row.json").write_text(json.dumps(row))  # kept beside the bundle for --reuse
    return row


def time_bundles(rows: list[dict], rounds: int, block: float) -> None:
    """Graph FPS of every row's bundle, all of a set timed in the same alternating rounds."""
    import numpy as np
    import openvino as ov

    from fre_edge.timing import alternate, spread

    from ._openvino import latency_request

    core = ov.Core()
    for set_name in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == set_name]
        for batch, key in ((1, "fps"), (8, "fps_batch8")):
            reqs, inputs = {}, {}
            for r in mine:
                model = core.read_model(str(Path(r["bundle"]) / "model.xml"))
                reqs[r["knob"]] = latency_request(model, batch)
                h, w = model.input(0).get_partial_shape()[1:3].to_shape()
                inputs[r["knob"]] = np.random.default_rng(0).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
            calls = {k: (lambda q=q, x=inputs[k]: q.infer({0: x})) for k, q in reqs.items()}
            lat, per_round = alternate(calls, rounds, block)
            for r in mine:
                tiles = r.get("tiles_per_picture", 1)
                per = [batch / m[r["knob"]] / tiles for m in per_round]
                r[key] = batch / statistics.median(lat[r["knob"]]) / tiles
                r[key + "_rounds"] = {**{q: v for q, v in spread(per).items() if q != "median"}, "per_round": per}


def chart(rows: list[dict], path: Path) -> None:
    """Each metric against the knobs, one marker per set, the default's value as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    knobs = list(dict.fromkeys(r["knob"] for r in rows))
    sets = list(dict.fromkeys(r["set"] for r in rows))
    metrics = [("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"), ("fps", "FPS")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.38 * len(knobs) + 1.6), sharey=True)
    markers = {s: m for s, m in zip(sets, "os^Dv")}
    for ax, (key, title) in zip(axes, metrics):
        for s in sets:
            by = {r["knob"]: r.get(key, math.nan) for r in rows if r["set"] == s}
            ys = [i for i, k in enumerate(knobs) if k in by]
            ax.plot([by[knobs[i]] for i in ys], ys, markers[s], label=s, alpha=0.8)
            if "default" in by:
                ax.axvline(by["default"], color=ax.lines[-1].get_color(), lw=0.8, ls=":")
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(knobs)), knobs)
    axes[0].invert_yaxis()
    axes[-1].legend(loc="lower right", fontsize=8)
    fig.suptitle("FRE sensitivity: one knob at a time from the defaults (dotted: each set's default)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(env: dict, rows: list[dict], rounds: int) -> str:
    from fre_edge.images import size_text
    from fre_edge.timing import markdown_table

    merged = (f"Rows of other knobs kept from earlier runs of this script on this machine (the first: "
              f"`{env['command_before_merge']}` on {env.get('date_before_merge', 'an earlier date')}); those marked "
              f"\"from the earlier defaults\" moved their knob away from the defaults of then. Every bundle's FPS "
              f"measured again in this run.\n\n" if env.get("command_before_merge") else "")
    about = __doc__.split("\n\n", 2)[2].strip()
    md = ["# Sensitivity of FRE to its settings", "", header_md(env), merged + about, "",
          f"FPS rounds: {rounds} (median over all timed calls; quartiles of the per-round values in the JSON).", "",
          "![sensitivity](sensitivity.png)", ""]
    for s in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == s]
        base = next((r for r in mine if r["knob"] == "default"), None)
        md += [f"## {s} ({mine[0]['fit_images']} fitting pictures, {mine[0]['test_images']} test pictures)", ""]

        def against(r):
            """The row r's change is shown against: the default, or the twin of the defaults r was fitted from."""
            if r.get("defaults") == DEFAULTS or r.get("defaults") not in EARLIER_DEFAULTS:
                return base
            return next((o for o in mine if o["knob"] == EARLIER_DEFAULTS[r.get("defaults")]), None)

        def delta(r, k):
            b = against(r)
            return "" if b is None or r is b else f" ({r[k] - b[k]:+.3f})"

        def name(r):
            b = against(r)
            return r["knob"] if b is base else f"{r['knob']} (from the earlier defaults: against {b['knob']})"

        md.append(markdown_table(
            ["knob", "input", "k", "image score", "image AUROC", "pixel AUROC", "AUPRO", "FPS", "FPS batch 8",
             "bundle MB", "fit s"],
            [[name(r), size_text(r["input_size"])
              + (f" ({r['tiles_per_picture']} tiles)" if r.get("tiles_per_picture", 1) > 1 else ""),
              ",".join(map(str, r["n_components"])), r.get("image_score", "global"),
              f"{r['image_auroc']:.4f}{delta(r, 'image_auroc')}",
              f"{r['pixel_auroc']:.4f}{delta(r, 'pixel_auroc')}", f"{r['aupro']:.4f}{delta(r, 'aupro')}",
              f"{r.get('fps', math.nan):.1f}", f"{r.get('fps_batch8', math.nan):.1f}",
              f"{r['bundle_bytes'] / 1e6:.1f}", f"{r['fit_s']:.1f}"] for r in mine]))
        for other, what in (("single_map", "one subspace for score and map"),
                            ("coarse_plus_fine", "the map without the grid head")):
            twin = next((r for r in mine if r["knob"] == other), None)
            if base is not None and twin is not None:
                same_defaults = twin.get("defaults") == base.get("defaults")
                md.append(f"\nThe defaults against {what} (`{other}`), timed in the same "
                          f"rounds: batch-1 FPS {base['fps'] / twin['fps']:.2f}x, batch-8 FPS "
                          f"{base['fps_batch8'] / twin['fps_batch8']:.2f}x, "
                          f"bundle {base['bundle_bytes'] / twin['bundle_bytes']:.2f}x"
                          + (f", fit time {base['fit_s'] / twin['fit_s']:.2f}x." if same_defaults else
                             " (fitted in another run: fit times not compared)."))
        twin = next((r for r in mine if r["knob"] == "square256"), None)
        if base is not None and twin is not None and base["input_size"] == twin["input_size"]:
            md.append(f"\n`default` and `square256` are the same graph here (the pictures are near square): "
                      f"{base['fps']:.1f} against {twin['fps']:.1f} FPS is this machine's noise between bundles.")
        md.append("")
    return "\n".join(md) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--knobs", default=",".join(KNOBS))
    ap.add_argument("--rounds", type=int, default=3, help="alternating FPS rounds per set")
    ap.add_argument("--block", type=float, default=1.0, help="seconds per bundle per FPS round")
    ap.add_argument("--merge", action="store_true",
                    help="keep the committed rows of other (set, knob) pairs and time every bundle again")
    ap.add_argument("--reuse", action="store_true",
                    help="take a (set, knob)'s figures from its bundle folder's row.json when it has one (made by "
                         "this script's fit of it; the FPS are always measured again)")
    ap.add_argument("--one", nargs=3, metavar=("SET", "KNOB", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], Path(args.one[2]))))
        return
    sets, knobs = args.sets.split(","), args.knobs.split(",")
    bad = [s for s in sets if s not in SETS] + [k for k in knobs if k not in KNOBS]
    if bad:
        sys.exit(f"unknown set or knob {bad[0]!r}; sets: {', '.join(SETS)}; knobs: {', '.join(KNOBS)}")
    env = environment()
    from ._common import RESULTS

    rows = []
    if args.merge and (RESULTS / "sensitivity.json").is_file():
        done = {(s, k) for s in sets for k in knobs}
        rows = [r for r in json.loads((RESULTS / "sensitivity.json").read_text())["rows"]
                if (r["set"], r["knob"]) not in done and Path(r["bundle"]).is_dir()]
        before = json.loads((RESULTS / "sensitivity.json").read_text())["environment"]
        env["command_before_merge"] = before.get("command_before_merge", before["command"])
        env["date_before_merge"] = before.get("date_before_merge", before["date_utc"])
    for s in sets:
        for k in knobs:
            out = WORK / "sensitivity" / s / k
            if args.reuse and (out / "row.json").is_file():
                rows.append(json.loads((out / "row.json").read_text()))
                continue
            cmd = [sys.executable, "-m", "benchmarks.sensitivity", "--one", s, k, str(out)]
            print("running", s, k, file=sys.stderr, flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if done.returncode != 0:
                sys.exit(f"{s} {k} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    order = {s: i for i, s in enumerate(SETS)}
    rows.sort(key=lambda r: (order[r["set"]], list(KNOBS).index(r["knob"])))
    time_bundles(rows, args.rounds, args.block)
    RESULTS.mkdir(parents=True, exist_ok=True)
    chart(rows, RESULTS / "sensitivity.png")
    write("sensitivity", {"environment": env, "eval_grid": list(EVAL_HW), "rows": rows}, markdown(env, rows,
                                                                                                   args.rounds))


if __name__ == "__main__":
    main()
