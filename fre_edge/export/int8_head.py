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
                fusion: np.ndarray | None, forms: list[str] | None = None, score_heads: int | None = None,
                local=None, local_norm: np.ndarray | None = None):
    """OpenVINO model: the backbone's feature outputs followed by FRE heads (fitted ``FRE`` estimators, one
    per layer) -> score, anomaly_map. The folded forms are the same as ``FREHead``'s; tests compare them
    with ``FRE.reconstruction_error``.

    ``forms``: the head form per layer (default: ``fre_edge.fit.model.head_form``'s rule); ``score_heads``:
    how many leading heads make the score, the others the map (``FREDetector.roles``); ``local``: a
    ``LocalHead`` reading the backbone model's last output (after the heads' inputs), with ``local_norm``.
    """
    import openvino as ov
    import openvino.opset13 as ops
    import torch

    from ..fit.model import MAX_LOG_SCORE, head_form, linear_resize_matrix, one_pass_constants

    def const(a):
        return ops.constant(np.ascontiguousarray(a, dtype=np.float32))

    def i64(*v):
        return ops.constant(np.array(v, dtype=np.int64))

    score, amap = None, None
    features = [r.input_value(0) for r in backbone_model.get_results()]  # the tensors, not the Result nodes
    n_score = len(heads) if score_heads is None else score_heads
    by_score = list(range(n_score))
    by_map = list(range(len(heads)))  # FREDetector.roles
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
        st = fusion[i] if fusion is not None else None
        if i in by_score:
            if len(by_score) > 1:
                s = ops.divide(ops.subtract(s, const(st[0])), const(st[1]))
            score = s if score is None else ops.add(score, s)
        if i in by_map:
            if len(by_map) > 1:
                m = ops.divide(m if score_heads is not None else ops.subtract(m, const(st[2])), const(st[3]))
            amap = m if amap is None else ops.add(amap, m)
    if local is not None:  # as FREDetector.score_features with a LocalHead
        feat = features[len(heads)]
        C, h, w = (int(d) for d in feat.get_partial_shape()[1:].to_shape())
        win = local.window
        x = ops.avg_pool(feat, [1, 1], [win // 2] * 2, [win // 2] * 2, [win, win], exclude_pad=True)
        d = ops.subtract(ops.transpose(ops.reshape(x, i64(-1, C, h * w), False), i64(0, 2, 1)),
                         const(local.mean.numpy()))
        V = local.components.numpy()
        e = ops.subtract(ops.matmul(ops.matmul(d, const(V), False, True), const(V), False, False), d)
        lsc = ops.reduce_max(ops.reduce_sum(ops.multiply(e, e), i64(2), keep_dims=False), i64(1), keep_dims=False)
        n = np.asarray(local_norm, dtype=np.float64)
        lsc = ops.multiply(ops.subtract(ops.log(lsc), const(np.float32(n[2]))), const(np.float32(n[1] / n[3])))
        lsc = ops.minimum(ops.add(lsc, const(np.float32(n[0]))), const(np.float32(MAX_LOG_SCORE)))
        score = ops.maximum(score, ops.exp(lsc))
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
    cut = cut_to_backbone(quantized_full)
    pf = manifest.get("position_free")
    if pf:  # the position-free head's input joins the outputs, last
        cut = ov.Model([*cut.outputs, local_input(quantized_full, pf["window"])], cut.get_parameters(),
                       cut.get_friendly_name())
    backbone = in_head_order(cut.clone(), manifest)
    compiled = core.compile_model(backbone, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    shapes = [tuple(int(d) for d in o.get_partial_shape()[1:].to_shape()) for o in backbone.outputs]
    n_heads = len(manifest["n_components"])
    feats = backbone_features(compiled, refit_batches)
    heads = refit_heads(feats[:n_heads], manifest["n_components"], shapes[:n_heads])
    from ..fit.estimator import fusion_statistics, held_out_map_scales

    fusion = fusion_statistics(heads, feats[:n_heads]) if len(heads) > 1 else None
    score_heads = len(manifest["layers"]) if manifest.get("map_layers") else None
    check_feats = backbone_features(compiled, check_batches) if (pf or score_heads) and check_batches else None
    if score_heads is not None and check_feats is not None:  # as fit_fre: map spreads from held-out pictures
        fusion = held_out_map_scales(fusion, heads, [f.reshape(len(f), *s) for f, s in zip(check_feats, shapes)])
    fusion = None if fusion is None else fusion.numpy()
    local, norm = None, None
    if pf:
        local, norm = _refit_local(heads, feats, shapes, fusion, score_heads, manifest, check_feats)
    return build_model(backbone, shapes[:n_heads], heads, manifest["input_size"], fusion, manifest.get("head_forms"),
                       score_heads, local, norm), heads


def local_input(model, window: int):
    """The tensor the position-free head reads: the input of its ``window`` x ``window``, stride-1 AvgPool."""
    for op in model.get_ordered_ops():
        if op.get_type_name() == "AvgPool":
            attrs = op.get_attributes()
            if list(attrs.get("kernel", [])) == [window, window] and list(attrs.get("strides", [])) == [1, 1]:
                return op.input(0).get_source_output()
    raise FreEdgeError("cannot find the position-free head's input in this model; quantize with --no-refit")


def _refit_local(heads, feats, shapes, fusion, score_heads, manifest, check_feats):
    """The position-free head fitted again on the INT8 features, and its scaling from the refitted global score
    and its own on the held-out check pictures (as fit_fre does on held-out pictures)."""
    import torch
    from torch import nn

    from ..fit.model import FREDetector
    from ..fit.position_free import fit_local, log_norm

    n = len(heads)
    C, h, w = shapes[n]
    local = fit_local(torch.from_numpy(feats[n]).reshape(-1, C, h, w), manifest["position_free"]["window"])
    scorer = FREDetector(nn.Identity(), [hd.head() for hd in heads], input_size=manifest["input_size"],
                         mean=(0.0,) * 3, std=(1.0,) * 3, fusion=None if fusion is None else torch.from_numpy(fusion),
                         score_heads=score_heads)
    with torch.inference_mode():
        x = [torch.from_numpy(f).reshape(-1, *s) for f, s in zip(check_feats, shapes)]
        g = scorer.global_score_features(x[:n])[0].double().numpy()
        lsc = local(x[n])[0].double().numpy()
    return local, log_norm(g, lsc)


def head_shapes(manifest: dict) -> list[tuple[int, int, int]]:
    """[C, h, w] of the features each head reads (score heads, then map heads), from the bundle's manifest."""
    from ..fit.backbones import get_spec
    from ..runtime.bundle import map_pools

    spec = get_spec(manifest["backbone"])
    h, w = input_hw(manifest["input_size"])
    pools = [manifest["pool"]] * len(manifest["layers"]) + map_pools(manifest)
    out = []
    for layer, pool in zip([*manifest["layers"], *manifest.get("map_layers", [])], pools):
        info = spec.layers[layer]
        out.append((info.channels, h // info.stride // pool, w // info.stride // pool))
    return out


def in_head_order(backbone, manifest: dict):
    """The backbone-only model with its first outputs (one per head) in the manifest's head order (the graph lists
    them as it runs); outputs after those stay last."""
    import openvino as ov

    want = head_shapes(manifest)
    outs, rest = list(backbone.outputs)[: len(want)], list(backbone.outputs)[len(want):]
    have = [tuple(int(d) for d in o.get_partial_shape()[1:].to_shape()) for o in outs]
    if sorted(have) != sorted(want) or len(set(want)) != len(want):
        return backbone  # one head per layer as written, or shapes that cannot tell heads apart
    return ov.Model([*(outs[have.index(s)] for s in want), *rest], backbone.get_parameters(),
                    backbone.get_friendly_name())
