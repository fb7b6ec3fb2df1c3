"""Scorer payload validation (quant_assets.serving.scoring.rows_to_matrix) and the
realised-vs-backtest verdict (quant_assets.serving.monitor)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from quant_assets.performance import sharpe
from quant_assets.serving.monitor import rolling_sharpe, signal_health
from quant_assets.serving.scoring import PayloadError, rows_to_matrix

COLS = ["a", "b", "c"]


def test_rows_and_columns_give_the_same_matrix_in_model_order():
    rows = {"rows": [{"c": 3, "a": 1.5, "b": None}, {"a": -1.0, "b": 2.0, "c": float("nan")}]}
    cols = {"columns": {"b": [None, 2.0], "a": [1.5, -1.0], "c": [3, float("nan")]}}
    X = rows_to_matrix(json.loads(json.dumps(rows)), COLS)  # NaN survives JSON as NaN
    Y = rows_to_matrix(cols, COLS)
    assert X.dtype == np.float64 and X.shape == (2, 3)
    np.testing.assert_array_equal(X, Y)
    assert X[0].tolist()[::2] == [1.5, 3.0] and math.isnan(X[0, 1]) and math.isnan(X[1, 2])


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"rows": [{"a": 1, "b": 2}]}, 422, "row 0: missing feature columns ['c']"),
        ({"rows": [{"a": 1, "b": 2, "c": 3, "d": 4}]}, 422, "unknown columns ['d']"),
        ({"rows": [{"a": 1, "b": 2, "c": 3}, {"a": 1, "b": "x", "c": 3}]}, 422, "row 1, column 'b': expected a number or null, got str"),
        ({"rows": [{"a": True, "b": 2, "c": 3}]}, 422, "row 0, column 'a': expected a number or null, got bool"),
        ({"rows": [{"a": 1, "b": 2, "c": float("inf")}]}, 422, "row 0, column 'c': infinite"),
        ({"columns": {"a": [1, 2], "b": [1, 2], "c": [1, -float("inf")]}}, 422, "row 1, column 'c': infinite"),
        ({"columns": {"a": [1, 2], "b": [1], "c": [1, 2]}}, 422, "columns ['b'] differ in length"),
        ({"columns": {"a": [1], "b": [2]}}, 422, "columns: missing feature columns ['c']"),
        ({"rows": []}, 422, "non-empty"),
        ({"rows": [1]}, 422, "row 0: expected an object"),
        ({"rows": [], "columns": {}}, 400, "exactly one of"),
        ([1, 2], 400, "JSON object"),
        ({"rows": [{"a": 10**400, "b": 2, "c": 3}]}, 422, "does not fit a float64"),
    ],
)
def test_bad_payloads_are_refused_with_the_row_and_column(payload, status, needle):
    with pytest.raises(PayloadError) as err:
        rows_to_matrix(payload, COLS)
    assert err.value.status == status
    assert needle in str(err.value)


def test_row_limit():
    with pytest.raises(PayloadError) as err:
        rows_to_matrix({"rows": [{"a": 1, "b": 1, "c": 1}] * 3}, COLS, max_rows=2)
    assert err.value.status == 413


def test_rolling_sharpe_matches_stats():
    r = np.random.default_rng(0).normal(0.001, 0.01, 60)
    out = rolling_sharpe(r, 21)
    assert out.shape == (40,)
    assert out[0] == sharpe(r[:21]) and out[-1] == sharpe(r[-21:])


def test_signal_health_breach_halves_capital():
    rng = np.random.default_rng(1)
    backtest = rng.normal(0.0005, 0.01, 500)
    ref = rolling_sharpe(backtest)
    mean, sd = ref.mean(), ref.std(ddof=1)
    calm = signal_health(backtest[-21:], backtest)
    assert calm.z_score == pytest.approx((sharpe(backtest[-21:]) - mean) / sd)
    assert abs(calm.z_score) <= 2 and not calm.breach and calm.capital_multiplier == 1.0
    # a steady loss: far below every backtest window
    losing = -0.004 + rng.normal(0, 0.002, 21)
    bad = signal_health(losing, backtest)
    assert bad.breach and bad.z_score < -2 and bad.capital_multiplier == 0.5
    assert "beyond 2.0 sd" in bad.status
    short = signal_health(losing[:10], backtest)
    assert not short.breach and short.capital_multiplier == 1.0 and "insufficient live" in short.status
    with pytest.raises(ValueError, match="reduced_multiplier"):
        signal_health(losing, backtest, reduced_multiplier=2.0)
