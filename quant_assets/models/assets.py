"""Walk-forward models and their out-of-sample predictions, one partition per month.

``lgbm_model`` of month M trains only on rows whose label interval ends before the first
trading day of M minus the embargo (``walkforward.select_training_rows``); each month is
one MLflow run with its lineage, a registered model version and the hash of the month's
out-of-sample scores (tag ``quant.predictions_sha256``, what ``python -m quant_assets
reproduce`` compares). ``seq_model`` is the GRU on the same rows (kind pytorch: the gpu
pool). Each family's out-of-sample predictions of M (``oos_predictions`` for LightGBM,
``seq_predictions`` for the GRU) score M's features with M's model and nothing else.

A month's models read the features and labels up to the month's end (not the whole
tables), which is all a walk-forward month uses; it is also what makes the month's models
wait, under the automation, for its last session's features and labels, and what keeps a
new day from making the finished months look out of date.
"""



import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    BackfillPolicy,
    Output,
    TimeWindowPartitionMapping,
    asset,
)

from quant_assets.asset_catalog import owners_of
from quant_assets.asset_lineage import lineage_metadata, lineage_of
from quant_assets.automation import after, month_closed
from quant_assets.configs import config_class
from quant_assets.features import feature_versions, features_code_version
from quant_assets.models.diagnostics import TOP_FEATURES, importance_png, learning_curve_png
from quant_assets.models.lgbm import LGBMConfig, feature_importance, predictions_hash
from quant_assets.models.monthly import (
    LGBM,
    SEQ,
    ModelFamily,
    month_predictions_hash,
)
from quant_assets.models.seq import SeqConfig, history_start
from quant_assets.models.walkforward import (
    NotEnoughHistory,
    WalkForwardConfig,
    feature_columns,
    first_trading_day,
    join_features_labels,
)
from quant_assets.partitions import monthly_partitions, months_of, up_to_month_end
from quant_assets.performance import rank_information_coefficient
from quant_assets.retries import IO_RETRY, not_retried, refuse
from quant_assets.run_costs import Meter, measured
from quant_assets.settings import load_settings
from quant_assets.warehouse import VersionedFrame
from resources.model_registry import REGISTERED_MODELS
from resources.tracking import MlflowTracking

SETTINGS = load_settings()

GROUP = "models"
# MLflow run tag: predictions_hash of the model month's out-of-sample scores
PREDICTIONS_TAG = "quant.predictions_sha256"
MODEL_INPUTS = ("pit_features", "labels")


def previous_month(month, months: int):
    """First day of the month ``months`` before ``month``."""
    index = month.year * 12 + month.month - 1 - months
    return month.replace(year=index // 12, month=index % 12 + 1, day=1)


_TRAINING = dict(
    # environment-driven defaults (QUANT_EMBARGO_DAYS, QUANT_MODEL_SEED) of the dataclass fields
    defaults={"embargo_days": SETTINGS.embargo_days, "seed": SETTINGS.model_seed},
    extra={"register_model": (bool, True)},
)
LgbmModelConfig = config_class(
    "LgbmModelConfig", WalkForwardConfig, LGBMConfig, **_TRAINING,
    doc="The walk-forward window (WalkForwardConfig) and LightGBM settings (LGBMConfig).",
)
SeqModelConfig = config_class(
    "SeqModelConfig", WalkForwardConfig, SeqConfig, **_TRAINING,
    doc="The walk-forward window (WalkForwardConfig) and the GRU's settings (SeqConfig); "
    "device 'auto' uses CUDA when the step's pod has a GPU (the gpu pool).",
)


def _month_lineage(context, config, month, pit_features: VersionedFrame, labels: VersionedFrame) -> dict:
    """The lineage record of one model month (every model family)."""
    return lineage_of(
        context,
        inputs={"pit_features": pit_features, "labels": labels},
        config=config.model_dump(),
        seeds={"model": config.seed},
        partition_keys=[month.isoformat()],
        feature_versions=feature_versions(),
    )


def _rank_ic(scores: pl.DataFrame, labels: pl.DataFrame) -> float:
    """Mean daily rank IC of scores against realised forward returns (NaN if none)."""
    joined = scores.join(
        labels.select("date", "instrument_id", "fwd_return"), on=["date", "instrument_id"]
    )
    return rank_information_coefficient(
        joined["date"].to_physical().to_numpy(), joined["score"].to_numpy(), joined["fwd_return"].to_numpy()
    ).mean


def _log_diagnostics(tracking: MlflowTracking, family: ModelFamily, trained, month) -> None:
    """The month's learning curve (MLflow metric steps and a chart) and, for LightGBM, its
    split-gain feature importance (a table and a chart)."""
    if not trained.curves:
        return
    tracking.log_curves(trained.curves)
    lgbm = family is LGBM
    best = trained.best_iteration if lgbm else int(trained.metrics.get("best_epoch", 0))
    tracking.log_image(
        learning_curve_png(trained.curves, best, f"{family.asset} {month:%Y-%m}: learning curve",
                           "boosting round" if lgbm else "epoch"),
        "learning_curve.png",
    )
    if lgbm:
        importance = feature_importance(trained)
        tracking.log_table(importance, "feature_importance.csv")
        tracking.log_image(importance_png(importance, f"{family.asset} {month:%Y-%m}: feature importance "
                                          f"(top {TOP_FEATURES} by split gain)"), "feature_importance.png")


def _train_months(
    context: AssetExecutionContext,
    family: ModelFamily,
    config,
    tracking: MlflowTracking,
    pit_features: VersionedFrame,
    labels: VersionedFrame,
    meter: Meter,
) -> Output:
    """The one month loop of every model family: for each month of the partition range, fit
    on the purged, embargoed rows, score the month out of sample, and log one MLflow run with
    the lineage, the model (registered as a version) and the hash of the month's scores."""
    log_model = {"lgbm": tracking.log_lgbm_model, "seq": tracking.log_seq_model}[family.name]
    registered_name = REGISTERED_MODELS[family.name] if config.register_model else None
    walk_forward, model_config = config.to(WalkForwardConfig), config.to(family.config_type)
    joined = join_features_labels(pit_features.frame, labels.frame)
    features = feature_columns(pit_features.frame)
    rows, run_ids = [], []
    lineage = None
    for month in months_of(context):
        with not_retried(NotEnoughHistory):  # more history, not another attempt, fixes it
            trained = family.fit(joined, features, month, walk_forward, model_config)
        # the month's out-of-sample scores, exactly as the predictions asset writes them:
        # their hash is what `python -m quant_assets reproduce` compares
        scores = family.predict(trained, pit_features.frame, month)
        scores_hash = month_predictions_hash(scores)
        oos_ic = _rank_ic(scores, labels.frame)
        lineage = _month_lineage(context, config, month, pit_features, labels)
        device = trained.metrics.get("device")
        with tracking.run(
            f"{family.asset} {month:%Y-%m}",
            lineage,
            params=config.model_dump(),
            tags={PREDICTIONS_TAG: scores_hash, **({"quant.device": device} if device else {})},
        ) as run:
            tracking.log_metrics({**trained.metrics, "oos_rank_ic": oos_ic})
            model_uri, version = log_model(trained, registered_name, month=month)
            _log_diagnostics(tracking, family, trained, month)
        context.log.info(
            f"{family.asset} {month:%Y-%m}{f' on {device}' if device else ''}: "
            f"{trained.metrics.get('n_train', 0):.0f} training rows, "
            f"valid IC {trained.metrics.get('valid_ic', float('nan')):.3f}, "
            f"out-of-sample rank IC {oos_ic:.3f}, MLflow run {run.info.run_id}"
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


@asset(
    group_name=GROUP,
    owners=owners_of(GROUP),
    kinds={"lightgbm", "mlflow", "delta"},
    partitions_def=monthly_partitions,
    metadata={"partition_expr": "date"},
    backfill_policy=BackfillPolicy.single_run(),
    code_version="lgbm-v1",
    retry_policy=IO_RETRY,  # MLflow logging/registry, Delta (quant_assets/retries.py)
    ins={key: AssetIn(partition_mapping=up_to_month_end()) for key in MODEL_INPUTS},
    automation_condition=month_closed(MODEL_INPUTS),
)
def lgbm_model(
    context: AssetExecutionContext,
    config: LgbmModelConfig,
    tracking: MlflowTracking,
    pit_features: VersionedFrame,
    labels: VersionedFrame,
):
    """One LightGBM model per month, walk-forward, purged and embargoed; a row per month
    with the exact model string, its sha256, metrics, the hash and rank IC of the month's
    out-of-sample scores and the MLflow run/version."""
    with measured(context) as meter:  # run costs: wall/CPU/memory/rows/cost
        return _train_months(context, LGBM, config, tracking, pit_features, labels, meter)


def build_predictions(family: ModelFamily, code_version: str) -> AssetsDefinition:
    """The family's out-of-sample predictions: each month's features scored by that month's
    model (the GRU also reads the month before, for its sequences)."""

    @asset(
        name=family.predictions,
        group_name=GROUP,
        partitions_def=monthly_partitions,
        metadata={"partition_expr": "date"},
        backfill_policy=BackfillPolicy.single_run(),
        code_version=code_version,
        retry_policy=IO_RETRY,  # reads/writes Delta (quant_assets/retries.py)
        owners=owners_of(GROUP),
        kinds={"pytorch" if family is SEQ else "lightgbm", "delta"},
        ins={
            "model_rows": AssetIn(key=family.asset),
            "pit_features": AssetIn(
                partition_mapping=TimeWindowPartitionMapping(
                    start_offset=-family.history_months, allow_nonexistent_upstream_partitions=True
                )
            ),
        },
        automation_condition=after([family.asset], wait_for=[family.asset, "pit_features"], recent=None),
        description=f"Scores of each month's features by that month's {family.asset} only "
        "(out of sample).",
    )
    def _predictions(context: AssetExecutionContext, model_rows: pl.DataFrame, pit_features: pl.DataFrame):
        with measured(context) as meter:  # run costs: wall/CPU/memory/rows/cost
            parts = []
            for record in model_rows.sort("date").iter_rows(named=True):
                month = record["date"]
                model = family.model_type.from_record(record)  # verifies the sha256
                needed = history_start(first_trading_day(month), getattr(model.config, "seq_len", 1))
                if needed < previous_month(month, family.history_months):
                    raise refuse(  # a config choice, the same on every attempt
                        f"{family.predictions} {month:%Y-%m}: seq_len {model.config.seq_len} "
                        f"reaches back to {needed}, before the {family.history_months} month(s) "
                        "of features this asset reads"
                    )
                parts.append(
                    family.predict(model, pit_features, month).with_columns(
                        model_month=pl.lit(month, dtype=pl.Date),
                        model_sha256=pl.lit(model.sha256),
                    )
                )
            missing = set(months_of(context)) - set(model_rows["date"].to_list() if model_rows.height else [])
            if missing:
                # the same on every attempt: not retried
                raise refuse(f"{family.predictions}: no {family.asset} for months {sorted(missing)}")
            frame = pl.concat(parts) if parts else pl.DataFrame()
            meter.rows(rows_in=pit_features.height, rows_out=frame.height)
        return Output(
            frame,
            metadata={"rows": frame.height, "predictions_hash": predictions_hash(frame)},
        )

    return _predictions


oos_predictions = build_predictions(LGBM, features_code_version())
seq_predictions = build_predictions(SEQ, "seq-predictions-v1")


@asset(
    group_name=GROUP,
    partitions_def=monthly_partitions,
    metadata={"partition_expr": "date"},
    backfill_policy=BackfillPolicy.single_run(),
    code_version="seq-v1",
    retry_policy=IO_RETRY,  # MLflow logging/registry, Delta (quant_assets/retries.py)
    # kind pytorch: deploy/pools.yaml places it on the gpu pool (its key rule says the same)
    owners=owners_of(GROUP),
    kinds={"pytorch", "mlflow", "delta"},
    ins={key: AssetIn(partition_mapping=up_to_month_end()) for key in MODEL_INPUTS},
    automation_condition=month_closed(MODEL_INPUTS),
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
        return _train_months(context, SEQ, config, tracking, pit_features, labels, meter)
