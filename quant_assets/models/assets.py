"""Walk-forward models and their out-of-sample predictions, one partition per month.

``lgbm_model`` of month M trains only on rows whose label interval ends before the first
trading day of M minus the embargo (``walkforward.select_training_rows``); each month is
one MLflow run with its lineage and a registered model version. ``oos_predictions`` of M
scores M's features with M's model and nothing else.
"""


import datetime as dt

import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetExecutionContext,
    AssetIn,
    BackfillPolicy,
    Config,
    Output,
    asset,
)

from quant_assets import calendar
from quant_assets.features import feature_versions, features_code_version
from quant_assets.models.lgbm import LGBMConfig, TrainedModel, predictions_hash, train_lgbm
from quant_assets.models.walkforward import (
    WalkForwardConfig,
    feature_columns,
    join_features_labels,
    month_rows,
    select_training_rows,
)
from quant_assets.partitions import SETTINGS, monthly_partitions
from quant_assets.recording import lineage_metadata, lineage_of
from resources.tracking import MlflowTracking
from resources.warehouse import VersionedFrame

GROUP = "models"
REGISTERED_MODEL = "quant-assets-lgbm"


class LgbmModelConfig(Config):
    embargo_days: int = SETTINGS.embargo_days
    window: str = "expanding"
    rolling_days: int = 504
    min_train_rows: int = 1000
    seed: int = SETTINGS.model_seed
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_data_in_leaf: int = 100
    num_boost_round: int = 300
    early_stopping_rounds: int = 30
    valid_fraction: float = 0.2
    target: str = "fwd_return_rank"
    register_model: bool = True

    def walk_forward(self) -> WalkForwardConfig:
        return WalkForwardConfig(
            embargo_days=self.embargo_days,
            window=self.window,
            rolling_days=self.rolling_days,
            min_train_rows=self.min_train_rows,
        )

    def lgbm(self) -> LGBMConfig:
        return LGBMConfig(
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_data_in_leaf=self.min_data_in_leaf,
            num_boost_round=self.num_boost_round,
            early_stopping_rounds=self.early_stopping_rounds,
            valid_fraction=self.valid_fraction,
            target=self.target,
            seed=self.seed,
        )


def months_in(context: AssetExecutionContext) -> list[dt.date]:
    window = context.partition_time_window
    months, month = [], window.start.date()
    while month < window.end.date():
        months.append(month)
        month = calendar.next_month(month)
    return months


@asset(
    group_name=GROUP,
    partitions_def=monthly_partitions,
    metadata={"partition_expr": "date"},
    backfill_policy=BackfillPolicy.single_run(),
    code_version="lgbm-v1",
    ins={
        "pit_features": AssetIn(partition_mapping=AllPartitionMapping()),
        "labels": AssetIn(partition_mapping=AllPartitionMapping()),
    },
)
def lgbm_model(
    context: AssetExecutionContext,
    config: LgbmModelConfig,
    tracking: MlflowTracking,
    pit_features: VersionedFrame,
    labels: VersionedFrame,
):
    """One LightGBM model per month, walk-forward, purged and embargoed; a row per month
    with the exact model string, its sha256, metrics and the MLflow run/version."""
    joined = join_features_labels(pit_features.frame, labels.frame)
    features = feature_columns(pit_features.frame)
    rows, run_ids = [], []
    lineage = None
    for month in months_in(context):
        train = select_training_rows(joined, month, config.walk_forward())
        trained = train_lgbm(train, features, config.lgbm())
        lineage = lineage_of(
            context,
            inputs={"pit_features": pit_features, "labels": labels},
            config=config.model_dump(),
            seeds={"model": config.seed},
            partition_keys=[month.isoformat()],
            feature_versions=feature_versions(),
        )
        with tracking.run(f"lgbm_model {month:%Y-%m}", lineage, params=config.model_dump()) as run:
            tracking.log_metrics(trained.metrics)
            model_uri, version = tracking.log_lgbm_model(
                trained, REGISTERED_MODEL if config.register_model else None
            )
        context.log.info(
            f"lgbm_model {month:%Y-%m}: {trained.metrics.get('n_train', 0):.0f} rows, "
            f"valid IC {trained.metrics.get('valid_ic', float('nan')):.3f}, "
            f"MLflow run {run.info.run_id}"
        )
        run_ids.append(run.info.run_id)
        rows.append(
            {
                "date": month,
                **trained.to_record(),
                "mlflow_run_id": run.info.run_id,
                "model_uri": model_uri,
                "registered_version": version,
                "config_hash": lineage["config_hash"],
            }
        )
    frame = pl.DataFrame(rows, schema_overrides={"registered_version": pl.Int64})
    return Output(frame, metadata={"months": len(rows), **lineage_metadata(lineage, run_ids)})


@asset(
    group_name=GROUP,
    partitions_def=monthly_partitions,
    metadata={"partition_expr": "date"},
    backfill_policy=BackfillPolicy.single_run(),
    code_version=features_code_version(),
)
def oos_predictions(
    context: AssetExecutionContext, lgbm_model: pl.DataFrame, pit_features: pl.DataFrame
):
    """Scores of each month's features by that month's model only (out of sample)."""
    parts = []
    for record in lgbm_model.sort("date").iter_rows(named=True):
        month = record["date"]
        model = TrainedModel.from_record(record)
        rows = month_rows(pit_features, month).sort("date", "instrument_id")
        parts.append(
            rows.select("date", "instrument_id").with_columns(
                score=pl.Series(model.predict(rows), dtype=pl.Float64),
                model_month=pl.lit(month, dtype=pl.Date),
                model_sha256=pl.lit(model.sha256),
            )
        )
    missing = set(months_in(context)) - set(lgbm_model["date"].to_list())
    if missing:
        raise ValueError(f"oos_predictions: no lgbm_model for months {sorted(missing)}")
    frame = pl.concat(parts) if parts else pl.DataFrame()
    return Output(
        frame,
        metadata={"rows": frame.height, "predictions_hash": predictions_hash(frame)},
    )
