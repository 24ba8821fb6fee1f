"""Bundles laid out as a model repository that OpenVINO Model Server and Triton serve as it is.

::

    REPO/
      config.json                   OVMS: every model, base_path relative to this file
      fre-edge-repository.json      what fre-edge wrote here (names, bundles, digests, versions)
      NAME/
        config.pbtxt                Triton: backend, batching, the tensors
        VERSION/model.xml, .bin     the bundle's IR (or model.onnx with --backend onnxruntime)

VERSION is the bundle's serving version (:func:`fre_edge.runtime.bundle.serving_version`): OVMS and
Triton report it in every response, and fre-edge's remote backend checks it against its own copy of the
bundle. Files only: no server package is needed to write a repository.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import FreEdgeError
from ..runtime.bundle import bundle_digest, read_manifest
from .contract import MAX_BATCH, input_tensor, output_tensors, version_of

FILES = {"openvino": ("model.xml", "model.bin"), "onnxruntime": ("model.onnx",)}
MARKER = "fre-edge-repository.json"


# Triton's OpenVINO backend passes a fixed set of CPU settings to OpenVINO, and the only precision among them is
# HINT_BF16=YES: it cannot ask for f32, and OpenVINO's default is bf16 on CPUs with bf16
BF16_NOTE = ("Triton's OpenVINO backend cannot ask OpenVINO for f32: on CPUs with bf16 (AMX, AVX-512 BF16) it runs "
             "bf16 and FRE's scores move off the bundle's thresholds; for Triton on such CPUs write the repository "
             "with --backend onnxruntime (OVMS's config.json asks for f32)")


def triton_config(name: str, manifest: dict, backend: str, max_batch: int = MAX_BATCH) -> str:
    """Triton's config.pbtxt: the batch dimension left to Triton (max_batch_size), dynamic batching, CPU.

    The score output is [N]; Triton's batched outputs need one dimension besides the batch, so it is
    declared [1] and reshaped to [] (the documented pattern for a tensor that is only the batch)."""
    def dims(shape):  # the shape without the batch dimension
        return ", ".join(str(d) for d in shape[1:])

    x = input_tensor(manifest)
    lines = [f"# {BF16_NOTE}"] if backend == "openvino" else []
    lines += [f'name: "{name}"', f'backend: "{backend}"', f"max_batch_size: {max_batch}",
             "input [", f'  {{ name: "{x["name"]}", data_type: TYPE_UINT8, dims: [ {dims(x["shape"])} ] }}', "]",
             "output ["]
    outs = output_tensors(manifest)
    for i, o in enumerate(outs):
        comma = "," if i < len(outs) - 1 else ""
        if len(o["shape"]) == 1:
            lines.append(f'  {{ name: "{o["name"]}", data_type: TYPE_FP32, dims: [ 1 ], reshape: {{ shape: [ ] }} }}'
                         f"{comma}")
        else:
            lines.append(f'  {{ name: "{o["name"]}", data_type: TYPE_FP32, dims: [ {dims(o["shape"])} ] }}{comma}')
    lines += ["]", "dynamic_batching { max_queue_delay_microseconds: 2000 }",
              "instance_group [ { kind: KIND_CPU, count: 1 } ]"]
    if backend == "openvino":
        lines.append('parameters { key: "PERFORMANCE_HINT", value: { string_value: "THROUGHPUT" } }')
    else:
        lines.append(f'default_model_filename: "{FILES[backend][0]}"')
    return "\n".join(lines) + "\n"


def ovms_config(models: list[dict]) -> dict:
    """OVMS's config.json for the repository's models (paths relative to the file, CPU, f32, throughput)."""
    return {"model_config_list": [
        {"config": {"name": m["name"], "base_path": m["name"], "target_device": "CPU",
                    "plugin_config": {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32"}}}
        for m in models]}


def write_repository(named: list[tuple[str, Path]], out: Path, *, backend: str = "openvino",
                     force: bool = False, max_batch: int = MAX_BATCH) -> list[dict]:
    """Write ``named`` bundles ((model name, bundle folder), checksums verified) as a repository at ``out``."""
    from ..outputs import atomic_dir

    if backend not in FILES:
        raise FreEdgeError(f"unknown backend {backend!r} for a model repository; use openvino or onnxruntime")
    plan, out = [], Path(out)
    for name, path in named:
        path = Path(path)
        manifest = read_manifest(path, verify=True)
        missing = [f for f in FILES[backend] if f not in manifest["files"]]
        if missing:
            other = "onnxruntime" if backend == "openvino" else "openvino"
            raise FreEdgeError(f"{path}: this bundle has no {missing[0]}; use --backend {other} or re-export it")
        plan.append((name, path, manifest))
    models = []
    with atomic_dir(out, force, "repository", inputs=[p for _, p, _ in plan]) as tmp:
        for name, path, manifest in plan:
            version = version_of(manifest)
            folder = tmp / name / version
            folder.mkdir(parents=True)
            for f in FILES[backend]:
                shutil.copyfile(path / f, folder / f)
            (tmp / name / "config.pbtxt").write_text(triton_config(name, manifest, backend, max_batch))
            models.append({"name": name, "version": version, "digest": bundle_digest(manifest),
                           "bundle": str(path), "backend": backend,
                           "files": {f: manifest["files"][f] for f in FILES[backend]}})
        (tmp / "config.json").write_text(json.dumps(ovms_config(models), indent=2) + "\n")
        (tmp / MARKER).write_text(json.dumps({"kind": "fre-edge model repository",
                                              "models": {m["name"]: m for m in models}}, indent=2) + "\n")
    return models
