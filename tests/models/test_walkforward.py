from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_assets.calendar import is_trading_day, shift_trading_days, trading_days
from quant_assets.models.walkforward import (
    WalkForwardConfig,
    first_trading_day,
    join_features_labels,
    month_rows,
    select_training_rows,
    training_cutoff,
)

# Labels with varied horizons on every trading day 2020-2024 (two instruments).
_DAYS = trading_days(dt.date(2020, 1, 2), dt.date(2024, 12, 31))
_LABELS = pl.DataFrame(
    {
        "date": [d for d in _DAYS for _ in range(2)],
        "instrument_id": ["A", "B"] * len(_DAYS),
        "t0": [d for d in _DAYS for _ in range(2)],
        "t1": [shift_trading_days(d, h) for i, d in enumerate(_DAYS) for h in (1 + i % 7, 5)],
    },
    schema={"date": pl.Date, "instrument_id": pl.Utf8, "t0": pl.Date, "t1": pl.Date},
)


def test_training_cutoff_examples():
    # 2024-01-01 is a holiday: first trading day of January 2024 is Tuesday 2024-01-02
    assert first_trading_day(dt.date(2024, 1, 15)) == dt.date(2024, 1, 2)
    assert training_cutoff(dt.date(2024, 1, 1), 0) == dt.date(2024, 1, 2)
    assert training_cutoff(dt.date(2024, 1, 1), 1) == dt.date(2023, 12, 29)
    # 5 trading days back from Mon 2023-07-03 skips the weekend: Mon 2023-06-26
    assert training_cutoff(dt.date(2023, 7, 1), 5) == dt.date(2023, 6, 26)
    with pytest.raises(ValueError):
        training_cutoff(dt.date(2023, 7, 1), -1)


@settings(max_examples=60, deadline=None)
@given(
    year=st.integers(2021, 2024),
    month=st.integers(1, 12),
    embargo=st.integers(0, 25),
    rolling=st.one_of(st.none(), st.integers(1, 400)),
)
def test_selected_rows_respect_cutoff_and_window(year, month, embargo, rolling):
    month_start = dt.date(year, month, 1)
    config = WalkForwardConfig(
        embargo_days=embargo,
        window="expanding" if rolling is None else "rolling",
        rolling_days=rolling or 504,
        min_train_rows=1,
    )
    cutoff = training_cutoff(month_start, embargo)
    first = first_trading_day(month_start)
    # the cutoff is a trading day exactly `embargo` trading days before the month's first
    assert is_trading_day(cutoff) and cutoff <= first
    assert len(trading_days(cutoff, first)) - 1 == embargo

    lo = None if rolling is None else shift_trading_days(cutoff, -rolling)
    # every eligible row is selected (brute force over python rows)
    expected = sum(
        1
        for row in _LABELS.iter_rows(named=True)
        if row["t1"] < cutoff and (lo is None or row["t0"] >= lo)
    )
    if expected == 0:  # e.g. a rolling window shorter than the label horizon
        with pytest.raises(ValueError, match="min_train_rows"):
            select_training_rows(_LABELS, month_start, config)
        return
    selected = select_training_rows(_LABELS, month_start, config)
    assert selected.height == expected
    # no selected row's label interval reaches the cutoff ...
    assert selected.filter(pl.col("t1") >= cutoff).height == 0
    # ... so at least `embargo` trading days separate every label end from the month
    last_t1 = selected["t1"].max()
    assert (
        len(trading_days(last_t1 + dt.timedelta(days=1), first - dt.timedelta(days=1))) >= embargo
    )
    if lo is not None:
        assert selected["t0"].min() >= lo
    assert selected.select(["date", "instrument_id"]).equals(
        selected.select(["date", "instrument_id"]).sort(["date", "instrument_id"])
    )


def test_too_few_rows_is_a_clear_error():
    with pytest.raises(ValueError, match="min_train_rows"):
        select_training_rows(_LABELS, dt.date(2020, 2, 1), WalkForwardConfig(min_train_rows=1000))


def test_config_validation():
    with pytest.raises(ValueError):
        WalkForwardConfig(window="sliding")
    with pytest.raises(ValueError):
        WalkForwardConfig(embargo_days=-1)


def test_month_rows_and_join(frames):
    features, labels = frames
    june = month_rows(features, dt.date(2022, 6, 17))
    assert june["date"].min() == dt.date(2022, 6, 1)
    assert june["date"].max() == dt.date(2022, 6, 30)
    assert june.height == len(trading_days(dt.date(2022, 6, 1), dt.date(2022, 6, 30))) * 40
    joined = join_features_labels(features, labels)
    assert joined.height == features.height
    assert {"t0", "t1", "fwd_return_rank", "f_signal"} <= set(joined.columns)


def test_too_little_history_fails_at_once_not_after_retries():
    """The model assets turn NotEnoughHistory into a refusal (no retry repeats the fit with
    the same rows): the same 1000-row case as above."""
    from dagster import Failure

    from quant_assets.models.walkforward import NotEnoughHistory
    from quant_assets.retries import not_retried

    with pytest.raises(NotEnoughHistory):
        select_training_rows(_LABELS, dt.date(2020, 2, 1), WalkForwardConfig(min_train_rows=1000))
    with pytest.raises(Failure) as failed, not_retried(NotEnoughHistory):
        select_training_rows(_LABELS, dt.date(2020, 2, 1), WalkForwardConfig(min_train_rows=1000))
    assert failed.value.allow_retries is False and "min_train_rows=1000" in failed.value.description
