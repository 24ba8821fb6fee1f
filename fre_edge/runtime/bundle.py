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
import io
import json
import math
import os
from pathlib import Path

from .. import __version__
from ..errors import FreEdgeError
from ..images import input_hw
from ..tiling import Tiling

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
METADATA_KEY = "fre_edge"
MODEL_FILES = ("model.xml", "model.bin", "model.onnx")
PRECISIONS = ("fp32", "fp16", "int8")
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 32, 2048  # as fit accepts

# name -> (type, required)
FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "schema_version": (int, True),
    "fre_edge_version": (str, True),
    "model_type": (str, True),
    "backbone": (str, True),
    "backbone_weights": (str, False),  # "imagenet", "random (timing only)" or "file NAME" (--weights)
    "backbone_weights_sha256": (str, False),  # with "file NAME": that file's sha256
    "layers": (list, True),
    "pool": (int, True),
    "map_layers": (list, False),  # the map's own heads (unpooled by default); absent: the map from "layers"
    "map_pool": ((int, list), False),  # one pooling kernel for every map head, or one each
    "image_score": (dict, False),  # the image score's rule and, when fit chose it, the evidence
    "position_free": (dict, False),  # the position-free score (fre_edge.fit.model.LocalHead): layer, window, k, norm
    "input_size": ((int, list), True),  # a side when square, else [height, width]
    "input": (dict, True),  # layout, dtype, colour order, resize filter
    "normalization": (dict, True),  # mean, std (applied inside the graph)
    "n_components": (list, True),
    "head_forms": (list, False),  # per layer: "reconstruct" or "one_pass" (fre_edge.fit.model); same results
    "blur_sigma": ((int, float), True),
    "thresholds": (dict, True),
    "data": (dict, False),
    "precision": (str, True),  # weights precision of the IR: fp32, fp16, int8
    "outputs": (list, True),
    "exporter": (dict, False),
    "quantization": (dict, False),
    "tiling": (dict, False),  # fre_edge.tiling: pictures scored as overlapping tiles of the input size
    "head_weights": (dict, False),  # fre_edge.export.head_weights: the head's components stored as INT8
}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_threshold(value, name: str, where: str, fix: str = "re-export the bundle") -> float:
    """A threshold must be a finite number above 0 (NaN or inf would silently pass or fail every image)."""
    if not _finite(value) or value <= 0:
        raise FreEdgeError(f"{where}: {name} threshold {value!r} is not a finite number above 0; {fix}")
    return float(value)


def check_thresholds(th, where: str, fix: str = "re-export the bundle") -> dict:
    if not isinstance(th, dict):
        raise FreEdgeError(f"{where}: thresholds must be an object with 'image' and 'pixel'; {fix}")
    for name in ("image", "pixel"):
        if name not in th:
            raise FreEdgeError(f"{where}: the {name} threshold is missing; {fix}")
        check_threshold(th[name], name, where, fix)
    return th


def map_pools(meta: dict) -> list[int]:
    """The pooling kernel of each map head a bundle's metadata names: one for all (an int), or one each."""
    pools = meta.get("map_pool", 1)
    return list(pools) if isinstance(pools, list) else [pools] * len(meta.get("map_layers", []))


def _check_values(meta: dict, where: str) -> None:
    """The fields that decide a score or a verdict hold values a graph can have (checked before any allocation)."""
    def bad(field: str, why: str):
        raise FreEdgeError(f"{where}: metadata field {field!r} {why}; re-export the bundle")

    size = meta["input_size"]
    try:
        h, w = input_hw(size)
    except FreEdgeError:
        bad("input_size", f"is {size!r}, not a side or [height, width]")
    if not all(MIN_INPUT_SIZE <= x <= MAX_INPUT_SIZE for x in (h, w)):
        bad("input_size", f"is {size}, outside {MIN_INPUT_SIZE}-{MAX_INPUT_SIZE} pixels a side")
    if meta["pool"] < 1:
        bad("pool", f"is {meta['pool']}, below 1")
    if not meta["layers"] or not all(isinstance(x, str) for x in meta["layers"]):
        bad("layers", "is not a list of layer names")
    if not all(isinstance(x, str) for x in meta.get("map_layers", [])):
        bad("map_layers", "is not a list of layer names")
    map_pool = meta.get("map_pool", 1)
    if isinstance(map_pool, list) and len(map_pool) != len(meta.get("map_layers", [])):
        bad("map_pool", "is a list but not one pooling kernel per map layer")
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1
               for x in (map_pool if isinstance(map_pool, list) else [map_pool])):
        bad("map_pool", f"is {map_pool}, not whole numbers of 1 or more")
    k = meta["n_components"]
    heads = len(meta["layers"]) + len(meta.get("map_layers", []))
    if len(k) != heads or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in k):
        bad("n_components", "is not one positive count per head (layers, then map_layers)")
    if not _finite(meta["blur_sigma"]) or meta["blur_sigma"] < 0:
        bad("blur_sigma", "is not a finite number >= 0")
    norm = meta["normalization"]
    for key in ("mean", "std"):
        v = norm.get(key)
        if not (isinstance(v, list) and len(v) == 3 and all(_finite(x) for x in v)):
            bad("normalization", f"has no 3 finite {key} values")
    if any(x <= 0 for x in norm["std"]):
        bad("normalization", "has a std that is not above 0")
    inp = meta["input"]
    if inp.get("shape") != [-1, h, w, 3] or inp.get("dtype") != "uint8" or inp.get("layout") != "NHWC":
        bad("input", f"does not describe uint8 NHWC images of {h} x {w}")
    if [o.get("name") if isinstance(o, dict) else None for o in meta["outputs"]] != ["score", "anomaly_map"]:
        bad("outputs", "does not name score and anomaly_map")
    if "tiling" in meta:
        try:
            tiling = Tiling.from_json(meta["tiling"])
        except FreEdgeError as exc:
            bad("tiling", f"is not valid ({exc})")
        if tiling.tile != (h, w):
            bad("tiling", f"has tiles of {tiling.tile[0]} x {tiling.tile[1]}, not the input's {h} x {w}")
    if meta["precision"] not in PRECISIONS:
        bad("precision", f"is {meta['precision']!r}, not one of {', '.join(PRECISIONS)}")
    check_thresholds(meta["thresholds"], where)


def validate_metadata(meta: dict, where: str) -> dict:
    """Check schema version, presence, types and values of fields; one clear error per problem."""
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
    _check_values(meta, where)
    return meta


def metadata_json(meta: dict) -> str:
    return json.dumps({k: meta[k] for k in FIELDS if k in meta}, sort_keys=True)


def bundle_digest(manifest: dict) -> str:
    """The bundle's identity: sha256 of its model files' checksums (the manifest's ``files``), as hex.

    Two bundles with the same graph files have the same digest, whichever folder holds them."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise FreEdgeError("this manifest has no file list; re-export the bundle")
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def served_name(bundle_dir: str | Path) -> str:
    """The name a model server gives a bundle unless told another: its folder's name."""
    return Path(bundle_dir).resolve().name


def serving_version(digest: str) -> str:
    """The model version a model server reports for a bundle: the digest's first 48 bits as a decimal number.

    OVMS and Triton name versions by positive integers (the folder ``REPO/NAME/VERSION``); deriving it from
    the digest lets a client check, in every response's ``model_version``, that the server runs the bundle
    it holds, on fre-edge's server and on theirs alike."""
    return str(int(digest[:12], 16) or 1)


# ----------------------------------------------------------------------------- metadata inside the model files


def _ir_metadata(xml_path: Path) -> str | None:
    """rt_info ["model_info", "fre_edge"] of an OpenVINO IR, read from its XML without OpenVINO."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise FreEdgeError(f"{xml_path}: not a readable OpenVINO IR ({exc}); copy the bundle again") from None
    node = root.find(f"./rt_info/model_info/{METADATA_KEY}")
    return None if node is None else node.get("value")


def _varint(f) -> int | None:
    shift = result = 0
    while True:
        b = f.read(1)
        if not b:
            return None
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("bad varint")


def _onnx_metadata(onnx_path: Path) -> str | None:
    """metadata_props["fre_edge"] of an ONNX file, read by walking its top-level protobuf fields (the
    graph, which holds the weights, is skipped by seeking; no onnx package needed)."""
    try:
        with open(onnx_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            while f.tell() < size:
                tag = _varint(f)
                if tag is None:
                    break
                field, wire = tag >> 3, tag & 7
                if wire == 0:
                    _varint(f)
                elif wire == 1 or wire == 5:
                    f.seek(8 if wire == 1 else 4, 1)
                elif wire == 2:
                    n = _varint(f)
                    if n is None or f.tell() + n > size:
                        raise ValueError("truncated")
                    if field != 14:  # ModelProto.metadata_props (StringStringEntryProto: key 1, value 2)
                        f.seek(n, 1)
                        continue
                    entry, key, value = io.BytesIO(f.read(n)), None, None
                    while entry.tell() < n:
                        t = _varint(entry)
                        ln = _varint(entry) if t is not None and t & 7 == 2 else None
                        if ln is None:
                            raise ValueError("bad metadata entry")
                        data = entry.read(ln).decode("utf-8")
                        if t >> 3 == 1:
                            key = data
                        elif t >> 3 == 2:
                            value = data
                    if key == METADATA_KEY:
                        return value
                else:
                    raise ValueError(f"wire type {wire}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise FreEdgeError(f"{onnx_path}: not a readable ONNX model ({exc}); copy the bundle again") from None
    return None


def embedded_metadata(model_file: Path) -> dict | None:
    """The fre-edge metadata inside a model file (.xml or .onnx), parsed; None if it carries none."""
    raw = _ir_metadata(model_file) if model_file.suffix == ".xml" else _onnx_metadata(model_file)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise FreEdgeError(f"{model_file}: its fre-edge metadata is not valid JSON; re-export the bundle") from None


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN equals NaN here


def _check_files(files, path: Path) -> None:
    """``files`` names exactly the bundle's model files: known names only, with their partners."""
    if not isinstance(files, dict) or not files:
        raise FreEdgeError(f"{path}: no file list; re-export the bundle")
    unknown = [n for n in files if n not in MODEL_FILES]
    if unknown:
        raise FreEdgeError(f"{path}: its file list names {unknown[0]!r}, which is not a bundle file "
                           f"({', '.join(MODEL_FILES)}); re-export the bundle")
    if ("model.xml" in files) != ("model.bin" in files) or not ({"model.xml", "model.onnx"} & set(files)):
        raise FreEdgeError(f"{path}: its file list does not cover a whole model (model.xml + model.bin, or "
                           f"model.onnx); re-export the bundle")
    if not all(isinstance(d, str) and len(d) == 64 for d in files.values()):
        raise FreEdgeError(f"{path}: its file list holds a checksum that is not a sha256; re-export the bundle")
    unlisted = [n for n in MODEL_FILES if n not in files and (path.parent / n).exists()]
    if unlisted:
        raise FreEdgeError(f"{path.parent / unlisted[0]}: not covered by the manifest's checksums; remove it or "
                           f"re-export the bundle")


def read_manifest(bundle_dir: str | Path, *, verify: bool = True) -> dict:
    """Read and validate ``manifest.json``.

    With ``verify`` (the default), every model file's sha256 is checked, and the manifest must agree with
    the metadata inside the checksummed model files on every field: thresholds, input size,
    normalisation, outputs and the rest. The manifest itself is not checksummed, so this is what makes
    an edited threshold or input size evident.
    """
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise FreEdgeError(f"{bundle_dir}: no {MANIFEST}; pass a bundle folder written by `fre-edge export`")
    try:
        manifest = json.loads(path.read_text())
    except OSError as exc:
        raise FreEdgeError(f"{path}: cannot read it ({exc.strerror or exc}); check its permissions or copy "
                           f"the bundle again") from None
    except ValueError as exc:
        raise FreEdgeError(f"{path}: not valid JSON ({exc}); re-export the bundle") from None
    validate_metadata(manifest, str(path))
    files = manifest.get("files")
    _check_files(files, path)
    if verify:
        for name, digest in files.items():
            f = bundle_dir / name
            if not f.is_file():
                raise FreEdgeError(f"{f}: listed in the manifest but missing; copy the whole bundle folder")
            try:
                ok = sha256_file(f) == digest
            except OSError as exc:
                raise FreEdgeError(f"{f}: cannot read it ({exc.strerror or exc}); check its permissions or "
                                   f"copy the bundle again") from None
            if not ok:
                raise FreEdgeError(f"{f}: checksum mismatch (file changed or damaged); copy the bundle again")
        expected = json.loads(metadata_json(manifest))
        for name in ("model.xml", "model.onnx"):
            if name not in files:
                continue
            inside = embedded_metadata(bundle_dir / name)
            if inside is None:
                raise FreEdgeError(f"{bundle_dir / name}: carries no fre-edge metadata; re-export the bundle")
            differ = sorted(k for k in set(inside) | set(expected) if not _same(inside.get(k), expected.get(k)))
            if differ:
                raise FreEdgeError(f"{path}: disagrees with the checksummed {name} on {', '.join(differ)} (the "
                                   f"manifest was edited or mixed from two bundles); copy the bundle again")
    return manifest
