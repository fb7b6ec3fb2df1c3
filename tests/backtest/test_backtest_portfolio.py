"""Tests of the portfolio backtest against hand-computed cases and a loop-by-loop reference."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quant_assets.backtest import (
    BacktestResult,
    CostModel,
    PortfolioState,
    backtest_frame,
    run_backtest,
    to_matrix,
)

SERIES = (
    "gross_return",
    "cost",
    "borrow_cost",
    "net_return",
    "turnover",
    "gross_exposure",
    "net_exposure",
    "equity",
)


class WipedOut(Exception):
    pass


def reference_backtest(
    prices, targets, tradable, costs, volume, equity, weights=None, last=None,
    borrow_bps=None, max_turnover=None,
):
    """Slow pure-Python statement of the conventions in portfolio.py, one name at a time.

    The turnover limit is found by bisection on the step k (not by the kernel's closed
    form), the borrow charge from the annual rate name by name."""
    n_rows, n = prices.shape
    borrow_bps = np.zeros((n_rows, n)) if borrow_bps is None else np.broadcast_to(
        borrow_bps, (n_rows, n))
    positions = []
    weights = [0.0] * n if weights is None else [float(x) for x in weights]
    last = [math.nan] * n if last is None else [float(x) for x in last]
    rate = (costs.commission_bps + costs.half_spread_bps) / 1e4
    out = {name: [] for name in SERIES}
    contributions = []
    for t in range(n_rows):
        price = [float(x) for x in prices[t]]
        rets = []
        for i in range(n):
            if weights[i] != 0.0 and not math.isnan(price[i]):
                rets.append(price[i] / last[i] - 1.0)
            else:
                rets.append(0.0)  # not held, or delisted: no return over the missing day
        gross = 0.0
        for i in range(n):
            gross += weights[i] * rets[i]
        if 1.0 + gross <= 0.0:
            raise WipedOut(t)
        borrows = [
            -weights[i] * float(borrow_bps[t, i]) / 1e4 / 252 if weights[i] < 0 else 0.0
            for i in range(n)
        ]
        drifted = [weights[i] * (1.0 + rets[i]) / (1.0 + gross) for i in range(n)]
        equity_before = equity * (1.0 + gross)

        wanted = []
        for i in range(n):
            if tradable[t, i]:
                wanted.append(float(targets[t, i]))
            elif math.isnan(price[i]) and drifted[i] != 0.0:
                wanted.append(0.0)
            else:
                wanted.append(drifted[i])
        step = 1.0
        if max_turnover is not None and _traded(1.0, wanted, drifted, tradable[t]) > max_turnover:
            lo, hi = 0.0, 1.0
            for _ in range(200):
                mid = (lo + hi) / 2
                if _traded(mid, wanted, drifted, tradable[t]) <= max_turnover:
                    lo = mid
                else:
                    hi = mid
            step = lo
        moved = _moved(step, wanted, drifted, tradable[t])
        new_weights, name_costs, turnover, impact = [], [], 0.0, 0.0
        for i in range(n):
            target = moved[i]
            trade = abs(target - drifted[i])
            turnover += trade
            name_impact = 0.0
            if costs.impact_coef > 0 and trade > 0 and tradable[t, i]:
                participation = trade * equity_before / (price[i] * float(volume[t, i]))
                name_impact = costs.impact_coef * trade * math.sqrt(participation)
            impact += name_impact
            name_costs.append(trade * rate + name_impact)
            new_weights.append(target)
        cost = (turnover * rate + impact) * (1.0 + gross)
        borrow = sum(borrows)
        net = gross - cost - borrow
        equity = equity * (1.0 + net)
        if equity <= 0.0:
            raise WipedOut(t)
        contributions.append(
            [weights[i] * rets[i] - borrows[i] - name_costs[i] * (1.0 + gross) for i in range(n)]
        )
        weights = new_weights
        positions.append(list(weights))
        last = [price[i] if not math.isnan(price[i]) else last[i] for i in range(n)]
        for name, value in zip(
            SERIES,
            (gross, cost, borrow, net, turnover, sum(abs(x) for x in weights), sum(weights), equity),
            strict=True,
        ):
            out[name].append(value)
    arrays = {name: np.array(values, dtype=np.float64) for name, values in out.items()}
    arrays["positions"] = np.array(positions).reshape(n_rows, n)
    return arrays, np.array(contributions).reshape(n_rows, n), np.array(weights), equity, last


def _moved(k, wanted, drifted, tradable_row):
    """Tradable names move the fraction k of the way to their targets; others go at once."""
    return [
        drifted[i] + k * (wanted[i] - drifted[i]) if tradable_row[i] else wanted[i]
        for i in range(len(wanted))
    ]


def _traded(k, wanted, drifted, tradable_row):
    return sum(abs(m - d) for m, d in zip(_moved(k, wanted, drifted, tradable_row), drifted, strict=True))


@st.composite
def markets(draw, max_rows=25, max_cols=6):
    n_rows = draw(st.integers(1, max_rows))
    n = draw(st.integers(1, max_cols))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rets = rng.uniform(-0.15, 0.15, (n_rows, n))
    prices = 50.0 * np.exp(np.cumsum(np.log1p(rets), axis=0))
    for i in range(n):
        start = int(rng.integers(0, n_rows)) if rng.random() < 0.3 else 0
        end = int(rng.integers(start + 1, n_rows + 1)) if rng.random() < 0.4 else n_rows
        prices[:start, i] = np.nan  # listed later
        prices[end:, i] = np.nan  # delisted
    prices[rng.random((n_rows, n)) < 0.05] = np.nan  # missing prices while listed
    tradable = np.isfinite(prices) & (rng.random((n_rows, n)) > 0.2)
    targets = rng.uniform(-1.0, 1.0, (n_rows, n))
    targets[rng.random((n_rows, n)) < 0.3] = 0.0
    targets *= 2.0 / np.maximum(2.0, np.abs(targets).sum(axis=1, keepdims=True))
    targets[~tradable & (rng.random((n_rows, n)) < 0.5)] = np.nan  # ignored where untradable
    volume = rng.uniform(1e3, 1e5, (n_rows, n))
    costs = CostModel(
        commission_bps=draw(st.sampled_from([0.0, 1.0, 7.5])),
        half_spread_bps=draw(st.sampled_from([0.0, 2.0, 20.0])),
        impact_coef=draw(st.sampled_from([0.0, 0.05])),
    )
    options = {
        "borrow_bps": draw(st.sampled_from(
            [None, 50.0, rng.uniform(0, 2000, n), rng.uniform(0, 2000, (n_rows, n))]
        )),
        "max_turnover": draw(st.sampled_from([None, 0.05, 0.3, 1.0])),
    }
    return prices, targets, tradable, volume, costs, options


HYPOTHESIS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@HYPOTHESIS
@given(markets())
def test_matches_reference(market):
    prices, targets, tradable, volume, costs, options = market
    try:
        expected, contributions, end_weights, end_equity, end_last = reference_backtest(
            prices, targets, tradable, costs, volume, 1e6, **options
        )
    except WipedOut as wiped:
        with pytest.raises(ValueError, match=f"wiped out at row {wiped.args[0]}"):
            run_backtest(prices, targets, tradable, costs, volume, initial_equity=1e6, **options)
        return
    result = run_backtest(
        prices, targets, tradable, costs, volume, initial_equity=1e6, contributions=True,
        positions=True, **options,
    )
    for name in SERIES:
        scale = 1e6 if name == "equity" else 1.0
        np.testing.assert_allclose(
            getattr(result, name), expected[name], rtol=0, atol=1e-12 * scale, err_msg=name
        )
    np.testing.assert_allclose(result.positions, expected["positions"], rtol=0, atol=1e-12)
    if options["max_turnover"] is not None:
        # only a day with a forced close (a held name without a price) may exceed the limit
        held_before = np.vstack([np.zeros((1, prices.shape[1])), result.positions[:-1]]) != 0
        forced = (held_before & np.isnan(prices)).any(axis=1)
        assert np.all(result.turnover[~forced] <= options["max_turnover"] + 1e-12)
    if options["borrow_bps"] is None:
        assert np.all(result.borrow_cost == 0.0)
    np.testing.assert_allclose(result.contributions, contributions, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.contributions.sum(axis=1), result.net_return, atol=1e-12)
    np.testing.assert_allclose(result.end_state.weights, end_weights, rtol=0, atol=1e-12)
    assert result.end_state.equity == pytest.approx(end_equity, rel=1e-12)
    np.testing.assert_array_equal(result.end_state.last_prices, np.array(end_last))
    # borrow reduces the net return by exactly the charged amount
    np.testing.assert_array_equal(
        result.net_return, result.gross_return - result.cost - result.borrow_cost
    )


@HYPOTHESIS
@given(markets(max_rows=40), st.lists(st.integers(0, 40), max_size=4), st.booleans())
def test_restart_is_bit_identical(market, cuts, record):
    prices, targets, tradable, volume, costs, options = market
    n_rows = prices.shape[0]
    kwargs = {"volume": volume, "contributions": record, "positions": record,
              "max_turnover": options["max_turnover"]}
    borrow = options["borrow_bps"]
    try:
        whole = run_backtest(
            prices, targets, tradable, costs, initial_equity=1e6, borrow_bps=borrow, **kwargs
        )
    except ValueError:
        return  # wiped out: nothing to continue
    bounds = [0, *sorted({c for c in cuts if 0 < c < n_rows}), n_rows]
    state = PortfolioState.cash(prices.shape[1], 1e6)
    pieces = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        rows = slice(start, stop)
        piece = run_backtest(
            prices[rows],
            targets[rows],
            tradable[rows],
            costs,
            volume[rows],
            initial_state=state,
            contributions=record,
            positions=record,
            max_turnover=options["max_turnover"],
            borrow_bps=borrow[rows] if getattr(borrow, "ndim", 0) == 2 else borrow,
        )
        pieces.append(piece)
        state = piece.end_state
    for name in SERIES:
        joined = np.concatenate([getattr(p, name) for p in pieces])
        assert np.array_equal(joined, getattr(whole, name)), name
    if record:
        joined = np.concatenate([p.contributions for p in pieces])
        assert np.array_equal(joined, whole.contributions)
        joined = np.concatenate([p.positions for p in pieces])
        assert np.array_equal(joined, whole.positions)
    assert np.array_equal(state.weights, whole.end_state.weights)
    assert state.equity == whole.end_state.equity
    assert np.array_equal(state.last_prices, whole.end_state.last_prices, equal_nan=True)


def _two_names():
    prices = np.array([[100.0, 50.0], [110.0, 50.0], [121.0, 40.0]])
    targets = np.tile([0.5, -0.5], (3, 1))
    return prices, targets, np.ones((3, 2), dtype=bool)


def test_hand_computed_long_short():
    prices, targets, tradable = _two_names()
    result = run_backtest(prices, targets, tradable, CostModel(commission_bps=10.0))
    # Row 0 builds the book; row 1: A +10%; row 2: A +10%, B -20%.
    np.testing.assert_allclose(result.gross_return, [0.0, 0.05, 0.15], atol=1e-15)
    np.testing.assert_allclose(result.turnover, [1.0, 0.05 / 1.05, 0.2 / 1.15], atol=1e-15)
    np.testing.assert_allclose(result.cost, [0.001, 0.00005, 0.0002], atol=1e-15)
    np.testing.assert_allclose(result.net_return, [-0.001, 0.04995, 0.1498], atol=1e-15)
    np.testing.assert_allclose(result.equity, np.cumprod([0.999, 1.04995, 1.1498]), rtol=1e-15)
    np.testing.assert_allclose(result.gross_exposure, 1.0)
    np.testing.assert_allclose(result.net_exposure, 0.0, atol=1e-15)
    np.testing.assert_array_equal(result.end_state.weights, [0.5, -0.5])
    np.testing.assert_array_equal(result.end_state.last_prices, [121.0, 40.0])
    assert result.contributions is None


def test_delisted_name_is_closed_at_last_price():
    prices = np.array([[100.0, 50.0], [110.0, 55.0], [np.nan, 60.5], [np.nan, 60.5]])
    tradable = np.isfinite(prices)
    targets = np.where(tradable, 0.5, np.nan)
    result = run_backtest(prices, targets, tradable, CostModel(half_spread_bps=10.0))
    # Row 2: A has no price: return 0, closed; B +10% on its drifted weight 0.5.
    assert result.gross_return[2] == pytest.approx(0.05, abs=1e-15)
    drifted_a = 0.5 / 1.05
    drifted_b = 0.5 * 1.1 / 1.05
    assert result.turnover[2] == pytest.approx(drifted_a + abs(0.5 - drifted_b), abs=1e-15)
    assert result.cost[2] == pytest.approx(result.turnover[2] * 1e-3 * 1.05, abs=1e-15)
    np.testing.assert_array_equal(result.end_state.weights, [0.0, 0.5])
    assert result.end_state.last_prices[0] == 110.0  # last observed price is kept
    assert result.gross_exposure[2] == 0.5
    assert result.turnover[3] == 0.0 and result.gross_return[3] == 0.0


def test_untradable_target_is_ignored_and_drifted_weight_kept():
    prices, targets, tradable = _two_names()
    tradable[1, 0] = False
    targets[1, 0] = np.nan
    result = run_backtest(prices, targets, tradable, CostModel())
    # A drifted to 0.55 / 1.05 at row 1 and is kept; only B trades.
    assert result.turnover[1] == pytest.approx(0.5 - 0.5 / 1.05, abs=1e-15)
    assert result.gross_exposure[1] == pytest.approx(0.55 / 1.05 + 0.5, abs=1e-15)
    # A untradable with a price is not a delisting: it keeps earning at row 2.
    assert result.gross_return[2] == pytest.approx(0.55 / 1.05 * 0.1 + 0.5 * 0.2, abs=1e-15)


def test_turnover_limit_moves_part_of_the_way():
    prices, targets, tradable = _two_names()
    result = run_backtest(prices, targets, tradable, CostModel(), max_turnover=0.4, positions=True)
    # Row 0 from cash: the full trade is 1.0, so k = 0.4 of the way: [0.2, -0.2].
    np.testing.assert_allclose(result.positions[0], [0.2, -0.2], atol=1e-15)
    assert result.turnover[0] == pytest.approx(0.4, abs=1e-15)
    # Row 1: A +10% drifts the book to [0.22, -0.2] / 1.02; the rest of the way is 0.6-ish
    drifted = np.array([0.22, -0.2]) / 1.02
    wanted = np.abs(targets[1] - drifted).sum()
    k = 0.4 / wanted
    np.testing.assert_allclose(result.positions[1], drifted + k * (targets[1] - drifted), atol=1e-15)
    assert result.turnover[1] == pytest.approx(0.4, abs=1e-15)
    # without the limit the book reaches the targets at once
    free = run_backtest(prices, targets, tradable, CostModel(), positions=True)
    np.testing.assert_array_equal(free.positions, targets)


def test_borrow_cost_on_shorts():
    prices, targets, tradable = _two_names()
    plain = run_backtest(prices, targets, tradable, CostModel(commission_bps=1.0))
    charged = run_backtest(
        prices, targets, tradable, CostModel(commission_bps=1.0), borrow_bps=[30.0, 252.0]
    )
    # Only B is short (0.5 of equity at close t-1); 252 bps a year is 1 bp a day. Row 0
    # starts in cash: nothing held, nothing charged.
    np.testing.assert_allclose(charged.borrow_cost, [0.0, 0.5e-4, 0.5e-4], rtol=1e-14, atol=0)
    np.testing.assert_array_equal(charged.gross_return, plain.gross_return)
    np.testing.assert_array_equal(charged.cost, plain.cost)
    np.testing.assert_array_equal(
        charged.net_return, plain.net_return - charged.borrow_cost
    )
    assert charged.equity[-1] < plain.equity[-1]


def test_impact_cost_formula():
    prices = np.array([[20.0, 40.0]])
    volume = np.array([[1e4, 5e3]])
    targets = np.array([[0.25, -0.5]])
    costs = CostModel(commission_bps=1.0, impact_coef=0.1)
    result = run_backtest(prices, targets, np.ones((1, 2), bool), costs, volume, initial_equity=1e5)
    impact = 0.1 * 0.25 * math.sqrt(0.25 * 1e5 / 2e5) + 0.1 * 0.5 * math.sqrt(0.5 * 1e5 / 2e5)
    assert result.cost[0] == pytest.approx(0.75 * 1e-4 + impact, rel=1e-14)
    assert result.equity[0] == pytest.approx(1e5 * (1 - result.cost[0]), rel=1e-14)


def test_contributions_only_when_asked_and_deterministic():
    prices, targets, tradable = _two_names()
    first = run_backtest(prices, targets, tradable, CostModel(1.0, 1.0), contributions=True)
    second = run_backtest(prices, targets, tradable, CostModel(1.0, 1.0), contributions=True)
    assert first.contributions.shape == (3, 2)
    for name in SERIES:
        assert np.array_equal(getattr(first, name), getattr(second, name))
    np.testing.assert_allclose(first.contributions.sum(axis=1), first.net_return, atol=1e-16)


def test_empty_range_returns_initial_state():
    state = PortfolioState(np.array([0.5, 0.0]), 3.0, np.array([10.0, np.nan]))
    empty = np.zeros((0, 2))
    result = run_backtest(empty, empty, np.zeros((0, 2), bool), CostModel(), initial_state=state)
    assert len(result) == 0
    np.testing.assert_array_equal(result.end_state.weights, state.weights)
    assert result.end_state.equity == 3.0


def test_wiped_out_is_an_error():
    prices = np.array([[10.0], [30.0]])
    with pytest.raises(ValueError, match="wiped out at row 1"):
        run_backtest(prices, np.array([[-1.0], [-1.0]]), np.ones((2, 1), bool), CostModel())


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: a.update(target_weights=a["target_weights"][:, :1]), ValueError, "shape"),
        (lambda a: a.update(prices=a["prices"][0]), ValueError, "2-D"),
        (lambda a: a["target_weights"].__setitem__((1, 1), np.nan), ValueError, r"finite on tradable.*\(1, 1\)"),
        (lambda a: a["prices"].__setitem__((2, 0), np.nan), ValueError, r"price is NaN.*\(2, 0\)"),
        (lambda a: a["prices"].__setitem__((0, 1), -1.0), ValueError, "> 0"),
        (lambda a: a["prices"].__setitem__((0, 1), np.inf), ValueError, "inf"),
        (lambda a: a.update(tradable=a["tradable"].astype(int)), TypeError, "boolean"),
        (lambda a: a.update(costs=CostModel(impact_coef=0.1)), ValueError, "needs volume"),
        (
            lambda a: a.update(costs=CostModel(impact_coef=0.1), volume=np.zeros((3, 2))),
            ValueError,
            "volume must be finite and > 0",
        ),
        (lambda a: a.update(costs=(1.0, 2.0)), TypeError, "CostModel"),
        (lambda a: a.update(borrow_bps=-1.0), ValueError, "borrow_bps must be finite"),
        (lambda a: a.update(borrow_bps=np.ones(3)), ValueError, "borrow_bps has shape"),
        (lambda a: a.update(max_turnover=0.0), ValueError, "max_turnover"),
        (lambda a: a.update(initial_state=PortfolioState.cash(3)), ValueError, "3 instruments"),
        (
            lambda a: a.update(initial_state=PortfolioState.cash(2), initial_equity=2.0),
            ValueError,
            "not both",
        ),
    ],
)
def test_bad_input_is_named(change, error, match):
    prices, targets, tradable = _two_names()
    args = {
        "prices": prices,
        "target_weights": targets,
        "tradable": tradable,
        "costs": CostModel(),
    }
    change(args)
    with pytest.raises(error, match=match):
        run_backtest(**args)


def test_state_and_cost_model_validation():
    with pytest.raises(ValueError, match="commission_bps"):
        CostModel(commission_bps=-1.0)
    with pytest.raises(ValueError, match="impact_coef"):
        CostModel(impact_coef=float("nan"))
    with pytest.raises(ValueError, match="last price"):
        PortfolioState(np.array([0.1]), 1.0, np.array([np.nan]))
    with pytest.raises(ValueError, match="equity"):
        PortfolioState(np.zeros(1), 0.0, np.ones(1))
    with pytest.raises(ValueError, match="same length"):
        PortfolioState(np.zeros(2), 1.0, np.ones(1))
    state = PortfolioState.cash(2)
    with pytest.raises(ValueError):
        state.weights[0] = 1.0  # read-only: a state cannot be changed behind a run's back


def test_to_matrix_pivots_in_given_order():
    d1, d2, d3 = dt.date(2024, 1, 2), dt.date(2024, 1, 3), dt.date(2024, 1, 4)
    frame = pl.DataFrame(
        {
            "date": [d1, d1, d2, d3, d2],
            "instrument_id": ["a", "b", "a", "b", "zz"],
            "close": [1.0, 2.0, None, 4.0, 9.0],
        }
    )
    matrix = to_matrix(frame, "close", [d2, d1, d3], ["b", "a"])
    expected = np.array([[np.nan, np.nan], [2.0, 1.0], [4.0, np.nan]])
    np.testing.assert_array_equal(matrix, expected)
    assert matrix.dtype == np.float64
    duplicated = pl.concat([frame, frame.head(1)])
    with pytest.raises(ValueError, match="duplicate"):
        to_matrix(duplicated, "close", [d1], ["a"])
    with pytest.raises(ValueError, match="no column 'volume'"):
        to_matrix(frame, "volume", [d1], ["a"])


def test_backtest_frame_columns():
    prices, targets, tradable = _two_names()
    result = run_backtest(prices, targets, tradable, CostModel())
    dates = [dt.date(2024, 1, 2), dt.date(2024, 1, 3), dt.date(2024, 1, 4)]
    frame = backtest_frame(result, dates)
    assert frame.columns == ["date", *SERIES]
    assert frame.schema["date"] == pl.Date
    assert all(frame.schema[name] == pl.Float64 for name in SERIES)
    np.testing.assert_array_equal(frame["equity"].to_numpy(), result.equity)
    with pytest.raises(ValueError, match="2 dates for a result of 3 rows"):
        backtest_frame(result, dates[:2])
    assert isinstance(result, BacktestResult)
