"""The FRE head's component matrix stored as INT8 in the OpenVINO IR (``fre-edge export --head-weights int8``).

At batch 1 the head costs what it reads: V is 4 D k bytes in f32, read by both of its matmuls. NNCF's weight
compression (INT8_ASYM, one scale and zero point per output channel) stores each matmul's weights in D k bytes,
V for the projection and V^T for the reconstruction (2 D k bytes in all, half of one f32 V): the CPU plugin
decompresses INT8 weights inside the matmul only when they come in its [out, in] order, so sharing one INT8 V
would leave the reconstruction in f32 (or, with the residual's sign as the head writes it, give wrong scores).
Only the head's large matmuls are compressed: the backbone, the map's upsampling and everything else stay as
exported. ``benchmarks/results/head_levers_<isa>.md`` measure what this
buys and what it costs in score error.

It changes the scores, so it is checked when the bundle is written: the good pictures given with
``--check-images`` (pictures the model was not fitted on: the fitting pictures reconstruct almost exactly, so
their relative error says nothing) are scored by the float graph and by the compressed one, and the export is
refused in one line when the largest relative score difference exceeds the bound. The check's figures go into
the manifest (``head_weights``). Thresholds stay those of the float fit: the bound keeps the scores within
that fraction of the float ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import FreEdgeError
from ..runtime.adapters import HEAD_WEIGHT_VALUES, big_matmuls_at_run

from ..choices import DEFAULT_BOUND, HEAD_WEIGHTS  # noqa: E402, F401 - the export options, named in one place
MIN_CHECK_PICTURES = 4


def head_matmuls(model) -> dict[str, tuple[int, ...]]:
    """The MatMuls that read a constant of at least ``HEAD_WEIGHT_VALUES`` values (the FRE head's): name -> that
    constant's shape."""
    out = {}
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        src = op.input_value(1).get_node()
        if src.get_type_name() == "Constant" and int(np.prod(src.get_output_shape(0))) >= HEAD_WEIGHT_VALUES:
            out[op.get_friendly_name()] = tuple(src.get_output_shape(0))
    return out


def head_matmuls_at_run(compiled, k: int, D: int) -> list:
    """The head matmuls of a compiled OpenVINO model (projection first), as nodes of its runtime model."""
    found = [(op.get_output_partial_shape(0)[-1].get_length() != k, op.get_friendly_name(), op)
             for op in big_matmuls_at_run(compiled)
             if sorted(op.input(1).get_partial_shape().get_min_shape()) == sorted((k, D))]
    return [op for *_, op in sorted(found, key=lambda f: f[:2])]


def weight_types_at_run(compiled, k: int, D: int) -> list[str]:
    """The element types the head matmuls of a compiled OpenVINO model read (projection first), from its runtime
    model: ``u8`` where the CPU plugin kept INT8 weights, ``f32`` where it decompressed them at load."""
    return [op.input(1).get_element_type().get_type_name() for op in head_matmuls_at_run(compiled, k, D)]


def compress_head(model, keep: frozenset[str] = frozenset(), bits: int = 8, group_size: int = -1):
    """``model`` with the head matmuls' weights (all but those named in ``keep``) in INT8 (NNCF INT8_ASYM per
    channel), or with ``bits=4`` in INT4 (INT4_ASYM, one scale per ``group_size`` inputs, -1: per channel);
    the rest untouched."""
    from .quiet import import_nncf, nncf_output

    nncf = import_nncf()
    head = set(head_matmuls(model)) - set(keep)
    if not head:
        raise FreEdgeError("the graph has no head matmul to compress (too few components?); export with "
                           "--head-weights f32")
    ignored = nncf.IgnoredScope(names=[op.get_friendly_name() for op in model.get_ops()
                                       if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")
                                       and op.get_friendly_name() not in head], validate=False)
    if bits == 8:
        with nncf_output():
            return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=ignored)
    if bits == 4:  # all_layers: NNCF would otherwise keep the last matmul (an LLM's head) in INT8
        with nncf_output():
            return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_ASYM, ratio=1.0,
                                         group_size=group_size, all_layers=True, ignored_scope=ignored)
    raise ValueError(f"bits must be 8 or 4, not {bits}")


def check_inputs(paths: Sequence[Path], input_size, tiling) -> np.ndarray:
    """The model's uint8 input rows for the check pictures (their tiles with ``tiling``)."""
    from ..tiling import inputs_of

    if len(paths) < MIN_CHECK_PICTURES:
        raise FreEdgeError(f"--check-images has {len(paths)} pictures; give at least {MIN_CHECK_PICTURES} good "
                           f"pictures the model was not fitted on")
    return np.concatenate([inputs_of(p, input_size, tiling) for p in paths])


def score_difference(f32_model, int8_model, rows: np.ndarray) -> dict:
    """Largest and median relative difference of the compressed graph's scores from the float graph's."""
    import openvino as ov

    core, config = ov.Core(), {"INFERENCE_PRECISION_HINT": "f32"}
    scores = []
    for model in (f32_model, int8_model):
        compiled = core.compile_model(model, "CPU", config)
        scores.append(np.concatenate([compiled(rows[i:i + 8])[0] for i in range(0, len(rows), 8)]))
    rel = np.abs(scores[1] - scores[0]) / np.maximum(np.abs(scores[0]), 1e-30)
    return {"max_rel_score_difference": float(rel.max()), "median_rel_score_difference": float(np.median(rel))}
