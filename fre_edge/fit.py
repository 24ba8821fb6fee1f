"""Fit FRE on good images: one feature pass, a subspace per layer, statistics and thresholds.

Thresholds come from good images only: a fraction (``holdout``, default 10%) of the good images is
kept out of the PCA. Image threshold: a 99% upper prediction limit for the next good image's score
under a log-normal fitted to their scores (scores are positive and right-skewed). The prediction limit,
exp(m + t(0.99, n-1) s sqrt(1 + 1/n)) with m, s the mean and std of the n log-scores, allows for m and s
being estimated from few images; the plain 99th percentile of the fitted log-normal, exp(m + 2.33 s),
passes fewer than 99% of new good images when n is small (it is what the limit tends to for large n).
An empirical 99th percentile would just be the maximum of a handful of held-out images. Pixel
threshold: the empirical 99.9th
percentile of their map values (there are many pixels). With ``holdout=0`` the fitting images are used
instead, which gives thresholds biased low (recorded as such in the model).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import __version__
from .backbones import DEFAULT_BACKBONE, create_backbone, get_spec, resolve_layers
from .errors import FreEdgeError
from .features import extract_features
from .model import FREDetector, FREHead
from .pca import STRATEGIES, check_n_components, fit_subspace

IMAGE_QUANTILE = 0.99
PIXEL_QUANTILE = 0.999
MIN_FIT_IMAGES = 2
# below this many threshold images the prediction limit is much wider than the 99th percentile it
# estimates (t(0.99, 19) sqrt(1 + 1/20) = 2.60 vs 2.33 standard deviations), so fitting says so
FEW_THRESHOLD_IMAGES = 20


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
        if self.strategy not in STRATEGIES:
            raise FreEdgeError(f"unknown strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")
        if not (isinstance(self.blur_sigma, (int, float)) and math.isfinite(self.blur_sigma) and self.blur_sigma >= 0):
            raise FreEdgeError(f"blur sigma {self.blur_sigma!r}; use a finite number, 0 (no blur) or more")
        self.n_components = check_n_components(self.n_components)
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


def lognormal_quantile(scores: np.ndarray) -> float:
    """99% upper prediction limit of a log-normal fitted to positive scores (see the module docstring), and
    never below their empirical 99th percentile. One score: that score."""
    logs = np.log(np.clip(scores, 1e-12, None))
    n = logs.size
    if n < 2:
        return float(np.max(scores))
    from scipy.special import stdtrit  # Student's t quantile; scipy.stats costs 0.4 s to import

    factor = float(stdtrit(n - 1, IMAGE_QUANTILE)) * np.sqrt(1.0 + 1.0 / n)
    return float(max(np.exp(logs.mean() + factor * logs.std(ddof=1)), np.quantile(scores, IMAGE_QUANTILE)))


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


def _threshold_warnings(n_images: int, held_out: bool) -> list[str]:
    out = []
    if not held_out:
        out.append("the thresholds come from the fitting images themselves, which score lower than new good "
                   "images; use --holdout 0.1 (the default) so that new good images are not rejected")
    elif n_images < FEW_THRESHOLD_IMAGES:
        out.append(f"the image threshold comes from only {n_images} good image(s), so it is set wide to allow for "
                   f"that; with {FEW_THRESHOLD_IMAGES} or more held-out good images (--holdout, or more images) it "
                   "is tighter")
    return out


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
    subspaces, shapes = [], []
    budget = int(cfg.memory_budget_gb * (1 << 30))
    for f in feats:
        with torch.inference_mode(False):
            X = f[:n_fit].reshape(n_fit, -1).clone()
            subspaces.append(fit_subspace(X, cfg.n_components, cfg.strategy, budget, progress=progress))
        shapes.append(tuple(f.shape[1:]))
    t_pca = time.perf_counter() - t0

    t0 = time.perf_counter()
    heads = [FREHead(s, shape) for s, shape in zip(subspaces, shapes)]
    rows = []
    for head, f in zip(heads, feats):
        s, m = head(f[:n_fit])
        rows.append([s.mean(), s.std().clamp_min(1e-12), m.mean(), m.std().clamp_min(1e-12)])
    fusion = torch.tensor([[float(v) for v in r] for r in rows], dtype=torch.float32)
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
        "feature_shapes": [list(s) for s in shapes],
        # None where unknown (the autoencoder strategy does not compute eigenvalues)
        "explained_variance": [None if torch.isnan(s.explained_variance_ratio).any()
                               else float(s.explained_variance_ratio.sum()) for s in subspaces],
        "strategies": [s.strategy for s in subspaces],
        "thresholds": {
            "image": lognormal_quantile(scores),
            "pixel": float(np.quantile(maps, PIXEL_QUANTILE)),
            "rule": f"image: {IMAGE_QUANTILE:.0%} upper prediction limit of a log-normal fitted to good-image scores; "
                    f"pixel: {PIXEL_QUANTILE:.1%} quantile of good-image map values",
            "source": "holdout" if hold_paths else "fit images (biased low: no holdout)",
            "n_images": int(len(scores)),
            "score_stats": {"mean": float(scores.mean()), "std": float(scores.std()),
                            "min": float(scores.min()), "max": float(scores.max())},
        },
        "warnings": _threshold_warnings(len(scores), bool(hold_paths)),
        "data": {**(data_summary or {}), "fit_images": n_fit, "holdout_images": len(hold_paths)},
        "timings_s": {"build": t_build, "feature_pass": t_feat, "subspace": t_pca, "thresholds": t_thr},
        "peak_rss_mb": {"after_feature_pass": rss_feat, "after_fit": peak_rss_mb()},
    }
    return FittedFRE(detector, cfg, info)
