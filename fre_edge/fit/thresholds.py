"""Thresholds from good images only: the one place they are set (fitting, and the INT8 refit).

Image threshold: a 99% upper prediction limit for the next good image's score under a log-normal
fitted to good images' scores (scores are positive and right-skewed). The prediction limit,
exp(m + t(0.99, n-1) s sqrt(1 + 1/n)) with m, s the mean and std of the n log-scores, allows for m and
s being estimated from few images; the plain 99th percentile of the fitted log-normal, exp(m + 2.33 s),
passes fewer than 99% of new good images when n is small (it is what the limit tends to for large n).
An empirical 99th percentile would just be the maximum of a handful of held-out images.

Pixel threshold: the empirical 99.9th percentile of their map values (there are many pixels).
"""

from __future__ import annotations

import numpy as np

IMAGE_QUANTILE = 0.99
PIXEL_QUANTILE = 0.999
# below this many threshold images the prediction limit is much wider than the 99th percentile it
# estimates (t(0.99, 19) sqrt(1 + 1/20) = 2.60 vs 2.33 standard deviations), so fitting says so
FEW_THRESHOLD_IMAGES = 20
RULE = (f"image: {IMAGE_QUANTILE:.0%} upper prediction limit of a log-normal fitted to good-image scores; "
        f"pixel: {PIXEL_QUANTILE:.1%} quantile of good-image map values")


def lognormal_quantile(scores: np.ndarray) -> float:
    """99% upper prediction limit of a log-normal fitted to positive scores (see the module docstring), and
    never below their empirical 99th percentile. One score: that score."""
    scores = np.asarray(scores, dtype=np.float64)
    logs = np.log(np.clip(scores, 1e-12, None))
    n = logs.size
    if n < 2:
        return float(np.max(scores))
    from scipy.special import stdtrit  # Student's t quantile; scipy.stats costs 0.4 s to import

    factor = float(stdtrit(n - 1, IMAGE_QUANTILE)) * np.sqrt(1.0 + 1.0 / n)
    return float(max(np.exp(logs.mean() + factor * logs.std(ddof=1)), np.quantile(scores, IMAGE_QUANTILE)))


def thresholds_from_scores(scores: np.ndarray, maps: np.ndarray, source: str) -> dict:
    """The thresholds record of a model or bundle, from good images' scores [n] and maps [n, ...]."""
    scores = np.asarray(scores, dtype=np.float64)
    return {
        "image": lognormal_quantile(scores),
        "pixel": float(np.quantile(maps, PIXEL_QUANTILE)),
        "rule": RULE,
        "source": source,
        "n_images": int(scores.size),
        "score_stats": {"mean": float(scores.mean()), "std": float(scores.std()),
                        "min": float(scores.min()), "max": float(scores.max())},
    }


def threshold_warnings(n_images: int, held_out: bool) -> list[str]:
    out = []
    if not held_out:
        out.append("the thresholds come from the fitting images themselves, which score lower than new good "
                   "images; use --holdout 0.1 (the default) so that new good images are not rejected")
    elif n_images < FEW_THRESHOLD_IMAGES:
        out.append(f"the image threshold comes from only {n_images} good image(s), so it is set wide to allow for "
                   f"that; with {FEW_THRESHOLD_IMAGES} or more held-out good images (--holdout, or more images) it "
                   "is tighter")
    return out
