"""The model repository for OpenVINO Model Server and Triton: layout, Triton's config checked against
Triton's own ModelConfig schema, OVMS's config.json, versions from the bundle digest, --force rules."""

from __future__ import annotations

import json
import subprocess

import pytest

from fre_edge.errors import FreEdgeError
from fre_edge.runtime.bundle import bundle_digest, read_manifest, serving_version, sha256_file
from fre_edge.serve.repository import write_repository
from fre_edge.serve.process import fre_edge_cmd


def test_layout_for_ovms_and_triton(sample_bundle, tmp_path):
    repo = tmp_path / "repo"
    run = subprocess.run(fre_edge_cmd("repository", str(sample_bundle), f"line2={sample_bundle}", "-o", str(repo)),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    manifest = read_manifest(sample_bundle)
    version = serving_version(bundle_digest(manifest))
    assert version.isdigit() and int(version) > 0
    size = manifest["input_size"]
    ovms = json.loads((repo / "config.json").read_text())
    assert [c["config"]["name"] for c in ovms["model_config_list"]] == ["sample", "line2"]
    for c in ovms["model_config_list"]:
        cfg = c["config"]
        base = repo / cfg["base_path"]  # relative to config.json, as OVMS resolves it
        assert [p.name for p in base.iterdir() if p.is_dir()] == [version]
        for f in ("model.xml", "model.bin"):
            assert sha256_file(base / version / f) == manifest["files"][f]
        assert cfg["plugin_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    pb = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    config = text_format.Parse((repo / "sample" / "config.pbtxt").read_text(), pb.ModelConfig())
    assert config.name == "sample" and config.backend == "openvino" and config.max_batch_size == 64
    assert [(i.name, pb.DataType.Name(i.data_type), list(i.dims)) for i in config.input] == \
        [("images", "TYPE_UINT8", [size, size, 3])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("score", [1]), ("anomaly_map", [size, size])]
    assert list(config.output[0].reshape.shape) == []
    assert config.HasField("dynamic_batching")
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    # Triton's OpenVINO backend cannot pin f32: said where the user looks, the CLI and the config itself
    assert "note: Triton's OpenVINO backend cannot ask OpenVINO for f32" in run.stderr
    assert "--backend onnxruntime" in (repo / "sample" / "config.pbtxt").read_text().splitlines()[0]
    marker = json.loads((repo / "fre-edge-repository.json").read_text())
    assert marker["models"]["sample"]["digest"] == bundle_digest(manifest)


def test_onnx_repository_and_force(sample_bundle, tmp_path):
    repo = tmp_path / "repo"
    models = write_repository([("m", sample_bundle)], repo, backend="onnxruntime")
    version = models[0]["version"]
    assert sorted(p.name for p in (repo / "m" / version).iterdir()) == ["model.onnx"]
    assert 'default_model_filename: "model.onnx"' in (repo / "m" / "config.pbtxt").read_text()
    assert "cannot ask OpenVINO for f32" not in (repo / "m" / "config.pbtxt").read_text()
    with pytest.raises(FreEdgeError, match="exists"):
        write_repository([("m", sample_bundle)], repo)
    write_repository([("m", sample_bundle)], repo, force=True)  # fre-edge's own repository: replaced
    assert sorted(p.name for p in (repo / "m" / version).iterdir()) == ["model.bin", "model.xml"]
    (repo / "notes.txt").write_text("mine")
    with pytest.raises(FreEdgeError, match="notes.txt"):
        write_repository([("m", sample_bundle)], repo, force=True)
    assert (repo / "notes.txt").read_text() == "mine"


def test_a_bundle_is_never_the_repository(sample_bundle, tmp_path):
    run = subprocess.run(fre_edge_cmd("repository", str(sample_bundle), "-o", str(sample_bundle), "--force"),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1
    assert read_manifest(sample_bundle)  # untouched, still valid
