"""Serving monitoring: the alarm sensor (alert + roll `champion` back).

``serving_alarm_sensor`` reads every new materialisation of ``drift_report`` and
``signal_health`` (cursor: the last event storage id per asset), and judges the
partition's Delta rows:

* drift: the verdict the ``drift_report`` partition recorded under its drift policy
  (``serving.drift.DriftPolicy``, the asset's run config): one policy, judged once;
* realised Sharpe: the ``signal_health`` row's breach (beyond 2 sd of the backtest's
  rolling 21-day Sharpe ratios).

It also watches the scorer's latency when ``QUANT_SCORER_METRICS`` names the scorer's
metrics address (``host:port``; on Kubernetes the chart's headless Service, which resolves
to every ready pod): each tick scrapes every pod's ``/metrics`` with the metrics token
(``SCORER_METRICS_TOKENS`` or ``..._FILE``), keeps the last window of scrapes in the cursor
and asks ``serving.latency.monitor_tick`` whether the champion's p99 has stayed above the
bound since its promotion (``QUANT_LATENCY_BOUND_MS``, ``QUANT_LATENCY_WINDOW_S``,
``QUANT_LATENCY_MIN_REQUESTS``, ``QUANT_LATENCY_MIN_ROUNDS``: ``LatencyPolicy``). The
promotion time is the audit trail's (``model_registry.promoted_at``).

A breach appends an alert row to the Delta table ``alerts`` (one row per judged event;
a re-evaluation of the same event replaces its row) and, when the alarm concerns the
version that is `champion` now, moves `champion` back to `previous_champion` (of either
model family) with the reason as the ``quant.rollback_reason`` tag of the demoted version
(``resources.model_registry.rollback``). An alarm about a version that is no longer
champion (two alarms on the same day, or a promotion since) is recorded without a rollback.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl
from dagster import (
    AssetKey,
    AssetObservation,
    AssetRecordsFilter,
    DefaultSensorStatus,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from quant_assets.serving import latency
from quant_assets.serving.auth import TokenSource
from quant_assets.warehouse import PartitionKeys, PartitionWindow, Warehouse
from resources import model_registry as registry
from resources.io_manager import DeltaIOManager
from resources.tracking import MlflowTracking

ALERTS_TABLE = ["alerts"]
WATCHED = ("drift_report", "signal_health")
EVENTS_PER_TICK = 100
LATENCY_SOURCE = "scorer_latency"  # the alert source (and cursor key) of the latency monitor
SCORER_METRICS_ENV = "QUANT_SCORER_METRICS"  # host:port of the scorer's /metrics; unset: off
SCORED_MODEL_ENV = "QUANT_SCORER_MODEL"  # the registered model the scorer serves


@dataclass(frozen=True)
class Judgement:
    breach: bool
    reason: str
    model_version: int | None
    model_name: str = registry.MODEL_NAME


def _model_name(row: Mapping) -> str:
    """The registered model of a judged row (rows written before the GRU served: LightGBM)."""
    return registry.REGISTERED_MODELS[row.get("model_family") or "lgbm"]


def judge_drift(rows: pl.DataFrame) -> Judgement:
    """The drift verdict the partition recorded (the same on every row of the day)."""
    if rows.is_empty():
        return Judgement(False, "", None)
    row = rows.row(0, named=True)
    breach = bool(row["breach"])
    return Judgement(breach, f"drift: {row['verdict']}" if breach else "", int(row["model_version"]),
                     _model_name(row))


def judge_health(rows: pl.DataFrame) -> Judgement:
    if rows.is_empty():
        return Judgement(False, "", None)
    row = rows.row(0, named=True)
    reason = f"realised Sharpe: {row['status']}" if row["breach"] else ""
    return Judgement(bool(row["breach"]), reason, int(row["model_version"]), _model_name(row))


JUDGES = {"drift_report": judge_drift, "signal_health": judge_health}


def partition_rows(warehouse: Warehouse, asset: str, partition_key: str) -> pl.DataFrame:
    day = dt.date.fromisoformat(partition_key)
    return warehouse.read([asset], PartitionWindow("date", day, day + dt.timedelta(days=1))).frame


def _named(name: str, version: int | None) -> str:
    """v3 for the LightGBM model (the one name before the GRU served), else name v3."""
    return f"v{version}" if name == registry.MODEL_NAME else f"{name} v{version}"


def act_on(client, judgement: Judgement) -> str:
    """Roll back when the alarm concerns today's champion; otherwise say why not."""
    try:
        champion = registry.alias_holder(client)
    except registry.RegistryError as exc:
        return f"no rollback: {exc}"
    if champion is None:
        return "no rollback: no champion alias"
    if (judgement.model_name, judgement.model_version) != champion:
        return (f"no rollback: champion is {_named(*champion)}, the alarm "
                f"concerns {_named(judgement.model_name, judgement.model_version)}")
    try:
        done = registry.rollback(client, judgement.reason)
    except registry.RegistryError as exc:
        return f"no rollback: {exc}"
    return (f"rolled back champion {_named(done.from_model, done.from_version)} -> "
            f"{_named(done.to_model, done.to_version)}")


def latency_policy(env: Mapping[str, str] | None = None) -> latency.LatencyPolicy:
    """The latency alarm of the environment (defaults: ``LatencyPolicy``'s)."""
    env = os.environ if env is None else env
    default = latency.LatencyPolicy()
    return latency.LatencyPolicy(
        bound_s=float(env.get("QUANT_LATENCY_BOUND_MS", default.bound_s * 1000)) / 1000,
        window_s=float(env.get("QUANT_LATENCY_WINDOW_S", default.window_s)),
        quantile=default.quantile,
        min_requests=int(env.get("QUANT_LATENCY_MIN_REQUESTS", default.min_requests)),
        min_rounds=int(env.get("QUANT_LATENCY_MIN_ROUNDS", default.min_rounds)),
    )


def latency_tick(client, warehouse_root: str, cursor: list, env: Mapping[str, str] | None = None,
                 now: float | None = None) -> tuple[Judgement | None, list, str]:
    """One tick of the scorer-latency monitor: (a breach to act on or None, the scrapes to
    keep, what it did). Judges the champion when the scorer serves its registered model."""
    env = os.environ if env is None else env
    address = env.get(SCORER_METRICS_ENV, "")
    if not address:
        return None, cursor, "latency monitor off"
    host, _, port = address.rpartition(":")
    champion = registry.alias_holder(client)
    served_name = env.get(SCORED_MODEL_ENV, registry.MODEL_NAME)
    if champion is None or champion[0] != served_name:
        return None, cursor, f"no {served_name} champion to judge"
    name, version = champion
    promoted = registry.promoted_at(version, name, root=warehouse_root)
    if promoted is None:
        return None, cursor, f"{name} v{version}: no promotion in the audit trail"
    now = time.time() if now is None else now
    token = TokenSource("metrics", env).tokens[0]
    scrapes = latency.scrape_pods(host or "127.0.0.1", int(port), token, at=now)
    verdict, kept = latency.monitor_tick(cursor, scrapes, version, promoted.timestamp(),
                                         now, latency_policy(env))
    judgement = Judgement(True, verdict.reason, version, name) if verdict.breach else None
    return judgement, kept, verdict.reason


@sensor(
    name="serving_alarm_sensor",
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Drift, realised-Sharpe or scorer-latency breach: record an alert, roll champion back.",
)
def serving_alarm_sensor(
    context: SensorEvaluationContext, tracking: MlflowTracking, io_manager: DeltaIOManager
):
    cursor: dict = json.loads(context.cursor) if context.cursor else {}
    warehouse = io_manager.warehouse
    client = None  # opened on the first breach only: most ticks never touch MLflow
    alerts, observations = [], []
    if os.environ.get(SCORER_METRICS_ENV):
        client = tracking.client()
        judgement, cursor[LATENCY_SOURCE], said = latency_tick(
            client, io_manager.root, cursor.get(LATENCY_SOURCE, []))
        if judgement is not None:
            action = act_on(client, judgement)
            context.log.warning(f"scorer latency: {judgement.reason} -> {action}")
            stamp = dt.datetime.now(dt.UTC)
            alerts.append({
                "alert_id": f"{LATENCY_SOURCE}/{judgement.model_name}/{judgement.model_version}/{stamp.isoformat()}",
                "raised_at": stamp, "source": LATENCY_SOURCE, "date": stamp.date(),
                "model_version": judgement.model_version, "reason": judgement.reason,
                "action": action,
            })
            cursor[LATENCY_SOURCE] = []  # the judged window is spent: a new champion starts afresh
        else:
            context.log.debug(f"scorer latency: {said}")
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
        return SkipReason("no new drift, realised-Sharpe or latency breach")
    return SensorResult(cursor=json.dumps(cursor, sort_keys=True), asset_events=observations)


SENSORS = [serving_alarm_sensor]
SCHEDULES: list = []
