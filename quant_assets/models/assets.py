"""Walk-forward models and their out-of-sample predictions, one partition per month.

``lgbm_model`` of month M trains only on rows whose label interval ends before the first
trading day of M minus the embargo (``walkforward.select_training_rows``); each month is
one MLflow run with its lineage, a registered model version and the hash of the month's
out-of-sample scores (tag ``quant.predictions_sha256``, what ``python -m quant_assets
reproduce`` compares). ``oos_predictions`` of M scores M's features with M's model and
nothing else. ``seq_model`` is the GRU on the same rows (kind pytorch: the gpu pool).
``sweep_trials``/``trial_returns``: one sweep trial per dynamic partition (models/sweeps.py).
"""


import datetime as dt
import json

import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    BackfillPolicy,
    Config,
    Output,
    asset,
    multi_asset,
)

from quant_assets import calendar
from quant_assets.features import feature_versions, features_code_version, total_return_index
from quant_assets.lineage import collect_lineage
from quant_assets.models.lgbm import LGBMConfig, TrainedModel, predictions_hash
from quant_assets.models.monthly import (
    fit_lgbm_month,
    fit_seq_month,
    month_predictions_hash,
    predict_lgbm_month,
    predict_seq_month,
)
from quant_assets.models.seq import SeqConfig
from quant_assets.models.walkforward import (
    WalkForwardConfig,
    feature_columns,
    join_features_labels,
)
from quant_assets.partitions import SETTINGS, monthly_partitions, sweep_trial_partitions
from quant_assets.performance import rank_information_coefficient
from quant_assets.recording import input_versions, lineage_metadata, lineage_of
from quant_assets.retries import IO_RETRY, refuse
from quant_assets.run_costs import measured
from quant_assets.warehouse import VersionedFrame
from resources.tracking import MlflowTracking

GROUP = "models"
REGISTERED_MODEL = "quant-assets-lgbm"
REGISTERED_SEQ_MODEL = "quant-assets-seq"
# MLflow run tag: predictions_hash of the model month's out-of-sample scores
PREDICTIONS_TAG = "quant.predictions_sha256"


class WalkForwardTrainingConfig(Config):
    """What every walk-forward model shares: the window, the embargo, the seed."""

    embargo_days: int = SETTINGS.embargo_days
    window: str = "expanding"
    rolling_days: int = 504
    min_train_rows: int = 1000
    seed: int = SETTINGS.model_seed
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

    def _fields_of(self, dataclass_type) -> dict:
        # the trainer's own config takes the fields it declares, by name
        fields = set(dataclass_type.__dataclass_fields__)
        return {k: v for k, v in self.model_dump().items() if k in fields}


class LgbmModelConfig(WalkForwardTrainingConfig):
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_data_in_leaf: int = 100
    num_boost_round: int = 300
    early_stopping_rounds: int = 30

    def lgbm(self) -> LGBMConfig:
        return LGBMConfig(**self._fields_of(LGBMConfig))


class SeqModelConfig(WalkForwardTrainingConfig):
    """The GRU of `seq_model`; walk-forward settings as `lgbm_model`. The defaults are small
    (seconds per month on CPU): a sequence model that earns a GPU is a config change."""

    seq_len: int = 10
    hidden: int = 16
    layers: int = 1
    dropout: float = 0.0
    lr: float = 3e-3
    weight_decay: float = 1e-4
    epochs: int = 3
    batch_size: int = 512
    early_stopping_patience: int = 2
    # "auto": CUDA when the step's pod has a GPU (the gpu pool), else CPU
    device: str = "auto"
    num_threads: int = 1
    max_train_samples: int = 20000

    def seq(self) -> SeqConfig:
        return SeqConfig(**self._fields_of(SeqConfig))


def months_in(context: AssetExecutionContext) -> list[dt.date]:
    window = context.partition_time_window
    months, month = [], window.start.date()
    while month < window.end.date():
        months.append(month)
        month = calendar.next_month(month)
    return months


def _month_lineage(context, config, month, pit_features: VersionedFrame, labels: VersionedFrame) -> dict:
    """The lineage record of one model month (lgbm_model and seq_model)."""
    return lineage_of(
        context,
        inputs={"pit_features": pit_features, "labels": labels},
        config=config.model_dump(),
        seeds={"model": config.seed},
        partition_keys=[month.isoformat()],
        feature_versions=feature_versions(),
    )


@asset(
    group_name=GROUP,
    partitions_def=monthly_partitions,
    metadata={"partition_expr": "date"},
    backfill_policy=BackfillPolicy.single_run(),
    code_version="lgbm-v1",
    retry_policy=IO_RETRY,  # MLflow logging/registry, Delta (quant_assets/retries.py)
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
    with measured(context) as meter:  # run costs: wall/CPU/memory/rows/cost
        joined = join_features_labels(pit_features.frame, labels.frame)
        features = feature_columns(pit_features.frame)
        rows, run_ids = [], []
        lineage = None
        for month in months_in(context):
            trained = fit_lgbm_month(joined, features, month, config.walk_forward(), config.lgbm())
            # the month's out-of-sample scores, exactly as oos_predictions will write them: their
            # hash is what `python -m quant_assets reproduce` compares
            scores_hash = month_predictions_hash(
                predict_lgbm_month(trained, pit_features.frame, month)
            )
            lineage = _month_lineage(context, config, month, pit_features, labels)
            with tracking.run(
                f"lgbm_model {month:%Y-%m}",
                lineage,
                params=config.model_dump(),
                tags={PREDICTIONS_TAG: scores_hash},
            ) as run:
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
                    "predictions_sha256": scores_hash,
                    "mlflow_run_id": run.info.run_id,
                    "model_uri": model_uri,
                    "registered_version": version,
                    "config_hash": lineage["config_hash"],
                }
            )
        meter.rows(rows_in=pit_features.frame.height, rows_out=len(rows))
    frame = pl.DataFrame(rows, schema_overrides={"registered_version": pl.Int64})
    return Output(frame, metadata={"months": len(rows), **lineage_metadata(lineage, run_ids)})


@asset(
    group_name=GROUP,
    partitions_def=monthly_partitions,
    metadata={"partition_expr": "date"},
    backfill_policy=BackfillPolicy.single_run(),
    code_version=features_code_version(),
    retry_policy=IO_RETRY,  # reads/writes Delta (quant_assets/retries.py)
)
def oos_predictions(
    context: AssetExecutionContext, lgbm_model: pl.DataFrame, pit_features: pl.DataFrame
):
    """Scores of each month's features by that month's model only (out of sample)."""
    with measured(context) as meter:  # run costs: wall/CPU/memory/rows/cost
        parts = []
        for record in lgbm_model.sort("date").iter_rows(named=True):
            month = record["date"]
            model = TrainedModel.from_record(record)
            parts.append(
                predict_lgbm_month(model, pit_features, month).with_columns(
                    model_month=pl.lit(month, dtype=pl.Date),
                    model_sha256=pl.lit(model.sha256),
                )
            )
        missing = set(months_in(context)) - set(lgbm_model["date"].to_list())
        if missing:
            # the same on every attempt: not retried
            raise refuse(f"oos_predictions: no lgbm_model for months {sorted(missing)}")
        frame = pl.concat(parts) if parts else pl.DataFrame()
        meter.rows(rows_in=pit_features.height, rows_out=frame.height)
    return Output(
        frame,
        metadata={"rows": frame.height, "predictions_hash": predictions_hash(frame)},
    )


@asset(
    group_name=GROUP,
    partitions_def=monthly_partitions,
    metadata={"partition_expr": "date"},
    backfill_policy=BackfillPolicy.single_run(),
    code_version="seq-v1",
    retry_policy=IO_RETRY,  # MLflow logging/registry, Delta (quant_assets/retries.py)
    # kind pytorch: deploy/pools.yaml places it on the gpu pool (its key rule says the same)
    kinds={"pytorch"},
    ins={
        "pit_features": AssetIn(partition_mapping=AllPartitionMapping()),
        "labels": AssetIn(partition_mapping=AllPartitionMapping()),
    },
)
def seq_model(
    context: AssetExecutionContext,
    config: SeqModelConfig,
    tracking: MlflowTracking,
    pit_features: VersionedFrame,
    labels: VersionedFrame,
):
    """One GRU sequence model per month on the same purged, embargoed rows as `lgbm_model`;
    a row per month with the weights (base64), their sha256, the hash and rank IC of the
    month's out-of-sample scores, and the MLflow run (PyTorch flavour) and version."""
    with measured(context) as meter:  # run costs: wall/CPU/memory/rows/cost
        joined = join_features_labels(pit_features.frame, labels.frame)
        features = feature_columns(pit_features.frame)
        rows, run_ids = [], []
        lineage = None
        for month in months_in(context):
            trained = fit_seq_month(joined, features, month, config.walk_forward(), config.seq())
            scores = predict_seq_month(trained, pit_features.frame, month)
            scores_hash = month_predictions_hash(scores)
            oos_ic = _rank_ic(scores, labels.frame)
            lineage = _month_lineage(context, config, month, pit_features, labels)
            with tracking.run(
                f"seq_model {month:%Y-%m}",
                lineage,
                params=config.model_dump(),
                tags={PREDICTIONS_TAG: scores_hash, "quant.device": trained.metrics["device"]},
            ) as run:
                tracking.log_metrics({**trained.metrics, "oos_rank_ic": oos_ic})
                model_uri, version = tracking.log_seq_model(
                    trained, REGISTERED_SEQ_MODEL if config.register_model else None
                )
            context.log.info(
                f"seq_model {month:%Y-%m} on {trained.metrics['device']}: "
                f"{trained.metrics['n_train']:.0f} samples, {trained.metrics['epochs_run']:.0f} "
                f"epochs, out-of-sample rank IC {oos_ic:.3f}, MLflow run {run.info.run_id}"
            )
            run_ids.append(run.info.run_id)
            rows.append(
                {
                    "date": month,
                    **trained.to_record(),
                    "predictions_sha256": scores_hash,
                    "n_predictions": scores.height,
                    "oos_rank_ic": oos_ic,
                    "mlflow_run_id": run.info.run_id,
                    "model_uri": model_uri,
                    "registered_version": version,
                    "config_hash": lineage["config_hash"],
                }
            )
        meter.rows(rows_in=pit_features.frame.height, rows_out=len(rows))
    frame = pl.DataFrame(rows, schema_overrides={"registered_version": pl.Int64})
    return Output(frame, metadata={"months": len(rows), **lineage_metadata(lineage, run_ids)})


def _rank_ic(scores: pl.DataFrame, labels: pl.DataFrame) -> float:
    """Mean daily rank IC of scores against realised forward returns (NaN if none)."""
    joined = scores.join(
        labels.select("date", "instrument_id", "fwd_return"), on=["date", "instrument_id"]
    )
    return rank_information_coefficient(
        joined["date"].to_physical().to_numpy(), joined["score"].to_numpy(), joined["fwd_return"].to_numpy()
    ).mean


SWEEP_OUTPUTS = ("sweep_trials", "trial_returns")


@multi_asset(
    group_name=GROUP,
    partitions_def=sweep_trial_partitions,
    outs={
        "sweep_trials": AssetOut(
            metadata={"partition_expr": "trial_id"},
            code_version="sweep-v1",
            description="Trial registry: one row per sweep trial (params, metrics, Sharpe, "
            "MLflow child run).",
        ),
        "trial_returns": AssetOut(
            metadata={"partition_expr": "trial_id"},
            code_version="sweep-v1",
            description="Daily out-of-sample net returns of every trial (date, trial_id, "
            "net_return): the returns matrix of DSR/PBO.",
        ),
    },
    ins={
        "pit_features": AssetIn(partition_mapping=AllPartitionMapping()),
        "labels": AssetIn(partition_mapping=AllPartitionMapping()),
        "market_bars": AssetIn(partition_mapping=AllPartitionMapping()),
        "corporate_actions": AssetIn(),
    },
    # the plan (trial id -> spec) is read through the warehouse of the IO manager
    required_resource_keys={"io_manager", "tracking"},
    retry_policy=IO_RETRY,  # MLflow child run, Delta (quant_assets/retries.py)
)
def sweep_trial(
    context: AssetExecutionContext,
    pit_features: VersionedFrame,
    labels: VersionedFrame,
    market_bars: VersionedFrame,
    corporate_actions: VersionedFrame,
):
    """One trial of a sweep (partition = trial id, see models/sweeps.py): walk-forward
    LightGBM over the trial's months, out-of-sample scores, the long-short backtest, an MLflow
    child run of the sweep's parent run, a registry row and the daily returns."""
    from quant_assets.models.sweep import run_trial
    from quant_assets.models.sweeps import (
        SWEEP_TAG,
        TRIAL_TAG,
        find_parent_run,
        load_trial_spec,
    )

    # run economics; a multi-asset step: each output gets the measurements and half the cost
    with measured(context, output_name=SWEEP_OUTPUTS) as meter:
        tracking: MlflowTracking = context.resources.tracking
        trial_id = context.partition_key
        spec = load_trial_spec(context.resources.io_manager.warehouse, trial_id)
        if spec.trial_id != trial_id:
            raise refuse(f"sweep_plan row of {trial_id} hashes to {spec.trial_id}: plan corrupted")
        joined = join_features_labels(pit_features.frame, labels.frame)
        result = run_trial(
            joined,
            feature_columns(pit_features.frame),
            pit_features.frame,
            total_return_index(market_bars.frame, corporate_actions.frame),
            spec,
        )
        inputs = {
            "pit_features": pit_features,
            "labels": labels,
            "market_bars": market_bars,
            "corporate_actions": corporate_actions,
        }
        # collect_lineage, not recording.lineage_of: that reads context.asset_key, which a
        # multi-asset (registry + returns) does not have
        lineage = collect_lineage(
            asset_key="sweep_trials",
            partition_keys=[trial_id],
            input_versions=input_versions(inputs),
            config=json.loads(spec.to_json()),
            seeds={"model": spec.lgbm["seed"]},
            feature_versions=feature_versions(),
            dagster_run_id=context.run_id,
        )
        parent = find_parent_run(tracking, spec.sweep)
        with tracking.run(
            f"trial {trial_id}",
            lineage,
            params=spec.params,
            tags={SWEEP_TAG: spec.sweep, TRIAL_TAG: trial_id, "quant.sweep_role": "trial"},
            parent_run_id=parent,
        ) as run:
            tracking.log_metrics(result.metrics)
            for month, model in result.models.items():
                tracking.log_text(model.model_str, f"models/{month}.txt")
        metrics = result.metrics
        registry = pl.DataFrame(
            [
                {
                    "trial_id": trial_id,
                    "sweep": spec.sweep,
                    "params": json.dumps(spec.params, sort_keys=True),
                    "spec": spec.to_json(),
                    "months": ",".join(spec.months),
                    **{k: float(metrics.get(k, float("nan"))) for k in TRIAL_METRICS},
                    "model_sha256": json.dumps({m: t.sha256 for m, t in result.models.items()}),
                    "predictions_sha256": predictions_hash(result.predictions),
                    "input_versions": json.dumps(lineage["input_versions"], sort_keys=True),
                    "mlflow_run_id": run.info.run_id,
                    "parent_run_id": parent,
                }
            ]
        )
        returns = result.daily.select(
            "date", pl.lit(trial_id).alias("trial_id"), pl.col("net_return").cast(pl.Float64)
        )
        context.log.info(
            f"trial {trial_id} {spec.params}: Sharpe {metrics.get('sharpe', float('nan')):.2f} "
            f"over {returns.height} days, MLflow run {run.info.run_id}"
        )
        meter.rows(rows_in=pit_features.frame.height, rows_out=registry.height, output="sweep_trials")
        meter.rows(rows_out=returns.height, output="trial_returns")
    meta = {"sharpe": float(metrics.get("sharpe", float("nan"))), **lineage_metadata(lineage, [run.info.run_id])}
    yield Output(registry, "sweep_trials", metadata=meta)
    yield Output(returns, "trial_returns", metadata={"days": returns.height})


# registry columns (floats) taken from the trial's metrics
TRIAL_METRICS = (
    "sharpe",
    "sharpe_per_period",
    "n_obs",
    "cagr",
    "max_drawdown",
    "annual_volatility",
    "mean_turnover",
    "valid_ic_mean",
    "best_iteration_mean",
)
