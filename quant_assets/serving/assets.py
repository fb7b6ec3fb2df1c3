"""Serving: ``daily_scores``, ``drift_report`` and ``signal_health``, one partition per
trading day (group ``serving``).

* ``daily_scores`` of day D scores D's ``pit_features`` with the model version behind the
  MLflow alias ``champion`` *at run time*; the version is on every row and in the metadata.
* ``drift_report`` of D: PSI and KS of every feature and of the score, the last
  ``CURRENT_DAYS`` scored days against the training reference of the version that scored
  D. The models stage stores no reference sample, so the reference is rebuilt at drift
  time: the ``pit_features`` rows of the version's training window (``train_start`` ..
  ``train_end`` of its ``lgbm_model`` row) and the version's scores of those rows. Features
  are point in time and models deterministic, so this is the sample the model saw.
* ``signal_health`` of D: realised 21-day Sharpe of the live long-short book on
  ``daily_scores`` versus the backtest's rolling 21-day Sharpe ratios, and the capital
  multiplier (``serving.monitor``).
"""


import dataclasses
import datetime as dt

import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetExecutionContext,
    AssetIn,
    BackfillPolicy,
    MetadataValue,
    Output,
    TimeWindowPartitionMapping,
    asset,
)

from quant_assets.asset_lineage import lineage_metadata, lineage_of
from quant_assets.backtest.strategy import backtested_spec
from quant_assets.configs import config_class
from quant_assets.features import total_return_index
from quant_assets.partitions import trading_day_partitions
from quant_assets.retries import IO_RETRY, not_retried, refuse
from quant_assets.run_costs import measured
from quant_assets.serving import drift, monitor
from quant_assets.serving.scoring import score_frame
from quant_assets.serving.served import ServedModel, served_model
from resources import model_registry
from resources.tracking import MlflowTracking

GROUP = "serving"
# Days of scores pooled into the current sample of the drift report: one day of a small
# universe is too few rows for 10 PSI bins (see serving.drift).
CURRENT_DAYS = 5
HEALTH_DAYS = monitor.WINDOW + monitor.WARMUP_DAYS
# The monitors judge one day each (a window ending on it); scores take ranges.
ONE_DAY_A_RUN = BackfillPolicy.multi_run(max_partitions_per_run=1)


def _served(info: model_registry.VersionInfo, lgbm_model: pl.DataFrame) -> ServedModel:
    return served_model(info.version, info.run_id, info.model_sha256, lgbm_model)


def _window(context: AssetExecutionContext) -> tuple[dt.date, dt.date]:
    window = context.partition_time_window
    return window.start.date(), window.end.date()


@asset(
    group_name=GROUP,
    partitions_def=trading_day_partitions,
    metadata={"partition_expr": "date"},
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=100),
    code_version="daily-scores-v1",
    retry_policy=IO_RETRY,  # MLflow champion alias/model, Delta (quant_assets/retries.py)
    ins={"lgbm_model": AssetIn(partition_mapping=AllPartitionMapping())},
)
def daily_scores(
    context: AssetExecutionContext,
    tracking: MlflowTracking,
    pit_features: pl.DataFrame,
    lgbm_model: pl.DataFrame,
):
    """Scores of the day's point-in-time features by the current ``champion`` version
    (resolved when the run starts; a range run uses one version throughout)."""
    with measured(context) as meter:  # run costs: wall/CPU/memory/rows/cost
        served = _served(model_registry.alias_info(tracking.client()), lgbm_model)
        start, end = _window(context)
        if pit_features.is_empty():
            raise refuse(f"daily_scores: no pit_features in [{start}, {end}); build them first")
        frame = score_frame(pit_features, served.model, served.version)
        context.log.info(
            f"daily_scores [{start}, {end}): {frame.height} rows by {model_registry.MODEL_NAME} "
            f"v{served.version} (model of {served.record['date']})"
        )
        meter.rows(rows_in=pit_features.height, rows_out=frame.height)
    # the version the alias resolved to is the lineage: reproduce pins the alias to it
    lineage = lineage_of(context, inputs={}, config={}, seeds={}, extra={"served_model": {
        "name": model_registry.MODEL_NAME, "alias": model_registry.CHAMPION,
        "version": served.version, "mlflow_run_id": served.run_id}})
    with tracking.run(f"daily_scores {start}..{end}", lineage, output=frame) as run:
        tracking.log_metrics({"rows": frame.height, "model_version": served.version})
    return Output(
        frame,
        metadata={
            **lineage_metadata(lineage, [run.info.run_id]),
            "model_version": served.version,
            "model_sha256": served.model.sha256,
            "mlflow_run_id": served.run_id,
            "model_month": str(served.record["date"]),
            "rows": frame.height,
        },
    )


DriftConfig = config_class("DriftConfig", drift.DriftPolicy, doc=drift.DriftPolicy.__doc__)


@asset(
    group_name=GROUP,
    partitions_def=trading_day_partitions,
    metadata={"partition_expr": "date"},
    backfill_policy=ONE_DAY_A_RUN,
    code_version="drift-v1",
    retry_policy=IO_RETRY,  # MLflow model version, Delta (quant_assets/retries.py)
    ins={
        "daily_scores": AssetIn(
            partition_mapping=TimeWindowPartitionMapping(
                start_offset=-(CURRENT_DAYS - 1), allow_nonexistent_upstream_partitions=True
            )
        ),
        "pit_features": AssetIn(partition_mapping=AllPartitionMapping()),
        "lgbm_model": AssetIn(partition_mapping=AllPartitionMapping()),
    },
)
def drift_report(
    context: AssetExecutionContext,
    config: DriftConfig,
    tracking: MlflowTracking,
    daily_scores: pl.DataFrame,
    pit_features: pl.DataFrame,
    lgbm_model: pl.DataFrame,
):
    """PSI (reference-quantile bins) and KS of every feature and of the score: the last
    few scored days against the scoring version's training window."""
    with measured(context) as meter:  # run costs: wall/CPU/memory/rows/cost
        day = dt.date.fromisoformat(context.partition_key)  # one day a run (a range raises)
        today = daily_scores.filter(pl.col("date") == day)
        if today.is_empty():
            raise refuse(f"drift_report {day}: daily_scores has no rows for {day}")
        versions = today.get_column("model_version").unique().to_list()
        if len(versions) != 1:
            raise refuse(f"drift_report {day}: daily_scores mixes model versions {versions}")
        version = int(versions[0])
        served = _served(model_registry.version_info(tracking.client(), version), lgbm_model)
        model = served.model
        # the current sample: the pooled days scored by this same version
        current_scores = daily_scores.filter(pl.col("model_version") == version)
        current = pit_features.join(
            current_scores.select("date", "instrument_id", "score"), on=["date", "instrument_id"]
        )
        reference = pit_features.filter(
            (pl.col("date") >= model.train_start) & (pl.col("date") <= model.train_end)
        ).sort("date", "instrument_id")
        if reference.is_empty():
            raise refuse(
                f"drift_report {day}: no pit_features in the training window "
                f"{model.train_start}..{model.train_end} of version {version}"
            )
        reference = reference.with_columns(score=pl.Series(model.predict(reference), dtype=pl.Float64))
        columns = [*model.feature_cols, "score"]
        policy = config.to(drift.DriftPolicy)
        # the day's verdict under its policy goes on every row: the serving alarm acts on it
        table, verdict = drift.with_verdict(
            drift.drift_table(reference, current, columns, bins=policy.bins), policy
        )
        frame = table.select(
            pl.lit(day, dtype=pl.Date).alias("date"),
            pl.lit(version, dtype=pl.Int64).alias("model_version"),
            pl.all(),
        ).with_columns(
            current_start=pl.lit(current.get_column("date").min(), dtype=pl.Date),
            reference_start=pl.lit(model.train_start, dtype=pl.Date),
            reference_end=pl.lit(model.train_end, dtype=pl.Date),
            bins=pl.lit(policy.bins, dtype=pl.Int64),
        )
        top = table.filter(pl.col("psi").is_not_null()).sort("psi", descending=True).head(10)
        meter.rows(rows_in=daily_scores.height + pit_features.height, rows_out=frame.height)
    return Output(
        frame,
        metadata={
            "model_version": version,
            "score_psi": verdict.score_psi,
            "features_over_threshold": len(verdict.features_over),
            "breach": verdict.breach,
            "reason": verdict.reason or "none",
            "current_days": current.get_column("date").n_unique(),
            "top_psi": MetadataValue.md(_markdown(top)),
        },
    )


def _markdown(table: pl.DataFrame) -> str:
    lines = ["| column | PSI | KS | KS p |", "|---|---|---|---|"]
    for r in table.iter_rows(named=True):
        lines.append(f"| {r['column']} | {r['psi']:.4f} | {r['ks_statistic']:.3f} | {r['ks_pvalue']:.3g} |")
    return "\n".join(lines)


SignalHealthConfig = config_class("SignalHealthConfig", monitor.CapitalRule, doc=monitor.CapitalRule.__doc__)


@asset(
    group_name=GROUP,
    partitions_def=trading_day_partitions,
    metadata={"partition_expr": "date"},
    backfill_policy=ONE_DAY_A_RUN,
    code_version="signal-health-v1",
    retry_policy=IO_RETRY,  # windows of Delta tables; little compute (quant_assets/retries.py)
    ins={
        "daily_scores": AssetIn(
            partition_mapping=TimeWindowPartitionMapping(
                start_offset=-(HEALTH_DAYS - 1), allow_nonexistent_upstream_partitions=True
            )
        ),
        "market_bars": AssetIn(
            partition_mapping=TimeWindowPartitionMapping(
                start_offset=-(HEALTH_DAYS - 1), allow_nonexistent_upstream_partitions=True
            )
        ),
        "backtest": AssetIn(partition_mapping=AllPartitionMapping()),
    },
)
def signal_health(
    context: AssetExecutionContext,
    config: SignalHealthConfig,
    daily_scores: pl.DataFrame,
    market_bars: pl.DataFrame,
    corporate_actions: pl.DataFrame,
    backtest: pl.DataFrame,
):
    """Realised 21-day Sharpe of the live signal against its backtest's rolling 21-day
    Sharpe distribution; beyond 2 sd the signal's capital multiplier drops to 0.5."""
    with measured(context) as meter:  # run costs: wall/CPU/memory/rows/cost
        day = dt.date.fromisoformat(context.partition_key)  # one day a run (a range raises)
        if daily_scores.filter(pl.col("date") == day).is_empty():
            raise refuse(f"signal_health {day}: daily_scores has no rows for {day}")
        prices = total_return_index(market_bars, corporate_actions)
        # the live book is built like the backtest it is compared with: the backtest's spec
        with not_retried(ValueError):  # mixed specs stay mixed on a retry
            spec = backtested_spec(backtest)
        live = monitor.live_returns(daily_scores.select("date", "instrument_id", "score"), prices, spec)
        # the book starts flat WARMUP_DAYS before the window: those days are not returns of it
        live_r = live.get_column("net_return").to_numpy()[monitor.WARMUP_DAYS:]
        reference = backtest.filter(pl.col("date") <= day).sort("date").get_column("net_return")
        health = monitor.signal_health(
            live_r, reference.to_numpy(), monitor.WINDOW, **dataclasses.asdict(config.to(monitor.CapitalRule))
        )
        versions = sorted(daily_scores.get_column("model_version").unique().to_list())
        frame = pl.DataFrame(
            [{"date": day, **health.as_row(), "model_versions": ",".join(map(str, versions)),
              "model_version": int(daily_scores.filter(pl.col("date") == day)["model_version"][0])}],
            schema_overrides={"date": pl.Date, "model_version": pl.Int64},
        )
        context.log.info(f"signal_health {day}: {health.status}; multiplier {health.capital_multiplier}")
        meter.rows(rows_in=daily_scores.height + market_bars.height + backtest.height, rows_out=frame.height)
    return Output(
        frame,
        metadata={
            "realised_sharpe": health.realised_sharpe,
            "z_score": health.z_score,
            "breach": health.breach,
            "capital_multiplier": health.capital_multiplier,
            "status": health.status,
        },
    )
