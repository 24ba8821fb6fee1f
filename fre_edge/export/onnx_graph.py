"""Trace the detector to ONNX.

Why ONNX first, then OpenVINO from that file (rather than ``openvino.convert_model`` on the torch
module): one trace feeds both formats, so ONNX Runtime and OpenVINO run the very same graph, and the
torch exporter that current PyTorch recommends (``torch.onnx.export(..., dynamo=True)``, torch.export
based) folds the FRE constants (bias = mu @ V, normalisation scale and shift) at export time.
``benchmarks/export_head_cost.py`` measures the result against the bare backbone.

``benchmarks/export_route.py`` compares this route with OpenVINO's direct conversion of the same module
(IR size, operation count, batch-1 latency, scores; results in ``benchmarks/results/export_route.md``):
the route stays as long as it gives the same graph at the same speed, since it also yields the ONNX file
for ONNX Runtime.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import FreEdgeError
from ..images import input_hw

OPSET = 18


def export_onnx(module: nn.Module, path: Path, input_size, output_names: list[str]) -> dict:
    """Write ``module`` (uint8 NHWC in, ``input_size`` a side or (height, width)) to ``path`` with a dynamic
    batch; returns exporter facts."""
    example = torch.zeros(2, *input_hw(input_size), 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=1024)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module.eval(),
                (example,),
                dynamo=True,
                input_names=["images"],
                output_names=output_names,
                dynamic_shapes=({0: batch},),
                opset_version=OPSET,
                optimize=True,
                verbose=False,
            )
            program.save(str(path), external_data=False)
    except Exception as exc:  # noqa: BLE001 - exporter failures are many types
        raise FreEdgeError(f"ONNX export failed ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    return {"onnx_exporter": "torch.onnx.export(dynamo=True)", "opset": OPSET, "torch": torch.__version__}
