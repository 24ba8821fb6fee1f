"""A server that only infers and checks every request: no model control, no extra routes, each field of a
request validated against the model's metadata (400 with its reason, one log line), and gRPC messages as
large as the largest request the model accepts. A real `fre-edge serve` process on loopback."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from fre_edge.serve.process import ServeProcess, http

if not (importlib.util.find_spec("kserve") and importlib.util.find_spec("tritonclient")):
    if os.environ.get("CI"):
        pytest.fail('the serve and remote extras are missing on CI: pip install -e ".[test]"')
    pytest.skip("kserve or tritonclient not installed", allow_module_level=True)

from cli_helpers import run  # noqa: E402
from fre_edge.runtime import load_detector  # noqa: E402
from fre_edge.runtime.bundle import read_manifest  # noqa: E402


@pytest.fixture(scope="module")
def served(sample_bundle, tmp_path_factory):
    with ServeProcess(sample_bundle, log=tmp_path_factory.mktemp("serve") / "serve.log") as s:
        yield s, sample_bundle.resolve().name, read_manifest(sample_bundle)["input_size"]


def _post(url, body, headers=None):
    h = {"Content-Type": "application/json", **(headers or {})}
    return http(url, body if isinstance(body, bytes) else json.dumps(body).encode(), h)


def _binary(url, head: dict, payload: bytes):
    raw = json.dumps(head).encode()
    return _post(url, raw + payload, {"Inference-Header-Content-Length": str(len(raw)),
                                      "Content-Type": "application/octet-stream"})


def test_no_model_control_and_no_routes_beyond_inference(served):
    s, name, _ = served
    for action in ("unload", "load"):
        assert _post(f"{s.http_url}/v2/repository/models/{name}/{action}", {})[0] == 404
    for path in ("/docs", "/openapi.json", "/v1/models", f"/v1/models/{name}", "/v2/repository/index"):
        assert http(s.http_url + path)[0] == 404, path
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    g = grpcclient.InferenceServerClient(f"127.0.0.1:{s.grpc_port}")
    with pytest.raises(InferenceServerException, match="no model control"):
        g.unload_model(name, client_timeout=30)
    # the model is still there and still answers
    assert http(f"{s.http_url}/v2/models/{name}/ready")[0] == 200
    assert g.is_model_ready(name, client_timeout=30)
    import urllib.request

    with urllib.request.urlopen(f"{s.http_url}/metrics", timeout=30) as r:  # Prometheus text
        assert r.status == 200 and b"# TYPE" in r.read()


def _json_input(size, data, shape=None, **extra):
    return {"inputs": [{"name": "images", "shape": shape or [1, size, size, 3], "datatype": "UINT8", "data": data}],
            **extra}


BAD_JSON = [  # (what, make(size, n) -> body, words in the reason)
    ("value 300", lambda size, n: _json_input(size, [300] * n), "outside UINT8"),
    ("value -1", lambda size, n: _json_input(size, [-1] * n), "outside UINT8"),
    ("fractions 1.5", lambda size, n: _json_input(size, [1.5] * n), "whole numbers"),
    ("pixels scaled to 0-1", lambda size, n: _json_input(size, [0.0, 1.0] * (n // 2)), "whole numbers"),
    ("booleans", lambda size, n: _json_input(size, [True] * n), "whole numbers"),
    ("too few values", lambda size, n: _json_input(size, [0] * (n - 1)), "values for shape"),
    ("outputs: 5", lambda size, n: _json_input(size, [0] * n, outputs=5), "outputs"),
    ("unknown output", lambda size, n: _json_input(size, [0] * n, outputs=[{"name": "mask"}]), "unknown"),
    ("parameters as a list", lambda size, n: _json_input(size, [0] * n, parameters=[1]), "parameters"),
    ("wrong datatype", lambda size, n: {"inputs": [{"name": "images", "shape": [1, size, size, 3],
                                                    "datatype": "FP32", "data": [0.0] * n}]}, "UINT8"),
    ("wrong name", lambda size, n: {"inputs": [{"name": "x", "shape": [1, size, size, 3],
                                                "datatype": "UINT8", "data": [0] * n}]}, "images"),
]


@pytest.mark.parametrize("what, make, words", BAD_JSON, ids=[b[0] for b in BAD_JSON])
def test_a_bad_json_request_is_400_with_its_reason(served, what, make, words):
    s, name, size = served
    status, body = _post(f"{s.http_url}/v2/models/{name}/infer", make(size, size * size * 3))
    assert status == 400 and words in body["error"], (status, body)


BAD_BINARY = [  # (what, header of the one input, reason)
    ("shape with a string", {"shape": ["a", 0, 0, 3]}, "shape"),
    ("shape null", {"shape": None}, "shape"),
    ("parameters a string", {"parameters": "x"}, "parameters"),
    ("binary size past the body", {"parameters": {"binary_data_size": 10 ** 9}}, "binary_data_size"),
    ("short payload", {"parameters": {"binary_data_size": 5}}, "bytes for shape"),
]


@pytest.mark.parametrize("what, change, words", BAD_BINARY, ids=[b[0] for b in BAD_BINARY])
def test_a_bad_binary_request_is_400_with_its_reason(served, what, change, words):
    s, name, size = served
    n = size * size * 3
    spec = {"name": "images", "shape": [1, size, size, 3], "datatype": "UINT8",
            "parameters": {"binary_data_size": n}, **change}
    status, body = _binary(f"{s.http_url}/v2/models/{name}/infer", {"inputs": [spec]}, bytes(n))
    assert status == 400 and words in body["error"], (status, body)
    for head in ({"inputs": [spec], "outputs": 5}, {"inputs": [spec], "parameters": [1]}, {"inputs": "x"}):
        assert _binary(f"{s.http_url}/v2/models/{name}/infer", head, bytes(n))[0] == 400


def test_each_rejected_request_is_one_log_line_without_traceback(served):
    s, name, size = served
    before = s.output()
    for i in range(5):
        _post(f"{s.http_url}/v2/models/{name}/infer", _json_input(size, [300] * 3, shape=[1, 1, 1, 3]))
    http(f"{s.http_url}/v2/models/nope")
    new = s.output()[len(before):]
    assert "Traceback" not in new
    lines = [line for line in new.splitlines() if line.strip()]
    assert len(lines) == 6 and sum(" 400 POST " in line for line in lines) == 5 and " 404 GET " in lines[-1], new


def test_a_valid_json_request_scores_as_the_local_runtime(served, sample_bundle, sample_root):
    s, name, size = served
    det = load_detector(sample_bundle)
    x, _ = det.prepare(sorted(sample_root.glob("test/good/*.png"))[0])
    status, body = _post(f"{s.http_url}/v2/models/{name}/infer", _json_input(size, x.reshape(-1).tolist()))
    assert status == 200
    score = next(o for o in body["outputs"] if o["name"] == "score")["data"][0]
    assert score == pytest.approx(float(det.infer_prepared(x[None])[0][0]), rel=1e-4)


@pytest.mark.parametrize("cmd", [("predict", "--batch-size", "64"), ("bench", "--batch", "64", "--duration", "0.5")])
def test_grpc_carries_the_largest_batch(served, sample_bundle, sample_root, tmp_path, cmd):
    """64 pictures a request are 9.6 MB in and 12.8 MB out at 224 px: past gRPC's usual limits."""
    s, name, _ = served
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    src = sorted(sample_root.glob("test/*/*.png"))
    for i in range(64):
        (pictures / f"{i:03d}.png").write_bytes(src[i % len(src)].read_bytes())
    args = [cmd[0], sample_bundle] + ([pictures] if cmd[0] == "predict" else []) + list(cmd[1:])
    r = run(*args, "--server", s.grpc_url, "--model-name", name)
    assert r.exit_code in (0, 1), r.output
    if cmd[0] == "predict":
        assert len([line for line in r.stdout.splitlines() if line.startswith(("good", "anomalous"))]) == 64
        assert np.isfinite([float(line.split()[1]) for line in r.stdout.splitlines()
                            if line.startswith(("good", "anomalous"))]).all()
