"""Serving monitoring: the alarm sensor (alert + roll `champion` back), the daily serving
job and schedule, and the nightly re-validation job and schedule.

``serving_alarm_sensor`` reads every new materialisation of ``drift_report`` and
``signal_health`` (cursor: the last event storage id per asset), and judges the
partition's Delta rows:

* drift: the verdict the ``drift_report`` partition recorded under its drift policy
  (``serving.drift.DriftPolicy``, the asset's run config): one policy, judged once;
* realised Sharpe: the ``signal_health`` row's breach (beyond 2 sd of the backtest's
  rolling 21-day Sharpe ratios).

A breach appends an alert row to the Delta table ``alerts`` (one row per judged event;
a re-evaluation of the same event replaces its row) and, when the alarm concerns the
version that is `champion` now, moves `champion` back to `previous_champion` with the
reason as the ``quant.rollback_reason`` tag of the demoted version
(``resources.model_registry.rollback``). An alarm about a version that is no longer champion (two
alarms on the same day, or a promotion since) is recorded without a rollback.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import polars as pl
from dagster import (
    AssetKey,
    AssetObservation,
    AssetRecordsFilter,
    DefaultSensorStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)

from quant_assets import calendar
from quant_assets.jobs import nightly_revalidation_job, serving_job
from quant_assets.partitions import monthly_partitions, trading_day_partitions
from quant_assets.settings import load_settings
from quant_assets.warehouse import PartitionKeys, PartitionWindow, Warehouse
from resources import model_registry as registry
from resources.io_manager import DeltaIOManager
from resources.tracking import MlflowTracking

SETTINGS = load_settings()

ALERTS_TABLE = ["alerts"]
WATCHED = ("drift_report", "signal_health")
EVENTS_PER_TICK = 100

@dataclass(frozen=True)
class Judgement:
    breach: bool
    reason: str
    model_version: int | None


def judge_drift(rows: pl.DataFrame) -> Judgement:
    """The drift verdict the partition recorded (the same on every row of the day)."""
    if rows.is_empty():
        return Judgement(False, "", None)
    row = rows.row(0, named=True)
    breach = bool(row["breach"])
    return Judgement(breach, f"drift: {row['verdict']}" if breach else "", int(row["model_version"]))


def judge_health(rows: pl.DataFrame) -> Judgement:
    if rows.is_empty():
        return Judgement(False, "", None)
    row = rows.row(0, named=True)
    reason = f"realised Sharpe: {row['status']}" if row["breach"] else ""
    return Judgement(bool(row["breach"]), reason, int(row["model_version"]))


JUDGES = {"drift_report": judge_drift, "signal_health": judge_health}


def partition_rows(warehouse: Warehouse, asset: str, partition_key: str) -> pl.DataFrame:
    day = dt.date.fromisoformat(partition_key)
    return warehouse.read([asset], PartitionWindow("date", day, day + dt.timedelta(days=1))).frame


def act_on(client, judgement: Judgement) -> str:
    """Roll back when the alarm concerns today's champion; otherwise say why not."""
    champion = registry.alias_version(client, registry.CHAMPION)
    if champion is None:
        return "no rollback: no champion alias"
    if judgement.model_version != champion:
        return f"no rollback: champion is v{champion}, the alarm concerns v{judgement.model_version}"
    try:
        done = registry.rollback(client, judgement.reason)
    except registry.RegistryError as exc:
        return f"no rollback: {exc}"
    return f"rolled back champion v{done.from_version} -> v{done.to_version}"


@sensor(
    name="serving_alarm_sensor",
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Drift or realised-Sharpe breach: record an alert, roll champion back.",
)
def serving_alarm_sensor(
    context: SensorEvaluationContext, tracking: MlflowTracking, io_manager: DeltaIOManager
):
    cursor: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
    warehouse = io_manager.warehouse
    client = None  # opened on the first breach only: most ticks never touch MLflow
    alerts, observations = [], []
    for asset in WATCHED:
        result = context.instance.fetch_materializations(
            AssetRecordsFilter(AssetKey(asset), after_storage_id=cursor.get(asset)),
            limit=EVENTS_PER_TICK,
            ascending=True,
        )
        for record in result.records:
            cursor[asset] = record.storage_id
            key = record.partition_key
            if key is None:
                continue
            judgement = JUDGES[asset](partition_rows(warehouse, asset, key))
            if not judgement.breach:
                continue
            client = client or tracking.client()
            action = act_on(client, judgement)
            context.log.warning(f"{asset} {key}: {judgement.reason} -> {action}")
            alerts.append(
                {
                    "alert_id": f"{asset}/{key}/{record.storage_id}",
                    "raised_at": dt.datetime.now(dt.UTC),
                    "source": asset,
                    "date": dt.date.fromisoformat(key),
                    "model_version": judgement.model_version,
                    "reason": judgement.reason,
                    "action": action,
                }
            )
            observations.append(
                AssetObservation(asset_key=asset, partition=key,
                                 metadata={"alert": judgement.reason, "action": action})
            )
    if alerts:
        frame = pl.DataFrame(
            alerts,
            schema_overrides={"raised_at": pl.Datetime("us", "UTC"), "date": pl.Date,
                              "model_version": pl.Int64},
        )
        warehouse.write(ALERTS_TABLE, frame, PartitionKeys("alert_id", tuple(frame["alert_id"])))
    if not alerts:
        context.update_cursor(json.dumps(cursor, sort_keys=True))
        return SkipReason("no new drift or realised-Sharpe breach")
    return SensorResult(cursor=json.dumps(cursor, sort_keys=True), asset_events=observations)


# After the as-of cutoff plus the feature schedule's 30 minutes: one more hour for features.
_LATEST_CUTOFF = calendar.latest_cutoff_time(SETTINGS.cutoff_time)  # UTC, the season's latest
_SERVING_HOUR = (_LATEST_CUTOFF.hour + 1 + (_LATEST_CUTOFF.minute + 30) // 60) % 24
_SERVING_MINUTE = (_LATEST_CUTOFF.minute + 30) % 60


@schedule(
    job=serving_job,
    cron_schedule=f"{_SERVING_MINUTE} {_SERVING_HOUR} * * 1-5",
    execution_timezone="UTC",
    description="Each trading day, after that day's features: scores, drift, signal health.",
)
def daily_serving_schedule(context: ScheduleEvaluationContext):
    day = context.scheduled_execution_time.astimezone(dt.UTC).date()
    if not calendar.is_trading_day(day):
        return SkipReason(f"{day} is not a trading day")
    key = day.isoformat()
    if not trading_day_partitions.has_partition_key(key):
        return SkipReason(f"{key} is outside the configured trading-day partitions")
    return RunRequest(run_key=f"serving:{key}", partition_key=key)


@schedule(
    job=nightly_revalidation_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    description="Nightly: backtest of the latest complete month, then the validation report.",
)
def nightly_revalidation_schedule(context: ScheduleEvaluationContext):
    keys = monthly_partitions.get_partition_keys(current_time=context.scheduled_execution_time)
    if not keys:
        return SkipReason("no complete model month yet")
    key = keys[-1]
    stamp = context.scheduled_execution_time.astimezone(dt.UTC).date().isoformat()
    return RunRequest(run_key=f"revalidate:{key}:{stamp}", partition_key=key)


SENSORS = [serving_alarm_sensor]
SCHEDULES = [daily_serving_schedule, nightly_revalidation_schedule]
