"""The drift watch on real pictures: a replay of MVTec bottle's good test pictures through the bundle fitted
on its training set, unchanged for 5,000 parts (no alarm), and with a gradual change made here (brightness,
contrast, blur, a shift of the camera): the alarm must come before the false-reject rate doubles."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from benchmarks.line_drift import LEVELS, changed, ramp_table, replay, scores_at
from fre_edge.line.drift import BASELINE_PARTS, DriftWatch

RAMP_PARTS = 6000


@pytest.fixture(scope="module")
def good(bottle_root):
    return [Image.open(p).convert("RGB") for p in sorted((bottle_root / "test" / "good").glob("*.png"))]


@pytest.fixture(scope="module")
def detector(bottle_bundle):
    from fre_edge.runtime import load_detector

    return load_detector(bottle_bundle)


def test_the_bundle_carries_its_reference_scores(bottle_bundle):
    import json

    th = json.loads((bottle_bundle / "manifest.json").read_text())["thresholds"]
    ref = th["reference_scores"]
    assert len(ref) == th["n_images"] and ref == sorted(ref) and min(ref) > 0
    assert max(ref) <= th["image"]  # the held-out good pictures pass their own threshold


def test_unchanged_replay_of_5000_parts_raises_no_alarm(detector, good):
    watch = DriftWatch(detector.image_threshold)
    assert replay(watch, scores_at(detector, good, "brightness", [0.0]), BASELINE_PARTS, 5000, seed=0) is None
    st = watch.status()
    assert st["state"] == "watching" and st["parts_watched"] == 5000 and st["statistic"] < watch.h
    assert st["tail_statistic"] < watch.tail_h


@pytest.mark.parametrize("kind", ["brightness", "contrast", "blur", "shift"])
def test_a_gradual_change_raises_the_alarm_before_false_rejects_double(detector, good, kind):
    """The change grows linearly over 6,000 parts after the baseline, at the pace that doubles the false-reject
    rate three quarters of the way: a drift of days on a line, compressed (``benchmarks/line_drift.py``)."""
    table, rates = ramp_table(detector, good, kind)
    doubled = next(i for i, r in enumerate(rates) if r >= 2 * rates[0])
    assert doubled > 0, f"{kind}: the change doubles the false-reject rate at once: {rates}"
    alarm_part = replay(DriftWatch(detector.image_threshold), table, BASELINE_PARTS, RAMP_PARTS, seed=1)
    doubled_part = doubled * RAMP_PARTS // LEVELS
    assert alarm_part is not None, f"{kind}: no alarm (false-reject rate by level {rates})"
    assert alarm_part < doubled_part, (kind, alarm_part, doubled_part, rates)
    assert rates[min(LEVELS - 1, alarm_part * LEVELS // RAMP_PARTS)] < 2 * rates[0]


def test_the_station_raises_the_alarm_in_status_metrics_and_sinks(bottle_bundle, good, tmp_path):
    """In the station: a drift record in the journal after the verdict that raised it, delivered to the sink,
    the state in /status and in the metrics. (A short baseline here: 60 parts instead of 1,000.)"""
    import json
    import time

    from fre_edge.line.config import from_args
    from fre_edge.line.metrics import prometheus
    from fre_edge.line.station import Station
    from fre_edge.runtime import load_detector

    incoming, out = tmp_path / "in", tmp_path / "out"
    incoming.mkdir()
    cfg = from_args(str(bottle_bundle), [f"folder:{incoming}"], [f"folder:{out}"], journal=str(tmp_path / "j"))
    det = load_detector(bottle_bundle)
    st = Station(cfg, det, version="v")
    st.drift = DriftWatch(det.image_threshold, baseline_parts=60)
    st.start()
    try:
        rng = np.random.default_rng(0)
        for i in range(60):
            Image.fromarray(np.asarray(good[rng.integers(len(good))])).save(incoming / f"a{i:03d}.png")
        deadline = time.monotonic() + 120
        while st.drift.state == "learning" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert st.drift.state == "watching"
        for i in range(200):
            Image.fromarray(changed(good[rng.integers(len(good))], "brightness", 0.5)).save(incoming / f"b{i:03d}.png")
            if st.drift.state == "drift":
                break
            time.sleep(0.01)
        while st.drift.state != "drift" and time.monotonic() < deadline:
            time.sleep(0.05)
        status = st.status()
        assert status["drift"]["state"] == "drift" and status["drift"]["alarm"]["shift_spreads"] > 0.5
        assert "fre_edge_line_drift_alarm 1" in prometheus(status, st.journal.dropped)
        while st.workers[0].backlog() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        st.stop()
    lines = [json.loads(x) for f in out.glob("verdicts-*.jsonl") for x in f.read_text().splitlines()]
    alarms = [x for x in lines if x.get("kind") == "drift"]
    assert len(alarms) == 1 and alarms[0]["share_above_threshold"] > alarms[0]["baseline_share_above_threshold"]
    assert [x["seq"] for x in lines] == sorted(x["seq"] for x in lines)
