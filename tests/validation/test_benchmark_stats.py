"""Benchmark-relative statistics (stats.active_return, tracking_error, information_ratio,
beta, alpha, benchmark_summary, rolling_beta) against empyrical-reloaded 0.7.1 and quantstats
0.0.86, hypothesis properties, and the benchmark choice (validation.benchmark).

Conventions, and where the references differ:

* beta: cov(r, b) / var(b). empyrical.beta (population moments) and quantstats greeks'
  beta (np.cov, ddof=1) agree, since the ddof cancels; we equal both.
* alpha: empyrical.alpha compounds the mean daily alpha, (1 + a) ** 252 - 1; quantstats'
  greeks reports the arithmetic a * 252. We follow empyrical, as every performance metric of
  stats.py does, and check the quantstats number through that identity.
* information ratio: empyrical.excess_sharpe and quantstats.stats.information_ratio are
  both per period, mean(r - b) / std(r - b, ddof=1). We annualise by sqrt(252) so that it is
  on the scale of the headline's annualised Sharpe ratio (and IR = active return / tracking
  error with both annualised).
* tracking error: neither library exports one in these versions; ours is
  empyrical.annual_volatility of the active return (std ddof=1 x sqrt(252)), pyfolio's
  definition.
"""

from __future__ import annotations

import datetime as dt
import math

import empyrical
import numpy as np
import pandas as pd
import polars as pl
import pytest
import quantstats as qs
from hypothesis import assume, example, given, settings
from hypothesis import strategies as hst
from hypothesis.extra.numpy import arrays

from quant_assets.validation import stats as st
from quant_assets.validation.benchmark import Benchmark, benchmark_for_book, is_dollar_neutral

N = 500


def _series(seed: int = 0, n: int = N):
    rng = np.random.default_rng(seed)
    b = rng.normal(0.0004, 0.01, n)
    r = 0.35 * b + rng.normal(0.0002, 0.006, n)
    idx = pd.bdate_range("2022-01-03", periods=n)
    return r, b, pd.Series(r, idx), pd.Series(b, idx)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beta_equals_empyrical_and_quantstats(seed):
    """empyrical.beta and quantstats.stats.greeks()['beta'] (same definition)."""
    r, b, rs, bs = _series(seed)
    assert st.beta(r, b) == pytest.approx(empyrical.beta(r, b), rel=1e-12)
    assert st.beta(r, b) == pytest.approx(qs.stats.greeks(rs, bs)["beta"], rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alpha_equals_empyrical_and_relates_to_quantstats(seed):
    """empyrical.alpha exactly (compounded); quantstats greeks' arithmetic alpha a * 252
    through (1 + a) ** 252 - 1. A constant per-period risk-free rate as empyrical's."""
    r, b, rs, bs = _series(seed)
    assert st.alpha(r, b) == pytest.approx(empyrical.alpha(r, b), rel=1e-12)
    assert st.alpha(r, b, risk_free=0.0001) == pytest.approx(
        empyrical.alpha(r, b, risk_free=0.0001), rel=1e-12
    )
    qs_alpha = qs.stats.greeks(rs, bs)["alpha"]
    assert st.alpha(r, b) == pytest.approx((1 + qs_alpha / 252) ** 252 - 1, rel=1e-12)
    # the conventions differ by more than rounding: the test can tell them apart
    assert abs(st.alpha(r, b) - qs_alpha) > 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_information_ratio_and_tracking_error(seed):
    """IR = empyrical.excess_sharpe * sqrt(252) = quantstats information_ratio * sqrt(252);
    TE = empyrical.annual_volatility(r - b); active return = mean(r - b) * 252 = IR * TE."""
    r, b, rs, bs = _series(seed)
    ir = st.information_ratio(r, b)
    assert ir == pytest.approx(empyrical.excess_sharpe(r, b) * math.sqrt(252), rel=1e-12)
    assert ir == pytest.approx(qs.stats.information_ratio(rs, bs) * math.sqrt(252), rel=1e-12)
    te = st.tracking_error(r, b)
    assert te == pytest.approx(empyrical.annual_volatility(r - b), rel=1e-12)
    assert st.active_return(r, b) == pytest.approx(np.mean(r - b) * 252, rel=1e-12)
    assert st.active_return(r, b) == pytest.approx(ir * te, rel=1e-12)


def test_correlation_squared_is_quantstats_r_squared():
    r, b, rs, bs = _series(3)
    assert st.correlation(r, b) ** 2 == pytest.approx(qs.stats.r_squared(rs, bs), rel=1e-12)


def test_missing_days_are_left_out_pairwise_as_quantstats_greeks():
    """A NaN on either side drops the day from every statistic: quantstats' greeks pairs
    observations the same way; empyrical.beta with NaNs on the strategy side agrees too."""
    r, b, rs, bs = _series(4)
    r2, b2 = r.copy(), b.copy()
    r2[[3, 50, 51]] = np.nan
    b2[[10, 400]] = np.nan
    g = qs.stats.greeks(pd.Series(r2, rs.index), pd.Series(b2, bs.index))
    assert st.beta(r2, b2) == pytest.approx(g["beta"], rel=1e-12)
    ok = ~(np.isnan(r2) | np.isnan(b2))
    assert st.beta(r2, b2) == st.beta(r2[ok], b2[ok])
    assert st.information_ratio(r2, b2) == st.information_ratio(r2[ok], b2[ok])
    r3 = r.copy()
    r3[[7, 90]] = np.nan
    assert st.beta(r3, b) == pytest.approx(empyrical.beta(r3, b), rel=1e-12)
    summary = st.benchmark_summary(r2, b2)
    assert summary["n_obs_benchmark"] == ok.sum()
    assert summary["benchmark_cagr"] == st.cagr(b2[ok])


def test_rolling_beta_equals_empyrical_roll_beta_and_quantstats():
    """empyrical.roll_beta(window=63) on the full windows; quantstats rolling_greeks' beta."""
    r, b, rs, bs = _series(5)
    ours = st.rolling_beta(r, b, 63)
    assert np.isnan(ours[:62]).all()
    np.testing.assert_allclose(ours[62:], empyrical.roll_beta(r, b, 63), rtol=1e-10)
    np.testing.assert_allclose(ours[62:], qs.stats.rolling_greeks(rs, bs, 63)["beta"].to_numpy()[62:], rtol=1e-10)


def test_rolling_volatility_equals_quantstats():
    r, _, rs, _ = _series(6)
    ours = st.rolling_volatility(r, 63)
    ref = qs.stats.rolling_volatility(rs, rolling_period=63).to_numpy()
    assert np.isnan(ours[:62]).all()
    np.testing.assert_allclose(ours[62:], ref[62:], rtol=1e-12)


def test_tail_risk_equals_empyrical():
    r, *_ = _series(7)
    assert st.value_at_risk(r) == empyrical.value_at_risk(r)
    assert st.conditional_value_at_risk(r) == pytest.approx(empyrical.conditional_value_at_risk(r), rel=1e-15)
    assert st.value_at_risk(r, 0.01) == empyrical.value_at_risk(r, 0.01)


def test_degenerate_inputs():
    r = np.array([0.01, -0.02, 0.03])
    cash = np.zeros(3)
    # cash: no variance, beta and alpha undefined; IR is the strategy's Sharpe, TE its vol
    assert math.isnan(st.beta(r, cash)) and math.isnan(st.alpha(r, cash))
    assert st.information_ratio(r, cash) == pytest.approx(st.sharpe(r))
    assert st.tracking_error(r, cash) == pytest.approx(st.annual_volatility(r))
    # against itself: zero tracking error, IR undefined, beta 1, alpha 0
    assert st.tracking_error(r, r) == 0.0 and math.isnan(st.information_ratio(r, r))
    assert st.beta(r, r) == pytest.approx(1.0) and st.alpha(r, r) == pytest.approx(0.0, abs=1e-15)
    # too short
    assert math.isnan(st.beta([0.01], [0.02])) and math.isnan(st.tracking_error([0.01], [0.02]))
    assert math.isnan(st.active_return([], []))
    with pytest.raises(ValueError, match="aligned by date"):
        st.beta(r, r[:2])
    with pytest.raises(ValueError, match="1-D"):
        st.information_ratio(np.zeros((2, 2)), np.zeros((2, 2)))


# ------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------

_returns = arrays(np.float64, hst.integers(5, 80), elements=hst.floats(-0.2, 0.2, allow_nan=False))


def _dispersed(x: np.ndarray) -> bool:
    return x.std() > 1e-6


@settings(max_examples=60, deadline=None)
@given(_returns)
def test_beta_of_a_series_to_itself_is_one(b):
    assume(_dispersed(b))
    assert st.beta(b, b) == pytest.approx(1.0, rel=1e-9)
    assert st.tracking_error(b, b) == 0.0


@settings(max_examples=60, deadline=None)
@given(_returns, hst.floats(-3, 3), hst.floats(-0.01, 0.01))
def test_beta_recovers_an_exact_linear_relation(b, slope, intercept):
    """r = intercept + slope * b: beta = slope, alpha = (1 + intercept) ** 252 - 1."""
    assume(_dispersed(b))
    r = intercept + slope * b
    assert st.beta(r, b) == pytest.approx(slope, abs=1e-7)
    assert st.alpha(r, b) == pytest.approx((1 + intercept) ** 252 - 1, rel=1e-6, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(_returns, _returns, hst.floats(0.01, 100))
def test_information_ratio_is_scale_invariant(r, b, k):
    """Scaling both series by k > 0 scales the active return and the tracking error alike."""
    n = min(r.size, b.size)
    r, b = r[:n], b[:n]
    assume(np.std(r - b) > 1e-6)
    assert st.information_ratio(k * r, k * b) == pytest.approx(st.information_ratio(r, b), rel=1e-9)
    assert st.tracking_error(k * r, k * b) == pytest.approx(k * st.tracking_error(r, b), rel=1e-9)
    # the identity of the annualisation: IR = active return / TE
    assert st.information_ratio(r, b) == pytest.approx(st.active_return(r, b) / st.tracking_error(r, b), rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(_returns, _returns, hst.floats(-0.01, 0.01))
# the case CI found (beta -12,500 from a benchmark dispersed by 4e-6)
@example(np.array([0.125, 0.0, 0.0, 0.0, 0.0]), np.array([0.0, 1e-5, 1e-5, 1e-5, 1e-5]), 0.005377909062529848)
def test_beta_ignores_constant_shifts(r, b, c):
    n = min(r.size, b.size)
    r, b = r[:n], b[:n]
    assume(_dispersed(b))
    # relative as well as absolute: the shift's rounding error scales with |beta|, which a
    # barely dispersed benchmark makes large (CI found beta -12,500 off by 1.4e-9, 1e-13 rel)
    assert st.beta(r + c, b) == pytest.approx(st.beta(r, b), rel=1e-9, abs=1e-9)
    assert st.beta(r, b + c) == pytest.approx(st.beta(r, b), rel=1e-9, abs=1e-9)


# ------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------


def _frame(days, values):
    return pl.DataFrame({"date": days, "return": values}, schema={"date": pl.Date, "return": pl.Float64})


def test_benchmark_alignment_by_date():
    days = [dt.date(2024, 1, d) for d in (2, 3, 4, 5)]
    bench = Benchmark("market", _frame([days[3], days[0], days[1]], [0.3, 0.1, 0.2]), "market")
    aligned = bench.aligned(pl.Series(days))
    np.testing.assert_array_equal(aligned[[0, 1, 3]], [0.1, 0.2, 0.3])
    assert np.isnan(aligned[2])  # no benchmark return that day: left out, not a flat day
    np.testing.assert_array_equal(Benchmark.cash().aligned(pl.Series(days)), np.zeros(4))
    with pytest.raises(ValueError, match="duplicated dates"):
        Benchmark("x", _frame([days[0], days[0]], [0.1, 0.2]), "market")
    with pytest.raises(ValueError, match="missing columns"):
        Benchmark("x", pl.DataFrame({"date": days}), "index")
    with pytest.raises(ValueError, match="kind"):
        Benchmark("x", _frame(days, [0.0] * 4), "equal-weight")


def test_benchmark_for_book():
    days = [dt.date(2024, 1, 2), dt.date(2024, 1, 3)]
    market = Benchmark("market factor", _frame(days, [0.01, -0.01]), "market")
    index = Benchmark("S&P 500", _frame(days, [0.02, -0.02]), "index")
    neutral = ([0.01, -0.02], [1.0, 1.0])
    long_only = ([1.0, 1.0], [1.0, 1.0])
    assert is_dollar_neutral(*neutral) and not is_dollar_neutral(*long_only)
    assert not is_dollar_neutral([0.0], [0.0])  # no book at all: not read as neutral
    chosen = benchmark_for_book(*neutral, market=market, index=index)
    assert chosen.name == "S&P 500" and "real data" in chosen.note
    chosen = benchmark_for_book(*neutral, market=market)
    assert chosen.name == "market factor" and "dollar-neutral" in chosen.note and "beta" in chosen.note
    assert benchmark_for_book(*long_only, market=market).note.startswith("book with net market exposure")
    cash = benchmark_for_book(*neutral)
    assert cash.kind == "cash" and "cash" in cash.note
