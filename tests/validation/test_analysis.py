"""The tear sheet's analyses (validation.analysis) against quantstats 0.0.86 and
empyrical-reloaded 0.7.1 where they have the same section (drawdown periods, yearly returns),
against slow per-day references written with scipy (quantile returns, IC decay, score
autocorrelation), and against the backtest kernel itself (the long and short legs add up to
its gross return)."""

from __future__ import annotations

import empyrical
import numpy as np
import pandas as pd
import polars as pl
import pytest
import quantstats as qs
from hypothesis import given, settings
from hypothesis import strategies as hst
from hypothesis.extra.numpy import arrays
from scipy import stats as sps

from quant_assets.backtest.portfolio import CostModel, backtest_frame, run_backtest
from quant_assets.validation import analysis as an
from quant_assets.validation import regimes
from quant_assets.validation import stats as st


def _days(n: int, start: str = "2021-06-01") -> pl.Series:
    return pl.Series("date", list(pd.bdate_range(start, periods=n).date), dtype=pl.Date)


def _panel(n_days=120, n_names=25, seed=0, edge=0.0):
    """Predictions and next-day asset returns; ``edge`` plants score -> return on day t+2."""
    rng = np.random.default_rng(seed)
    days = _days(n_days)
    ids = [f"I{i:02d}" for i in range(n_names)]
    score = rng.normal(size=(n_days, n_names))
    ret = rng.normal(0, 0.01, size=(n_days, n_names))
    ret[2:] += edge * score[:-2] * 0.01
    long = lambda m, name: pl.DataFrame(  # noqa: E731
        {"date": np.repeat(days.to_numpy(), n_names), "instrument_id": ids * n_days, name: m.ravel()}
    ).with_columns(pl.col("date").cast(pl.Date))
    preds, rets = long(score, "score"), long(ret, "ret")
    # holes: a missing score and a missing return
    preds = preds.filter(~((pl.col("instrument_id") == "I03") & (pl.col("date") == days[5])))
    rets = rets.filter(~((pl.col("instrument_id") == "I04") & (pl.col("date") == days[9])))
    return preds, rets, days


# ------------------------------------------------------------------------------------------
# Drawdowns and calendar returns (quantstats / empyrical)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_drawdown_periods_equal_quantstats_drawdown_details(seed):
    """quantstats.stats.drawdown_details(to_drawdown_series(r)): same periods, start, valley
    (our trough), end (last day under water), days (our calendar_days) and max drawdown (%)."""
    rng = np.random.default_rng(seed)
    days = _days(400)
    r = rng.normal(0.0004, 0.01, 400)
    if seed == 3:
        r[0] = -0.05  # a loss on the first day is a drawdown (wealth anchored at 1)
    ours = an.drawdown_periods(days, r)
    rs = pd.Series(r, index=pd.DatetimeIndex(days.to_list()))
    ref = qs.stats.drawdown_details(qs.stats.to_drawdown_series(rs))
    ref = ref.sort_values(["max drawdown", "start"]).reset_index(drop=True)
    assert ours.height == len(ref) > 3
    assert [d.isoformat() for d in ours["start"]] == ref["start"].tolist()
    assert [d.isoformat() for d in ours["trough"]] == ref["valley"].tolist()
    assert [d.isoformat() for d in ours["end"]] == ref["end"].tolist()
    assert ours["calendar_days"].to_list() == ref["days"].tolist()
    np.testing.assert_allclose(ours["depth"].to_numpy() * 100, ref["max drawdown"].to_numpy(), rtol=1e-12)
    assert ours["depth"][0] == pytest.approx(st.max_drawdown(r), rel=1e-12)
    # recovery: the day after the end, or null for the last one still under water
    dd = an.drawdown(r)
    for row in ours.iter_rows(named=True):
        if row["recovery"] is None:
            assert row["end"] == days[-1] and dd[-1] < 0
        else:
            assert dd[days.to_list().index(row["recovery"])] == 0.0


def test_drawdown_periods_edge_cases():
    days = _days(4)
    assert an.drawdown_periods(days, [0.01, 0.02, 0.0, 0.01]).is_empty()
    assert an.drawdown_periods(days[:0], []).is_empty()
    top = an.drawdown_periods(days, [-0.1, 0.2, -0.05, 0.01], top=1)
    assert top.height == 1 and top["depth"][0] == pytest.approx(-0.1) and top["days"][0] == 1
    assert top["recovery"][0] == days[1]
    with pytest.raises(ValueError, match="dates"):
        an.drawdown_periods(days, [0.1])


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, hst.integers(1, 120), elements=hst.floats(-0.3, 0.3, allow_nan=False)))
def test_drawdown_periods_cover_every_day_under_water(r):
    days = _days(r.size)
    periods = an.drawdown_periods(days, r)
    under = int((an.drawdown(r) < 0).sum())
    assert periods["days"].sum() == under
    if under:
        assert periods["depth"].min() == pytest.approx(st.max_drawdown(r), rel=1e-12, abs=1e-15)
        assert (periods["start"] <= periods["trough"]).all() and (periods["trough"] <= periods["end"]).all()


def test_yearly_returns_equal_empyrical_aggregate_returns():
    rng = np.random.default_rng(4)
    days = _days(700, "2021-03-01")
    r, b = rng.normal(0.0005, 0.01, 700), rng.normal(0.0002, 0.01, 700)
    frame = pl.DataFrame({"date": days, "return": r, "benchmark": b})
    ours = an.yearly_returns(frame, ("return", "benchmark"))
    idx = pd.DatetimeIndex(days.to_list())
    for col, values in (("return", r), ("benchmark", b)):
        ref = empyrical.aggregate_returns(pd.Series(values, idx), "yearly")
        assert ours["year"].to_list() == list(ref.index)
        np.testing.assert_allclose(ours[col].to_numpy(), ref.to_numpy(), rtol=1e-12)


def test_return_distribution():
    rng = np.random.default_rng(5)
    r = rng.standard_t(4, 500) * 0.01
    d = an.return_distribution(np.r_[r, np.nan])
    assert d["n_obs"] == 500 and d["worst"] == r.min() and d["best"] == r.max()
    assert d["var_5"] == empyrical.value_at_risk(r) and d["cvar_5"] == pytest.approx(empyrical.conditional_value_at_risk(r))
    assert d["excess_kurtosis"] == pytest.approx(sps.kurtosis(r, fisher=True, bias=True))
    empty = an.return_distribution([])
    assert empty["n_obs"] == 0 and np.isnan(empty["mean"]) and np.isnan(empty["var_5"])


# ------------------------------------------------------------------------------------------
# Signal analyses (slow references)
# ------------------------------------------------------------------------------------------


def test_forward_returns_take_the_lag_th_trading_day_after_the_score():
    days = _days(5)
    preds = pl.DataFrame({"date": [days[1], days[4]], "instrument_id": ["A", "A"], "score": [1.0, 2.0]})
    rets = pl.DataFrame({"date": days, "instrument_id": ["A"] * 5, "ret": [0.0, 0.1, 0.2, 0.3, 0.4]})
    out = an.forward_returns(preds, rets, lag=2)
    # the score of day 1 meets the return of day 3; day 4 has no day 6: left out
    assert out.select("date", "target", "fwd_return").rows() == [(days[1], days[3], 0.3)]
    assert an.forward_returns(preds, rets, lag=1)["fwd_return"].to_list() == [0.2]
    with pytest.raises(ValueError, match="lag"):
        an.forward_returns(preds, rets, lag=0)


def _slow_fwd(preds: pl.DataFrame, rets: pl.DataFrame, lag: int) -> dict:
    cal = sorted(set(rets["date"].to_list()))
    ret = {(d, i): v for d, i, v in rets.iter_rows()}
    out = {}
    for d, i, s in preds.iter_rows():
        later = [c for c in cal if c > d]
        if len(later) >= lag and (later[lag - 1], i) in ret:
            out[(d, i)] = (s, later[lag - 1], ret[(later[lag - 1], i)])
    return out


@pytest.mark.parametrize("lag", [1, 2])
def test_quantile_returns_equal_a_slow_reference(lag):
    preds, rets, _ = _panel(40, 13, seed=1)
    ours = an.quantile_returns(preds, rets, n_quantiles=5, lag=lag)
    fwd = _slow_fwd(preds, rets, lag)
    by_day: dict = {}
    for (d, i), (s, target, r) in fwd.items():
        by_day.setdefault(d, []).append((s, i, target, r))
    expected = {}
    for _, rows in by_day.items():
        rows.sort()
        n = len(rows)
        for k, (_, _, target, r) in enumerate(rows):
            expected.setdefault((target, k * 5 // n + 1), []).append(r)
    got = {(d, q): (v, c) for d, q, v, c in ours.iter_rows()}
    assert set(got) == set(expected)
    for key, values in expected.items():
        assert got[key][0] == pytest.approx(np.mean(values), rel=1e-12) and got[key][1] == len(values)
    # every day holds 13 (or 12) names split 3/3/2/3/2-like: sizes differ by at most one
    sizes = ours.group_by("date").agg(pl.col("n_names").max() - pl.col("n_names").min())
    assert sizes[sizes.columns[1]].max() <= 1


def test_quantile_spread_sees_a_planted_edge():
    preds, rets, _ = _panel(150, 40, seed=2, edge=1.0)
    q = an.quantile_returns(preds, rets, 5, lag=2)
    mean = q.group_by("quantile").agg(pl.col("return").mean()).sort("quantile")["return"].to_numpy()
    assert mean[-1] > mean[0] and np.all(np.diff(mean) > -0.002)
    none = an.quantile_returns(preds, rets, 5, lag=1)  # the edge is on day t+2 only
    m1 = none.group_by("quantile").agg(pl.col("return").mean()).sort("quantile")["return"].to_numpy()
    assert abs(m1[-1] - m1[0]) < mean[-1] - mean[0]


def test_ic_decay_equals_per_day_spearman():
    preds, rets, _ = _panel(60, 20, seed=3, edge=1.0)
    decay = an.ic_decay(preds, rets, max_lag=4)
    assert decay["lag"].to_list() == [1, 2, 3, 4]
    for lag in (1, 2, 4):
        fwd = _slow_fwd(preds, rets, lag)
        per_day: dict = {}
        for (d, _), (s, _, r) in fwd.items():
            per_day.setdefault(d, ([], []))
            per_day[d][0].append(s)
            per_day[d][1].append(r)
        ics = [sps.spearmanr(s, r).statistic for s, r in per_day.values()]
        row = decay.filter(pl.col("lag") == lag).row(0, named=True)
        assert row["rank_ic"] == pytest.approx(np.mean(ics), rel=1e-10)
        assert row["n_days"] == len(ics)
        assert row["t_stat"] == pytest.approx(np.mean(ics) / (np.std(ics, ddof=1) / np.sqrt(len(ics))), rel=1e-9)
    # the planted edge is at lag 2
    assert decay["rank_ic"][1] == decay["rank_ic"].max() and decay["rank_ic"][1] > 0.3


def test_score_autocorrelation_equals_per_day_spearman():
    preds, _, days = _panel(12, 15, seed=4)
    # make scores persistent so the statistic is far from 0
    preds = preds.sort("instrument_id", "date").with_columns(
        score=pl.col("score").cum_sum().over("instrument_id")
    )
    ours = an.score_autocorrelation(preds, lag=1)
    table = {(d, i): s for d, i, s in preds.iter_rows()}
    expected = []
    for prev, day in zip(days[:-1], days[1:], strict=True):
        common = sorted(i for (d, i) in table if d == day and (prev, i) in table)
        expected.append(sps.spearmanr([table[(day, i)] for i in common], [table[(prev, i)] for i in common]).statistic)
    assert ours["date"].to_list() == days[1:].to_list()
    np.testing.assert_allclose(ours["autocorrelation"].to_numpy(), expected, rtol=1e-12)
    assert ours["autocorrelation"].mean() > 0.5
    assert an.score_autocorrelation(preds.filter(pl.col("date") == days[0])).is_empty()


# ------------------------------------------------------------------------------------------
# Trading: legs (against the kernel) and cost attribution
# ------------------------------------------------------------------------------------------


def _kernel_run(seed=6, t=60, n=12):
    rng = np.random.default_rng(seed)
    days = _days(t)
    ids = [f"N{i:02d}" for i in range(n)]
    prices = 100 * np.cumprod(1 + rng.normal(0, 0.02, (t, n)), axis=0)
    raw = rng.normal(size=(t, n))
    targets = np.where(raw > 0.8, 0.1, np.where(raw < -0.8, -0.1, 0.0))
    tradable = np.ones((t, n), dtype=bool)
    res = run_backtest(prices, targets, tradable, CostModel(commission_bps=1.0, half_spread_bps=2.0))
    long_prices = pl.DataFrame(
        {"date": np.repeat(days.to_numpy(), n), "instrument_id": ids * t, "close": prices.ravel()}
    ).with_columns(pl.col("date").cast(pl.Date))
    # every name is tradable every day, so the post-trade weights of close t are the targets
    positions = pl.DataFrame(
        {"date": np.repeat(days.to_numpy(), n), "instrument_id": ids * t, "weight": targets.ravel()}
    ).with_columns(pl.col("date").cast(pl.Date))
    return backtest_frame(res, days), positions, regimes.instrument_returns(long_prices, "close")


def test_legs_add_up_to_the_kernel_gross_return():
    """backtest.portfolio step 1: gross_return_t = sum_i w_i,t-1 * ret_i,t with the post-trade
    weights of close t-1; split by the sign of w it is long_return + short_return."""
    bt, positions, asset_returns = _kernel_run()
    legs = an.legs(bt, positions, asset_returns)
    assert legs["date"].to_list() == bt["date"].to_list()
    np.testing.assert_allclose(
        (legs["long_return"] + legs["short_return"]).to_numpy(), bt["gross_return"].to_numpy(), rtol=0, atol=1e-15
    )
    assert legs["long_return"][0] == 0.0  # day 0 starts in cash
    assert (legs["long_return"] != 0).sum() > 40 and (legs["short_return"] != 0).sum() > 40
    # the backtest's own columns win when it has them
    with_cols = bt.with_columns(long_return=pl.lit(1.0), short_return=pl.lit(-1.0))
    assert an.legs(with_cols)["long_return"].to_list() == [1.0] * bt.height
    assert an.legs(bt) is None  # neither columns nor positions
    summary = an.leg_summary(legs)
    assert summary["leg"].to_list() == ["long", "short", "long + short"]
    assert summary["annual_return"][2] == pytest.approx(summary["annual_return"][0] + summary["annual_return"][1])
    assert summary["sharpe"][2] == pytest.approx(st.sharpe(bt["gross_return"].to_numpy()), rel=1e-9)


def test_leg_returns_deterministic_and_empty():
    _, positions, asset_returns = _kernel_run(seed=7)
    a, b = an.leg_returns(positions, asset_returns), an.leg_returns(positions.reverse(), asset_returns.reverse())
    assert a.equals(b)  # row order of the inputs does not change a single bit
    assert an.leg_returns(positions.head(0), asset_returns).is_empty()
    with pytest.raises(ValueError, match="positions is missing"):
        an.leg_returns(positions.drop("weight"), asset_returns)


def test_cost_attribution():
    """Costs are commission + half spread = 3 bps per unit of turnover, charged on the
    pre-trade equity: cost_t = turnover_t * 3e-4 * (1 + gross_t) (backtest.portfolio)."""
    bt, *_ = _kernel_run(seed=8)
    ca = an.cost_attribution(bt)
    g, c, n = (bt[k].to_numpy() for k in ("gross_return", "cost", "net_return"))
    np.testing.assert_allclose(n, g - c, atol=1e-17)
    assert ca["annual_cost"] == pytest.approx(c.mean() * 252, rel=1e-12)
    assert ca["gross_cagr"] == st.cagr(g) and ca["net_cagr"] == st.cagr(n)
    assert ca["gross_cagr"] > ca["net_cagr"] and ca["gross_sharpe"] > ca["net_sharpe"]
    assert ca["cost_per_turnover_bps"] == pytest.approx(3.0, rel=0.02)
    assert ca["total_cost"] == pytest.approx(c.sum())
    with pytest.raises(ValueError, match="backtest is missing"):
        an.cost_attribution(bt.drop("cost"))


def test_forward_returns_with_no_data():
    empty = pl.DataFrame(schema={"date": pl.Date, "instrument_id": pl.Utf8, "score": pl.Float64})
    rets = pl.DataFrame(schema={"date": pl.Date, "instrument_id": pl.Utf8, "ret": pl.Float64})
    assert an.quantile_returns(empty, rets).is_empty()
    decay = an.ic_decay(empty, rets, 3)
    assert decay["n_days"].to_list() == [0, 0, 0] and decay["rank_ic"].is_nan().all()
    assert an.score_autocorrelation(empty).is_empty()
