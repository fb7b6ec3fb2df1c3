"""Tests of the target-weight builders."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_assets.backtest import long_short_quantile


def reference_row(scores, tradable, quantile, scheme, gross, cap):
    """One row, the slow way: sort, select, then solve the cap by bisection on the scale."""
    n = len(scores)
    eligible = [i for i in range(n) if tradable[i] and math.isfinite(scores[i])]
    out = np.zeros(n)
    if len(eligible) < 2:
        return out
    ordered = sorted(eligible, key=lambda i: (scores[i], i))
    k = min(max(1, int(math.floor(quantile * len(eligible) + 1e-9))), len(eligible) // 2)
    shorts, longs = ordered[:k], ordered[-k:]
    if scheme == "equal":
        raw_long = {i: 1.0 for i in longs}
        raw_short = {i: 1.0 for i in shorts}
    else:
        median = float(np.median([scores[i] for i in eligible]))
        raw_long = {i: scores[i] - median for i in longs}
        raw_short = {i: median - scores[i] for i in shorts}
        if sum(raw_long.values()) == 0:
            raw_long = {i: 1.0 for i in longs}
        if sum(raw_short.values()) == 0:
            raw_short = {i: 1.0 for i in shorts}
    budget = gross / 2
    if cap is not None:
        budget = min(
            budget,
            cap * sum(v > 0 for v in raw_long.values()),
            cap * sum(v > 0 for v in raw_short.values()),
        )

    def fill(raw):
        if cap is None:
            total = sum(raw.values())
            return {i: v * budget / total for i, v in raw.items()}
        lo, hi = 0.0, 1.0
        while sum(min(cap, hi * v) for v in raw.values()) < budget:
            hi *= 2
        for _ in range(200):
            mid = (lo + hi) / 2
            if sum(min(cap, mid * v) for v in raw.values()) < budget:
                lo = mid
            else:
                hi = mid
        return {i: min(cap, hi * v) for i, v in raw.items()}

    for i, w in fill(raw_long).items():
        out[i] += w
    for i, w in fill(raw_short).items():
        out[i] -= w
    return out


@st.composite
def score_panels(draw):
    n_rows = draw(st.integers(1, 6))
    n = draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # Few distinct values so that ties are common.
    scores = rng.integers(-3, 4, (n_rows, n)).astype(float) + draw(
        st.sampled_from([0.0, 1.0])
    ) * rng.normal(size=(n_rows, n))
    scores[rng.random((n_rows, n)) < 0.15] = np.nan
    tradable = rng.random((n_rows, n)) > 0.15
    return scores, tradable


@settings(max_examples=200, deadline=None)
@given(
    score_panels(),
    st.sampled_from([0.1, 0.2, 0.3, 0.5]),
    st.sampled_from(["equal", "score"]),
    st.sampled_from([1.0, 2.0]),
    st.sampled_from([None, 0.05, 0.2, 0.4]),
)
def test_matches_reference(panel, quantile, scheme, gross, cap):
    scores, tradable = panel
    weights = long_short_quantile(scores, tradable, quantile, scheme, gross, cap)
    expected = np.array(
        [reference_row(s, m, quantile, scheme, gross, cap) for s, m in zip(scores, tradable, strict=True)]
    ).reshape(scores.shape)
    np.testing.assert_allclose(weights, expected, rtol=0, atol=1e-12)
    # Properties that hold on every row.
    assert np.all(weights[~(tradable & np.isfinite(scores))] == 0.0)
    np.testing.assert_allclose(weights.sum(axis=1), 0.0, atol=1e-12)
    assert np.all(np.abs(weights).sum(axis=1) <= gross + 1e-12)
    if cap is not None:
        assert np.all(np.abs(weights) <= cap)


def test_equal_scheme_and_tie_breaking_by_column():
    scores = np.array([[1.0, 1.0, 1.0, 1.0, 5.0, -5.0]])
    tradable = np.ones_like(scores, dtype=bool)
    weights = long_short_quantile(scores, tradable, quantile=0.34, gross=2.0)
    # n = 6, k = 2. Order (score, column): 5, 0, 1, 2, 3, 4 -> shorts 5 and 0, longs 3 and 4.
    np.testing.assert_array_equal(weights, [[-0.5, 0.0, 0.0, 0.5, 0.5, -0.5]])


def test_score_scheme_weights_by_distance_from_median():
    scores = np.array([[4.0, 0.0, 1.0, 2.0, 3.0, -6.0]])
    weights = long_short_quantile(scores, np.ones((1, 6), bool), quantile=0.34, scheme="score")
    # median 1.5; longs 4 (2.5) and 3 (1.5); shorts -6 (7.5) and 0 (1.5).
    np.testing.assert_allclose(
        weights, [[0.5 * 2.5 / 4, -0.5 * 1.5 / 9, 0.0, 0.0, 0.5 * 1.5 / 4, -0.5 * 7.5 / 9]]
    )


def test_cap_redistributes_within_side():
    scores = np.array([[10.0, 1.0, 1.0, -1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0]])
    weights = long_short_quantile(
        scores, np.ones((1, 10), bool), quantile=0.3, scheme="score", gross=1.0, max_weight=0.2
    )
    # Longs 10, 1, 1 (raw 10, 1, 1) -> 10 pinned at 0.2, the others share 0.3 equally.
    np.testing.assert_allclose(weights[0, :3], [0.2, 0.15, 0.15])
    np.testing.assert_allclose(weights[0, 3:6], [-1 / 6] * 3)


def test_binding_cap_shrinks_both_sides_equally():
    scores = np.array([[3.0, 2.0, 1.0, 0.0]])
    weights = long_short_quantile(scores, np.ones((1, 4), bool), quantile=0.5, max_weight=0.1)
    np.testing.assert_allclose(weights, [[0.1, 0.1, -0.1, -0.1]])


def test_rows_with_too_few_names_are_zero():
    scores = np.array([[1.0, np.nan, 2.0], [1.0, 2.0, 3.0], [np.nan, np.nan, np.nan]])
    tradable = np.array([[True, True, False], [True, True, True], [True, True, True]])
    weights = long_short_quantile(scores, tradable)
    np.testing.assert_array_equal(weights[[0, 2]], 0.0)
    np.testing.assert_allclose(weights[1], [-0.5, 0.0, 0.5])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tradable": np.ones((2, 2), bool)}, ValueError, "shape"),
        ({"tradable": np.ones((2, 3))}, TypeError, "boolean"),
        ({"quantile": 0.6}, ValueError, "quantile"),
        ({"quantile": 0.0}, ValueError, "quantile"),
        ({"scheme": "rank"}, ValueError, "scheme"),
        ({"gross": -1.0}, ValueError, "gross"),
        ({"max_weight": 0.0}, ValueError, "max_weight"),
        ({"scores": np.ones(3)}, ValueError, "2-D"),
    ],
)
def test_bad_input_is_named(kwargs, error, match):
    args = {"scores": np.ones((2, 3)), "tradable": np.ones((2, 3), bool)} | kwargs
    with pytest.raises(error, match=match):
        long_short_quantile(**args)
