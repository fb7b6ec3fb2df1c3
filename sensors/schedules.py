"""The daily feature schedule: build today's market_bars and pit_features after the cutoff.

The one wall-clock trigger of the flow (everything after a day's features follows by
declarative automation, ``sensors/automation.py``). A day already built (a landing file
came before the cutoff, ``sensors/landing.py``) or being built is skipped, so a day is
built once whichever comes first. Running by itself when ``QUANT_AUTOMATION=on``.
"""

from __future__ import annotations

import datetime as dt

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterRunStatus,
    DefaultScheduleStatus,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

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
_IN_FLIGHT = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
              DagsterRunStatus.STARTED]


def day_built_or_building(instance, key: str) -> str | None:
    """Why the day needs no scheduled build (already materialised, or a run of it in
    flight), or None."""
    done = instance.fetch_materializations(
        AssetRecordsFilter(AssetKey("market_bars"), asset_partitions=[key]), limit=1
    )
    if done.records:
        return f"{key} is built already (run {done.records[0].run_id[:8]})"
    running = instance.get_runs(
        RunsFilter(job_name=daily_features_job.name, statuses=_IN_FLIGHT,
                   tags={"dagster/partition": key}), limit=1
    )
    if running:
        return f"{key} is being built (run {running[0].run_id[:8]})"
    return None


@schedule(
    job=daily_features_job,
    cron_schedule=_CRON,
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING if SETTINGS.automation else DefaultScheduleStatus.STOPPED,
    description="Each trading day after the as-of cutoff: that day's bars and features "
    "(unless a landing file built them already).",
)
def daily_features_schedule(context: ScheduleEvaluationContext):
    day = (context.scheduled_execution_time.astimezone(dt.UTC) - _DELAY).date()
    if not calendar.is_trading_day(day):
        return SkipReason(f"{day} is not a trading day")
    key = day.isoformat()
    if not trading_day_partitions.has_partition_key(key):
        return SkipReason(f"{key} is outside the configured trading-day partitions")
    why = day_built_or_building(context.instance, key)
    if why:
        return SkipReason(why)
    return RunRequest(run_key=key, partition_key=key)
