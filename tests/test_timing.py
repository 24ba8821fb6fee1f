"""The one timing harness (fre_edge.timing): behaviour only, never how fast anything is."""

import pytest

from fre_edge.timing import alternate, markdown_table, ratio_spread, spread, timed_calls


def test_alternate_flips_the_order_and_warms_up_each_block():
    log = []
    calls = {"a": lambda: log.append("a"), "b": lambda: log.append("b")}
    lat, per_round = alternate(calls, rounds=3, block=0.0, warmup=2, min_calls=3)
    # each block: 2 warm-up calls + 3 timed calls (block 0 s: the minimum); order a,b then b,a then a,b
    assert "".join(log) == "a" * 5 + "b" * 5 + "b" * 5 + "a" * 5 + "a" * 5 + "b" * 5
    assert {k: len(v) for k, v in lat.items()} == {"a": 9, "b": 9}
    assert len(per_round) == 3 and all(set(m) == {"a", "b"} for m in per_round)


def test_after_call_runs_outside_the_timing_once_per_timed_call():
    seen = []
    alternate({"x": lambda: None}, rounds=2, block=0.0, warmup=1, min_calls=4, after_call=seen.append)
    assert seen == ["x"] * 8
    assert len(timed_calls(lambda: None, 0.0, min_calls=5)) == 5


@pytest.mark.parametrize("values, expected", [
    ([3.0], {"median": 3.0, "q1": 3.0, "q3": 3.0}),
    ([1.0, 2.0, 3.0, 4.0, 5.0], {"median": 3.0, "q1": 1.5, "q3": 4.5}),
])
def test_spread(values, expected):
    assert spread(values) == pytest.approx(expected)


def test_ratio_spread_and_table():
    per_round = [{"full": 2.0, "bb": 1.0}, {"full": 3.0, "bb": 2.0}, {"full": 4.0, "bb": 4.0}]
    r = ratio_spread(per_round, "full", "bb")
    assert r["ratios"] == [2.0, 1.5, 1.0] and r["q1"] == pytest.approx(1.0) and r["q3"] == pytest.approx(2.0)
    assert markdown_table(["a", "b"], [[1, "x"]]) == "| a | b |\n|---|---|\n| 1 | x |"
    with pytest.raises(ValueError, match="rounds"):
        alternate({"x": lambda: None}, rounds=0, block=0.0)
