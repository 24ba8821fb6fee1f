"""Serving over the KServe v2 protocol: a real `fre-edge serve` process, the kserve backend against it over
HTTP and gRPC, malformed requests, concurrency, SIGTERM, a server running another bundle, the model
repository for OVMS and Triton."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fre_edge.serve.process import ServeProcess as Server
from fre_edge.serve.process import fre_edge_cmd, http

if not (importlib.util.find_spec("kserve") and importlib.util.find_spec("tritonclient")):
    if os.environ.get("CI"):
        pytest.fail('the serve and remote extras are missing on CI: pip install -e ".[test]"')
    pytest.skip("kserve or tritonclient not installed", allow_module_level=True)

from fre_edge.errors import FreEdgeError  # noqa: E402
from fre_edge.runtime import load_detector  # noqa: E402
from fre_edge.runtime.bundle import bundle_digest, read_manifest, serving_version  # noqa: E402


@pytest.fixture(scope="module")
def images(sample_root):
    return sorted(sample_root.glob("test/*/*.png"))[:8]


@pytest.fixture(scope="module")
def local(sample_bundle):
    return load_detector(sample_bundle)


@pytest.fixture(scope="module")
def server(sample_bundle, tmp_path_factory):
    with Server(sample_bundle, log=tmp_path_factory.mktemp("serve") / "serve.log") as s:
        yield s


@pytest.fixture(scope="module")
def other_bundle(sample_model, tmp_path_factory):
    """The same fit exported as IR only: other model files, so another digest."""
    from fre_edge.export import export_bundle

    out = tmp_path_factory.mktemp("other") / "sample"
    export_bundle(sample_model[1], out, formats=("openvino",))
    return out


def _name(bundle) -> str:
    return bundle.resolve().name


def test_metadata_matches_the_manifest(server, sample_bundle):
    manifest = read_manifest(sample_bundle)
    size = manifest["input_size"]
    status, meta = http(f"{server.http_url}/v2/models/{_name(sample_bundle)}")
    assert status == 200
    assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, size, size, 3]}]
    assert meta["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1]},
                               {"name": "anomaly_map", "datatype": "FP32", "shape": [-1, size, size]}]
    assert meta["versions"] == [serving_version(bundle_digest(manifest))]
    import tritonclient.grpc as grpcclient

    g = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    gmeta = g.get_model_metadata(_name(sample_bundle), as_json=True, client_timeout=30)
    assert gmeta["versions"] == meta["versions"]
    assert [t["name"] for t in gmeta["outputs"]] == ["score", "anomaly_map"]
    assert http(f"{server.http_url}/v2/health/live")[0] == 200


@pytest.mark.parametrize("scheme", ["http", "grpc"])
@pytest.mark.parametrize("batch", [1, 8])
def test_served_predictions_equal_local_ones(server, sample_bundle, local, images, scheme, batch):
    remote = load_detector(sample_bundle, backend="kserve", url=getattr(server, f"{scheme}_url"))
    chosen = images[:batch]
    ref, got = local.predict_batch(chosen), remote.predict_batch(chosen)
    assert len(got) == batch
    for r, g in zip(ref, got):
        assert g.score == pytest.approx(r.score, rel=1e-5)
        np.testing.assert_allclose(g.model_map, r.model_map, rtol=1e-5, atol=1e-6 * float(r.model_map.max()))
        assert g.anomalous == r.anomalous
        assert g.to_dict()["label"] == r.to_dict()["label"]
    assert remote.describe()["backend"] == "kserve"


def test_eight_clients_fifty_requests_each_get_their_own_answers(server, sample_bundle, local, images):
    remote = load_detector(sample_bundle, backend="kserve", url=server.grpc_url)
    prepared = [remote.prepare(p)[0] for p in images]
    expected = [float(local.infer_prepared(x[None])[0][0]) for x in prepared]
    assert len(set(expected)) == len(expected)  # distinct answers, so a mix-up would show

    def client(k: int) -> list[tuple[int, float]]:
        out = []
        for i in range(50):
            j = (k + i) % len(prepared)
            out.append((j, float(remote.infer_prepared(prepared[j][None])[0][0])))
        return out

    with ThreadPoolExecutor(8) as pool:
        results = [r for f in [pool.submit(client, k) for k in range(8)] for r in f.result(timeout=600)]
    assert len(results) == 400
    for j, score in results:
        assert score == pytest.approx(expected[j], rel=1e-5)


def _binary_request(x: np.ndarray, datatype: str = "UINT8", shape=None, name: str = "images") -> tuple[bytes, dict]:
    raw = x.tobytes()
    head = json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": list(shape or x.shape),
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return head + raw, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}


def test_malformed_requests_get_a_4xx_with_a_message_and_the_server_stays_up(server, sample_bundle):
    size = read_manifest(sample_bundle)["input_size"]
    url = f"{server.http_url}/v2/models/{_name(sample_bundle)}/infer"
    good = np.zeros((1, size, size, 3), np.uint8)
    cases = {
        "wrong dtype": _binary_request(good.astype(np.float32), "FP32"),
        "wrong shape": _binary_request(np.zeros((1, size, size), np.uint8)),
        "wrong size": _binary_request(np.zeros((1, size // 2, size // 2, 3), np.uint8)),
        "data shorter than shape": _binary_request(good[:, : size // 2], shape=good.shape),
        "unknown input": _binary_request(good, name="pixels"),
        "batch too large": _binary_request(np.zeros((65, size, size, 3), np.uint8)),
        "garbage body": (b"\x00\xffnot json at all", {"Content-Type": "application/json"}),
        "json without inputs": (b'{"outputs": []}', {"Content-Type": "application/json"}),
    }
    for what, (body, headers) in cases.items():
        status, answer = http(url, body, headers)
        assert 400 <= status < 500, (what, status, answer)
        message = answer.get("error") or answer.get("detail") or answer.get("raw")
        assert message, (what, answer)
    status, answer = http(f"{server.http_url}/v2/models/no_such_model/infer", *_binary_request(good))
    assert status == 404 and "no_such_model" in json.dumps(answer)
    # gRPC: a wrong dtype is INVALID_ARGUMENT with the reason
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    g = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    bad = grpcclient.InferInput("images", [1, size, size, 3], "FP32")
    bad.set_data_from_numpy(good.astype(np.float32))
    with pytest.raises(InferenceServerException, match="UINT8") as info:
        g.infer(_name(sample_bundle), [bad], client_timeout=30)
    assert "INVALID_ARGUMENT" in str(info.value.status())
    # still serving
    assert http(f"{server.http_url}/v2/health/ready")[0] == 200
    status, answer = http(url, *_binary_request(good))
    assert status == 200 and answer["model_version"] == serving_version(bundle_digest(read_manifest(sample_bundle)))


def test_a_server_running_another_bundle_is_refused_and_sigterm_stops_it(sample_bundle, other_bundle, images,
                                                                          tmp_path):
    assert bundle_digest(read_manifest(other_bundle)) != bundle_digest(read_manifest(sample_bundle))
    with Server(other_bundle, log=tmp_path / "other.log") as s:  # served under the same name, "sample"
        for url in (s.http_url, s.grpc_url):
            with pytest.raises(FreEdgeError, match="another bundle"):
                load_detector(sample_bundle, backend="kserve", url=url)
        run = subprocess.run(fre_edge_cmd("predict", str(sample_bundle), str(images[0]), "--server", s.grpc_url),
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2
        assert run.stdout == "" and len(run.stderr.strip().splitlines()) == 1
        assert "another bundle" in run.stderr
        # its own bundle is accepted by the same server
        assert load_detector(other_bundle, backend="kserve", url=s.grpc_url).predict(images[0]).score > 0
        assert s.stop() == 0  # SIGTERM: a clean exit
        assert "Traceback" not in s.output()


def test_predict_and_bench_with_server(server, sample_bundle, images, tmp_path):
    out = tmp_path / "pred"
    run = subprocess.run(fre_edge_cmd("predict", str(sample_bundle), *map(str, images[:3]), "--server",
                                      server.http_url, "--out", str(out), "--quiet"),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode in (0, 1), run.stderr
    scores = json.loads((out / "scores.json").read_text())
    local = load_detector(sample_bundle).predict_batch(images[:3])
    assert [r["score"] for r in scores["images"]] == pytest.approx([p.score for p in local], rel=1e-5)
    assert scores["runtime"]["backend"] == "kserve"
    js = tmp_path / "bench.json"
    run = subprocess.run(fre_edge_cmd("bench", str(sample_bundle), "--server", server.grpc_url, "--duration", "0.5",
                                      "--clients", "2", "--json", str(js)), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(js.read_text())
    assert result["runtime"]["backend"] == "kserve" and result["bench"]["async"]["requests_in_flight"] == 2
    assert result["bench"]["sync"]["iterations"] >= 10


@pytest.mark.parametrize("args, expect", [
    (["--server", "ftp://127.0.0.1:1"], "http://HOST:PORT or grpc://HOST:PORT"),
    (["--server", "grpc://127.0.0.1"], "no valid port"),
    (["--server", "grpc://127.0.0.1:9", "--backend", "onnxruntime"], "drop it with --server"),
])
def test_bad_server_options_are_one_line(sample_bundle, images, args, expect):
    run = subprocess.run(fre_edge_cmd("predict", str(sample_bundle), str(images[0]), *args),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert len(run.stderr.strip().splitlines()) == 1 and expect in run.stderr


def test_an_unreachable_server_is_one_line(sample_bundle, images):
    from fre_edge.serve.process import free_port

    port = free_port()  # nothing listens there
    for url in (f"grpc://127.0.0.1:{port}", f"http://127.0.0.1:{port}"):
        run = subprocess.run(fre_edge_cmd("predict", str(sample_bundle), str(images[0]), "--server", url),
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and run.stdout == "", run.stderr
        assert len(run.stderr.strip().splitlines()) == 1 and url in run.stderr


def test_serve_refuses_bad_arguments_in_one_line(sample_bundle, tmp_path, server):
    cases = [
        ([str(tmp_path / "missing")], "no such bundle folder"),
        ([str(sample_bundle), str(sample_bundle)], "two bundles would be served as"),
        ([f"bad name={sample_bundle}"], "not usable in a URL"),
        ([str(sample_bundle), "--http-port", "9100", "--grpc-port", "9100"], "different ports"),
        ([str(sample_bundle), "--http-port", str(server.http_port), "--grpc-port", "0"], "1<=x<=65535"),
        ([str(sample_bundle), "--host", "127.0.0.1", "--http-port", str(server.http_port)], "cannot listen on"),
    ]
    for args, expect in cases:
        run = subprocess.run(fre_edge_cmd("serve", *args), capture_output=True, text=True, timeout=120)
        assert run.returncode == 2, (args, run.stderr)
        assert expect in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_the_client_side_needs_neither_torch_nor_kserve(server, sample_bundle, images, tmp_path):
    """An inspection PC with the runtime and the remote extra: scoring on a server and writing a repository."""
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {{"torch", "torchvision", "nncf", "kserve"}}:
                    raise ImportError(f"{{name}} is blocked in this test")
        sys.meta_path.insert(0, Block())
        from fre_edge.runtime import load_detector
        det = load_detector({str(sample_bundle)!r}, backend="kserve", url={server.grpc_url!r})
        assert det.predict({str(images[0])!r}).score > 0
        from fre_edge.serve.repository import write_repository
        write_repository([("m", {str(sample_bundle)!r})], {str(tmp_path / "repo")!r})
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "nncf", "kserve")]
        print("CLIENT-OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "CLIENT-OK" in r.stdout


def test_the_container_recipe_runs_fre_edge_serve(sample_bundle, tmp_path):
    """deploy/Dockerfile's entrypoint with deploy/inferenceservice.yaml's arguments is a working command.
    (Docker and a cluster are not available here: the command is run directly, on loopback.)"""
    import yaml

    REPO = Path(__file__).resolve().parents[1]

    lines = (REPO / "deploy" / "Dockerfile").read_text().splitlines()
    entry = next(json.loads(line.split(None, 1)[1]) for line in lines if line.startswith("ENTRYPOINT"))
    isvc = yaml.safe_load((REPO / "deploy" / "inferenceservice.yaml").read_text())
    container = isvc["spec"]["predictor"]["containers"][0]
    name, _, mount = container["args"][0].partition("=")
    assert name == isvc["metadata"]["name"] and mount == "/mnt/models"
    assert entry[:2] == ["fre-edge", "serve"]
    ready_path = container["readinessProbe"]["httpGet"]["path"]
    s = Server(log=tmp_path / "container.log")
    options = dict(zip(entry[2::2], entry[3::2]))
    assert options["--host"] == "0.0.0.0" and int(options["--http-port"]) == container["ports"][0]["containerPort"]
    options.update({"--host": "127.0.0.1", "--http-port": str(s.http_port), "--grpc-port": str(s.grpc_port)})
    s.command = fre_edge_cmd("serve", *[x for kv in options.items() for x in kv], f"{name}={sample_bundle}")
    with s:
        assert http(s.http_url + ready_path)[0] == 200
        remote = load_detector(sample_bundle, backend="kserve", url=s.http_url, model_name=name)
        assert remote.predict(np.zeros((64, 64, 3), np.uint8)).score > 0


@pytest.mark.parametrize("blocked, args, expect", [
    ("kserve", ["serve", "{bundle}"], 'pip install "fre-edge[serve]"'),
    ("tritonclient", ["predict", "{bundle}", "{image}", "--server", "grpc://127.0.0.1:9"],
     'pip install "fre-edge[remote]"'),
    ("pyarrow", ["archive", "{bundle}", "{image}", "--out", "{out}"], 'pip install "fre-edge[dask]"'),
    ("distributed", ["archive", "{bundle}", "{image}", "--out", "{out}", "--dask", "local:1"],
     'pip install "fre-edge[dask]"'),
])
def test_a_missing_extra_is_one_line_naming_it(sample_bundle, images, tmp_path, blocked, args, expect):
    import sys
    import textwrap

    args = [a.format(bundle=sample_bundle, image=images[0], out=tmp_path / "out") for a in args]
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == {blocked!r}:
                    raise ImportError(f"No module named {{name!r}}", name=name)
        sys.meta_path.insert(0, Block())
        from fre_edge.cli import main
        main({args!r})
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert expect in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_serve_process_reports_a_server_that_never_gets_ready(tmp_path):
    s = Server(tmp_path / "missing_bundle", log=tmp_path / "bad.log")
    with pytest.raises(FreEdgeError, match="exited with status 2"):
        s.__enter__()
    assert s.proc.poll() == 2 and s.log.closed
    assert "no such bundle folder" in (tmp_path / "bad.log").read_text()
