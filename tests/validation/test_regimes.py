"""Regime conditioning, stress windows (on the real S&P 500 data in skfolio's wheel) and
factor exposures."""

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

from quant_assets.data import real
from quant_assets.validation import regimes, stats


def _synthetic_prices(n_days=400, n_names=12, seed=0):
    rng = np.random.default_rng(seed)
    days = pl.date_range(dt.date(2020, 1, 1), dt.date(2020, 1, 1) + dt.timedelta(days=n_days - 1), eager=True)
    vol = np.where(np.arange(n_days) % 100 < 50, 0.005, 0.03)  # calm and stormy stretches
    market = rng.normal(0, 1, n_days) * vol
    rets = market[:, None] + rng.normal(0, 0.01, (n_days, n_names))
    close = 100 * np.cumprod(1 + rets, axis=0)
    frame = pl.DataFrame(
        {
            "date": np.repeat(days.to_numpy(), n_names),
            "instrument_id": np.tile([f"S{i:02d}" for i in range(n_names)], n_days),
            "close": close.ravel(),
        }
    ).with_columns(pl.col("date").cast(pl.Date))
    return frame


@pytest.fixture(scope="module")
def sp500():
    return real.load_sp500_prices()


def test_market_state_uses_only_the_past():
    prices = _synthetic_prices()
    state = regimes.market_state(prices, window=20)
    day = state["date"][200]
    # a shock on `day` changes that day's market return but none of its trailing statistics
    shocked = prices.with_columns(
        pl.when(pl.col("date") >= day).then(pl.col("close") * 1.5).otherwise(pl.col("close")).alias("close")
    )
    a = state.filter(pl.col("date") == day)
    b = regimes.market_state(shocked, window=20).filter(pl.col("date") == day)
    assert a["market_return"].item() != pytest.approx(b["market_return"].item())
    for col in ("trailing_vol", "trailing_return", "trailing_dispersion"):
        assert a[col].item() == b[col].item()
    assert state["trailing_vol"][:20].is_null().all() and state["trailing_vol"][21] is not None


def test_volatility_terciles_separate_calm_and_stormy_days():
    prices = _synthetic_prices()
    state = regimes.market_state(prices, window=20)
    labels = regimes.regime_labels(state)
    counts = labels.drop_nulls("volatility").group_by("volatility").len()
    sizes = dict(counts.iter_rows())
    assert set(sizes) == {"low", "mid", "high"} and max(sizes.values()) - min(sizes.values()) <= 2
    joined = state.join(labels, on="date")
    high = joined.filter(pl.col("volatility") == "high")["market_return"].std()
    low = joined.filter(pl.col("volatility") == "low")["market_return"].std()
    assert high > 2 * low
    assert set(labels["direction"].drop_nulls().unique()) <= {"up", "down"}


def test_regime_performance_conditions_on_the_labels():
    dates = pl.date_range(dt.date(2021, 1, 1), dt.date(2021, 1, 6), eager=True)
    labels = pl.DataFrame(
        {
            "date": dates,
            "volatility": ["low", "low", "mid", "high", "high", None],
            "direction": ["up", "up", "down", "down", "up", "up"],
            "dispersion": ["low", "mid", "mid", "high", "high", "high"],
        }
    )
    r = [0.01, 0.02, -0.01, -0.02, -0.04, 0.5]
    table = regimes.regime_performance(pl.DataFrame({"date": dates, "return": r}), labels)
    row = table.filter((pl.col("regime") == "volatility") & (pl.col("bucket") == "low")).row(0, named=True)
    assert row["n_obs"] == 2
    assert row["sharpe"] == stats.sharpe(np.array([0.01, 0.02]))
    assert row["annual_return"] == pytest.approx(0.015 * 252)
    mid = table.filter((pl.col("regime") == "volatility") & (pl.col("bucket") == "mid")).row(0, named=True)
    assert mid["n_obs"] == 1 and math.isnan(mid["sharpe"])
    assert table.filter(pl.col("regime") == "direction")["n_obs"].to_list() == [2, 4]
    assert table.height == 8


def test_stress_table_on_real_data(sp500):
    """Equal-weight long book of the 20 bundled S&P 500 stocks and a 5-day reversal book:
    the GFC window shows a large loss for the long book, COVID too; a series outside a
    window gets n_obs 0 and NaN statistics."""
    ew = regimes.equal_weight_returns(sp500)
    rev = regimes.reversal_returns(sp500, lookback=5)
    late = pl.DataFrame({"date": [dt.date(2023, 1, 3)], "return": [0.01]})
    table = regimes.stress_table({"equal-weight": ew, "reversal": rev, "2023 strategy": late})
    assert table.height == len(regimes.STRESS_WINDOWS) * 3

    def cell(window, series, col):
        return table.filter(pl.col("window").str.starts_with(window) & (pl.col("series") == series))[col].item()

    assert cell("GFC", "equal-weight", "max_drawdown") < -0.35
    assert cell("GFC", "equal-weight", "total_return") < -0.15
    assert cell("COVID", "equal-weight", "max_drawdown") < -0.25
    assert cell("GFC", "equal-weight", "annual_volatility") > 0.4
    gfc = ew.filter(pl.col("date").is_between(dt.date(2008, 9, 1), dt.date(2009, 3, 31)))["return"].to_numpy()
    assert cell("GFC", "equal-weight", "max_drawdown") == stats.max_drawdown(gfc)
    assert cell("GFC", "equal-weight", "n_obs") == gfc.size
    assert cell("GFC", "reversal", "n_obs") > 100
    assert cell("GFC", "2023 strategy", "n_obs") == 0
    assert math.isnan(cell("GFC", "2023 strategy", "max_drawdown"))


def test_reversal_is_dollar_neutral_and_uses_past_prices_only(sp500):
    small = sp500.filter(pl.col("date").is_between(dt.date(2019, 1, 1), dt.date(2019, 6, 30)))
    a = regimes.reversal_returns(small)
    day = a["date"][50]
    moved = small.with_columns(
        pl.when(pl.col("date") > day).then(pl.col("close") * 2).otherwise(pl.col("close")).alias("close")
    )
    b = regimes.reversal_returns(moved)
    before = pl.col("date") <= day
    # equal up to summation order (polars may chunk the two frames differently)
    assert a.filter(before)["return"].to_list() == pytest.approx(b.filter(before)["return"].to_list(), rel=1e-12, abs=1e-15)
    # equal moves for every name: a dollar-neutral book earns nothing
    flat = small.with_columns(pl.lit(1.0).alias("k")).with_columns(
        (100.0 * 1.01 ** pl.int_range(pl.len()).over("instrument_id")).alias("close")
    )
    assert np.allclose(regimes.reversal_returns(flat)["return"].to_numpy(), 0.0, atol=1e-15)


def test_factor_exposures_recover_known_betas():
    rng = np.random.default_rng(4)
    n = 1500
    dates = pl.date_range(dt.date(2015, 1, 1), dt.date(2015, 1, 1) + dt.timedelta(days=n - 1), eager=True)
    f = pl.DataFrame({"date": dates, "market": rng.normal(0, 0.01, n), "momentum": rng.normal(0, 0.005, n),
                      "size": rng.normal(0, 0.004, n)})
    y = 0.0002 + 0.8 * f["market"].to_numpy() - 0.5 * f["momentum"].to_numpy() + rng.normal(0, 0.002, n)
    out = regimes.factor_exposures(pl.DataFrame({"date": dates, "return": y}), f)
    table = {r["factor"]: r for r in out.table.iter_rows(named=True)}
    assert list(table) == ["alpha", "market", "momentum", "size"]
    assert table["market"]["beta"] == pytest.approx(0.8, abs=0.02)
    assert table["momentum"]["beta"] == pytest.approx(-0.5, abs=0.04)
    assert table["market"]["t_stat"] > 50 and table["momentum"]["t_stat"] < -10
    assert abs(table["size"]["t_stat"]) < 4
    assert out.n_obs == n and 0.9 < out.r_squared < 1.0
    # t-stat = beta / standard error
    assert table["market"]["t_stat"] == pytest.approx(table["market"]["beta"] / table["market"]["std_error"])
    with pytest.raises(ValueError, match="collinear"):
        regimes.factor_exposures(
            pl.DataFrame({"date": dates, "return": y}), f.with_columns(dup=pl.col("market") * 2)
        )


def test_factor_returns_from_real_data(sp500):
    factors = regimes.factor_returns(sp500, real.sectors_frame())
    # Health Care (5 names) is the base sector; the others are excess over the market
    sectors = [c for c in factors.columns if c.startswith("sector_")]
    assert "sector_Health_Care" not in sectors and len(sectors) == 6
    assert factors.columns[:3] == ["date", "market", "momentum"]
    assert factors.null_count().sum_horizontal().item() == 0
    # momentum needs a year of history
    assert factors["date"].min() > dt.date(1991, 1, 1)
    ew = regimes.equal_weight_returns(sp500)
    out = regimes.factor_exposures(ew, factors)
    market = out.table.filter(pl.col("factor") == "market")["beta"].item()
    assert market == pytest.approx(1.0, abs=1e-9)  # the market factor is this portfolio
    # energy names load on the energy sector factor
    energy = sp500.filter(pl.col("instrument_id").is_in(["XOM", "CVX"]))
    energy_ret = regimes.equal_weight_returns(energy)
    beta = regimes.factor_exposures(energy_ret, factors).table.filter(pl.col("factor") == "sector_Energy")
    assert beta["beta"].item() > 0.3 and beta["t_stat"].item() > 20


def test_size_factor_is_small_minus_big():
    prices = _synthetic_prices(n_days=320, n_names=9).with_columns(
        volume=pl.col("instrument_id").str.slice(1).cast(pl.Int32).cast(pl.Float64) + 1.0
    )
    # the smallest names (lowest dollar volume) get a +1% daily kick
    kicked = prices.sort("instrument_id", "date").with_columns(
        close=pl.when(pl.col("instrument_id").is_in(["S00", "S01", "S02"]))
        .then(pl.col("close") * 1.01 ** pl.int_range(pl.len()).over("instrument_id"))
        .otherwise(pl.col("close"))
    )
    factors = regimes.factor_returns(kicked, size_col="volume", momentum_lookback=40, momentum_skip=5)
    assert "size" in factors.columns
    assert factors["size"].mean() > 0.008
