"""Bundles the speed benchmarks share, fitted on MVTec bottle and cached under models/bench/, in folders
named by the dataset, the settings and a hash of fre-edge's code (``code_key``), so a cache never outlives
the code or settings that made it.

EfficientNet-Lite0 uses its real ImageNet weights. torchvision's ImageNet weights cannot be fetched on
the benchmark machine, so resnet18/resnet50 are built with random weights: their latency is what it
would be with trained weights (same graph, same shapes, same FRE head sizes up to the number of
components, which is capped by the 188 fitting images), but their accuracy is meaningless and is not
reported.
"""

from __future__ import annotations

from pathlib import Path

from ._common import DATASETS, WORK

# the paper's input sizes: 256 for the ResNets; 256 for Lite0 (our default, stride-16 grid of 8 x 8)
BACKBONES = {
    "efficientnet_lite0": {"input_size": 256, "pretrained": True},
    "resnet18": {"input_size": 256, "pretrained": False},
    "resnet50": {"input_size": 256, "pretrained": False},
}


def code_key() -> str:
    """A short hash of fre-edge's source: a cached model or bundle made by other code is not reused."""
    import hashlib

    import fre_edge

    h = hashlib.sha256()
    root = Path(fre_edge.__file__).parent
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:10]


def _tag(dataset: str, settings: dict) -> str:
    """dataset, settings and code in the cache folder's name: change any of them and it is made again."""
    import hashlib
    import json

    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return ("" if dataset == "mvtec_bottle" else f"_{dataset}") + f"_{key}_{code_key()}"


# the score's subspace alone (no map heads, no position-free score): what the head studies take apart
SCORE_HEAD_ONLY = {"map_layers": (), "position_free": "off"}


def _settings(backbone: str, single: bool, fit: dict | None = None) -> dict:
    return {**BACKBONES[backbone], **(SCORE_HEAD_ONLY if single else {}), **(fit or {})}


def fitted_model(backbone: str, dataset: str = "mvtec_bottle", single: bool = False, fit: dict | None = None):
    """The backbone's model fitted on ``dataset`` with fre-edge's defaults (``single``: SCORE_HEAD_ONLY; ``fit``:
    other FitConfig settings)."""
    from fre_edge.fit.data import read_dataset
    from fre_edge.fit import FitConfig, fit_fre
    from fre_edge.fit.persist import load_model, save_model

    model_dir = WORK / f"{backbone}{_tag(dataset, _settings(backbone, single, fit))}_model"
    if (model_dir / "model.json").is_file():
        return load_model(model_dir)
    ds = read_dataset(DATASETS / dataset)
    cfg = FitConfig(backbone=backbone, **_settings(backbone, single, fit))
    fitted = fit_fre([s.path for s in ds.train], cfg, progress=False, data_summary=ds.summary())
    save_model(fitted, model_dir, force=True)
    return fitted


def bundle(backbone: str, suffix: str = "", dataset: str = "mvtec_bottle", single: bool = False,
           fit: dict | None = None, **export_kwargs) -> Path:
    from fre_edge.export import export_bundle

    out = WORK / f"{backbone}{_tag(dataset, {**_settings(backbone, single, fit), **export_kwargs})}_bundle{suffix}"
    if not (out / "manifest.json").is_file():
        export_bundle(fitted_model(backbone, dataset, single, fit), out, force=True, **export_kwargs)
    return out


def int8_bundle(backbone: str, dataset: str = "mvtec_bottle") -> Path:
    """INT8 copy of the f32 bundle, calibrated on the dataset's good training images (NNCF statistics on 300
    of them; the head refit on all but the 32 kept out for thresholds)."""
    from fre_edge.fit.data import read_dataset
    from fre_edge.export.quantize import quantize_bundle

    out = WORK / f"{backbone}{_tag(dataset, BACKBONES[backbone])}_bundle_int8"
    if not (out / "manifest.json").is_file():
        ds = read_dataset(DATASETS / dataset)
        quantize_bundle(bundle(backbone, dataset=dataset), out, [s.path for s in ds.train], force=True)
    return out
