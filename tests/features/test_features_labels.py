"""Labels: t0/t1, total-return values, nulls and readiness on hand-built data."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from quant_assets.calendar import session_close, shift_trading_days, trading_days
from quant_assets.features import LABEL_COLUMNS, compute_labels, label_ready, total_return_index
from quant_assets.features.labels import label_end

UTC = dt.UTC
TIME = pl.Datetime("us", "UTC")
DAYS = trading_days(dt.date(2024, 6, 24), dt.date(2024, 7, 31))  # spans the July 4th holiday


def bars(rows) -> pl.DataFrame:
    return pl.DataFrame(
        [(d, i, c, c, c, c, 1.0, session_close(d)) for d, i, c in rows],
        schema={"date": pl.Date, "instrument_id": pl.String, "open": pl.Float64, "high": pl.Float64,
                "low": pl.Float64, "close": pl.Float64, "volume": pl.Float64, "knowledge_time": TIME},
        orient="row",
    )


def actions(rows) -> pl.DataFrame:
    return pl.DataFrame(
        [(i, d, r, c, dt.datetime(2030, 1, 1, tzinfo=UTC)) for i, d, r, c in rows],  # known much later
        schema={"instrument_id": pl.String, "ex_date": pl.Date, "split_ratio": pl.Float64,
                "cash_dividend": pl.Float64, "knowledge_time": TIME},
        orient="row",
    )


def test_labels_by_hand():
    a = [100.0, 101.0, 50.0, 51.0, 52.0, 53.0, 54.0, 55.0]
    b = [10.0, 10.0, 10.0, 9.0, 9.0, 11.0, 11.0, 11.0]
    frame = bars([(d, "A", c) for d, c in zip(DAYS, a, strict=False)]
                 + [(d, "B", c) for d, c in zip(DAYS, b, strict=False)]
                 + [(DAYS[0], "C", 5.0)])  # C has no bar at t1: null label
    acts = actions([("A", DAYS[2], 2.0, 0.0), ("B", DAYS[3], 1.0, 0.5)])
    out = compute_labels(frame, acts, [DAYS[0], DAYS[1]], horizon=5)
    assert out.columns == list(LABEL_COLUMNS)
    assert out.schema["t1"] == pl.Date and out.schema["fwd_return"] == pl.Float64
    first = out.filter(pl.col("date") == DAYS[0])
    assert first["instrument_id"].to_list() == ["A", "B", "C"]
    t1 = shift_trading_days(DAYS[0], 5)
    assert t1 == DAYS[5] == dt.date(2024, 7, 1)
    assert first["t0"].to_list() == [DAYS[0]] * 3 and first["t1"].to_list() == [t1] * 3
    # a 2:1 split counts as 2 shares; a dividend is reinvested at the ex-date close
    fwd_a = 53.0 * 2 / 100.0 - 1
    fwd_b = 10.0 / 10.0 * (9.0 + 0.5) / 10.0 * 11.0 / 9.0 - 1
    assert first["fwd_return"].to_list()[:2] == [pytest.approx(fwd_a), pytest.approx(fwd_b)]
    assert first["fwd_return"][2] is None
    mean = (fwd_a + fwd_b) / 2
    assert first["fwd_return_demeaned"].to_list()[:2] == [pytest.approx(fwd_a - mean), pytest.approx(fwd_b - mean)]
    assert first["fwd_return_rank"].to_list() == [0.0, 1.0, None]  # B earned more
    second = out.filter(pl.col("date") == DAYS[1])
    assert second["t1"][0] == DAYS[6] == dt.date(2024, 7, 2)
    # t1 counts trading days: five after Thursday June 27th skips July 4th
    assert label_end(dt.date(2024, 6, 27), 5) == dt.date(2024, 7, 5)
    # equal to the ratio of the ex-post total-return index
    tr = total_return_index(frame, acts)
    tr_a = dict(tr.filter(pl.col("instrument_id") == "A").select("date", "tr_close").iter_rows())
    assert first["fwd_return"][0] == pytest.approx(tr_a[t1] / tr_a[DAYS[0]] - 1, rel=1e-12)


def test_labels_need_data_up_to_t1():
    frame = bars([(d, "A", 10.0) for d in DAYS[:6]])
    assert label_ready([DAYS[0]], DAYS[5], 5)
    assert not label_ready([DAYS[0], DAYS[1]], DAYS[5], 5)
    compute_labels(frame, actions([]), [DAYS[0]], horizon=5)
    with pytest.raises(ValueError, match="need market bars up to"):
        compute_labels(frame, actions([]), [DAYS[0], DAYS[1]], horizon=5)
    with pytest.raises(ValueError, match="not trading days"):
        compute_labels(frame, actions([]), [dt.date(2024, 7, 4)], horizon=1)


def test_one_label_ranks_one_half_and_missing_day_bar_gives_no_row():
    frame = bars([(DAYS[0], "A", 10.0), (DAYS[1], "A", 11.0), (DAYS[1], "B", 5.0)])
    out = compute_labels(frame, actions([]), [DAYS[0]], horizon=1)
    assert out["instrument_id"].to_list() == ["A"]  # B has no bar on D
    assert out["fwd_return_rank"].to_list() == [0.5]
    assert out["fwd_return"][0] == pytest.approx(0.1)
    assert compute_labels(frame, actions([]), [], horizon=1).columns == list(LABEL_COLUMNS)


def test_simulated_labels_match_the_total_return_index():
    from quant_assets.data.simulator import SimulatorConfig, simulate_market

    m = simulate_market(SimulatorConfig(n_instruments=8, start=dt.date(2022, 1, 3), end=dt.date(2022, 6, 30), seed=5))
    days = trading_days(dt.date(2022, 3, 1), dt.date(2022, 6, 22))
    out = compute_labels(m.market_bars, m.corporate_actions, days, horizon=5)
    tr = total_return_index(m.market_bars, m.corporate_actions)
    joined = (out.join(tr.rename({"date": "t0", "tr_close": "tr0"}), on=["t0", "instrument_id"])
              .join(tr.rename({"date": "t1", "tr_close": "tr1"}), on=["t1", "instrument_id"], how="left"))
    expected = joined["tr1"] / joined["tr0"] - 1
    assert (joined["fwd_return"] - expected).abs().max() < 1e-12
    assert out["fwd_return"].null_count() < 0.05 * out.height
    assert out.group_by("date").agg(pl.col("fwd_return_demeaned").mean().abs()).max()["fwd_return_demeaned"][0] < 1e-12
    assert (m.corporate_actions["split_ratio"] != 1.0).sum() > 0  # splits and dividends inside
