"""INT8-aware refit of the FRE head: PCA fitted again on the features the INT8 backbone produces.

INT8 rounding changes the backbone's features a little, and FRE scores whatever the PCA cannot
reconstruct, so a head fitted on f32 features scores the rounding as if it were a defect
(``benchmarks/precision_table.py`` measures the INT8 AUROCs). Refitting mean and components on the
INT8 features of good images puts the systematic part of that change back into "normal"; thresholds
are then set from INT8 scores of good images the refit did not see.

The new head is built with OpenVINO operations on top of the quantized backbone, mirroring
``fre_edge.fit.model.FREDetector.score_features`` (same math, float32, the same head form per layer:
as recorded in the bundle's manifest).
"""

from __future__ import annotations

import numpy as np

from ..errors import FreEdgeError
from ..images import input_hw


def backbone_features(compiled, batches) -> list[np.ndarray]:
    """Flattened pooled features per layer, [N, D_l] each, from a compiled backbone-only model."""
    req = compiled.create_infer_request()
    per_layer = None
    for b in batches:
        req.infer({0: b})
        outs = [req.get_output_tensor(i).data.reshape(b.shape[0], -1).copy() for i in range(len(compiled.outputs))]
        per_layer = [[o] for o in outs] if per_layer is None else [p + [o] for p, o in zip(per_layer, outs)]
    return [np.concatenate(p) for p in per_layer]


def refit_heads(features: list[np.ndarray], n_components: list[int], shapes: list[tuple[int, int, int]]) -> list:
    """One fitted :class:`~fre_edge.fit.estimator.FRE` per layer, on flattened features [N, D_l]."""
    from ..fit.estimator import FRE

    return [FRE(int(k)).fit(X.reshape(len(X), *shape)) for X, k, shape in zip(features, n_components, shapes)]


def build_model(backbone_model, shapes: list[tuple[int, int, int]], heads: list, input_size,
                fusion: np.ndarray | None, forms: list[str] | None = None):
    """OpenVINO model: the backbone's feature outputs followed by FRE heads (fitted ``FRE`` estimators, one
    per layer) -> score, anomaly_map. The folded forms are the same as ``FREHead``'s; tests compare them
    with ``FRE.reconstruction_error``.

    ``forms``: the head form per layer (default: ``fre_edge.fit.model.head_form``'s rule).
    """
    import openvino as ov
    import openvino.opset13 as ops
    import torch

    from ..fit.model import head_form, linear_resize_matrix, one_pass_constants

    def const(a):
        return ops.constant(np.ascontiguousarray(a, dtype=np.float32))

    def i64(*v):
        return ops.constant(np.array(v, dtype=np.int64))

    score, amap = None, None
    features = [r.input_value(0) for r in backbone_model.get_results()]  # the tensors, not the Result nodes
    for i, (feat, (C, h, w), hd) in enumerate(zip(features, shapes, heads)):
        form = forms[i] if forms else None
        D, S = C * h * w, h * w
        V = hd.components_.astype(np.float32)  # [k, D]
        mu = hd.mean_.astype(np.float32)
        k = V.shape[0]
        if (form or head_form(k, C)) == "reconstruct":
            x = ops.reshape(feat, i64(-1, D), special_zero=False)
            z = ops.subtract(ops.matmul(x, const(V), False, True), const(mu @ V.T))
            e = ops.subtract(ops.subtract(x, const(mu)), ops.matmul(z, const(V), False, False))
            e2 = ops.multiply(e, e)
            s = ops.reduce_sum(e2, i64(1), keep_dims=False)
            m = ops.reduce_mean(ops.reshape(e2, i64(-1, C, h, w), False), i64(1), keep_dims=False)
        else:  # one_pass, as FREHead._one_pass
            consts = one_pass_constants(torch.from_numpy(mu), torch.from_numpy(V), (C, h, w))
            c = {n: t.numpy() for n, t in consts.items()}
            d = ops.transpose(ops.reshape(feat, i64(-1, C, S), False), i64(0, 2, 1))
            d = ops.subtract(d, const(c["mean_sc"]))
            u = ops.group_convolution(ops.reshape(d, i64(-1, S * C, 1, 1), False),
                                      const(c["weight"].reshape(S, k, C, 1, 1)), [1, 1], [0, 0], [0, 0], [1, 1])
            u = ops.reshape(u, i64(-1, S, k), False)
            z = ops.reduce_sum(u, i64(1), keep_dims=True)  # [N, 1, k]
            t2 = ops.reduce_sum(ops.multiply(u, z), i64(2), keep_dims=False)
            zz = ops.multiply(ops.reshape(z, i64(-1, k, 1), False), z)  # [N, k, k]
            zz = ops.gather(ops.reshape(zz, i64(-1, k * k), False), ops.constant(c["triu"]), i64(1))
            n2 = ops.reduce_sum(ops.multiply(d, d), i64(2), keep_dims=False)
            e2 = ops.add(ops.subtract(n2, ops.multiply(t2, const(np.float32(2.0)))),
                         ops.matmul(zz, const(c["gram"]), False, False))
            e2 = ops.maximum(e2, const(np.float32(0.0)))
            s = ops.reduce_sum(e2, i64(1), keep_dims=False)
            m = ops.divide(ops.reshape(e2, i64(-1, h, w), False), const(np.float32(C)))
        rows = linear_resize_matrix(h, input_hw(input_size)[0]).numpy()
        cols_t = linear_resize_matrix(w, input_hw(input_size)[1]).numpy().T
        m = ops.matmul(ops.matmul(const(rows), m, False, False), const(cols_t), False, False)
        if fusion is not None:
            st = fusion[i]
            s = ops.divide(ops.subtract(s, const(st[0])), const(st[1]))
            m = ops.divide(ops.subtract(m, const(st[2])), const(st[3]))
        score = s if score is None else ops.add(score, s)
        amap = m if amap is None else ops.add(amap, m)
    score.output(0).get_tensor().set_names({"score"})
    amap.output(0).get_tensor().set_names({"anomaly_map"})
    return ov.Model([score.output(0), amap.output(0)], backbone_model.get_parameters(), "fre_int8")


def refit_int8_model(quantized_full, manifest: dict, refit_batches, check_batches):
    """(new model, heads, thresholds source scores/maps) for an INT8 backbone with a refitted head."""
    import openvino as ov

    from ..runtime.adapters import cut_to_backbone

    if float(manifest.get("blur_sigma", 0)) > 0:
        raise FreEdgeError("INT8 refit does not support a blurred map yet; quantize with --no-refit")
    core = ov.Core()
    # a cut shares nodes with the full graph (the old head still hangs off the features); a clone is an
    # independent backbone graph to build the new head on
    backbone = cut_to_backbone(quantized_full).clone()
    compiled = core.compile_model(backbone, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    shapes = [tuple(int(d) for d in o.get_partial_shape()[1:].to_shape()) for o in backbone.outputs]
    feats = backbone_features(compiled, refit_batches)
    heads = refit_heads(feats, manifest["n_components"], shapes)
    from ..fit.estimator import fusion_statistics

    fusion = fusion_statistics(heads, feats).numpy() if len(heads) > 1 else None
    return build_model(backbone, shapes, heads, manifest["input_size"], fusion, manifest.get("head_forms")), heads
