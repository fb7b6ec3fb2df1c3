"""The month-restartable long-short strategy: chained months == one run, bit for bit, with
every portfolio-construction option; and the options' guarantees on whole backtests."""

import datetime as dt

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quant_assets.backtest.strategy import (
    StrategySpec,
    StrategyState,
    backtest_scores,
    load_borrow_table,
    run_long_short,
)

SECTORS = ("energy", "health", "tech")


def _market(seed: int, n_days: int = 130, n_names: int = 12):
    rng = np.random.default_rng(seed)
    days = pl.date_range(dt.date(2023, 1, 2), dt.date(2023, 12, 29), "1d", eager=True)
    days = days.filter(days.dt.weekday() <= 5).head(n_days)
    rows, preds = [], []
    market = rng.normal(0, 0.01, n_days)
    for j in range(n_names):
        name = f"I{j:02d}"
        listed = (rng.integers(0, 20), n_days - rng.integers(0, 30) * (j % 3 == 0))
        beta = rng.uniform(0.3, 1.7)
        price = 10.0 * np.cumprod(1 + beta * market + rng.normal(0, 0.015, n_days))
        for t, d in enumerate(days):
            if listed[0] <= t < listed[1]:
                rows.append((d, name, float(price[t]), float(rng.uniform(1e5, 1e6))))
                preds.append((d, name, float(rng.normal())))
    schema = ["date", "instrument_id"]
    prices = pl.DataFrame(rows, schema=[*schema, "tr_close", "dollar_volume"], orient="row")
    scores = pl.DataFrame(preds, schema=[*schema, "score"], orient="row")
    return days, prices, scores


def _inputs(seed: int, n_names: int = 12):
    """Prices, scores, a sector map (one name without a sector), a borrow table and the
    market's returns."""
    days, prices, scores = _market(seed, n_names=n_names)
    names = sorted(prices["instrument_id"].unique().to_list())
    sectors = pl.DataFrame({
        "instrument_id": names[:-1],
        "sector": [SECTORS[k % len(SECTORS)] for k in range(len(names) - 1)],
    })
    borrow = pl.DataFrame({"instrument_id": names[::2], "borrow_bps": [25.0 * (k + 1) for k in range(len(names[::2]))]})
    rng = np.random.default_rng(seed + 1)
    market = pl.DataFrame({"date": days, "market_return": rng.normal(0, 0.01, days.len())})
    return prices, scores, sectors, borrow, market


def _by_month(prices, scores, spec, **inputs):
    """Month by month, each month from the previous one's stored end state and with every
    price before it as history (as the backtest asset runs)."""
    parts, state = [], None
    for month in range(1, 13):
        in_month = pl.col("date").dt.month() == month
        if prices.filter(in_month).is_empty():
            continue
        history = prices.filter(pl.col("date").dt.month() < month).select(
            "date", "instrument_id", "tr_close")
        daily, state = run_long_short(
            scores.filter(in_month), prices.filter(in_month), spec, state, history=history,
            **inputs,
        )
        state = StrategyState.from_json(state.to_json())  # as stored in Delta between months
        parts.append(daily)
    return pl.concat(parts), state


ALL_OPTIONS = {
    "neutral": dict(sector_neutral=True, beta_neutral=True, beta_window=15, beta_min_obs=8,
                    max_turnover=0.4, impact_coef=0.1, capital=1e6, borrow_bps=30.0),
    "net": dict(net_exposure=0.3, gross=1.5, max_weight=0.4, max_turnover=0.25,
                impact_coef=0.05, borrow_bps=10.0),
    "beta": dict(beta_neutral=True, beta_window=20, beta_min_obs=10, max_turnover=0.5),
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), lag=st.sampled_from([0, 1]), scheme=st.sampled_from(["equal", "score"]))
def test_month_by_month_equals_one_run(seed, lag, scheme):
    days, prices, scores = _market(seed)
    prices = prices.select("date", "instrument_id", "tr_close")
    spec = StrategySpec(quantile=0.25, scheme=scheme, execution_lag=lag)
    whole, whole_state = run_long_short(scores, prices, spec)
    chained, state = _by_month(prices, scores, spec)
    assert chained.equals(whole)
    assert state == whole_state


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    lag=st.sampled_from([0, 1]),
    scheme=st.sampled_from(["equal", "score"]),
    options=st.sampled_from(sorted(ALL_OPTIONS)),
    given_market=st.booleans(),
)
def test_month_by_month_equals_one_run_with_every_option(seed, lag, scheme, options, given_market):
    prices, scores, sectors, borrow, market = _inputs(seed, n_names=16)
    spec = StrategySpec(quantile=0.25, scheme=scheme, execution_lag=lag, **ALL_OPTIONS[options])
    inputs = {"sectors": sectors, "borrow": borrow, "market": market if given_market else None}
    whole, whole_state = run_long_short(scores, prices, spec, **inputs)
    chained, state = _by_month(prices, scores, spec, **inputs)
    assert chained.equals(whole)
    assert state == whole_state
    # the options are in force: borrow is charged, the turnover limit binds somewhere
    assert whole["borrow_cost"].sum() > 0
    limit = spec.max_turnover
    assert ((whole["turnover"] - limit).abs() < 1e-12).any()
    # forced closes (a held name loses its price) are made in full, so only a day on which
    # names dropped out of the prices may trade more than the limit (portfolio.py, step 5)
    above = whole.filter(pl.col("turnover") > limit + 1e-12)["date"].to_list()
    assert set(above) <= _days_names_dropped(prices), above


def _days_names_dropped(prices) -> set:
    """The days on which a name priced the trading day before has no price."""
    days = sorted(prices["date"].unique().to_list())
    names = {d: set(g["instrument_id"]) for (d,), g in prices.group_by(["date"])}
    return {d for before, d in zip(days, days[1:], strict=False) if names[before] - names[d]}


def _sector_nets(run, sectors):
    mapping = dict(sectors.iter_rows())
    codes = np.array([mapping.get(name, "") for name in run.instruments])
    return {s: m for s in SECTORS for m in [codes == s]}


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("scheme", ["equal", "score"])
def test_sector_neutral_backtest_has_zero_net_sector_exposure(seed, scheme):
    prices, scores, sectors, _, _ = _inputs(seed, n_names=20)
    same_day = backtest_scores(
        scores, prices, StrategySpec(sector_neutral=True, scheme=scheme, quantile=0.34,
                                     execution_lag=0), sectors=sectors,
    )
    lagged = backtest_scores(
        scores, prices, StrategySpec(sector_neutral=True, scheme=scheme, quantile=0.34),
        sectors=sectors,
    )
    for run in (same_day, lagged):
        for members in _sector_nets(run, sectors).values():
            # every decided book is exactly neutral
            np.testing.assert_allclose(run.decided[:, members].sum(axis=1), 0.0, atol=1e-12)
        assert run.daily["gross_exposure"].max() == pytest.approx(1.0)
    # traded on the signal's close, the held book is the decided one: neutral every day
    for members in _sector_nets(same_day, sectors).values():
        np.testing.assert_allclose(same_day.positions[:, members].sum(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(same_day.daily["net_exposure"], 0.0, atol=1e-12)
    # a day late, the book held equals the one decided the day before, except on a day a
    # name of it has no price (it is closed; its sector is unbalanced until the next trade)
    lost = (lagged.targets != 0) & np.isnan(_price_matrix(prices, lagged))
    intact = ~lost.any(axis=1)
    assert intact.sum() > 100 and (~intact).any()
    for members in _sector_nets(lagged, sectors).values():
        np.testing.assert_allclose(lagged.positions[intact][:, members].sum(axis=1), 0.0, atol=1e-12)
    # the name without a sector is never held
    unmapped = [i for i, n in enumerate(lagged.instruments) if n not in set(sectors["instrument_id"])]
    assert unmapped and np.all(lagged.positions[:, unmapped] == 0.0)


def _price_matrix(prices, run):
    from quant_assets.backtest import to_matrix

    return to_matrix(prices, "tr_close", run.dates, run.instruments)


@pytest.mark.parametrize("sector_neutral", [False, True])
def test_beta_neutral_backtest_has_zero_beta(sector_neutral):
    prices, scores, sectors, _, market = _inputs(4, n_names=20)
    spec = StrategySpec(beta_neutral=True, sector_neutral=sector_neutral, beta_window=20,
                        beta_min_obs=10, execution_lag=0)
    run = backtest_scores(scores, prices, spec, sectors=sectors, market=market)
    held = np.abs(run.decided).sum(axis=1) > 0
    assert held.sum() > 80  # books from the 11th day on
    betas = np.where(run.decided != 0, run.betas, 0.0)
    np.testing.assert_allclose((run.decided * betas).sum(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(run.decided.sum(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.abs(run.decided).sum(axis=1)[held], 1.0, rtol=1e-12)
    # no book before enough history for a beta: the first 10 days are flat
    assert not held[:10].any()
    if sector_neutral:
        for members in _sector_nets(run, sectors).values():
            np.testing.assert_allclose(run.decided[:, members].sum(axis=1), 0.0, atol=1e-12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 1000), given_market=st.booleans(), data=st.data())
def test_beta_neutral_uses_no_future_data(seed, given_market, data):
    prices, scores, sectors, _, market = _inputs(seed)
    spec = StrategySpec(beta_neutral=True, sector_neutral=True, beta_window=15, beta_min_obs=8)
    inputs = {"sectors": sectors, "market": market if given_market else None}
    run = backtest_scores(scores, prices, spec, **inputs)
    cut = data.draw(st.integers(0, run.dates.len() - 3))
    # prices from the day of the decision on, and the market's returns, changed at random
    day = run.dates[cut]
    rng = np.random.default_rng(seed)
    later = pl.col("date") >= day
    changed_prices = prices.with_columns(
        tr_close=pl.when(later).then(pl.col("tr_close") * pl.Series(rng.uniform(0.9, 1.1, prices.height)))
        .otherwise(pl.col("tr_close"))
    )
    changed_market = market.with_columns(
        market_return=pl.when(later).then(pl.Series(rng.normal(0, 0.05, market.height)))
        .otherwise(pl.col("market_return"))
    )
    again = backtest_scores(
        scores, changed_prices, spec, sectors=sectors,
        market=changed_market if given_market else None,
    )
    # the change is seen from the next decision on (the test can fail) ...
    assert not np.array_equal(again.betas[cut + 2:], run.betas[cut + 2:], equal_nan=True)
    # ... and not before: betas and books decided up to close `day` are bit for bit the same
    np.testing.assert_array_equal(again.betas[: cut + 1], run.betas[: cut + 1])
    np.testing.assert_array_equal(again.decided[: cut + 1], run.decided[: cut + 1])


def test_borrow_reduces_net_returns_by_exactly_the_charge(tmp_path):
    prices, scores, _, borrow, _ = _inputs(5)
    plain = backtest_scores(scores, prices, StrategySpec())
    charged = backtest_scores(scores, prices, StrategySpec(borrow_bps=40.0), borrow=borrow)
    for column in ("gross_return", "cost", "turnover", "gross_exposure"):
        assert charged.daily[column].equals(plain.daily[column]), column
    np.testing.assert_array_equal(
        charged.daily["net_return"].to_numpy(),
        plain.daily["net_return"].to_numpy() - charged.daily["borrow_cost"].to_numpy(),
    )
    # the charge: the previous close's shorts times one trading day of their annual rate
    rates = dict(borrow.iter_rows())
    bps = np.array([rates.get(name, 40.0) for name in charged.instruments])
    held = np.vstack([np.zeros((1, len(bps))), charged.positions[:-1]])
    expected = (np.maximum(-held, 0.0) * bps / 1e4 / 252).sum(axis=1)
    np.testing.assert_allclose(charged.daily["borrow_cost"].to_numpy(), expected, rtol=1e-13, atol=0)
    assert expected.sum() > 0
    # the same table from a file, through the spec
    path = tmp_path / "borrow.csv"
    borrow.write_csv(path)
    from_file = backtest_scores(scores, prices, StrategySpec(borrow_bps=40.0, borrow_file=str(path)))
    assert from_file.daily.equals(charged.daily)


def test_turnover_limit_and_impact_through_the_spec():
    prices, scores, _, _, _ = _inputs(6)
    free = backtest_scores(scores, prices, StrategySpec())
    limited = backtest_scores(scores, prices, StrategySpec(max_turnover=0.3))
    assert free.daily["turnover"].max() > 0.3
    assert limited.daily["turnover"].max() <= 0.3 + 1e-12
    impact = backtest_scores(scores, prices, StrategySpec(impact_coef=0.2, capital=1e6))
    np.testing.assert_array_equal(impact.positions, free.positions)  # costs do not move weights
    # the first trade (from cash, at equity 1.0): cost = linear + the square-root term
    t = int(np.flatnonzero(impact.daily["turnover"].to_numpy() > 0)[0])
    trade = np.abs(impact.positions[t])
    p = _price_matrix(prices, impact)[t]
    dollar_volume = _matrix(prices, "dollar_volume", impact)[t]
    held = trade > 0
    linear = trade.sum() * 3e-4
    root = 0.2 * (trade[held] * np.sqrt(trade[held] * 1e6 / (p[held] * dollar_volume[held] / p[held]))).sum()
    assert impact.daily["cost"][t] == pytest.approx(linear + root, rel=1e-12)
    assert impact.daily["cost"][t] > free.daily["cost"][t]


def _matrix(prices, column, run):
    from quant_assets.backtest import to_matrix

    return to_matrix(prices, column, run.dates, run.instruments)


def test_net_exposure_target():
    prices, scores, _, _, _ = _inputs(7)
    run = backtest_scores(scores, prices, StrategySpec(net_exposure=0.5, gross=1.5, execution_lag=0))
    booked = run.daily.filter(pl.col("gross_exposure") > 0)  # days with >= 2 names listed
    assert booked.height > 120
    np.testing.assert_allclose(booked["net_exposure"], 0.5, atol=1e-12)
    np.testing.assert_allclose(booked["gross_exposure"], 1.5, atol=1e-12)


def test_positions_frame():
    prices, scores, _, _, _ = _inputs(8)
    run = backtest_scores(scores, prices)
    frame = run.positions_frame()
    assert frame.columns == ["date", "instrument_id", "weight"]
    assert frame.height == int((run.positions != 0).sum())
    net = frame.group_by("date").agg(pl.col("weight").sum()).join(run.daily, on="date")
    np.testing.assert_allclose(net["weight"], net["net_exposure"], rtol=0, atol=1e-15)
    assert net.height == int((np.abs(run.positions).sum(axis=1) > 0).sum())


def test_execution_lag_trades_the_next_close():
    days, prices, scores = _market(3)
    lagged, _ = run_long_short(scores, prices, StrategySpec(execution_lag=1))
    same_day, _ = run_long_short(scores, prices, StrategySpec(execution_lag=0))
    assert lagged["turnover"][0] == 0.0  # nothing decided before the first close
    # the book traded at close t is the one decided at close t-1
    assert lagged["n_long"][1:].to_list() == same_day["n_long"][:-1].to_list()
    assert lagged["n_short"][1:].to_list() == same_day["n_short"][:-1].to_list()
    assert same_day["n_long"].sum() > 0


def test_missing_columns_named():
    days, prices, scores = _market(1)
    with pytest.raises(ValueError, match=r"prices lacks columns \['tr_close'\]"):
        run_long_short(scores, prices.drop("tr_close"), StrategySpec())


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"net_exposure": 2.0}, r"net_exposure=2.0 must be .* \|net\| <= gross"),
        ({"sector_neutral": True, "net_exposure": 0.2}, "sector_neutral needs net_exposure=0"),
        ({"beta_neutral": True, "net_exposure": 0.2}, "beta_neutral needs net_exposure=0"),
        ({"sector_min_names": 1}, "sector_min_names=1 must be an integer >= 2"),
        ({"beta_window": 30, "beta_min_obs": 31}, r"beta_min_obs=31 .* \[2, beta_window=30\]"),
        ({"max_turnover": 0.0}, "max_turnover=0.0 must be a finite number > 0"),
        ({"impact_coef": -0.1}, "impact_coef=-0.1"),
        ({"capital": 0.0}, "capital=0.0"),
        ({"borrow_bps": float("nan")}, "borrow_bps=nan"),
        ({"sector_neutral": 1}, "sector_neutral=1 must be true or false"),
        ({"borrow_file": ""}, "borrow_file"),
    ],
)
def test_bad_spec_is_named(fields, match):
    with pytest.raises(ValueError, match=match):
        StrategySpec(**fields)


def test_bad_inputs_are_named():
    prices, scores, sectors, _, _ = _inputs(9)
    with pytest.raises(ValueError, match="sector_neutral needs sectors"):
        backtest_scores(scores, prices, StrategySpec(sector_neutral=True))
    with pytest.raises(ValueError, match="needs a dollar_volume column"):
        backtest_scores(scores, prices.drop("dollar_volume"), StrategySpec(impact_coef=0.1))
    early = prices.filter(pl.col("date") < dt.date(2023, 3, 1))
    with pytest.raises(ValueError, match="history must end before the first day of prices"):
        backtest_scores(scores, prices, StrategySpec(beta_neutral=True), history=early)
    clash = pl.concat([sectors, sectors.head(1).with_columns(sector=pl.lit("other"))])
    with pytest.raises(ValueError, match="more than one sector"):
        backtest_scores(scores, prices, StrategySpec(sector_neutral=True), sectors=clash)


def test_borrow_file_errors_name_file_line_and_rule(tmp_path):
    path = tmp_path / "borrow.csv"
    path.write_text("instrument_id,borrow_bps\nI00,25\nI01,-3\n")
    with pytest.raises(ValueError, match=r"borrow.csv, line 3 \(I01\): borrow_bps='-3' must be"):
        load_borrow_table(path)
    path.write_text("instrument_id,borrow_bps\nI00,25\nI00,30\n")
    with pytest.raises(ValueError, match="line 3: instrument I00 already on line 2"):
        load_borrow_table(path)
    path.write_text("instrument_id,borrow_bps\nI00,many\n")
    with pytest.raises(ValueError, match="line 2 .*'many'"):
        load_borrow_table(path)
    path.write_text("instrument,borrow_bps\nI00,1\n")
    with pytest.raises(ValueError, match=r"lacks columns \['instrument_id'\]"):
        load_borrow_table(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_borrow_table(tmp_path / "nothing.csv")
    good = pl.DataFrame({"instrument_id": ["A", "B"], "borrow_bps": [12.5, 0.0]})
    good.write_parquet(tmp_path / "borrow.parquet")
    assert load_borrow_table(tmp_path / "borrow.parquet").equals(good)
