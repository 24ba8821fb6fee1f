"""The bundle format: what ``fre-edge export`` writes and the runtime reads (numpy-free, torch-free).

A bundle is a folder::

    manifest.json   schema version, model settings, thresholds, sha256 of every model file
    model.xml/.bin  OpenVINO IR (metadata also inside, rt_info ["model_info", "fre_edge"])
    model.onnx      ONNX (metadata also inside, metadata_props "fre_edge")

One list of typed fields (:data:`FIELDS`) drives writing, reading and validating the metadata, so a
lone .xml/.bin pair or .onnx file describes itself as fully as the folder does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import __version__
from ..errors import FreEdgeError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
METADATA_KEY = "fre_edge"

# name -> (type, required)
FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "schema_version": (int, True),
    "fre_edge_version": (str, True),
    "model_type": (str, True),
    "backbone": (str, True),
    "backbone_weights": (str, False),  # "imagenet" or "random (timing only)"
    "layers": (list, True),
    "pool": (int, True),
    "input_size": (int, True),
    "input": (dict, True),  # layout, dtype, colour order, resize filter
    "normalization": (dict, True),  # mean, std (applied inside the graph)
    "n_components": (list, True),
    "head_forms": (list, False),  # per layer: "reconstruct" or "one_pass" (fre_edge.model); same results
    "blur_sigma": ((int, float), True),
    "thresholds": (dict, True),
    "data": (dict, False),
    "precision": (str, True),  # weights precision of the IR: fp32, fp16, int8
    "outputs": (list, True),
    "exporter": (dict, False),
    "quantization": (dict, False),
}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def validate_metadata(meta: dict, where: str) -> dict:
    """Check schema version, presence and types of fields; one clear error per problem."""
    if not isinstance(meta, dict):
        raise FreEdgeError(f"{where}: metadata is not a JSON object; re-export the bundle")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        raise FreEdgeError(
            f"{where}: bundle schema version {version!r}, this fre-edge {__version__} reads version "
            f"{SCHEMA_VERSION}; "
            + ("upgrade fre-edge (pip install -U fre-edge)" if newer else "re-export the bundle with this fre-edge")
        )
    for name, (typ, required) in FIELDS.items():
        if name not in meta:
            if required:
                raise FreEdgeError(f"{where}: metadata field {name!r} is missing; re-export the bundle")
            continue
        if not isinstance(meta[name], typ) or isinstance(meta[name], bool):
            raise FreEdgeError(f"{where}: metadata field {name!r} has the wrong type; re-export the bundle")
    if meta["model_type"] != "fre":
        raise FreEdgeError(f"{where}: model type {meta['model_type']!r} is not an FRE model")
    return meta


def metadata_json(meta: dict) -> str:
    return json.dumps({k: meta[k] for k in FIELDS if k in meta}, sort_keys=True)


def read_manifest(bundle_dir: str | Path, *, verify: bool = True) -> dict:
    """Read and validate ``manifest.json``; with ``verify``, check every file's sha256."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise FreEdgeError(f"{bundle_dir}: no {MANIFEST}; pass a bundle folder written by `fre-edge export`")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise FreEdgeError(f"{path}: not valid JSON ({exc}); re-export the bundle") from None
    validate_metadata(manifest, str(path))
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise FreEdgeError(f"{path}: no file list; re-export the bundle")
    if verify:
        for name, digest in files.items():
            f = bundle_dir / name
            if not f.is_file():
                raise FreEdgeError(f"{f}: listed in the manifest but missing; copy the whole bundle folder")
            if sha256_file(f) != digest:
                raise FreEdgeError(f"{f}: checksum mismatch (file changed or damaged); copy the bundle again")
    return manifest
