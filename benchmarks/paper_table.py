"""The paper's comparison on this machine: fre-edge FRE vs anomalib's PatchCore, Fre and Dfm.

    bash benchmarks/peers/setup_anomalib.sh            # once: the peers' pinned venv (.venv-peers)
    python -m benchmarks.paper_table [--datasets mvtec_bottle,magnetic_tile] [--fre-ae-epochs 10]

One run measures, per dataset: training time (fre-edge FRE-PCA and FRE-AE; anomalib PatchCore with a 10%
coreset, Fre, Dfm), inference FPS at batch 1 (fre-edge bundles: OpenVINO f32/bf16/INT8 and ONNX Runtime;
anomalib's own OpenVINO export, f32) and accuracy. timm cannot download ImageNet weights here, so the peers
get fre-edge's own EfficientNet-Lite0 ImageNet weights on timm's tf_efficientnet_lite0 (``--peer-weights
lite0``, the default; peers/lite0_timm.py, tested to give fre-edge's features): every row's accuracy is
measured, and fre-edge's Lite0 rows are the same-backbone comparison. ``--peer-weights random`` runs them on
ResNet-50 with random weights as before (their accuracy cells then hold the paper's figures). fre-edge also
runs ResNet-50 (random weights, speed only).

Each peer writes its JSON under models/bench/ as it finishes (with the machine it ran on). A run cut short
resumes with ``--reuse-peers``: peers already measured on this machine are read back, the rest are run;
fre-edge's rows and the interleaved f32 timing of every row are always measured again in the run.

Each dataset's rows are written as one part, ``results/paper_table_<dataset>.json``, with the command, date and
machine of the run that measured them (every ratio is within one dataset, measured in one run); the combined
``paper_table.md`` / ``.json`` / ``.png`` are drawn from the parts on disk. So the two datasets may be measured in
separate runs (``--datasets mvtec_bottle``, then ``--datasets magnetic_tile``): on 2 cores the whole comparison
takes over three hours, most of it anomalib's PatchCore coreset.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ._bundles import bundle, int8_bundle
from ._common import DATASETS, REPO, WORK, environment, header_md, write
from .peers.ov_timing import IRTimer

PARTS = ("mvtec_bottle", "magnetic_tile")  # the datasets of the comparison, in the order of the combined table

PAPER = {  # from ../shared/docs/fre-method.md
    "mvtec_bottle": {"note": "paper, MVTec AD average over 15 categories",
                     "image_auroc": {"PatchCore": 0.991, "FRE (paper)": 0.986}},
    "magnetic_tile": {"note": "paper, Magnetic Tile Defects",
                      "image_auroc": {"PatchCore": 0.979, "FRE (paper)": 0.992}},
}
# what goes in the image-AUROC cell of a row that has no measured accuracy (random backbone weights)
PAPER_ROW_ACC = {
    "mvtec_bottle": {"Patchcore": "0.991 (paper, MVTec avg)", "Fre": "0.960 (paper FRE ResNet-50, MVTec avg)",
                     "ResNet-50": "0.960 (paper FRE ResNet-50, MVTec avg)", "Dfm": "n/a (not in the paper)"},
    "magnetic_tile": {"Patchcore": "0.979 (paper)", "Fre": "n/a (paper's 0.992 is EfficientNet-B5)",
                      "ResNet-50": "n/a (paper's 0.992 is EfficientNet-B5)", "Dfm": "n/a (not in the paper)"},
}
PAPER_FPS_RATIO = {"Xeon 8280": 52.6 / 7.11, "i7-1270P": 16.4 / 1.28}


def mvtec_layout(dataset: str) -> tuple[Path, str]:
    """(root, category) in MVTec AD layout with .png files, as anomalib's MVTecAD reader wants."""
    if dataset == "mvtec_bottle":
        return DATASETS, "mvtec_bottle"
    from PIL import Image

    from fre_edge.fit.data import read_dataset

    root = WORK / "mvtec_layout"
    cat = root / dataset
    if not (cat / ".done").is_file():
        ds = read_dataset(DATASETS / dataset)
        for s in ds.train:
            p = cat / "train" / "good" / f"{s.path.stem}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.open(s.path).convert("RGB").save(p)
        for s in ds.test:
            p = cat / "test" / s.defect / f"{s.path.stem}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.open(s.path).convert("RGB").save(p)
            if s.label:
                m = cat / "ground_truth" / s.defect / f"{s.path.stem}_mask.png"
                m.parent.mkdir(parents=True, exist_ok=True)
                Image.open(s.mask).convert("L").save(m)
        (cat / ".done").write_text("ok")
    return root, dataset


def fre_edge_rows(dataset: str, ae_epochs: int, seconds: float) -> list[dict]:
    import numpy as np

    from fre_edge.bench import time_async, time_sync
    from fre_edge.fit.data import read_dataset
    from fre_edge.fit.evaluate import evaluate
    from fre_edge.fit import FitConfig, fit_fre
    from fre_edge.runtime import load_detector

    ds = read_dataset(DATASETS / dataset)
    paths = [s.path for s in ds.train]
    rows = []
    t0 = time.perf_counter()
    pca = fit_fre(paths, FitConfig(), progress=False)
    t_pca = time.perf_counter() - t0
    metrics, _, _ = evaluate(pca, ds.test, progress=False)
    t0 = time.perf_counter()
    fit_fre(paths, FitConfig(strategy="autoencoder", ae_epochs=ae_epochs), progress=False)
    t_ae = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit_fre(paths, FitConfig(backbone="resnet50", pretrained=False), progress=False)
    t_r50 = time.perf_counter() - t0
    x = np.random.default_rng(0).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)

    def speed(path, backend="openvino", precision="f32"):
        lat = load_detector(path, backend=backend, precision=precision, hint="latency", batch=1)
        thr = load_detector(path, backend=backend, precision=precision, hint="throughput", batch=1)
        for _ in range(10):
            lat.adapter.infer(x)
        return {"latency_fps": time_sync(lat, x, seconds)["fps"], "throughput_fps": time_async(thr, x, seconds)["fps"],
                "precision_used": lat.adapter.precision_used}

    lite = bundle("efficientnet_lite0", dataset=dataset)
    base = {"method": "fre-edge FRE", "dataset": dataset}
    acc = {k: metrics.get(k) for k in ("image_auroc", "pixel_auroc", "aupro")}
    rows.append({**base, "variant": "Lite0 OpenVINO f32", "backbone": "efficientnet_lite0 (ImageNet)",
                 "train_s": t_pca, "train_what": "FRE-PCA fit (feature pass + PCA)", **acc, **speed(lite)})
    rows.append({**base, "variant": "Lite0 OpenVINO bf16", "backbone": "efficientnet_lite0 (ImageNet)", **acc,
                 **speed(lite, precision="bf16")})
    rows.append({**base, "variant": "Lite0 OpenVINO INT8", "backbone": "efficientnet_lite0 (ImageNet)",
                 **speed(int8_bundle("efficientnet_lite0", dataset))})
    rows.append({**base, "variant": "Lite0 ONNX Runtime f32", "backbone": "efficientnet_lite0 (ImageNet)", **acc,
                 **speed(lite, backend="onnxruntime")})
    rows.append({**base, "variant": f"Lite0 FRE-AE ({ae_epochs} epochs)", "backbone": "efficientnet_lite0 (ImageNet)",
                 "train_s": t_ae, "train_what": "feature pass + tied AE training"})
    r50 = bundle("resnet50")  # fitted on bottle: same graph size class for any dataset (speed only)
    rows.append({**base, "variant": "ResNet-50 OpenVINO f32", "backbone": "resnet50 layer3 (random)",
                 "train_s": t_r50, "train_what": "FRE-PCA fit", **speed(r50)})
    return rows


def _peer_row(r: dict, dataset: str, model: str, fre_epochs: int) -> dict:
    ov = r["openvino"]
    measured = r.get("metrics")  # real weights: the peer's own test metrics
    acc = {} if not measured else {"image_auroc": measured.get("image_AUROC"),
                                   "pixel_auroc": measured.get("pixel_AUROC"), "aupro": measured.get("pixel_AUPRO")}
    return {"method": r["peer"], "dataset": dataset, "variant": "anomalib OpenVINO export, f32",
            "backbone": f"{r['backbone']} ({'random' if not measured else 'Lite0 ImageNet'})", **acc,
            "train_s": r["train_s"],
            "train_what": "engine.fit" + (f" ({fre_epochs} epochs)" if model == "fre" else "")
            + (f" ({r['coreset_sampling_ratio']:.0%} coreset)" if r.get("coreset_sampling_ratio") else ""),
            "latency_fps": ov["latency"]["sync_fps"], "throughput_fps": ov["throughput"]["async_fps"],
            "precision_used": ov["latency"]["precision_used"], "peer_batch": ov["latency"]["batch"],
            "metrics_random_weights": r.get("metrics_random_weights"), "ir": r.get("ir")}


def peer_rows(dataset: str, venv_python: Path, fre_epochs: int, seconds: float, reuse: bool,
              coreset: float, weights: str = "lite0") -> list[dict]:
    from fre_edge.bench import machine_identity

    root, category = mvtec_layout(dataset)
    rows = []
    for model in ("dfm", "fre", "patchcore"):
        out = WORK / f"peer_{model}_{dataset}_{weights}.json"
        if reuse and out.is_file():  # a peer measured earlier on this machine: its JSON keeps its own timings
            old = json.loads(out.read_text())
            if old.get("machine") == machine_identity():
                rows.append(_peer_row(old, dataset, model, fre_epochs))
                continue
            print(f"peer: {out.name} was measured on another machine (or does not say): measuring again",
                  file=sys.stderr, flush=True)
        cmd = [str(venv_python), str(REPO / "benchmarks" / "peers" / "anomalib_run.py"), "--model", model,
               "--root", str(root), "--category", category, "--json", str(out), "--seconds", str(seconds),
               "--work", str(WORK / "peers"), "--weights", weights]
        if weights == "lite0":
            cmd += ["--backbone", "tf_efficientnet_lite0"]
        if model == "fre":
            cmd += ["--epochs", str(fre_epochs)]
        if model == "patchcore":
            cmd += ["--coreset", str(coreset)]
        print("peer:", model, dataset, file=sys.stderr, flush=True)
        # the peer imports fre_edge (Lite0's weights and normalisation) from this checkout, wherever fre-edge
        # itself is installed
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        run = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if run.returncode != 0:  # the peer's own error, not just its exit status
            sys.stderr.write(run.stdout[-4000:] + run.stderr[-4000:])
            raise SystemExit(f"peer {model} on {dataset} failed (exit {run.returncode}); its output is above")
        rows.append(_peer_row(json.loads(out.read_text()), dataset, model, fre_epochs))
    return rows


def _fps_timer(xml: Path, hint: str, seconds: float):
    """One figure of the interleaved timing: latency FPS or throughput FPS of one IR (see peers/ov_timing.py)."""
    t = IRTimer(xml, hint)

    def latency_fps() -> float:
        lat = t.latencies(seconds)
        return len(lat) / sum(lat)

    return latency_fps if hint == "LATENCY" else lambda: t.throughput(seconds)


def retime(rows: list[dict], datasets: list[str], rounds: int, seconds: float) -> None:
    """Time the OpenVINO f32 graphs of one dataset (fre-edge Lite0 and ResNet-50, the three peers' exports) again,
    in alternating rounds within one process, so that machine noise hits all alike; medians replace the FPS
    figures measured one model after another."""
    import statistics

    for d in datasets:
        todo = {}
        for r in rows:
            if r["dataset"] != d:
                continue
            if r.get("variant") == "Lite0 OpenVINO f32":
                todo[id(r)] = (r, bundle("efficientnet_lite0", dataset=d) / "model.xml")
            elif r.get("variant") == "ResNet-50 OpenVINO f32":
                todo[id(r)] = (r, bundle("resnet50") / "model.xml")
            elif r.get("ir"):
                todo[id(r)] = (r, Path(r["ir"]))
        for hint in ("LATENCY", "THROUGHPUT"):
            timers = {k: _fps_timer(xml, hint, seconds) for k, (_, xml) in todo.items()}
            for t in timers.values():  # warm-up
                t()
            fps = {k: [] for k in timers}
            keys = list(timers)
            for i in range(rounds):
                for k in (keys if i % 2 == 0 else keys[::-1]):
                    fps[k].append(timers[k]())
            for k, (r, _) in todo.items():
                field = "latency_fps" if hint == "LATENCY" else "throughput_fps"
                r.setdefault("fps_measured_alone", {})[field] = r.get(field)
                r[field] = statistics.median(fps[k])
                r.setdefault("fps_interleaved_rounds", {})[field] = fps[k]
            print(d, hint, {todo[k][0]["method"] + " " + todo[k][0]["variant"]: round(statistics.median(v), 1)
                            for k, v in fps.items()}, file=sys.stderr, flush=True)


def parse_coresets(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in (item.split("=") for item in text.split(",") if item)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(PARTS))
    ap.add_argument("--venv", default=str(REPO / ".venv-peers"))
    ap.add_argument("--fre-ae-epochs", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--coreset", default="mvtec_bottle=0.1,magnetic_tile=0.01",
                    help="PatchCore coreset ratio per dataset (the paper's 10%% on MTD's 780k patches takes hours "
                         "on 2 cores: anomalib's greedy coreset costs patches x coreset size)")
    ap.add_argument("--peer-weights", choices=("lite0", "random"), default="lite0",
                    help="lite0: the peers on fre-edge's Lite0 ImageNet weights (accuracy measured); random: ResNet-50 "
                         "with random weights (speed only)")
    ap.add_argument("--reuse-peers", action="store_true",
                    help="reuse the peer JSONs already measured on this machine (same CPU, cores, ISA and caches; "
                         "others are measured again); fre-edge's rows and the interleaved timing are always re-run")
    ap.add_argument("--render", action="store_true",
                    help="only re-draw the combined table and chart from the parts in benchmarks/results")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of the interleaved f32 timing")
    ap.add_argument("--note", default="", help="a sentence for the table's header: what else shared the machine "
                    "while a reused peer was measured, for instance")
    ap.add_argument("--retime", metavar="JSON", help="re-run only the interleaved f32 timing of one part's models "
                    "(results/paper_table_<dataset>.json; their artefacts must still be on disk) and rewrite it")
    args = ap.parse_args()
    if args.retime:
        data = json.loads(Path(args.retime).read_text())
        for r in data["rows"]:  # runs made before the peers' JSON carried the IR path
            if r["method"].startswith("anomalib") and not r.get("ir"):
                model = r["method"].split()[-1].lower()
                r["ir"] = json.loads((WORK / f"peer_{model}_{r['dataset']}.json").read_text())["ir"]
        datasets = data.get("settings", {}).get("datasets") or sorted({r["dataset"] for r in data["rows"]})
        retime(data["rows"], datasets, args.rounds, args.seconds)
        data["retimed"] = {"command": environment()["command"], "date_utc": environment()["date_utc"],
                           "rounds": args.rounds, "seconds": args.seconds}
        write_part(data)
        render()
        return
    if args.render:
        render()
        return
    datasets = args.datasets.split(",")
    if not set(datasets) <= set(PARTS):
        raise SystemExit(f"--datasets {args.datasets}: use {' and/or '.join(PARTS)}, comma-separated")
    venv_python = Path(args.venv) / "bin" / "python"
    if not venv_python.is_file():
        raise SystemExit(f"{venv_python} is missing; run: bash benchmarks/peers/setup_anomalib.sh")
    coresets = parse_coresets(args.coreset)
    env = environment()
    rows = []
    for d in datasets:
        rows += fre_edge_rows(d, args.fre_ae_epochs, args.seconds)
        rows += peer_rows(d, venv_python, args.fre_ae_epochs, args.seconds, args.reuse_peers, coresets.get(d, 0.1),
                          args.peer_weights)
    retime(rows, datasets, args.rounds, args.seconds)
    for d in datasets:
        write_part({"environment": env, "settings": {"datasets": [d], "seconds": args.seconds,
                                                     "fre_ae_epochs": args.fre_ae_epochs,
                                                     "coreset": {d: coresets.get(d, 0.1)},
                                                     "peer_weights": args.peer_weights, "note": args.note},
                    "rows": [r for r in rows if r["dataset"] == d],
                    "retimed": {"command": "(in the same run)", "rounds": args.rounds, "seconds": args.seconds}})
    render()


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if a >= b else f"1/{b / a:.0f}"


def write_part(data: dict) -> None:
    """results/paper_table_<dataset>.json: one dataset's rows with the run that measured them (the peers' IR paths,
    this machine's, stay out)."""
    from ._common import RESULTS

    (d,) = data["settings"]["datasets"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    clean = {**data, "rows": [{k: v for k, v in r.items() if k != "ir"} for r in data["rows"]]}
    (RESULTS / f"paper_table_{d}.json").write_text(json.dumps(clean, indent=2))


def render() -> None:
    """The combined paper_table.md / .json / .png from the parts on disk, each dataset under its own run's header."""
    from ._common import RESULTS

    parts = [json.loads((RESULTS / f"paper_table_{d}.json").read_text()) for d in PARTS
             if (RESULTS / f"paper_table_{d}.json").is_file()]
    if not parts:
        raise SystemExit("no part to draw: run python -m benchmarks.paper_table first")
    md = ["# The paper's comparison, measured", "",
          "Each dataset was measured in one run, whose command, date and machine head its section; every ratio "
          "below compares rows of one run. FPS across datasets measured on different machines do not compare.", ""]
    for part in parts:
        md += section_md(part)
    missing = [d for d in PARTS if d not in {p["settings"]["datasets"][0] for p in parts}]
    if missing:
        md += [f"Not measured yet: {', '.join(missing)} (python -m benchmarks.paper_table --datasets "
               f"{','.join(missing)}).", ""]
    md += ["![FPS and training time per method](paper_table.png)", ""]
    write("paper_table", {"parts": parts}, "\n".join(md) + "\n")
    chart(parts)


def section_md(data: dict) -> list[str]:
    """One part's section: its run's header, the table and the ratios."""
    env, rows = data["environment"], data["rows"]
    st = data.get("settings", {})
    datasets = st["datasets"]
    batches = sorted({r.get("peer_batch", 1) for r in rows})
    md = [f"## {datasets[0]}", "", header_md(env),
          f"Inference at batch {', '.join(map(str, batches))} for every row (fre-edge and the peers' own OpenVINO "
          f"exports, traced at batch 1), input 256 px, {st.get('seconds', 3):g} s per figure; latency FPS = one "
          "synchronous request at a time (latency hint), throughput FPS = asynchronous requests (throughput hint). "
          + (f"The OpenVINO f32 rows (fre-edge Lite0 and ResNet-50, the three peers' exports) were timed again in "
             f"{data['retimed']['rounds']} alternating rounds in one process, medians ("
             + ("in the same run" if data["retimed"]["command"] == "(in the same run)" else
                f"{data['retimed']['command']}, {data['retimed'].get('date_utc', '')}") + "); "
             "the other rows were timed one after another. " if data.get("retimed") else "")
          + ("Peers: anomalib 2.7.0 in its own venv on fre-edge's EfficientNet-Lite0 ImageNet weights (timm's "
             "tf_efficientnet_lite0; PatchCore on its stride-8 and stride-16 stages, Fre and Dfm on the stride-16 "
             "one), so every accuracy cell is measured. " if st.get("peer_weights") == "lite0" else
             "Peers: anomalib 2.7.0 in its own venv, random backbone weights (timm cannot download ImageNet weights "
             "here), so their image-AUROC cells hold the paper's figure (in italics) for that method and backbone. ")
          + f"Both FRE-AE implementations run {st.get('fre_ae_epochs', 10)} epochs here (paper: 250)."
          + (f" Note: {st['note']}" if st.get("note") else ""), ""]
    for d in datasets:
        md += ["| method | variant | backbone | train s (what) | image AUROC | pixel AUROC | AUPRO "
               "| latency FPS | throughput FPS | precision |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in (x for x in rows if x["dataset"] == d):
            def f(k, fmt="{:.4f}"):
                return fmt.format(r[k]) if r.get(k) is not None else ""
            tr = f"{r['train_s']:.1f} ({r['train_what']})" if "train_s" in r else ""
            acc = f("image_auroc")
            if not acc and "random" in r["backbone"]:
                acc = next((f"*{v}*" for k, v in PAPER_ROW_ACC[d].items() if k in r["method"] + r["variant"]), "")
            md.append(f"| {r['method']} | {r['variant']} | {r['backbone']} | {tr} | {acc} | "
                      f"{f('pixel_auroc')} | {f('aupro')} | {f('latency_fps', '{:.1f}')} | "
                      f"{f('throughput_fps', '{:.1f}')} | {r.get('precision_used', '')} |")
        p = PAPER[d]
        md += ["", f"Accuracy from the paper ({p['note']}): " +
               ", ".join(f"{k} image AUROC {v}" for k, v in p["image_auroc"].items()) +
               ". fre-edge's ResNet-50 rows use random weights (speed only; accuracy not reported).", ""]
        pc = next((x for x in rows if x["dataset"] == d and "Patchcore" in x["method"]), None)
        fr = next((x for x in rows if x["dataset"] == d and x["variant"] == "Lite0 OpenVINO f32"), None)
        r50 = next((x for x in rows if x["dataset"] == d and x["variant"].startswith("ResNet-50")), None)
        if pc and fr and r50:
            md += [f"- FPS, fre-edge FRE / PatchCore: Lite0 f32 {_ratio(fr['latency_fps'], pc['latency_fps'])}; "
                   f"same ResNet-50 backbone {_ratio(r50['latency_fps'], pc['latency_fps'])} "
                   f"(paper: {PAPER_FPS_RATIO['Xeon 8280']:.1f}x on Xeon 8280, {PAPER_FPS_RATIO['i7-1270P']:.1f}x "
                   "on i7-1270P).",
                   f"- Training time, FRE-PCA / PatchCore ({pc['train_what']}): Lite0 "
                   f"{fr['train_s']:.1f} s / {pc['train_s']:.0f} s = {_ratio(fr['train_s'], pc['train_s'])}; "
                   f"ResNet-50 {r50['train_s']:.1f} s / {pc['train_s']:.0f} s = "
                   f"{_ratio(r50['train_s'], pc['train_s'])}."]
        lite_peers = st.get("peer_weights") == "lite0"
        same, same_name = (fr, "Lite0 blocks.10") if lite_peers else (r50, "ResNet-50 layer3")
        for peer in ("Fre", "Dfm"):
            pr = next((x for x in rows if x["dataset"] == d and peer in x["method"]), None)
            if pr and same and lite_peers:
                lat, thr = same["latency_fps"] / pr["latency_fps"], same["throughput_fps"] / pr["throughput_fps"]
                md.append(f"- Same {same_name} backbone and weights, fre-edge FRE / anomalib {peer}: latency FPS "
                          f"{lat:.2f}x, throughput FPS {thr:.2f}x.")
            elif pr and r50:
                lat, thr = r50["latency_fps"] / pr["latency_fps"], r50["throughput_fps"] / pr["throughput_fps"]
                verdict = ("ahead" if min(lat, thr) >= 1.05 else "behind" if min(lat, thr) < 0.95 else
                           "NOT ahead (within 5%)")
                md.append(f"- Same ResNet-50 layer3 backbone, fre-edge FRE / anomalib {peer}: latency FPS {lat:.2f}x, "
                          f"throughput FPS {thr:.2f}x: {verdict}. Lite0 f32 / anomalib {peer}: "
                          f"{fr['latency_fps'] / pr['latency_fps']:.1f}x." if fr else "")
        md.append("")
    return md


def _machine(env: dict) -> str:
    """A panel's machine in a few words: CPU, cores and its widest vector ISA."""
    m = env["machine"]
    isa = "AVX-512" if "avx512f" in m["isa"] else "AVX2" if "avx2" in m["isa"] else "no AVX2"
    return f"{m['cpu']}, {m['logical_cores']} cores, {isa}"


def _bars(ax, rows: list[dict], labels: list[str], key: str, fmt: str, xlabel: str, title: str) -> None:
    """Horizontal log-scale bars of rows[key], fre-edge blue and peers orange, each bar labelled with its value."""
    from matplotlib.ticker import NullFormatter

    ax.barh(labels, [r[key] for r in rows],
            color=["tab:blue" if r["method"].startswith("fre-edge") else "tab:orange" for r in rows])
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # only the decades are labelled: minor labels overlap
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.set_xlim(right=max(r[key] for r in rows) * 2)  # room for the largest bar's label
    for i, r in enumerate(rows):
        ax.text(r[key], i, " " + fmt.format(r[key]), va="center", fontsize=8)


def chart(parts: list[dict]) -> None:
    """benchmarks/results/paper_table.png: latency FPS and training time per method, one column per dataset (part),
    each titled with the machine that measured it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._common import RESULTS

    fig, axes = plt.subplots(2, len(parts), figsize=(6.5 * len(parts), 8), squeeze=False)
    for j, part in enumerate(parts):
        d, rs, where = part["settings"]["datasets"][0], part["rows"], _machine(part["environment"])

        def label(r):
            return (r["method"].replace("anomalib 2.7.0 ", "anomalib ") + "\n" + r["variant"]).replace(
                "anomalib OpenVINO export, f32", "OpenVINO f32")

        fps = [r for r in rs if r.get("latency_fps")]
        _bars(axes[0][j], fps, [label(r) for r in fps], "latency_fps", "{:.1f}",
              "latency FPS, batch 1 (log scale; higher is better)", f"{d}: inference\n({where})")
        tr = [r for r in rs if r.get("train_s")]
        _bars(axes[1][j], tr, [r["method"].replace("anomalib 2.7.0 ", "anomalib ") + "\n" + r["backbone"].split()[0]
                               + ": " + r["train_what"] for r in tr], "train_s", "{:.1f} s",
              "training time, s (log scale; lower is better)", f"{d}: training\n({where})")
        for ax in axes[:, j]:
            ax.tick_params(axis="y", labelsize=7)
            ax.invert_yaxis()
    fig.suptitle("fre-edge (blue) vs anomalib peers (orange), one run per dataset, on the machine named above each",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(RESULTS / "paper_table.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
