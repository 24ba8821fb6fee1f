"""Drift watch: good parts scoring higher, told before the false rejects climb.

A line drifts slowly (the light ages, a camera is knocked, a surface finish changes): good parts' scores
creep up, and the first sign would otherwise be a pile of false rejects. The statistic:

1. **Baseline**: the first ``baseline_parts`` (1,000) parts the station inspects give the line's own level,
   the median m and the robust spread d (1.4826 x median absolute deviation) of their log-scores. The
   bundle's held-out good scores (``thresholds.reference_scores``, written by fit and export) are too few to
   be the baseline (tens of pictures: their median is uncertain by a fifth of a spread, as much as the
   drift to catch), so they are the check of the baseline instead: the status says how far the line
   started from the pictures the bundle was fitted on.
2. **Watch**: each later part's (log score - m) / d, clipped to [-3, 3] so a defect counts as a large but
   bounded excess, then centred and scaled by that clipped value's mean and standard deviation on the
   baseline (so it has mean 0 and spread 1 on an unchanged line, whatever the scores' shape: skewed, with
   a few rejects), is z; it feeds a one-sided CUSUM, S = max(0, S + z - k) with k = 0.2; the alarm is
   S > h with h = 35.

3. **Tail**: beside it, a Bernoulli CUSUM on the share of parts above the baseline's 97th percentile of
   log-scores (p0, the baseline's own share there, about 0.03): B = max(0, B + log 2 if above else
   log((1 - 2 p0)/(1 - p0))), testing p0 against 2 p0; the alarm is also B > 13.

Why: a drift that doubles the nominal 1% false-reject rate of a log-normal score moves its log by 0.27
spreads; a CUSUM is the fastest test for a persistent shift at a given false-alarm rate. The figures of
k and h come from simulating z ~ N(mu, 1) with a baseline of 1,000 parts off by one standard error
(mu = 0.056): about 0.5% chance of an alarm in 5,000 unchanged parts; for a linear drift reaching 0.27
spreads at part T, an alarm before T in 82% of runs for T = 3,000 and 98% for T = 6,000. Some changes
(blur) hardly move the typical part while the top of the scores climbs: false rejects are the share above a
threshold high in the good scores, so the tail test watches that share directly, near where false rejects
begin yet with enough parts above it to count (3 in 100). Its level 13 comes the same way: Bernoulli draws
with the baseline's share off by one standard error (0.0054 at 0.03 over 1,000 parts): about 0.6% chance of
an alarm in 5,000 unchanged parts (0.0% with the share exact).
``tests/test_drift.py`` replays real pictures through a real bundle: no alarm in 5,000 unchanged parts,
and an alarm before the false-reject rate doubles under a gradual change of brightness, contrast, blur and
camera position. Once raised, the alarm stays until the station
restarts (or :meth:`DriftWatch.reset`), with what moved: the shift in spreads over the last 200 parts
and the share of parts above the threshold, against the baseline's.
"""

from __future__ import annotations

import math
import time
from collections import deque

import numpy as np

BASELINE_PARTS = 1000
K, H = 0.2, 35.0
TAIL_QUANTILE, TAIL_RATIO, TAIL_H = 0.97, 2.0, 13.0
RECENT = 200


class DriftWatch:
    def __init__(self, threshold: float, reference: list[float] | None = None, *, baseline_parts: int = BASELINE_PARTS,
                 k: float = K, h: float = H):
        self.threshold, self.reference = float(threshold), list(reference or [])
        self.baseline_parts, self.k, self.h, self.tail_h = int(baseline_parts), float(k), float(h), TAIL_H
        self.reset()

    def reset(self) -> None:
        self._learning: list[float] = []
        self.median = self.spread = None
        self.baseline_above = None
        self.cusum, self.watched, self.alarm_at, self.alarm = 0.0, 0, None, None
        self.tail_cusum, self.tail_log, self.tail_steps = 0.0, None, (0.0, 0.0)
        self.recent = deque(maxlen=RECENT)
        self.recent_above = deque(maxlen=RECENT)

    @property
    def state(self) -> str:
        return "learning" if self.median is None else ("drift" if self.alarm else "watching")

    def add(self, score: float | None) -> dict | None:
        """One part's score (None: a part that could not be scored, ignored). Returns the alarm's record the
        moment the alarm is raised, else None."""
        if score is None or not math.isfinite(score) or score <= 0:
            return None
        log = math.log(score)
        if self.median is None:
            self._learning.append(log)
            if len(self._learning) >= self.baseline_parts:
                a = np.array(self._learning)
                self.median = float(np.median(a))
                self.spread = float(1.4826 * np.median(np.abs(a - self.median))) or 1e-6
                clipped = np.clip((a - self.median) / self.spread, -3.0, 3.0)
                # the clipped z's own mean and spread on the baseline: zero and one there, whatever the shape
                self.center, self.scale = float(clipped.mean()), float(clipped.std()) or 1.0
                self.baseline_above = float(np.mean(a > math.log(self.threshold)))
                self.tail_log = float(np.quantile(a, TAIL_QUANTILE))
                p0 = min(max(float(np.mean(a > self.tail_log)), 1.0 / len(a)), 0.4)
                p1 = TAIL_RATIO * p0
                self.tail_steps = (math.log(p1 / p0), math.log((1 - p1) / (1 - p0)))
                self._learning = []
            return None
        z = (min(3.0, max(-3.0, (log - self.median) / self.spread)) - self.center) / self.scale
        self.recent.append(z)
        self.recent_above.append(score > self.threshold)
        self.watched += 1
        self.cusum = max(0.0, self.cusum + z - self.k)
        self.tail_cusum = max(0.0, self.tail_cusum + self.tail_steps[0 if log > self.tail_log else 1])
        if self.alarm is None and (self.cusum > self.h or self.tail_cusum > self.tail_h):
            self.alarm_at = time.time()
            self.alarm = {**self.what_moved(), "test": "level" if self.cusum > self.h else "tail"}
            return {"kind": "drift", **self.alarm}
        return None

    def what_moved(self) -> dict:
        return {"shift_spreads": float(np.mean(self.recent)) if self.recent else 0.0,
                "share_above_threshold": float(np.mean(self.recent_above)) if self.recent_above else 0.0,
                "baseline_share_above_threshold": self.baseline_above, "parts_watched": self.watched,
                "statistic": self.cusum, "alarm_level": self.h, "tail_statistic": self.tail_cusum,
                "tail_alarm_level": self.tail_h}

    def status(self) -> dict:
        out = {"state": self.state, "statistic": round(self.cusum, 3), "alarm_level": self.h, "k": self.k,
               "tail_statistic": round(self.tail_cusum, 3), "tail_alarm_level": self.tail_h,
               "baseline_parts": self.baseline_parts, "parts_learned": len(self._learning) if self.median is None
               else self.baseline_parts, "parts_watched": self.watched}
        if self.median is not None:
            out["baseline"] = {"median_score": math.exp(self.median), "log_spread": self.spread,
                               "share_above_threshold": self.baseline_above}
            if self.reference:
                ref = float(np.median(np.log(np.clip(self.reference, 1e-12, None))))
                out["baseline_vs_bundle_reference_spreads"] = (self.median - ref) / self.spread
            out["recent"] = self.what_moved()
        if self.alarm:
            out["alarm"] = {**self.alarm, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.alarm_at))}
        return out
