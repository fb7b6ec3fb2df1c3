"""The daily feature schedule: build today's market_bars and pit_features after the cutoff."""

from __future__ import annotations

import datetime as dt

from dagster import RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from quant_assets import calendar
from quant_assets.jobs import daily_features_job
from quant_assets.partitions import SETTINGS, trading_day_partitions

# 30 minutes after the as-of cutoff, on weekdays (holidays are skipped in the body).
_CRON = f"{(SETTINGS.cutoff_time.minute + 30) % 60} {SETTINGS.cutoff_time.hour + (SETTINGS.cutoff_time.minute + 30) // 60} * * 1-5"


@schedule(
    job=daily_features_job,
    cron_schedule=_CRON,
    execution_timezone="UTC",
    description="Each trading day after the as-of cutoff: that day's bars and features.",
)
def daily_features_schedule(context: ScheduleEvaluationContext):
    day = context.scheduled_execution_time.astimezone(dt.UTC).date()
    if not calendar.is_trading_day(day):
        return SkipReason(f"{day} is not a trading day")
    key = day.isoformat()
    if not trading_day_partitions.has_partition_key(key):
        return SkipReason(f"{key} is outside the configured trading-day partitions")
    return RunRequest(run_key=key, partition_key=key)
