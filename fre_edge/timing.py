"""Timing that ``fre-edge bench`` and every script under benchmarks/ share (torch-free, numpy-free).

Two rules make figures from a shared, noisy machine comparable:
- Things compared are timed in the same run, in short alternating blocks, the order flipped every round
  (:func:`alternate`), so slow drifts hit them alike while each block still sees its own weights in cache.
- A figure is a median over all timed calls, its spread the quartiles of the per-round values or ratios
  (:func:`spread`, :func:`ratio_spread`), never a single run's mean.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable


def timed_calls(call: Callable[[], object], seconds: float, min_calls: int = 3,
                after_call: Callable[[], object] | None = None) -> list[float]:
    """Latencies (s) of ``call()`` repeated for ``seconds`` (at least ``min_calls`` times).
    ``after_call()``, if given, runs after each timed call, outside its timing."""
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < min_calls:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        if after_call is not None:
            after_call()
    return times


def alternate(calls: dict[str, Callable[[], object]], rounds: int, block: float, *, warmup: int = 3,
              min_calls: int = 3, after_call: Callable[[str], object] | None = None
              ) -> tuple[dict[str, list[float]], list[dict[str, float]]]:
    """({name: every latency in s}, [per round {name: median}]) from ``rounds`` rounds of ``block``-second
    blocks of each call in turn (order flipped every round; ``warmup`` untimed calls before each block).
    ``after_call(name)``, if given, runs after each timed call, outside its timing."""
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    lat = {name: [] for name in calls}
    per_round = []
    for r in range(rounds):
        medians = {}
        for name in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
            for _ in range(warmup):
                calls[name]()
            after = None if after_call is None else (lambda n=name: after_call(n))
            ts = timed_calls(calls[name], block, min_calls, after)
            lat[name] += ts
            medians[name] = statistics.median(ts)
        per_round.append(medians)
    return lat, per_round


def spread(values: list[float]) -> dict:
    """median, first and third quartile (the quartiles equal the median for fewer than two values)."""
    med = statistics.median(values)
    q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (med, med, med)
    return {"median": med, "q1": q1, "q3": q3}


def ratio_spread(per_round: list[dict[str, float]], num: str, den: str) -> dict:
    """The per-round ratios num/den of :func:`alternate`'s medians, with their quartiles."""
    ratios = [m[num] / m[den] for m in per_round]
    return {"ratios": ratios, **{k: v for k, v in spread(ratios).items() if k != "median"}}


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; cells are written with str()."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
