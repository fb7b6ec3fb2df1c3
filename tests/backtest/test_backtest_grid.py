"""Tests of the parameter-grid engine against slow pure-Python references of the spec."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from quant_assets.backtest import (
    CostModel,
    GridResult,
    breakout_grid,
    grid_nb,
    param_product,
    returns_matrix,
    run_backtest,
    scenario_backtest,
    zmr_grid,
)

BPY = 252 * 390


def random_walk(seed: int, n: int, level: float = 100.0, vol: float = 2e-3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return level * np.exp(np.cumsum(rng.normal(0.0, vol, n)))


def ref_zscore(x, lookback):
    """Exact two-pass z-score (math.fsum); NaN where undefined or std = 0."""
    out = [math.nan] * len(x)
    for t in range(lookback - 1, len(x)):
        window = [float(v) for v in x[t - lookback + 1 : t + 1]]
        mean = math.fsum(window) / lookback
        var = math.fsum((v - mean) ** 2 for v in window) / (lookback - 1)
        if var > 0.0 and max(window) != min(window):
            out[t] = (window[-1] - mean) / math.sqrt(var)
    return out


def ref_channel(x, lookback):
    out = [math.nan] * len(x)
    for t in range(lookback, len(x)):
        hi = max(x[t - lookback : t])
        lo = min(x[t - lookback : t])
        if hi > lo:
            out[t] = (x[t] - 0.5 * (hi + lo)) / (0.5 * (hi - lo))
    return out


def ref_stats(x, positions, cost_bps, bars_per_year):
    """Return series, equity and summary statistics exactly as the spec states them."""
    cost = cost_bps / 1e4
    r = []
    for t in range(1, len(x)):
        p0, p1 = positions[t - 1], positions[t]
        r.append(p0 * (x[t] / x[t - 1] - 1.0) - cost * abs(p1 - p0))
    equity = [1.0]
    for value in r:
        equity.append(equity[-1] * (1.0 + value))
    r = np.array(r)
    std = r.std() if len(r) else 0.0
    sharpe = 0.0 if std == 0 else r.mean() / std * math.sqrt(bars_per_year)
    peak, mdd = 1.0, 0.0
    for e in equity:
        peak = max(peak, e)
        mdd = max(mdd, 1.0 - e / peak)
    trades = sum(1 for t in range(1, len(x)) if positions[t - 1] == 0 and positions[t] != 0)
    return equity[-1] - 1.0, sharpe, mdd, trades


def ref_zmr_positions(x, lookback, entry, exit, stop, start=1):
    z = ref_zscore(x, lookback)
    pos = [0] * len(x)
    p = 0
    for t in range(start, len(x)):
        zt = z[t]
        if not math.isnan(zt):
            if p == 0:
                if -stop <= zt < -entry:
                    p = 1
                elif entry < zt <= stop:
                    p = -1
            elif p == 1:
                if zt > -exit or zt < -stop:
                    p = 0
            elif zt < exit or zt > stop:
                p = 0
        pos[t] = p
    return pos, z


def ref_breakout_positions(x, lookback, entry, exit, stop, start=1):
    u = ref_channel(x, lookback)
    pos = [0] * len(x)
    p, price_in = 0, math.nan
    for t in range(max(lookback, start), len(x)):
        ut = u[t]
        if p == 0:
            if ut > entry:
                p, price_in = 1, x[t]
            elif ut < -entry:
                p, price_in = -1, x[t]
        elif p == 1:
            if ut < -exit or x[t] <= price_in * (1.0 - stop):
                p = 0
        elif ut > exit or x[t] >= price_in * (1.0 + stop):
            p = 0
        pos[t] = p
    return pos, u


def assert_matches(result, expected, index=None):
    total, sharpe, mdd, trades = expected
    pick = (lambda a: a) if index is None else (lambda a: a[index])
    assert pick(result.n_trades) == trades
    assert pick(result.total_return) == pytest.approx(total, rel=1e-9, abs=1e-12)
    assert pick(result.sharpe) == pytest.approx(sharpe, rel=1e-7, abs=1e-9)
    assert pick(result.max_drawdown) == pytest.approx(mdd, rel=1e-9, abs=1e-12)


# -- rolling statistics ------------------------------------------------------------------------


@pytest.mark.parametrize("lookback", [2, 3, 17, 100])
def test_rolling_zscore_matches_two_pass(lookback):
    x = random_walk(1, 3000)
    z = grid_nb.rolling_zscore_nb(x, lookback)
    ref = np.array(ref_zscore(x, lookback))
    assert np.array_equal(np.isnan(z), np.isnan(ref))
    assert np.nanmax(np.abs(z - ref)) < 1e-9


def test_rolling_zscore_does_not_drift_over_a_long_series():
    # High price level, tiny moves: the worst case for running sums of x and x^2.
    x = random_walk(2, 200_000, level=5e4, vol=1e-4)
    lookback = 60
    z = grid_nb.rolling_zscore_nb(x, lookback)
    for t in (lookback - 1, 1000, 99_999, 150_001, 199_999):
        window = x[t - lookback + 1 : t + 1]
        exact = (x[t] - window.mean()) / window.std(ddof=1)
        assert abs(z[t] - exact) < 1e-9


def test_constant_window_has_no_zscore():
    x = np.r_[np.full(10, 5.0), 5.5, np.full(10, 5.0)]
    z = grid_nb.rolling_zscore_nb(x, 4)
    ref = np.array(ref_zscore(x, 4))
    assert np.array_equal(np.isnan(z), np.isnan(ref))
    assert np.isnan(z[3:10]).all() and np.isnan(z[-7:]).all()


@pytest.mark.parametrize("lookback", [2, 5, 33])
def test_channel_position_matches_reference(lookback):
    x = np.round(random_walk(3, 2000), 1)  # rounded: ties and flat channels happen
    u = grid_nb.channel_position_nb(x, lookback)
    ref = np.array(ref_channel(list(x), lookback))
    assert np.array_equal(np.isnan(u), np.isnan(ref))
    assert np.nanmax(np.abs(u - ref)) < 1e-12


# -- z-score mean reversion --------------------------------------------------------------------


def test_zmr_hand_case():
    # L = 3: z = -0.87 at bar 2 (no entry), -1.15 at bar 3 -> long, +0.61 at bar 4 -> flat.
    x = np.array([4.0, 4.2, 3.9, 1.0, 4.0, 4.0])
    res = zmr_grid(x, [3], [1.0], [0.5], [3.0], cost_bps=10.0, bars_per_year=1.0)
    cost = 10.0 / 1e4
    r = [0.0, 0.0, -cost, 4.0 / 1.0 - 1.0 - cost, 0.0]  # r_1..r_5
    equity = np.cumprod(1.0 + np.array(r))
    assert res.n_trades == 1
    assert res.total_return == pytest.approx(equity[-1] - 1.0, rel=1e-14)
    assert res.max_drawdown == pytest.approx(cost, rel=1e-12)
    assert res.sharpe == pytest.approx(np.mean(r) / np.std(r), rel=1e-12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n_bars=st.integers(2, 400),
    params=st.lists(
        st.tuples(
            st.integers(2, 30),
            st.floats(-0.5, 3.0),
            st.floats(-1.0, 2.0),
            st.floats(0.5, 4.0),
        ),
        min_size=1,
        max_size=6,
    ),
    cost_bps=st.sampled_from([0.0, 5.0, 25.0]),
)
def test_zmr_matches_reference(seed, n_bars, params, cost_bps):
    x = random_walk(seed, n_bars, vol=5e-3)
    lookback, entry, exit, stop = (np.array(v) for v in zip(*params, strict=True))
    expected = []
    for L, e, xx, s in params:
        pos, z = ref_zmr_positions(list(x), L, e, xx, s)
        # Thresholds hit within rounding could go either way; such draws are skipped.
        zs = np.array([v for v in z if not math.isnan(v)])
        for level in (e, xx, s):
            assume(zs.size == 0 or np.min(np.abs(np.abs(zs) - abs(level))) > 1e-8)
        expected.append(ref_stats(list(x), pos, cost_bps, BPY))
    res = zmr_grid(x, lookback, entry, exit, stop, cost_bps=cost_bps)
    assert isinstance(res, GridResult) and res.total_return.shape == (len(params),)
    for k, exp in enumerate(expected):
        assert_matches(res, exp, k)


def test_zmr_grid_2d_order_threads_and_chunks_do_not_change_results():
    x = np.stack([random_walk(s, 3000, vol=3e-3) for s in range(3)])
    g = param_product(
        lookback=[5, 12, 30], entry=[0.5, 1.0, 1.5], exit=[0.0, 0.25, 0.5], stop=[2.0, 3.0, 9.0]
    )  # 81 sets: 27 per lookback, several tasks
    base = zmr_grid(x, **g)
    assert base.sharpe.shape == (3, 81)
    for i in range(3):
        one = zmr_grid(x[i], **g)
        for name in GridResult._fields:
            assert np.array_equal(getattr(one, name), getattr(base, name)[i])
    perm = np.random.default_rng(0).permutation(81)
    shuffled = zmr_grid(x, **{k: v[perm] for k, v in g.items()})
    for name in GridResult._fields:
        assert np.array_equal(getattr(shuffled, name), getattr(base, name)[:, perm])
    # Many sets per lookback: groups split into several chunks (and threads) by the API.
    wide = param_product(lookback=[7], entry=np.linspace(0.2, 2.0, 10), exit=[0.0, 0.5], stop=[1.5, 2.5, 4.0, 8.0])
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one_thread = zmr_grid(x, **wide)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two_threads = zmr_grid(x, **wide)
    finally:
        numba.set_num_threads(before)
    for name in GridResult._fields:
        assert np.array_equal(getattr(one_thread, name), getattr(two_threads, name))
    single = zmr_grid(x, [7], [wide["entry"][5]], [wide["exit"][5]], [wide["stop"][5]])
    for name in GridResult._fields:
        assert np.array_equal(getattr(single, name)[:, 0], getattr(one_thread, name)[:, 5])


def test_zmr_flat_series_and_short_series():
    flat = zmr_grid(np.full(50, 3.0), [5], [1.0], [0.5], [3.0])
    assert flat.n_trades == 0 and flat.total_return == 0 and flat.sharpe == 0
    assert flat.max_drawdown == 0
    short = zmr_grid(np.array([1.0, 2.0]), [10], [1.0], [0.5], [3.0])
    assert short.n_trades == 0 and short.sharpe == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lookback": [5, 6]}, "same length"),
        ({"lookback": [1]}, ">= 2"),
        ({"lookback": [5.0]}, "integers"),
        ({"entry": [np.nan]}, "entry must be finite"),
        ({"stop": [np.inf]}, "stop must be finite"),
        ({"exit": [[0.5]]}, "1-D"),
        ({"close": np.r_[1.0, np.nan, 2.0]}, "bar 1"),
        ({"close": np.array([[1.0, 2.0], [1.0, -2.0]])}, r"\(instrument 1, bar 1\)"),
        ({"close": np.ones((2, 2, 2))}, "1-D"),
        ({"close": np.ones(1)}, ">= 2 bars"),
        ({"cost_bps": -1.0}, "cost_bps"),
        ({"bars_per_year": 0}, "bars_per_year"),
    ],
)
def test_zmr_validation(kwargs, message):
    args = {"close": np.linspace(1, 2, 20), "lookback": [5], "entry": [1.0], "exit": [0.5], "stop": [3.0]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        zmr_grid(**args)


def test_unordered_thresholds_are_allowed():
    x = random_walk(7, 500, vol=5e-3)
    res = zmr_grid(x, [10, 10], [-1.0, 3.0], [2.0, -1.0], [0.5, 1.0])
    for k, (e, xx, s) in enumerate([(-1.0, 2.0, 0.5), (3.0, -1.0, 1.0)]):
        pos, _ = ref_zmr_positions(list(x), 10, e, xx, s)
        assert_matches(res, ref_stats(list(x), pos, 5.0, BPY), k)


# -- breakout ----------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n_bars=st.integers(2, 400),
    params=st.lists(
        st.tuples(
            st.integers(2, 40),
            st.floats(0.0, 1.5),
            st.floats(-1.0, 1.0),
            st.floats(0.001, 0.05),
        ),
        min_size=1,
        max_size=6,
    ),
    cost_bps=st.sampled_from([0.0, 5.0]),
)
def test_breakout_matches_reference(seed, n_bars, params, cost_bps):
    x = random_walk(seed, n_bars, vol=5e-3)
    lookback, entry, exit, stop = (np.array(v) for v in zip(*params, strict=True))
    res = breakout_grid(x, lookback, entry, exit, stop, cost_bps=cost_bps)
    for k, (L, e, xx, s) in enumerate(params):
        pos, u = ref_breakout_positions(list(x), L, e, xx, s)
        us = np.array([v for v in u if not math.isnan(v)])
        for level in (e, xx):
            assume(us.size == 0 or np.min(np.abs(np.abs(us) - abs(level))) > 1e-9)
        assert_matches(res, ref_stats(list(x), pos, cost_bps, BPY), k)


def test_breakout_hand_case():
    # L = 2: bar 2 closes above the previous two -> long at 12; the stop of 10% fires at 10.5.
    x = np.array([10.0, 11.0, 12.0, 11.5, 10.5, 10.6])
    res = breakout_grid(x, [2], [1.0], [5.0], [0.1], cost_bps=0.0, bars_per_year=1.0)
    assert res.n_trades == 1
    assert res.total_return == pytest.approx(10.5 / 12.0 - 1.0, rel=1e-14)
    assert res.max_drawdown == pytest.approx(1.0 - 10.5 / 12.0, rel=1e-12)


# -- portfolio scenarios -----------------------------------------------------------------------


def test_scenario_backtest_equals_run_backtest():
    rng = np.random.default_rng(5)
    n_rows, n = 60, 7
    prices = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, (n_rows, n)), axis=0))
    prices[40:, 2] = np.nan  # a delisting
    tradable = np.isfinite(prices)
    bank = rng.normal(0, 0.2, (3, n_rows, n))
    index = np.array([0, 1, 2, 1, 0])
    costs = [CostModel(commission_bps=c) for c in (0.0, 5.0, 10.0, 2.0, 30.0)]
    res = scenario_backtest(prices, bank, tradable, index, costs)
    assert (res.failed_row == -1).all()
    for s in range(index.shape[0]):
        ref = run_backtest(prices, bank[index[s]], tradable, costs[s])
        assert np.array_equal(res.net_return[s], ref.net_return)
        assert res.equity[s] == ref.end_state.equity
    with pytest.raises(ValueError, match="bank_index"):
        scenario_backtest(prices, bank, tradable, np.array([3]), costs[:1])


# -- warm-up start and per-bar return series --------------------------------------------------


@pytest.mark.parametrize("family", ["zmr", "breakout"])
@pytest.mark.parametrize("start", [1, 7, 60, 199])
def test_start_warms_up_then_trades_from_flat(family, start):
    x = random_walk(5, 400, vol=4e-3)
    g = param_product(lookback=[3, 10, 40], entry=[0.3, 1.0], exit=[0.0, 0.5], stop=[0.05, 3.0])
    grid, ref = (zmr_grid, ref_zmr_positions) if family == "zmr" else (breakout_grid, ref_breakout_positions)
    res = grid(x, **g, cost_bps=3.0, bars_per_year=252.0, start=start)
    for k in range(g["lookback"].shape[0]):
        pos, _ = ref(x, int(g["lookback"][k]), g["entry"][k], g["exit"][k], g["stop"][k], start)
        assert not any(pos[:start])
        # the evaluated series begins flat at bar start-1
        expected = ref_stats(x[start - 1 :], pos[start - 1 :], 3.0, 252.0)
        assert_matches(res, expected, k)
    if start == 1:
        plain = grid(x, **g, cost_bps=3.0, bars_per_year=252.0)
        for name in GridResult._fields:
            assert np.array_equal(getattr(plain, name), getattr(res, name))


@pytest.mark.parametrize("family", ["zmr", "breakout"])
def test_return_series_is_the_equal_weight_mean_and_matches_the_summary(family):
    x = np.stack([random_walk(s, 1500, vol=3e-3) for s in range(3)])
    g = param_product(lookback=[5, 20], entry=[0.5, 1.5], exit=[0.0, 0.5], stop=[0.02, 3.0])
    grid = zmr_grid if family == "zmr" else breakout_grid
    start = 100
    plain = grid(x, **g, start=start)
    res, series = grid(x, **g, start=start, return_series=True)
    assert series.shape == (16, 1500)
    for name in GridResult._fields:  # the series option does not change the summary
        assert np.array_equal(getattr(plain, name), getattr(res, name))
    assert not series[:, :start].any()
    per_instrument = []
    for i in range(3):
        one, s_i = grid(x[i], **g, start=start, return_series=True)
        # compounding the recorded returns gives the reported total return (equity to
        # 1e-12 relative: the kernels compound with one rounding per bar, fma(E, r, E),
        # numpy's product of 1 + r with two)
        assert np.allclose(np.prod(1.0 + s_i, axis=1), 1.0 + one.total_return, rtol=1e-12, atol=0)
        per_instrument.append(s_i)
    # summed in instrument order, then divided: bit-identical to the same sum in numpy
    assert np.array_equal(series, (per_instrument[0] + per_instrument[1] + per_instrument[2]) / 3)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        _, one_thread = grid(x, **g, start=start, return_series=True)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(one_thread, series)
    matrix = returns_matrix(series, start)
    assert matrix.shape == (1400, 16) and matrix.flags.c_contiguous
    assert np.array_equal(matrix[:, 3], series[3, start:])


def test_start_and_returns_matrix_validation():
    x = random_walk(1, 50)
    g = dict(lookback=[5], entry=[1.0], exit=[0.0], stop=[3.0])
    for bad in (0, 50, 2.0, True):
        with pytest.raises(ValueError, match="start"):
            zmr_grid(x, **g, start=bad)
    with pytest.raises(ValueError, match=r"\(P, T\)"):
        returns_matrix(np.zeros(5))


def test_scenario_backtest_equals_run_backtest_on_every_branch():
    """Untradable names with a price (kept, drifting), delistings while held, names listed
    late, an impact scenario and a wiped-out one, against ``run_backtest`` value for value."""
    rng = np.random.default_rng(9)
    n_rows, n = 120, 23
    prices = 20 * np.exp(np.cumsum(rng.normal(0, 0.02, (n_rows, n)), axis=0))
    prices[70:, 3] = np.nan  # delisted while held
    prices[:30, 5] = np.nan  # listed late
    tradable = np.isfinite(prices)
    tradable[rng.random((n_rows, n)) < 0.1] = False  # priced but untradable (halts)
    volume = np.where(tradable, 1e5, np.nan)
    bank = rng.normal(0, 0.15, (2, n_rows, n))
    bank[1] *= 30.0  # leveraged: wipes out
    costs = [CostModel(commission_bps=3.0), CostModel(half_spread_bps=1.0, impact_coef=0.2),
             CostModel(commission_bps=1.0)]
    index = np.array([0, 0, 1])
    res = scenario_backtest(prices, bank, tradable, index, costs, volume=volume)
    for s in range(2):
        ref = run_backtest(prices, bank[index[s]], tradable, costs[s], volume=volume)
        assert res.failed_row[s] == -1
        assert np.array_equal(res.net_return[s], ref.net_return)
        assert res.equity[s] == ref.end_state.equity
    failed = res.failed_row[2]
    assert failed > 0 and np.isnan(res.net_return[2, failed:]).all()
    ref = run_backtest(prices[:failed], bank[1, :failed], tradable[:failed], costs[2])
    assert np.array_equal(res.net_return[2, :failed], ref.net_return)
    assert res.equity[2] == ref.end_state.equity
    with pytest.raises(ValueError, match="wiped out"):
        run_backtest(prices, bank[1], tradable, costs[2])
    # groups of four linear scenarios (padding, order, threads) change nothing
    many = np.array([1, 0, 0, 1, 0, 0, 0])
    many_costs = [costs[2], costs[0], costs[1], costs[2], costs[0], costs[0], costs[0]]
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one_thread = scenario_backtest(prices, bank, tradable, many, many_costs, volume=volume)
    finally:
        numba.set_num_threads(before)
    grouped = scenario_backtest(prices, bank, tradable, many, many_costs, volume=volume)
    for a, b in zip(one_thread, grouped, strict=True):
        assert np.array_equal(a, b, equal_nan=True)
    for s, k in ((1, 0), (2, 1), (0, 2)):
        assert np.array_equal(grouped.net_return[s], res.net_return[k], equal_nan=True)
        assert grouped.equity[s] == res.equity[k] and grouped.failed_row[s] == res.failed_row[k]
