"""Timing of one OpenVINO IR at batch 1, the same loop for fre-edge's bundles and the peers' exports.

Needs only numpy and openvino, so that both the main environment (benchmarks/paper_table.py) and the peers'
venv (benchmarks/peers/anomalib_run.py) import it. The throughput loop is ``fre_edge.bench``'s (numpy only),
imported from this checkout's source tree, which the peers' venv does not install.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from fre_edge.bench import openvino_round_robin  # noqa: E402
from fre_edge.timing import timed_calls  # noqa: E402


class IRTimer:
    """``IRTimer(xml, "LATENCY")``: the model compiled for CPU at f32 with that hint and batch 1, and a random
    input of its type (uint8 for fre-edge's graphs, float32 for anomalib's)."""

    def __init__(self, xml: Path, hint: str):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(xml))
        shape = model.input(0).get_partial_shape()
        if shape.is_dynamic:
            shape[0] = 1
            model.reshape({model.input(0).get_any_name(): shape})
        self.compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32"})
        self.input_shape = tuple(model.input(0).get_shape())
        if self.input_shape[0] != 1:
            raise SystemExit(f"{xml} is not a batch-1 graph: {self.input_shape}")
        rng = np.random.default_rng(0)
        self.x = (rng.integers(0, 256, self.input_shape, dtype=np.uint8)
                  if model.input(0).get_element_type() == ov.Type.u8
                  else rng.random(self.input_shape, dtype=np.float32))
        self.precision_used = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.request = self.compiled.create_infer_request()

    def latencies(self, seconds: float) -> list[float]:
        """Seconds per call, one synchronous request at a time."""
        self.request.infer({0: self.x})
        return timed_calls(lambda: self.request.infer({0: self.x}), seconds, min_calls=1)

    def throughput(self, seconds: float) -> float:
        """Images/s with the optimal number of requests in flight, round-robin (as ``fre-edge bench``)."""
        self.requests_in_flight, done, wall = openvino_round_robin(self.compiled, {0: self.x}, seconds)
        return done / wall
