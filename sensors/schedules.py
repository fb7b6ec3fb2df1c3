"""The daily feature schedule: build today's market_bars and pit_features after the cutoff."""

from __future__ import annotations

import datetime as dt

from dagster import RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from quant_assets import calendar
from quant_assets.jobs import daily_features_job
from quant_assets.partitions import trading_day_partitions
from quant_assets.settings import load_settings

SETTINGS = load_settings()

# 30 minutes after the as-of cutoff, on weekdays (holidays are skipped in the body). A
# cutoff at 23:30 or later runs just after midnight: the cron's weekdays shift by one and
# the body builds the previous day.
_DELAY = dt.timedelta(minutes=30)
# the latest UTC time of day a regular session's cutoff takes (winter for XNYS): one cron
# that runs after the cutoff in every season
_RUN_AT = dt.datetime.combine(dt.date(2000, 1, 3), calendar.latest_cutoff_time(SETTINGS.cutoff_time)) + _DELAY  # a Monday
_WRAPS = _RUN_AT.date() != dt.date(2000, 1, 3)
_CRON = f"{_RUN_AT.minute} {_RUN_AT.hour} * * {'2-6' if _WRAPS else '1-5'}"


@schedule(
    job=daily_features_job,
    cron_schedule=_CRON,
    execution_timezone="UTC",
    description="Each trading day after the as-of cutoff: that day's bars and features.",
)
def daily_features_schedule(context: ScheduleEvaluationContext):
    day = (context.scheduled_execution_time.astimezone(dt.UTC) - _DELAY).date()
    if not calendar.is_trading_day(day):
        return SkipReason(f"{day} is not a trading day")
    key = day.isoformat()
    if not trading_day_partitions.has_partition_key(key):
        return SkipReason(f"{key} is outside the configured trading-day partitions")
    return RunRequest(run_key=key, partition_key=key)
