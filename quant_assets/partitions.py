"""The calendar as Dagster partitions: trading days (and the days a label can exist for),
months, sweep trials.

Built once at import from the settings (QUANT_START_DATE / QUANT_END_DATE /
QUANT_FIRST_MODEL_MONTH), so the UI, schedules and backfills all see the same range.
"""

from __future__ import annotations

import datetime as dt

from dagster import (
    BackfillPolicy,
    DynamicPartitionsDefinition,
    MonthlyPartitionsDefinition,
    TimeWindowPartitionMapping,
    TimeWindowPartitionsDefinition,
)

from quant_assets import calendar
from quant_assets.settings import Settings, load_settings

PARTITION_COLUMN = "date"  # daily and monthly tables alike are partitioned by a Date column


def _holiday_exclusions(settings: Settings) -> list[dt.datetime]:
    # through the partition range's end (a few days past end_date), so that a closed
    # weekday right after the last day cannot become a partition
    last = (settings.end_date + dt.timedelta(days=10)) if settings.end_date else dt.date(dt.date.today().year + 2, 12, 31)
    odd = calendar.weekend_sessions(settings.start_date, min(last, calendar.sessions(settings.calendar_name).last),
                                    settings.calendar_name)
    if odd:  # a weekday cron cannot hold them; refuse rather than silently drop sessions
        raise ValueError(f"{settings.calendar_name} has weekend sessions ({odd[:3]}...): not supported")
    return [
        dt.datetime.combine(h, dt.time(0), tzinfo=dt.UTC)
        for h in calendar.closed_weekdays(settings.start_date, last, settings.calendar_name)
    ]


def build_trading_day_partitions(settings: Settings, lag: int = 0) -> TimeWindowPartitionsDefinition:
    """The trading days; with ``lag`` > 0 the last ``lag`` days of the range (or, live, the
    ``lag`` days up to today) are not partitions yet (see ``build_label_partitions``)."""
    end = None
    if settings.end_date is not None:
        # a weekday partition's window runs to the next trading day (Friday -> Monday),
        # so the range must end there for the last day to count as a partition
        end = dt.datetime.combine(
            calendar.shift_trading_days(settings.end_date, 1 - lag, settings.calendar_name), dt.time(0), tzinfo=dt.UTC
        )
    return TimeWindowPartitionsDefinition(
        cron_schedule="0 0 * * 1-5",  # weekdays; closed weekdays of the exchange excluded below
        start=dt.datetime.combine(settings.start_date, dt.time(0), tzinfo=dt.UTC),
        end=end,
        fmt="%Y-%m-%d",
        timezone="UTC",
        exclusions=_holiday_exclusions(settings),
        # open-ended (live): today's partition exists from its start so that the daily
        # schedule can build it after today's cutoff
        # (a lag shifts the fixed end above; live, it holds back the latest partitions)
        end_offset=0 if end is not None else 1 - lag,
    )


def build_label_partitions(settings: Settings) -> TimeWindowPartitionsDefinition:
    """The trading days a label can exist for: the label of D needs the bars of the
    ``label_horizon`` trading days after D, so its partition appears ``label_horizon``
    partitions after D's (the same days, the last ``label_horizon`` held back). The
    automation builds a label as soon as its partition exists and its bars are in, and the
    UI never offers a label whose horizon cannot have bars yet."""
    return build_trading_day_partitions(settings, lag=settings.label_horizon)


def build_monthly_partitions(settings: Settings) -> MonthlyPartitionsDefinition:
    end = calendar.next_month(settings.end_date) if settings.end_date else None
    return MonthlyPartitionsDefinition(
        start_date=settings.first_model_month.isoformat(),
        end_date=end.isoformat() if end else None,
        timezone="UTC",
        fmt="%Y-%m-%d",
    )


trading_day_partitions = build_trading_day_partitions(load_settings())
label_partitions = build_label_partitions(load_settings())
monthly_partitions = build_monthly_partitions(load_settings())
sweep_trial_partitions = DynamicPartitionsDefinition(name="sweep_trials")


def daily_backfill_policy() -> BackfillPolicy:
    """How a range of trading days is cut into runs, the same for every daily asset that a
    job builds together (market bars, features, labels): a job's assets must agree, or the
    UI offers one chunk size and Dagster runs another. About four years a run by default
    (QUANT_FEATURE_DAYS_PER_RUN=1040): 10 years of 500 instruments in 3 runs, each well
    under a GB (features are computed a context year at a time)."""
    return BackfillPolicy.multi_run(max_partitions_per_run=load_settings().feature_days_per_run)


def months_of(context) -> list[dt.date]:
    """First days of the months of a monthly partition or range (an asset's context)."""
    window = context.partition_time_window
    months, month = [], window.start.date()
    while month < window.end.date():
        months.append(month)
        month = calendar.next_month(month)
    return months


# Months before a month that "up to the month's end" reaches back: more than any history
# (the mapping clamps to the first trading day).
ALL_HISTORY_MONTHS = 1200


def up_to_month_end() -> TimeWindowPartitionMapping:
    """Monthly -> daily: every day from the first one to the month's last. What a
    walk-forward month reads (its training rows end before it, its scores are its own days),
    and why its partition waits for its last session and ignores later days."""
    return TimeWindowPartitionMapping(
        start_offset=-ALL_HISTORY_MONTHS, end_offset=0, allow_nonexistent_upstream_partitions=True
    )
