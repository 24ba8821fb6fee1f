"""Timing of one OpenVINO IR at batch 1, the same loop for fre-edge's bundles and the peers' exports.

Needs only numpy and openvino, so that both the main environment (benchmarks/paper_table.py) and the peers'
venv (benchmarks/peers/anomalib_run.py) import it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


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
                  if model.input(0).get_element_type() == ov.Type.u8 else rng.random(self.input_shape, dtype=np.float32))
        self.precision_used = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.requests = [self.compiled.create_infer_request()
                         for _ in range(int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))]

    def latencies(self, seconds: float) -> list[float]:
        """Seconds per call, one synchronous request at a time."""
        req = self.requests[0]
        req.infer({0: self.x})
        lat = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            req.infer({0: self.x})
            lat.append(time.perf_counter() - t0)
        return lat

    def throughput(self, seconds: float) -> float:
        """Images/s with the optimal number of requests in flight, round-robin. No callbacks: an AsyncInferQueue's
        callback thread can deadlock against the GIL when its compiled model is released."""
        n, t0 = 0, time.perf_counter()
        for r in self.requests:
            r.start_async({0: self.x})
        while time.perf_counter() - t0 < seconds:
            for r in self.requests:
                r.wait()
                n += 1
                r.start_async({0: self.x})
        for r in self.requests:
            r.wait()
            n += 1
        return n / (time.perf_counter() - t0)
