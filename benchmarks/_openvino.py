"""OpenVINO helpers the benchmark scripts share: a latency-hint f32 request, and timing requests with the
one alternation of ``fre_edge.timing``."""

from __future__ import annotations

from fre_edge.runtime.adapters import set_batch
from fre_edge.timing import alternate

# the CPU plugin's dynamic quantization of activations off (it picks its VNNI path from the CPU's flags, past an
# ONEDNN_MAX_CPU_ISA cap, and INT8-weight matmuls then fail to compile)
NO_DYNAMIC_QUANTIZATION = {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}


def latency_request(model, batch: int, extra: dict | None = None):
    """An infer request for an OpenVINO model at ``batch``, CPU, f32 (checked), latency hint (+ ``extra`` config)."""
    import openvino as ov

    set_batch(model, batch)
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", **(extra or {})}
    compiled = ov.Core().compile_model(model, "CPU", config)
    assert compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    return compiled.create_infer_request()


def alternate_requests(requests: dict, x, rounds: int, block: float, after_call=None, **kwargs):
    """``fre_edge.timing.alternate`` over infer requests fed ``x``; ``after_call(name, request)`` runs after each
    timed call, outside its timing."""
    calls = {name: (lambda r=req: r.infer({0: x})) for name, req in requests.items()}
    after = None if after_call is None else (lambda name: after_call(name, requests[name]))
    return alternate(calls, rounds, block, after_call=after, **kwargs)
