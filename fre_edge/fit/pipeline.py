"""Fit FRE on good images: one feature pass, a subspace per layer (the :class:`~.estimator.FRE` core),
fusion statistics and thresholds (:mod:`.thresholds`).

A fraction (``holdout``, default 10%) of the good images is kept out of the PCA to set the thresholds;
with ``holdout=0`` the fitting images are used instead (biased low, recorded as such in the model).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .. import __version__
from .backbones import DEFAULT_BACKBONE, create_backbone, get_spec, resolve_layers
from ..errors import FreEdgeError
from .features import extract_features
from .model import FREDetector, FREHead
from .estimator import FRE, fusion_statistics
from .pca import check_n_components, check_strategy
from .thresholds import threshold_warnings, thresholds_from_scores

MIN_FIT_IMAGES = 2


@dataclass
class FitConfig:
    backbone: str = DEFAULT_BACKBONE
    layers: tuple[str, ...] | None = None
    input_size: int | None = None
    pool: int = 2
    n_components: float | int = 0.97
    strategy: str = "auto"
    holdout: float = 0.1
    blur_sigma: float = 0.0
    batch_size: int = 16
    seed: int = 0
    pretrained: bool = True
    weights: str | None = None
    memory_budget_gb: float = 4.0
    ae_epochs: int = 250  # the autoencoder strategy's training epochs (the paper's)

    def validate(self) -> "FitConfig":
        spec = get_spec(self.backbone)
        self.layers = resolve_layers(spec, self.layers)
        if self.input_size is None:
            self.input_size = spec.input_size
        if not 32 <= int(self.input_size) <= 2048:
            raise FreEdgeError(f"input size {self.input_size} is out of range; use 32 to 2048 pixels")
        if self.pool < 1:
            raise FreEdgeError(f"pool={self.pool}; the pooling kernel must be 1 (none) or more")
        if not 0.0 <= self.holdout < 0.9:
            raise FreEdgeError(f"holdout={self.holdout}; use a fraction in [0, 0.9), e.g. 0.1")
        check_strategy(self.strategy)
        if not (isinstance(self.blur_sigma, (int, float)) and math.isfinite(self.blur_sigma) and self.blur_sigma >= 0):
            raise FreEdgeError(f"blur sigma {self.blur_sigma!r}; use a finite number, 0 (no blur) or more")
        self.n_components = check_n_components(self.n_components)
        if isinstance(self.ae_epochs, bool) or not isinstance(self.ae_epochs, int) or self.ae_epochs < 1:
            raise FreEdgeError(f"ae_epochs={self.ae_epochs!r}; use a whole number of epochs, 1 or more")
        if self.batch_size < 1:
            raise FreEdgeError(f"batch size {self.batch_size}; use 1 or more")
        return self


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


def assemble_detector(cfg: FitConfig, backbone, heads, fusion=None) -> FREDetector:
    """The whole detector from a built backbone and its FRE heads, with cfg's pre-processing and pooling."""
    spec = get_spec(cfg.backbone)
    return FREDetector(backbone, heads, input_size=cfg.input_size, mean=spec.mean, std=spec.std,
                       pool=cfg.pool, blur_sigma=cfg.blur_sigma, fusion=fusion).eval()


def build_detector(cfg: FitConfig, subspaces, shapes, fusion=None) -> FREDetector:
    backbone = create_backbone(cfg.backbone, cfg.layers, input_size=cfg.input_size,
                               pretrained=cfg.pretrained, weights=cfg.weights)
    return assemble_detector(cfg, backbone, [FREHead(s, shape) for s, shape in zip(subspaces, shapes)], fusion)


def _split(paths: Sequence, holdout: float, seed: int) -> tuple[list, list]:
    n = len(paths)
    n_hold = int(round(n * holdout)) if holdout > 0 else 0
    if holdout > 0 and n_hold < 1 and n >= MIN_FIT_IMAGES + 1:
        n_hold = 1
    order = np.random.default_rng(seed).permutation(n)
    hold = sorted(order[:n_hold].tolist())
    fit = sorted(order[n_hold:].tolist())
    return [paths[i] for i in fit], [paths[i] for i in hold]


@torch.inference_mode()
def fit_fre(paths: Sequence, cfg: FitConfig | None = None, *, progress: bool = True,
            data_summary: dict | None = None) -> FittedFRE:
    """Fit FRE on good images (paths or HxWx3 arrays)."""
    cfg = (cfg or FitConfig()).validate()
    paths = list(paths)
    fit_paths, hold_paths = _split(paths, cfg.holdout, cfg.seed)
    if len(fit_paths) < MIN_FIT_IMAGES:
        raise FreEdgeError(
            f"{len(paths)} good image(s) given, {len(fit_paths)} left to fit on after the holdout; "
            f"FRE needs at least {MIN_FIT_IMAGES} (50 or more recommended)"
        )
    t0 = time.perf_counter()
    shell = build_detector(cfg, [], [])
    t_build = time.perf_counter() - t0

    t0 = time.perf_counter()
    feats = extract_features(shell, fit_paths + hold_paths, batch_size=cfg.batch_size, progress=progress,
                             desc="feature pass")
    t_feat = time.perf_counter() - t0
    rss_feat = peak_rss_mb()

    t0 = time.perf_counter()
    n_fit = len(fit_paths)
    fres = []
    for f in feats:
        with torch.inference_mode(False):
            fres.append(FRE(cfg.n_components, strategy=cfg.strategy, memory_budget_gb=cfg.memory_budget_gb,
                            ae_epochs=cfg.ae_epochs)
                        .fit(f[:n_fit], progress=progress))
    subspaces = [fre.subspace_ for fre in fres]
    t_pca = time.perf_counter() - t0

    t0 = time.perf_counter()
    heads = [fre.head() for fre in fres]
    fusion = fusion_statistics(fres, [f[:n_fit] for f in feats])
    detector = assemble_detector(cfg, shell.backbone, heads, fusion)
    sel = slice(n_fit, None) if hold_paths else slice(0, n_fit)
    scores, maps = [], []
    for i in range(0, (len(hold_paths) or n_fit), 64):
        chunk = [f[sel][i : i + 64] for f in feats]
        s, m = detector.score_features(chunk)
        scores.append(s)
        maps.append(m)
    scores = torch.cat(scores).double().numpy()
    maps = torch.cat(maps).double().numpy()
    t_thr = time.perf_counter() - t0

    info = {
        "fre_edge_version": __version__,
        "n_components": [h.n_components for h in heads],
        "feature_shapes": [list(fre.feature_shape_) for fre in fres],
        # None where unknown (the autoencoder strategy does not compute eigenvalues)
        "explained_variance": [None if torch.isnan(s.explained_variance_ratio).any()
                               else float(s.explained_variance_ratio.sum()) for s in subspaces],
        "strategies": [s.strategy for s in subspaces],
        "thresholds": thresholds_from_scores(
            scores, maps, "holdout" if hold_paths else "fit images (biased low: no holdout)"),
        "warnings": threshold_warnings(len(scores), bool(hold_paths)),
        "data": {**(data_summary or {}), "fit_images": n_fit, "holdout_images": len(hold_paths)},
        "timings_s": {"build": t_build, "feature_pass": t_feat, "subspace": t_pca, "thresholds": t_thr},
        "peak_rss_mb": {"after_feature_pass": rss_feat, "after_fit": peak_rss_mb()},
    }
    return FittedFRE(detector, cfg, info)
