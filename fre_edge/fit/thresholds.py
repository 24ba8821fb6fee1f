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


def thresholds_from_scores(scores: np.ndarray, maps, source: str) -> dict:
    """The thresholds record of a model or bundle, from good images' scores [n] and maps [n, ...] (or their
    :class:`TopValues`, when the maps were never held together)."""
    scores = np.asarray(scores, dtype=np.float64)
    pixel = maps.quantile() if isinstance(maps, TopValues) else float(np.quantile(maps, PIXEL_QUANTILE))
    return {
        "image": lognormal_quantile(scores),
        "pixel": pixel,
        "rule": RULE,
        "source": source,
        "n_images": int(scores.size),
        "score_stats": {"mean": float(scores.mean()), "std": float(scores.std()),
                        "min": float(scores.min()), "max": float(scores.max())},
        "reference_scores": reference_scores(scores),
    }


REFERENCE_POINTS = 1000


def reference_scores(scores: np.ndarray) -> list[float]:
    """The good images' scores, sorted (at most ``REFERENCE_POINTS`` evenly spaced quantiles of them): the
    reference distribution a station compares the line's scores with (:mod:`fre_edge.line.drift`)."""
    values = np.sort(np.asarray(scores, dtype=np.float64))
    if values.size > REFERENCE_POINTS:
        values = np.quantile(values, np.linspace(0, 1, REFERENCE_POINTS))
    return [float(f"{v:.6g}") for v in values]


class TopValues:
    """The exact ``PIXEL_QUANTILE`` quantile of ``total`` map values, holding only the largest of them.

    The linear-interpolation quantile at q of M values reads the two values at ranks floor/ceil of
    q (M - 1) from the bottom, i.e. within the K = ceil((1 - q) (M - 1)) + 1 largest. Every partition keeps
    its own K largest (at most), so their union holds the global K largest whatever the split, and the
    merge is exact at a thousandth of the memory of the maps. M must be known in advance (images x pixels).
    Use: ``TopValues(M).add(maps)`` per partition, ``a.merge(b)``, ``quantile()``."""

    def __init__(self, total: int, q: float = PIXEL_QUANTILE):
        self.q, self.total, self.count = q, int(total), 0
        self.keep = int(np.ceil((1.0 - q) * max(self.total - 1, 0))) + 2
        self.top = np.empty(0, dtype=np.float64)

    def _trim(self, values: np.ndarray) -> None:
        keep = min(self.keep, values.size)
        self.top = np.sort(np.partition(values, values.size - keep)[values.size - keep:])[::-1]

    def add(self, values: np.ndarray) -> "TopValues":
        values = np.asarray(values, dtype=np.float64).ravel()
        self.count += values.size
        self._trim(np.concatenate([self.top, values]))
        return self

    def merge(self, other: "TopValues") -> "TopValues":
        out = TopValues(self.total, self.q)
        out.count = self.count + other.count
        out._trim(np.concatenate([self.top, other.top]))
        return out

    def quantile(self) -> float:
        """What ``np.quantile(all_values, q)`` returns (its default linear method), from the kept values."""
        m = self.count
        if m != self.total or m == 0:
            raise ValueError(f"{m} values seen, {self.total} expected")
        pos = (m - 1) * self.q
        lo = int(np.floor(pos))
        hi = min(lo + 1, m - 1)
        a, b = self.top[m - 1 - lo], self.top[m - 1 - hi]
        t = pos - lo
        # numpy's lerp: exact at both ends
        return float(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)


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
