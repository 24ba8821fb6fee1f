"""Train, test, export and time one anomalib model (runs inside the peers' venv; see setup_anomalib.sh).

    .venv-peers/bin/python benchmarks/peers/anomalib_run.py --model patchcore --root DIR --category NAME --json OUT

timm's ImageNet weights cannot be downloaded on this machine. ``--weights random`` builds the backbone with
random weights (``pre_trained=False``; training time and speed are real, accuracy is not meaningful and is
flagged); ``--weights lite0`` builds timm's tf_efficientnet_lite0 and loads the EfficientNet-Lite0 ImageNet
weights fre-edge uses (``lite0_timm.py``, tested to give fre-edge's features) with Lite0's input
normalisation, so the peers' accuracy is measured on the same backbone and weights as fre-edge's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


# per backbone: (PatchCore's two layers, the one layer of Fre and Dfm): stride 8 and 16 as ResNet's layer2/3
LAYERS = {"tf_efficientnet_lite0": (("blocks.2", "blocks.4"), "blocks.4")}


def build(name: str, backbone: str, coreset: float, weights: str, size: int):
    from anomalib.models import Dfm, Fre, Patchcore

    two, one = LAYERS.get(backbone, (("layer2", "layer3"), "layer3"))
    kw = {}
    if weights == "lite0":
        if backbone != "tf_efficientnet_lite0":
            raise SystemExit("--weights lite0 needs --backbone tf_efficientnet_lite0")
        from anomalib.pre_processing import PreProcessor
        from torchvision.transforms import v2

        from fre_edge.fit.backbones import LITE_MEAN, LITE_STD

        kw["pre_processor"] = PreProcessor(transform=v2.Compose([v2.Resize((size, size), antialias=True),
                                                                 v2.Normalize(mean=LITE_MEAN, std=LITE_STD)]))
    if weights == "lite0":  # accuracy is measured: fre-edge's three figures
        from anomalib.metrics import AUPRO, AUROC, Evaluator

        kw["evaluator"] = Evaluator(test_metrics=[AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
                                                  AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_"),
                                                  AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_")])
    if name == "patchcore":
        model = Patchcore(backbone=backbone, layers=two, pre_trained=False, coreset_sampling_ratio=coreset, **kw)
    elif name == "fre":
        if backbone == "tf_efficientnet_lite0":  # 112 channels at stride 16, 2 x 2 pooling
            kw["input_dim"] = 112 * (size // 32) ** 2
        model = Fre(backbone=backbone, layer=one, pre_trained=False, **kw)
    elif name == "dfm":
        model = Dfm(backbone=backbone, layer=one, pre_trained=False, **kw)
    else:
        raise SystemExit(f"unknown model {name}")
    if weights == "lite0":
        from lite0_timm import lite0_state_dict_for  # beside this script

        net = model.model.feature_extractor.feature_extractor  # anomalib's TimmFeatureExtractor -> timm's net
        net.load_state_dict(lite0_state_dict_for(net))
    return model


def time_ir(xml: Path, seconds: float) -> dict:
    from ov_timing import IRTimer  # beside this script: the same timing loop as benchmarks/paper_table.py

    out = {}
    for hint in ("LATENCY", "THROUGHPUT"):
        t = IRTimer(xml, hint)
        lat = t.latencies(seconds)
        out["input_shape"] = list(t.input_shape)
        out[hint.lower()] = {"precision_used": t.precision_used, "batch": t.input_shape[0],
                             "sync_fps": t.input_shape[0] / float(np.mean(lat)),
                             "latency_ms_median": 1e3 * float(np.median(lat)),
                             "async_fps": t.input_shape[0] * t.throughput(seconds),
                             "requests_in_flight": t.requests_in_flight}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--weights", choices=("random", "lite0"), default="random")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fre_edge_peers"))
    ap.add_argument("--json", required=True)
    ap.add_argument("--coreset", type=float, default=0.1, help="PatchCore coreset sampling ratio")
    ap.add_argument("--epochs", type=int, default=None,
                    help="max_epochs for trained models (anomalib's Fre sets none; Lightning would run 1000)")
    args = ap.parse_args()

    import anomalib
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    from fre_edge.bench import machine_identity  # the peer's timings belong to this machine

    work = Path(args.work) / f"{args.model}_{args.category}"
    dm = MVTecAD(root=args.root, category=args.category, train_batch_size=16, eval_batch_size=16, num_workers=0)
    model = build(args.model, args.backbone, args.coreset, args.weights, args.size)
    extra = {"max_epochs": args.epochs} if args.epochs else {}
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=str(work),
                    enable_progress_bar=False, **extra)
    t0 = time.perf_counter()
    engine.fit(model=model, datamodule=dm)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    test = engine.test(model=model, datamodule=dm, verbose=False)
    test_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    # anomalib traces with a symbolic batch (example batch 2) that its graphs then bake in; dynamic_shapes=None
    # traces a static batch-1 graph instead, so that peers and fre-edge are timed at the same batch
    xml = model.to_openvino(export_root=work / "export", input_size=(args.size, args.size),
                            onnx_kwargs={"dynamic_shapes": None})
    export_s = time.perf_counter() - t0
    xml = Path(xml)
    if xml.is_dir():
        xml = next(xml.rglob("*.xml"))
    result = {"peer": f"anomalib {anomalib.__version__} {type(model).__name__}", "model": args.model,
              "backbone": args.backbone, "input_size": args.size,
              "weights": "random (pre_trained=False)" if args.weights == "random" else
              "EfficientNet-Lite0 ImageNet (fre-edge's, mapped onto timm)",
              "category": args.category, "max_epochs": args.epochs,
              "coreset_sampling_ratio": args.coreset if args.model == "patchcore" else None,
              "train_s": train_s, "test_s": test_s, "export_s": export_s,
              ("metrics_random_weights" if args.weights == "random" else "metrics"):
                  {k: float(v) for k, v in (test[0] if test else {}).items()},
              "openvino": time_ir(xml, args.seconds), "ir": str(xml), "machine": machine_identity()}
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
