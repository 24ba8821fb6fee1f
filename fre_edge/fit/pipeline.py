"""Fit FRE on good images: one feature pass, a subspace per layer (the :class:`~.estimator.FRE` core),
fusion statistics and thresholds (:mod:`.thresholds`).

A fraction (``holdout``, default 10%) of the good images is kept out of the PCA to set the thresholds;
with ``holdout=0`` the fitting images are used instead (biased low, recorded as such in the model).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .. import __version__
from .backbones import get_spec
from ..errors import FreEdgeError
from ..images import size_json
from .config import FitConfig, assemble_detector, check_pool, shell_of
from .features import extract_features, load_batch
from .model import FREDetector, fuse_position_free
from .estimator import FRE, fusion_statistics, held_out_map_scales
from .sizing import auto_input_size
from ..tiling import Tiling, per_picture
from .pca import choose_strategy, covariance_bytes
from .position_free import DONORS, MIN_NORM_PICTURES, choose_image_score, fit_local, log_norm
from .thresholds import threshold_warnings, thresholds_from_scores

MIN_FIT_IMAGES = 2
# a streamed fit (covariance, Dask) fits the map's own heads from at most this many fitting pictures, evenly
# spread: their features are held (Lite0 defaults: 0.3 MB a picture, and float64 copies while fitting), as
# few components need few samples (16 each by default; a held fit on MVTec bottle has 188 pictures)
MAP_SAMPLE = 1000


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (MiB), where the OS reports it."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    import sys

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 / (1024 if sys.platform == "darwin" else 1)


@dataclass
class FittedFRE:
    """A fitted detector plus everything needed to save, export and report it."""

    detector: FREDetector
    config: FitConfig
    info: dict = field(default_factory=dict)  # thresholds, statistics, data summary, timings

    @property
    def image_threshold(self) -> float:
        return self.info["thresholds"]["image"]

    @property
    def pixel_threshold(self) -> float:
        return self.info["thresholds"]["pixel"]

    @property
    def tiling(self) -> Tiling | None:
        return self.config.tiling


def _split(paths: Sequence, holdout: float, seed: int) -> tuple[list, list]:
    n = len(paths)
    n_hold = int(round(n * holdout)) if holdout > 0 else 0
    if holdout > 0 and n_hold < 1 and n >= MIN_FIT_IMAGES + 1:
        n_hold = 1
    order = np.random.default_rng(seed).permutation(n)
    hold = sorted(order[:n_hold].tolist())
    fit = sorted(order[n_hold:].tolist())
    return [paths[i] for i in fit], [paths[i] for i in hold]


def _strategies(cfg: FitConfig, n_fit: int, dims: list[int]) -> list[str]:
    """The strategy of each layer, resolved before the feature pass (``auto`` from N, D and the budget)."""
    return [choose_strategy(n_fit, d, cfg.memory_budget_bytes) if cfg.strategy == "auto" else cfg.strategy
            for d in dims]


def _check_streamable(cfg: FitConfig, dims: list[int], engine: str) -> None:
    """The score layers' D x D sums within the budget (the map's own heads are fitted from a sample)."""
    for layer, d in zip(cfg.layers, dims):
        if covariance_bytes(d) > cfg.memory_budget_bytes:
            raise FreEdgeError(
                f"{engine}: layer {layer} has D = {d} features, so its D x D sums need "
                f"{covariance_bytes(d) / (1 << 30):.1f} GB, over the {cfg.memory_budget_gb:g} GB memory budget; "
                f"raise --memory-budget or --pool (D shrinks by its square), or fit in one process")


@torch.inference_mode()
def fit_fre(paths: Sequence, cfg: FitConfig | None = None, *, progress: bool = True,
            data_summary: dict | None = None, client=None, partition_size: int | None = None) -> FittedFRE:
    """Fit FRE on good images (paths or HxWx3 arrays).

    The feature pass holds every image's features (N x D per layer) for the ``gram`` and ``autoencoder``
    strategies; for ``covariance`` (chosen by ``auto`` when N > D or N x D exceeds the memory budget) the fit
    streams instead (:mod:`.passes`): memory is the D x D sums whatever N. With a Dask ``client`` the
    streamed passes run on its workers, ``partition_size`` images per task, reduced exactly; by default
    (None) about four tasks per worker (:func:`auto_partition_size`).
    """
    cfg = (cfg or FitConfig()).validate()
    paths = list(paths)
    sizing = {"rule": "given"}
    if cfg.input_size == "auto":
        hw, sizing = auto_input_size(paths, get_spec(cfg.backbone).input_size,
                                     None if cfg.tiles is None else (cfg.tiles, cfg.tile_overlap))
        cfg = dataclasses.replace(cfg, input_size=hw)
    check_pool(cfg)
    tiling = cfg.tiling
    per = per_picture(tiling)
    fit_paths, hold_paths = _split(paths, cfg.holdout, cfg.seed)
    if len(fit_paths) < MIN_FIT_IMAGES:
        raise FreEdgeError(
            f"{len(paths)} good image(s) given, {len(fit_paths)} left to fit on after the holdout; "
            f"FRE needs at least {MIN_FIT_IMAGES} (50 or more recommended)"
        )
    if partition_size is not None and (isinstance(partition_size, bool) or not isinstance(partition_size, int)
                                       or partition_size < 1):
        raise FreEdgeError(f"partition_size={partition_size!r}; use a whole number of images, 1 or more")
    if client is not None and cfg.strategy not in ("auto", "covariance"):
        raise FreEdgeError(f"--strategy {cfg.strategy} needs every image's features in one process; --dask fits by "
                           f"summing them over partitions (the covariance strategy): drop --strategy or --dask")
    t0 = time.perf_counter()
    shell, shapes, dims = shell_of(cfg)
    strategies = _strategies(cfg, len(fit_paths) * per, dims)  # with tiles, every tile is a sample
    streamed = client is not None or all(s == "covariance" for s in strategies[: len(cfg.layers)])
    fit_warnings = []
    if streamed and cfg.position_free != "off":
        how = "--dask" if client is not None else "the covariance strategy"
        fit_warnings.append(f"{how} fits from sums over images: the image score is the global FRE (the "
                            f"position-free score needs the features in one process)")
        cfg = dataclasses.replace(cfg, position_free="off")
        shell, shapes, dims = shell_of(cfg)
        strategies = _strategies(cfg, len(fit_paths) * per, dims)
    if client is not None:
        _check_streamable(cfg, dims, "--dask")
    t_build = time.perf_counter() - t0
    run = _fit_streamed if streamed else _fit_in_memory
    heads, fres, fusion, thr_scores, thr_maps, timings, local = run(
        cfg, shell, shapes, fit_paths, hold_paths, progress=progress, client=client, partition_size=partition_size)
    subspaces = [fre.subspace_ for fre in fres]
    if local[2] and cfg.position_free == "on":  # asked for and not given; auto records why in image_score
        fit_warnings.append(local[2])
    cfg = dataclasses.replace(cfg, position_free="off" if local[0] is None else "on")
    detector = assemble_detector(cfg, shell.backbone, heads, fusion, *local[:2])
    info = {
        "fre_edge_version": __version__,
        "n_components": [h.n_components for h in heads],
        "heads": [{"layer": layer, "pool": pool, "makes": "score and map" if i < len(cfg.layers) else "map"}
                  for i, (layer, pool) in enumerate(zip(cfg.head_layers, cfg.head_pools))],
        "feature_shapes": [list(fre.feature_shape_) for fre in fres],
        # None where unknown (the autoencoder strategy does not compute eigenvalues)
        "explained_variance": [None if torch.isnan(s.explained_variance_ratio).any()
                               else float(s.explained_variance_ratio.sum()) for s in subspaces],
        "strategies": [s.strategy for s in subspaces],
        "thresholds": thresholds_from_scores(
            thr_scores, thr_maps, "holdout" if hold_paths else "fit images (biased low: no holdout)"),
        "warnings": fit_warnings + threshold_warnings(len(thr_scores), bool(hold_paths)),
        "image_score": local[3],
        "position_free": None if local[0] is None else {
            "layer": cfg.layers[0], "window": local[0].window, "n_components": local[0].n_components,
            "log_norm": dict(zip(("global_mean", "global_std", "local_mean", "local_std"), local[1].tolist())),
            "norm_source": "holdout" if hold_paths else "fit images (biased low: no holdout)"},
        "data": {**(data_summary or {}), "fit_images": len(fit_paths), "holdout_images": len(hold_paths)},
        "input_size": {**sizing, "chosen": size_json(cfg.input_size)},
        "tiling": None if tiling is None else tiling.to_json(),
        "fitted_by": {**_fitted_by(streamed, client, partition_size, len(fit_paths)),
                      **({"map_heads_from_pictures": min(len(fit_paths), MAP_SAMPLE)}
                         if streamed and cfg.map_layers else {})},
        "timings_s": {"build": t_build, **{k: v for k, v in timings.items() if k != "rss_mb"}},
        "peak_rss_mb": {"after_feature_pass": timings.pop("rss_mb"), "after_fit": peak_rss_mb()},
    }
    return FittedFRE(detector, cfg, info)


def auto_partition_size(n: int, client) -> int:
    """About four partitions per worker: every partition returns the D x D sums (0.4 GB for Lite0), which
    are sent between workers to be merged, so their number, not the images', sets the reduce's traffic;
    four per worker still balances uneven workers and limits what a lost worker's re-run costs."""
    workers = max(len(client.scheduler_info().get("workers", {})), 1)
    return max(1, -(-n // (4 * workers)))


def _fitted_by(streamed: bool, client, partition_size: int | None, n: int) -> dict:
    """How the fit ran, for model.json: features held or streamed, and where."""
    out = {"features": "streamed: sums of x and x x^T per layer (memory D x D, any N)" if streamed
           else "held in memory (N x D per layer)", "engine": "this process"}
    if client is not None:
        info = client.scheduler_info()
        size = partition_size or auto_partition_size(n, client)
        out.update(engine="dask.distributed", workers=len(info.get("workers", {})),
                   partition_size=size, fit_partitions=-(-n // size))
    return out


def _fit_in_memory(cfg, shell, shapes, fit_paths, hold_paths, *, progress, **_):
    """One feature pass holding every image's features, the subspaces, then the held-out scores."""
    t0 = time.perf_counter()
    tiling = cfg.tiling
    per = per_picture(tiling)
    feats = extract_features(shell, fit_paths + hold_paths, batch_size=cfg.batch_size, progress=progress,
                             desc="feature pass", tiling=tiling)
    t_feat = time.perf_counter() - t0
    rss_feat = peak_rss_mb()

    t0 = time.perf_counter()
    n_fit = len(fit_paths) * per  # rows: with tiles, every tile of every fitting picture
    fres = []
    for f, n_components in zip(feats, cfg.head_components):
        with torch.inference_mode(False):
            fres.append(FRE(n_components, strategy=cfg.strategy, memory_budget_gb=cfg.memory_budget_gb,
                            ae_epochs=cfg.ae_epochs)
                        .fit(f[:n_fit], progress=progress))
    local, note = None, None
    if cfg.position_free != "off" and len(hold_paths) < MIN_NORM_PICTURES:
        note = (f"the position-free score is off: putting it on the global score's scale needs {MIN_NORM_PICTURES} "
                f"or more held-out good pictures, {len(hold_paths)} were held out (more pictures, or --holdout)")
    elif cfg.position_free != "off":
        local = fit_local(feats[len(fres)][:n_fit])
    t_pca = time.perf_counter() - t0

    t0 = time.perf_counter()
    heads = [fre.head() for fre in fres]
    fusion = fusion_statistics(fres, [f[:n_fit] for f in feats]) if len(fres) > 1 else None
    if cfg.map_layers and hold_paths:  # the maps are added scaled by their spread on new good parts
        fusion = held_out_map_scales(fusion, fres, [f[n_fit:] for f in feats])
    detector = assemble_detector(cfg, shell.backbone, heads, fusion)
    sel = slice(n_fit, None) if hold_paths else slice(0, n_fit)
    scores, local_scores, maps = [], [], []
    step = 64 * per  # whole pictures a chunk
    for i in range(0, (len(hold_paths) * per or n_fit), step):
        chunk = [f[sel][i : i + step] for f in feats]
        s, m = (t.numpy() for t in detector.global_score_features(chunk))
        if local is not None:
            local_scores.append(local(chunk[len(fres)])[0].numpy())
        if tiling is not None:  # the pictures' maps, as the runtime makes them (scores below)
            m = tiling.reduce(s, m)[1]
        scores.append(s)
        maps.append(m)
    scores = np.concatenate(scores).astype(np.float64)  # per input (tile)
    norm = None
    choice = {"rule": "global", "chosen_by": "--position-free off" if cfg.position_free == "off" else note}
    if local is not None:  # put the local score on the global score's scale (FREDetector.score_features)
        local_scores = np.concatenate(local_scores).astype(np.float64)
        norm = torch.from_numpy(log_norm(scores, local_scores)).float()
        choice = {"rule": "max(global, position-free)", "chosen_by": "--position-free on"}
        if cfg.position_free == "auto":
            donors = load_batch([fit_paths[i] for i in np.linspace(0, len(fit_paths) - 1, DONORS).astype(int)],
                                cfg.input_size, tiling).numpy()
            choice = {**choose_image_score(detector, local, norm, scores, local_scores,
                                           load_batch(hold_paths, cfg.input_size, tiling).numpy(), donors,
                                           cfg.seed, cfg.batch_size), "chosen_by": "--position-free auto"}
        if choice["rule"] == "global":
            local, norm = None, None
        else:
            scores = fuse_position_free(torch.from_numpy(scores), torch.from_numpy(local_scores),
                                        norm.double()).numpy()
    if tiling is not None:
        scores = scores.reshape(-1, tiling.count).max(1)
    maps = np.concatenate(maps).astype(np.float64)
    t_thr = time.perf_counter() - t0
    return heads, fres, fusion, scores, maps, {"feature_pass": t_feat, "subspace": t_pca, "thresholds": t_thr,
                                               "rss_mb": rss_feat}, (local, norm, note, choice)


def _fit_streamed(cfg, shell, shapes, fit_paths, hold_paths, *, progress, client, partition_size):
    """The covariance strategy without holding features: sums over the fitting images (one pass) and the score's
    subspaces; the map's own heads from the features of an even sample of at most MAP_SAMPLE fitting images (one
    pass over the sample); the fusion statistics (several heads only: the scores' from a second pass over the
    fitting images where several score layers add up or nothing is held out, the maps' from a pass over the
    held-out images); the threshold images' scores and largest map values (one pass over them). Each pass runs
    partition by partition."""
    from ..cluster.engine import reduce_partitions
    from .passes import (config_json, fusion_from_sums, heads_payload, merge_features, merge_moments, merge_scores,
                         partition_layer_sums, partition_map_features, partition_moments, partition_scores)

    cj = config_json(cfg)
    names = [str(p) if not isinstance(p, np.ndarray) else p for p in fit_paths]
    hold = [str(p) if not isinstance(p, np.ndarray) else p for p in hold_paths]
    def run(fn, args, items, merge, desc):
        from tqdm.auto import tqdm

        if client is None:  # one partition
            size = max(len(items), 1)
        else:
            size = partition_size or auto_partition_size(len(items), client)
        bar = tqdm(total=len(items), desc=desc, unit="img", disable=None if progress else True, leave=False)
        jobs = [(*args, items[i : i + size]) for i in range(0, len(items), size)]
        try:
            if client is None:  # one partition here: the bar moves per batch
                return reduce_partitions(lambda *job: fn(*job, on_batch=bar.update), jobs, merge)
            return reduce_partitions(fn, jobs, merge, client, on_done=lambda job: bar.update(len(job[-1])))
        finally:
            bar.close()

    t0 = time.perf_counter()
    moments = run(partition_moments, (cj,), names, merge_moments, "feature sums")
    t_feat = time.perf_counter() - t0
    rss_feat = peak_rss_mb()
    t0 = time.perf_counter()
    fres = []
    while moments:  # each layer's sums are freed once its subspace is fitted
        m, shape = moments.pop(0), shapes[len(fres)]
        fres.append(FRE(cfg.head_components[len(fres)], strategy="covariance", memory_budget_gb=cfg.memory_budget_gb)
                    .fit_moments(m, shape, overwrite=True))
        del m
    if cfg.map_layers:  # the map's own heads: few components each, from an even sample of the fitting images
        sample = [names[i] for i in np.unique(np.linspace(0, len(names) - 1, min(len(names), MAP_SAMPLE)).astype(int))]
        t1 = time.perf_counter()
        feats = run(partition_map_features, (cj,), sample, merge_features, "map features")
        t_map = time.perf_counter() - t1  # a feature pass, counted as one
        t_feat, t0 = t_feat + t_map, t0 + t_map
        while feats:
            f = torch.from_numpy(feats.pop(0))
            with torch.inference_mode(False):
                fres.append(FRE(cfg.head_components[len(fres)], strategy="auto",
                                memory_budget_gb=cfg.memory_budget_gb).fit(f, progress=False))
            del f
    heads = [fre.head() for fre in fres]
    payload = heads_payload(fres)
    if client is not None:  # the fitted heads (MBs) go to each worker once, not with every task
        payload = client.scatter(payload, broadcast=True, hash=False)
    t_pca = time.perf_counter() - t0
    t0 = time.perf_counter()
    fusion = None
    if len(fres) > 1:
        held = cfg.map_layers and hold  # the maps are added scaled by their spread on new good parts (as held)
        sums = None
        if len(cfg.layers) > 1 or not held:  # the scores' statistics matter only where several layers add up
            sums = run(partition_layer_sums, (cj, payload), names, np.add, "fusion statistics")
        if held:
            held_sums = run(partition_layer_sums, (cj, payload), hold, np.add, "held-out map statistics")
            sums = held_sums if sums is None else np.concatenate([sums[:, :3], held_sums[:, 3:]], axis=1)
        fusion = fusion_from_sums(sums)
    thr = hold or names
    pixels = len(thr) * math.prod(cfg.input_size if cfg.tiling is None else cfg.tiling.canvas)
    scores, top = run(partition_scores, (cj, payload, None if fusion is None else fusion.numpy(), pixels), thr,
                      merge_scores, "threshold scores")
    t_thr = time.perf_counter() - t0
    return heads, fres, fusion, scores, top, {"feature_pass": t_feat, "subspace": t_pca, "thresholds": t_thr,
                                              "rss_mb": rss_feat}, (None, None, None, {"rule": "global",
                                                                                        "chosen_by": "streamed fit"})
