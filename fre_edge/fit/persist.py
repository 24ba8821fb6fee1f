"""Save and load a fitted model folder: ``model.safetensors`` (tensors) + ``model.json`` (settings).

No pickle: tensors go to safetensors, everything else to JSON. The backbone's weights are not copied;
they are rebuilt from the backbone name (and the weights file, whose sha256 is recorded and checked).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, fields
from pathlib import Path

import torch

from .. import __version__
from ..errors import FreEdgeError
from .config import FitConfig, build_detector
from .pipeline import FittedFRE
from ..images import size_json
from ..outputs import atomic_dir
from .model import LocalHead
from .pca import Subspace
from ..runtime.bundle import check_thresholds, sha256_file as file_sha256

MODEL_SCHEMA = 1
TENSORS = "model.safetensors"
SETTINGS = "model.json"


def save_model(fitted: FittedFRE, out_dir: str | Path, *, force: bool = False) -> Path:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    cfg = fitted.config
    tensors = {}
    for i, head in enumerate(fitted.detector.heads):
        tensors[f"layer{i}.mean"] = head.mean.contiguous()
        tensors[f"layer{i}.components"] = head.components.contiguous()
    tensors["fusion"] = fitted.detector.fusion.contiguous()
    if fitted.detector.local is not None:
        tensors["local.mean"] = fitted.detector.local.mean.contiguous()
        tensors["local.components"] = fitted.detector.local.components.contiguous()
        tensors["local_norm"] = fitted.detector.local_norm.contiguous()
    settings = {
        "schema": MODEL_SCHEMA,
        "kind": "fre-edge model",
        "config": {**asdict(cfg), "layers": list(cfg.layers), "map_layers": list(cfg.map_layers),
                   "input_size": size_json(cfg.input_size)},
        "info": fitted.info,
    }
    if cfg.weights:
        settings["weights_sha256"] = file_sha256(cfg.weights)
    with atomic_dir(out_dir, force, "model") as tmp:
        save_file(tensors, str(tmp / TENSORS), metadata={"fre_edge_version": __version__})
        (tmp / SETTINGS).write_text(json.dumps(settings, indent=2))
    return out_dir


# FitConfig field -> the JSON types its value may have
_CONFIG_TYPES = {"backbone": (str,), "layers": (list,), "input_size": (int, list), "pool": (int,),
                 "n_components": (int, float), "strategy": (str,), "holdout": (int, float),
                 "blur_sigma": (int, float), "batch_size": (int,), "seed": (int,), "pretrained": (bool,),
                 "weights": (str, type(None)), "memory_budget_gb": (int, float), "ae_epochs": (int,),
                 "tiles": (list, type(None)), "tile_overlap": (int, float), "map_layers": (list,),
                 "map_pool": (int,), "map_components": (int, float), "position_free": (str,), "map_grid": (bool,)}
# settings added after models were first saved: a model.json without them takes the default they had
# (a model without map_layers made its map from its score's subspace)
_ADDED_LATER = {"ae_epochs": 250, "tiles": None, "tile_overlap": 0.25, "map_layers": [], "map_pool": 1,
                "map_components": 16, "position_free": "off", "map_grid": False}


def _config(settings: dict, where: Path) -> FitConfig:
    """model.json's "config", checked key by key, as a validated FitConfig."""
    c = settings.get("config")
    if not isinstance(c, dict):
        raise FreEdgeError(f"{where}: no \"config\" object; fit the model again")
    names = {f.name for f in fields(FitConfig)}
    assert names == set(_CONFIG_TYPES), "keep _CONFIG_TYPES in step with FitConfig"
    c = {**_ADDED_LATER, **c}
    unknown, missing = sorted(set(c) - names), sorted(names - set(c))
    if unknown or missing:
        what = f"unknown key {unknown[0]!r}" if unknown else f"key {missing[0]!r} is missing"
        raise FreEdgeError(f"{where}: config: {what}; fit the model again with this fre-edge")
    for name, types in _CONFIG_TYPES.items():
        v = c[name]
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types) or (
                isinstance(v, float) and not math.isfinite(v)):
            raise FreEdgeError(f"{where}: config: {name} = {v!r} has the wrong type or value; fit the model again")
    try:
        return FitConfig(**{**c, "layers": tuple(c["layers"]), "map_layers": tuple(c["map_layers"])}).validate()
    except FreEdgeError as exc:
        raise FreEdgeError(f"{where}: config: {exc}; or fit the model again") from None


def _info(settings: dict, where: Path, config: FitConfig) -> dict:
    """model.json's "info": the per-layer lists the detector is rebuilt from, and finite thresholds."""
    info = settings.get("info")
    if not isinstance(info, dict):
        raise FreEdgeError(f"{where}: no \"info\" object; fit the model again")
    for key in ("feature_shapes", "strategies", "n_components"):
        if not isinstance(info.get(key), list) or not info[key]:
            raise FreEdgeError(f"{where}: info: {key!r} is missing or empty; fit the model again")
    if not all(isinstance(s, list) and len(s) == 3 and all(isinstance(d, int) and d > 0 for d in s)
               for s in info["feature_shapes"]):
        raise FreEdgeError(f"{where}: info: feature_shapes is not a list of [C, H, W]; fit the model again")
    heads = len(config.head_layers)
    if not len(info["strategies"]) == len(info["feature_shapes"]) == heads:
        raise FreEdgeError(f"{where}: info: one entry per head is needed; fit the model again")
    check_thresholds(info.get("thresholds"), str(where), "fit the model again")
    return info


def load_model(model_dir: str | Path) -> FittedFRE:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FreEdgeError(f"{model_dir}: no such model folder; run `fre-edge fit DATA -o {model_dir}` first")
    sp, tp = model_dir / SETTINGS, model_dir / TENSORS
    for p in (sp, tp):
        if not p.is_file():
            raise FreEdgeError(f"{p} is missing; {model_dir} is not a complete fre-edge model folder, fit again")
    try:
        settings = json.loads(sp.read_text())
    except OSError as exc:
        raise FreEdgeError(f"{sp}: cannot read it ({exc.strerror or exc}); check its permissions") from None
    except ValueError as exc:
        raise FreEdgeError(f"{sp}: not valid JSON ({exc}); fit the model again") from None
    if not isinstance(settings, dict) or settings.get("schema") != MODEL_SCHEMA:
        found = settings.get("schema") if isinstance(settings, dict) else None
        raise FreEdgeError(
            f"{sp}: model schema {found!r}, this fre-edge {__version__} reads {MODEL_SCHEMA}; "
            f"refit with this version"
        )
    cfg = _config(settings, sp)
    info = _info(settings, sp, cfg)
    try:
        tensors = load_file(str(tp))
    except (SafetensorError, OSError, ValueError) as exc:
        raise FreEdgeError(f"{tp}: cannot read ({exc}); the file is damaged, fit again") from None
    expected = [f"layer{i}.{t}" for i in range(len(info["feature_shapes"])) for t in ("mean", "components")]
    if cfg.position_free == "on":
        expected += ["local.mean", "local.components", "local_norm"]
    missing = [k for k in expected + ["fusion"] if k not in tensors]
    if missing:
        raise FreEdgeError(f"{tp}: tensor {missing[0]!r} is missing; the file is damaged, fit again")
    if cfg.weights:
        if not Path(cfg.weights).is_file():
            raise FreEdgeError(f"{cfg.weights}: the backbone weights this model was fitted with are missing; "
                               f"put them back")
        if file_sha256(cfg.weights) != settings.get("weights_sha256"):
            raise FreEdgeError(f"{cfg.weights}: the backbone weights changed since fitting; refit the model")
    subspaces, shapes = [], []
    for i, shape in enumerate(info["feature_shapes"]):
        nan = torch.full((1,), float("nan"))
        subspaces.append(Subspace(tensors[f"layer{i}.mean"], tensors[f"layer{i}.components"], nan,
                                  info["strategies"][i]))
        shapes.append(tuple(shape))
    local = None
    if cfg.position_free == "on":
        window = (info.get("position_free") or {}).get("window", 3)
        local = LocalHead(Subspace(tensors["local.mean"], tensors["local.components"],
                                   torch.full((1,), float("nan")), "covariance"), window)
    detector = build_detector(cfg, subspaces, shapes, fusion=tensors["fusion"], local=local,
                              local_norm=tensors.get("local_norm"))
    return FittedFRE(detector, cfg, info)
