"""The latency verdict (serving.latency), pure: histogram arithmetic, per-pod intervals
across restarts, and "p99 above the bound, sustained, since the promotion"."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_assets.serving.latency import (
    LATENCY_BUCKETS,
    Histogram,
    Scrape,
    dumps,
    judge_latency,
    keep_recent,
    loads,
    parse_metrics,
    rounds_for_version,
)

BOUNDS = (*LATENCY_BUCKETS, math.inf)
T0 = 1_700_000_000.0  # promotion time


def hist(per_bucket: dict[float, int]) -> Histogram:
    """Cumulative histogram of ``per_bucket`` (upper edge -> requests in that bucket)."""
    counts, running = [], 0.0
    for b in BOUNDS:
        running += per_bucket.get(b, 0)
        counts.append(running)
    return Histogram(BOUNDS, tuple(counts))


def test_quantile_is_prometheus_histogram_quantile():
    # promql/quantile.go bucketQuantile: rank = q * count; linear inside the bucket that
    # holds it, from 0 for the first bucket; the +Inf bucket answers the highest finite edge
    h = Histogram((0.1, 0.2, 0.5, math.inf), (10, 30, 40, 40))
    assert h.quantile(0.5) == pytest.approx(0.15)  # rank 20: 0.1 + 0.1 * 10/20
    assert h.quantile(0.25) == pytest.approx(0.1)  # rank 10: the top of the first bucket
    assert h.quantile(0.1) == pytest.approx(0.04)  # rank 4: 0 + 0.1 * 4/10
    assert h.quantile(0.99) == pytest.approx(0.2 + 0.3 * (39.6 - 30) / 10)
    assert Histogram((0.1, math.inf), (1, 5)).quantile(0.99) == 0.1  # in +Inf
    assert math.isnan(Histogram((0.1, math.inf), (0, 0)).quantile(0.5))


def test_bound_must_be_a_bucket_edge():
    h = hist({0.005: 10})
    assert h.count_le(0.005) == 10 and h.count_le(0.004) == 0
    with pytest.raises(ValueError, match=r"latency bound 4.5 ms is not a bucket edge.*0.5, 1, 2, 3, 4, 5"):
        h.count_le(0.0045)


def _scrapes_from(increments: list[dict[str, dict[float, int]]], version: int = 7,
                  started: dict[str, float] | None = None,
                  restarts: dict[tuple[str, int], float] | None = None,
                  step: float = 60.0, first_at: float = T0 - 30) -> list[Scrape]:
    """Scrapes of every pod per round: the cumulative histogram of its increments so far
    (reset at a restart, which also moves its start time)."""
    started = dict(started or {})
    restarts = restarts or {}
    totals: dict[str, dict[float, int]] = {}
    out = []
    for i, round_inc in enumerate(increments):
        at = first_at + step * i
        for pod, inc in round_inc.items():
            if (pod, i) in restarts:
                totals[pod] = {}
                started[pod] = restarts[(pod, i)]
            acc = totals.setdefault(pod, {})
            for b, n in inc.items():
                acc[b] = acc.get(b, 0) + n
            out.append(Scrape(at, pod, started.get(pod, T0 - 3600), version, {version: hist(acc)}))
    return out


pods = st.sampled_from(["pod-a", "pod-b", "pod-c"])
buckets = st.dictionaries(st.sampled_from(BOUNDS), st.integers(0, 50), max_size=4)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(pods, buckets, min_size=1), min_size=2, max_size=6),
       st.data())
def test_rounds_recover_each_interval_across_restarts(increments, data):
    # restarts strike after the first round: the pod's counts restart from what it served since
    restarts = {}
    for i, round_inc in enumerate(increments[1:], start=1):
        for pod in round_inc:
            if data.draw(st.booleans(), label=f"restart {pod} {i}"):
                restarts[(pod, i)] = T0 + i
    scrapes = _scrapes_from(increments, restarts=restarts)
    rounds = {r.at: r.latency for r in rounds_for_version(scrapes, 7, T0)}
    seen: set[str] = set()
    for i, round_inc in enumerate(increments):
        at = T0 - 30 + 60.0 * i
        expected: dict[float, int] = {}
        any_counted = False
        for pod, inc in round_inc.items():
            # a pod's first scrape is its baseline, unless the pod (re)started after the
            # promotion: then everything it served counts
            counted = pod in seen or (pod, i) in restarts
            seen.add(pod)
            any_counted |= counted
            if counted:
                for b, n in inc.items():
                    expected[b] = expected.get(b, 0) + n
        if any_counted:
            assert rounds[at] == hist(expected), (i, rounds[at], expected)
        else:
            assert at not in rounds


def _slow_rounds(n_rounds: int, slow: int, fast: int = 0, pod: str = "pod-a") -> list[dict]:
    """Per round: ``slow`` requests of 7.5 ms and ``fast`` of 2 ms."""
    return [{pod: {0.0075: slow, 0.002: fast}} for _ in range(n_rounds)]


def test_sustained_breach_since_promotion_rolls_back():
    scrapes = _scrapes_from([{"pod-a": {}}, *_slow_rounds(5, slow=2, fast=98)])
    now = T0 - 30 + 60 * 5
    verdict = judge_latency(scrapes, 7, T0, now, bound_s=0.005, window_s=240, min_requests=50)
    # 2% of the requests above 5 ms in every round: p99 is above 5 ms
    assert verdict.breach, verdict
    assert verdict.rounds == 4 and verdict.requests == 400 and verdict.share_over == pytest.approx(0.02)
    assert verdict.p99_s > 0.005
    assert verdict.reason.startswith("scorer latency: v7 p99 ~")
    assert "above 5 ms for 240 s since its promotion (4 of 4 rounds" in verdict.reason
    # exactly 1% over the bound is p99 at the bound, not above it
    at_bound = _scrapes_from([{"pod-a": {}}, *_slow_rounds(5, slow=1, fast=99)])
    assert not judge_latency(at_bound, 7, T0, now, 0.005, 240, min_requests=50).breach


def test_no_verdict_too_early_or_too_quiet_or_not_sustained():
    now = T0 - 30 + 60 * 5
    scrapes = _scrapes_from([{"pod-a": {}}, *_slow_rounds(5, slow=50, fast=50)])
    early = judge_latency(scrapes, 7, T0, T0 + 100, 0.005, 240)
    assert not early.breach and "promoted 100 s ago, less than the 240 s window" in early.reason
    quiet = _scrapes_from([{"pod-a": {}}, *_slow_rounds(5, slow=10)])
    verdict = judge_latency(quiet, 7, T0, now, 0.005, 240, min_requests=50)
    assert not verdict.breach and "too little traffic" in verdict.reason
    assert verdict.share_over == 1.0  # slow, but 10 requests a round prove nothing
    # one good round in the window: not sustained
    mixed = _scrapes_from([{"pod-a": {}}, *_slow_rounds(3, slow=50, fast=50),
                           {"pod-a": {0.002: 100}}, *_slow_rounds(1, slow=50, fast=50)])
    verdict = judge_latency(mixed, 7, T0, now, 0.005, 240, min_requests=50)
    assert not verdict.breach and "3 of 4 rounds" in verdict.reason and "not sustained" in verdict.reason


def test_only_the_promoted_versions_requests_count():
    # the pod answered with v6 before the promotion of v7, slowly; v7 is fast
    rounds = [{"pod-a": {}}]
    scrapes = []
    for i, s in enumerate(_scrapes_from([*rounds, *_slow_rounds(5, slow=0, fast=100)])):
        old = hist({0.0075: 100 * (i + 1)})
        scrapes.append(Scrape(s.at, s.instance, s.started_at, 7, {**s.score_latency, 6: old}))
    verdict = judge_latency(scrapes, 7, T0, T0 - 30 + 300, 0.005, 240, min_requests=50)
    assert not verdict.breach and verdict.share_over == 0.0 and verdict.requests == 400
    assert judge_latency(scrapes, 6, T0, T0 - 30 + 300, 0.005, 240, min_requests=50).breach


def test_pods_sum_per_round_and_new_pods_count_from_zero():
    # pod-b starts after the promotion: its first scrape counts in full
    increments = [{"pod-a": {}}, *[{"pod-a": {0.0075: 1, 0.002: 99},
                                    "pod-b": {0.0075: 1, 0.002: 99}} for _ in range(4)]]
    scrapes = _scrapes_from(increments, started={"pod-b": T0 + 5})
    rounds = rounds_for_version(scrapes, 7, T0)
    assert [r.latency.total for r in rounds] == [200, 200, 200, 200]
    # each pod alone is at 1%, together too: no breach; one more slow request a round: breach
    assert not judge_latency(scrapes, 7, T0, T0 + 210, 0.005, 240 - 30, min_requests=50).breach
    increments[2]["pod-b"] = {0.0075: 2, 0.002: 98}
    for inc in increments[1:]:
        inc["pod-b"] = {0.0075: 2, 0.002: 98}
    verdict = judge_latency(_scrapes_from(increments, started={"pod-b": T0 + 5}), 7, T0, T0 + 210,
                            0.005, 210, min_requests=50)
    assert verdict.breach and verdict.share_over == pytest.approx(0.015)


def test_bad_arguments_fail_clearly():
    scrapes = _scrapes_from([{"pod-a": {}}, *_slow_rounds(4, slow=5, fast=95)])
    with pytest.raises(ValueError, match="not a bucket edge"):
        judge_latency(scrapes, 7, T0, T0 + 300, 0.006, 240)
    with pytest.raises(ValueError, match="quantile"):
        judge_latency(scrapes, 7, T0, T0 + 300, 0.005, 240, quantile=99)


def test_cursor_round_trip_and_pruning():
    scrapes = _scrapes_from([{"pod-a": {}, "pod-b": {}}, *_slow_rounds(5, slow=2, fast=98)])
    assert loads(dumps(scrapes)) == scrapes
    kept = keep_recent(scrapes, T0 + 150)
    # pod-b was last seen in the first round: its baseline stays
    assert [(s.at, s.instance) for s in kept] == [
        (T0 - 30, "pod-b"), (T0 + 90, "pod-a"), (T0 + 150, "pod-a"), (T0 + 210, "pod-a"),
        (T0 + 270, "pod-a")]
    full = judge_latency(scrapes, 7, T0, T0 + 270, 0.005, 120, min_requests=50, min_rounds=2)
    pruned = judge_latency(kept, 7, T0, T0 + 270, 0.005, 120, min_requests=50, min_rounds=2)
    assert full == pruned and full.breach


def test_parse_metrics_reads_2xx_score_latency_by_version():
    text = """\
# HELP quant_scorer_request_duration_seconds x
# TYPE quant_scorer_request_duration_seconds histogram
quant_scorer_request_duration_seconds_bucket{le="0.005",model_version="3",route="/score",status="200"} 4.0
quant_scorer_request_duration_seconds_bucket{le="+Inf",model_version="3",route="/score",status="200"} 5.0
quant_scorer_request_duration_seconds_count{model_version="3",route="/score",status="200"} 5.0
quant_scorer_request_duration_seconds_sum{model_version="3",route="/score",status="200"} 0.02
quant_scorer_request_duration_seconds_bucket{le="0.005",model_version="3",route="/score",status="422"} 9.0
quant_scorer_request_duration_seconds_bucket{le="+Inf",model_version="3",route="/score",status="422"} 9.0
quant_scorer_request_duration_seconds_bucket{le="0.005",model_version="3",route="/health",status="200"} 7.0
quant_scorer_request_duration_seconds_bucket{le="+Inf",model_version="3",route="/health",status="200"} 7.0
# HELP quant_scorer_model_version x
# TYPE quant_scorer_model_version gauge
quant_scorer_model_version 3.0
# HELP process_start_time_seconds x
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.7e+09
"""
    scrape = parse_metrics(text, "10.0.0.5:8080", 123.0)
    assert scrape.served_version == 3 and scrape.started_at == 1.7e9
    assert scrape.score_latency == {3: Histogram((0.005, math.inf), (4.0, 5.0))}


def test_monitor_tick_keeps_what_the_next_verdict_needs():
    from quant_assets.serving.latency import LatencyPolicy, monitor_tick

    policy = LatencyPolicy(bound_s=0.005, window_s=180, min_requests=50, min_rounds=3)
    scrapes = _scrapes_from([{"pod-a": {}}, *_slow_rounds(6, slow=3, fast=97)])
    cursor: list = []
    verdicts = []
    for s in scrapes:  # one pod: one scrape per tick
        verdict, cursor = monitor_tick(cursor, [s], 7, T0, s.at, policy)
        verdicts.append(verdict.breach)
        assert len(cursor) <= 5  # the window's 3 rounds, its baseline, and now
        assert json.loads(json.dumps(cursor)) == cursor
    # breach once the 180 s window lies after the promotion and holds 3 busy rounds
    assert verdicts == [False, False, False, False, True, True, True]
    with pytest.raises(ValueError, match="not a bucket edge"):
        LatencyPolicy(bound_s=0.0045)
