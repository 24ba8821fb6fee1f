"""Save and load a fitted model folder: ``model.safetensors`` (tensors) + ``model.json`` (settings).

No pickle: tensors go to safetensors, everything else to JSON. The backbone's weights are not copied;
they are rebuilt from the backbone name (and the weights file, whose sha256 is recorded and checked).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from . import __version__
from .errors import FreEdgeError
from .fit import FitConfig, FittedFRE, build_detector
from .pca import Subspace
from .runtime.bundle import sha256_file as file_sha256

MODEL_SCHEMA = 1
TENSORS = "model.safetensors"
SETTINGS = "model.json"


def atomic_dir(final: Path, force: bool):
    """Context: yields a temporary folder beside ``final``, renamed into place on success only."""
    final = Path(final)
    if final.exists():
        if not force:
            raise FreEdgeError(f"{final} already exists; choose another output folder or pass --force")
        if not final.is_dir():
            raise FreEdgeError(f"{final} exists and is not a folder; remove it or choose another output")

    class _Ctx:
        def __enter__(self):
            final.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
            return self.tmp

        def __exit__(self, exc_type, exc, tb):
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return False
            if final.exists():
                old = final.with_name(f".{final.name}.old-{os.getpid()}")
                final.rename(old)
                self.tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                self.tmp.rename(final)
            return False

    return _Ctx()


def save_model(fitted: FittedFRE, out_dir: str | Path, *, force: bool = False) -> Path:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    cfg = fitted.config
    tensors = {}
    for i, head in enumerate(fitted.detector.heads):
        tensors[f"layer{i}.mean"] = head.mean.contiguous()
        tensors[f"layer{i}.components"] = head.components.contiguous()
    tensors["fusion"] = fitted.detector.fusion.contiguous()
    settings = {
        "schema": MODEL_SCHEMA,
        "kind": "fre-edge model",
        "config": {**asdict(cfg), "layers": list(cfg.layers)},
        "info": fitted.info,
    }
    if cfg.weights:
        settings["weights_sha256"] = file_sha256(cfg.weights)
    with atomic_dir(out_dir, force) as tmp:
        save_file(tensors, str(tmp / TENSORS), metadata={"fre_edge_version": __version__})
        (tmp / SETTINGS).write_text(json.dumps(settings, indent=2))
    return out_dir


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
    except ValueError as exc:
        raise FreEdgeError(f"{sp}: not valid JSON ({exc}); fit the model again") from None
    if settings.get("schema") != MODEL_SCHEMA:
        raise FreEdgeError(
            f"{sp}: model schema {settings.get('schema')!r}, this fre-edge {__version__} reads {MODEL_SCHEMA}; "
            f"refit with this version"
        )
    try:
        tensors = load_file(str(tp))
    except (SafetensorError, OSError, ValueError) as exc:
        raise FreEdgeError(f"{tp}: cannot read ({exc}); the file is damaged, fit again") from None
    c = dict(settings["config"])
    c["layers"] = tuple(c["layers"])
    cfg = FitConfig(**c)
    if cfg.weights:
        if not Path(cfg.weights).is_file():
            raise FreEdgeError(f"{cfg.weights}: the backbone weights this model was fitted with are missing; put them back")
        if file_sha256(cfg.weights) != settings.get("weights_sha256"):
            raise FreEdgeError(f"{cfg.weights}: the backbone weights changed since fitting; refit the model")
    info = settings["info"]
    subspaces, shapes = [], []
    for i, shape in enumerate(info["feature_shapes"]):
        nan = torch.full((1,), float("nan"))
        subspaces.append(Subspace(tensors[f"layer{i}.mean"], tensors[f"layer{i}.components"], nan,
                                  info["strategies"][i]))
        shapes.append(tuple(shape))
    detector = build_detector(cfg, subspaces, shapes, fusion=tensors["fusion"])
    return FittedFRE(detector, cfg, info)
