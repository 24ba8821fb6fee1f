"""The streamed fit's passes over images, as per-partition functions: engine-neutral (this process, a Dask
worker, any engine that can call a function on a list of paths).

A streamed fit (:func:`~.pipeline.fit_fre` with the covariance strategy) never holds all images' features;
it reads them partition by partition and keeps only what adds up over partitions:

1. :func:`partition_moments`: per score layer, the sums of x and x x^T (:class:`~.pca.Moments`) -> the
   subspace; :func:`partition_map_features`: the map layers' features of a sample of the fitting images (at
   most ``pipeline.MAP_SAMPLE``) -> the map's own subspaces (few components each).
2. :func:`partition_layer_sums` (several layers only): per layer, the sums of the FRE score, its square, the
   map values and their squares -> the fusion statistics (mean, std): the scores' on the fitting images, and
   with map heads the maps' on the held-out images (as the held fit scales them).
3. :func:`partition_scores`: the detector's scores and the largest map values
   (:class:`~.thresholds.TopValues`) of the threshold images -> the thresholds.

Each takes the fit's settings as JSON (:func:`config_json`) and the images as paths, builds the backbone
once per process, and returns small values (numpy arrays, Moments) that the caller reduces.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Callable, Sequence

import numpy as np
import torch

from .config import FitConfig, assemble_detector, build_detector
from .features import load_batch
from ..tiling import pictures_per_batch
from .pca import Moments, Subspace
from .thresholds import TopValues


def config_json(cfg) -> str:
    """A validated FitConfig as the JSON the partition functions take (and cache the backbone by)."""
    d = dataclasses.asdict(cfg)
    d["layers"], d["map_layers"] = list(d["layers"]), list(d["map_layers"])
    return json.dumps(d, sort_keys=True)


@functools.lru_cache(maxsize=1)
def _config(cfg_json: str):
    """The FitConfig that :func:`config_json` wrote."""
    d = json.loads(cfg_json)
    d["layers"], d["map_layers"] = tuple(d["layers"]), tuple(d["map_layers"])
    return FitConfig(**d).validate()


@functools.lru_cache(maxsize=1)
def _shell(cfg_json: str):
    """The backbone-only detector of these settings, built once per process."""
    return build_detector(_config(cfg_json), [], [])


def _batches(cfg_json: str, paths: Sequence, on_batch: Callable[[int], None] | None):
    """(shell, uint8 batch) over ``paths``: batch_size inputs at a time, whole pictures (with tiles, every tile
    of a picture in its batch); ``on_batch(pictures)`` after each."""
    shell, cfg = _shell(cfg_json), _config(cfg_json)
    step = pictures_per_batch(cfg.batch_size, cfg.tiling)
    for i in range(0, len(paths), step):
        batch = load_batch(paths[i : i + step], shell.input_size, cfg.tiling)
        yield shell, batch
        if on_batch is not None:
            on_batch(len(paths[i : i + step]))


def heads_payload(fres) -> list[dict]:
    """What a worker needs to rebuild the fitted heads: each layer's mean, components and feature shape."""
    return [{"mean": f.mean_, "components": f.components_, "shape": list(f.feature_shape_)} for f in fres]


def _heads(payload: list[dict]):
    from .model import FREHead

    nan = torch.full((1,), float("nan"), dtype=torch.float64)
    return [FREHead(Subspace(torch.from_numpy(p["mean"]), torch.from_numpy(p["components"]), nan, "covariance"),
                    tuple(p["shape"])) for p in payload]


@torch.inference_mode()
def partition_moments(cfg_json: str, paths: Sequence, on_batch=None) -> list[Moments]:
    """Per score layer, the sums of x and x x^T of these images' pooled features (the map's own heads, with
    few components, are fitted from a sample of features instead: :func:`partition_map_features`)."""
    out, n = None, len(_config(cfg_json).layers)
    for shell, batch in _batches(cfg_json, paths, on_batch):
        feats = shell.features(batch)[:n]
        if out is None:
            out = [Moments(0, torch.zeros(f[0].numel(), dtype=torch.float64),
                           torch.zeros(f[0].numel(), f[0].numel(), dtype=torch.float64)) for f in feats]
        for m, f in zip(out, feats):
            m.add_(f)
    return out


def merge_moments(a: list[Moments], b: list[Moments]) -> list[Moments]:
    return [x + y for x, y in zip(a, b)]


@torch.inference_mode()
def partition_map_features(cfg_json: str, paths: Sequence, on_batch=None) -> list[np.ndarray]:
    """Per map layer (the map's own heads), these images' features, [inputs, C, h, w] float32."""
    out, n = [], len(_config(cfg_json).layers)
    for shell, batch in _batches(cfg_json, paths, on_batch):
        out.append([f.float().numpy() for f in shell.features(batch)[n:]])
    return [np.concatenate(layer) for layer in zip(*out)]


def merge_features(a: list[np.ndarray], b: list[np.ndarray]) -> list[np.ndarray]:
    return [np.concatenate([x, y]) for x, y in zip(a, b)]


@torch.inference_mode()
def partition_layer_sums(cfg_json: str, payload: list[dict], paths: Sequence, on_batch=None) -> np.ndarray:
    """[layers, 6]: image count, sum and sum of squares of the layer's FRE scores, map value count, sum and
    sum of squares of its map values (the head's own grid, as the fusion statistics use)."""
    heads = _heads(payload)
    out = np.zeros((len(heads), 6), dtype=np.float64)
    for shell, batch in _batches(cfg_json, paths, on_batch):
        for row, head, f in zip(out, heads, shell.features(batch)):
            s, m = (t.double() for t in head(f))
            row += [s.numel(), float(s.sum()), float((s * s).sum()), m.numel(), float(m.sum()), float((m * m).sum())]
    return out


def fusion_from_sums(sums: np.ndarray) -> torch.Tensor:
    """The fusion statistics (``estimator.fusion_statistics``'s [layers, 4]: score mean, std, map mean, std;
    standard deviations with the n - 1 denominator, floored at 1e-12) from :func:`partition_layer_sums`."""
    rows = []
    for n, s1, s2, nm, m1, m2 in sums:
        ms, mm = s1 / n, m1 / nm
        ss = np.sqrt(max(s2 - n * ms * ms, 0.0) / max(n - 1, 1))
        sm = np.sqrt(max(m2 - nm * mm * mm, 0.0) / max(nm - 1, 1))
        rows.append([ms, max(ss, 1e-12), mm, max(sm, 1e-12)])
    return torch.tensor(rows, dtype=torch.float32)


@torch.inference_mode()
def partition_scores(cfg_json: str, payload: list[dict], fusion: np.ndarray | None, total_pixels: int,
                     paths: Sequence, on_batch=None) -> tuple[np.ndarray, TopValues]:
    """The fitted detector's image scores [n] (float64) on these images, and the largest of their map values
    out of ``total_pixels`` map values in all the threshold images (for the exact pixel quantile). With tiles,
    the pictures' scores and stitched maps, as the runtime makes them."""
    cfg = _config(cfg_json)
    scores, top = [], TopValues(total_pixels)
    detector = None
    for shell, batch in _batches(cfg_json, paths, on_batch):
        if detector is None:
            detector = assemble_detector(cfg, shell.backbone, _heads(payload),
                                         None if fusion is None else torch.from_numpy(np.asarray(fusion)))
        s, m = (t.numpy() for t in detector(batch))
        if cfg.tiling is not None:
            s, m = cfg.tiling.reduce(s, m)
        scores.append(s.astype(np.float64))
        top.add(m)
    return np.concatenate(scores), top


def merge_scores(a, b):
    return np.concatenate([a[0], b[0]]), a[1].merge(b[1])
