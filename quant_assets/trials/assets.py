"""``sweep_trials`` / ``trial_returns``: one sweep trial per dynamic partition (trial id),
each an MLflow child run of its sweep's parent run, a row of the trial registry and the
trial's daily out-of-sample returns. ``model_sweep``: the small monthly sweep of the
monthly flow (one partition per month, ``trials/monthly.py``).

Sweeps are registered (plan rows, dynamic partitions, the parent run) by
``python -m quant_assets sweep`` (``quant_assets/cli/sweep.py``); ``sensors/trials.py``
requests a run per pending trial.
"""

import hashlib
import json

import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    BackfillPolicy,
    MetadataValue,
    Output,
    asset,
    multi_asset,
)

from quant_assets.asset_catalog import owners_of
from quant_assets.asset_lineage import input_versions, lineage_metadata
from quant_assets.automation import month_closed
from quant_assets.configs import config_class
from quant_assets.features import feature_versions, total_return_index
from quant_assets.lineage import collect_lineage
from quant_assets.models.lgbm import predictions_hash
from quant_assets.models.walkforward import feature_columns, join_features_labels
from quant_assets.partitions import (
    monthly_partitions,
    months_of,
    sweep_trial_partitions,
    up_to_month_end,
)
from quant_assets.retries import IO_RETRY, refuse
from quant_assets.run_costs import measured
from quant_assets.settings import load_settings
from quant_assets.trials.monthly import MonthlySweepSpace
from quant_assets.trials.monthly import evaluate_month as evaluate_sweep_month
from quant_assets.trials.search import SearchSpace
from quant_assets.trials.trial import run_trial
from quant_assets.trials.trial_registry import (
    ROLE_TAG,
    SWEEP_TAG,
    TRIAL_METRICS,
    TRIAL_TAG,
    load_trial_spec,
)
from quant_assets.warehouse import VersionedFrame
from resources.tracking import MlflowTracking

GROUP = "sweeps"
SETTINGS = load_settings()


def _parent_run(tracking: MlflowTracking, sweep: str) -> str | None:
    """Id of the sweep's MLflow parent run (tags quant.sweep=name, quant.sweep_role=parent)."""
    found = tracking.client().search_runs(
        [tracking.experiment_id()],
        filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}' and tags.`{ROLE_TAG}` = 'parent'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return found[0].info.run_id if found else None


def sweep_parent_run(tracking: MlflowTracking, space: SearchSpace) -> str:
    """Id of the sweep's MLflow parent run, created on first use (the search space is its
    lineage config)."""
    found = _parent_run(tracking, space.name)
    if found is not None:
        return found
    lineage = collect_lineage(
        asset_key="sweep_trials",
        partition_keys=[],
        input_versions={},
        config=space.to_dict(),
        seeds={"sweep": space.seed},
    )
    with tracking.run(
        f"sweep {space.name}", lineage, tags={SWEEP_TAG: space.name, ROLE_TAG: "parent"}
    ) as run:
        tracking.log_metrics({"n_trials_planned": space.n_trials})
    return run.info.run_id


def find_parent_run(tracking: MlflowTracking, sweep: str) -> str:
    found = _parent_run(tracking, sweep)
    if found is None:
        raise ValueError(f"sweep {sweep}: no MLflow parent run; register the sweep first")
    return found


SWEEP_OUTPUTS = ("sweep_trials", "trial_returns")


@multi_asset(
    group_name=GROUP,
    partitions_def=sweep_trial_partitions,
    outs={
        "sweep_trials": AssetOut(
            metadata={"partition_expr": "trial_id"},
            code_version="sweep-v2",
            owners=owners_of(GROUP),
            kinds={"lightgbm", "mlflow", "delta"},
            description="Trial registry: one row per sweep trial (params, metrics, Sharpe, "
            "the MLflow child run of its batch).",
        ),
        "trial_returns": AssetOut(
            metadata={"partition_expr": "trial_id"},
            code_version="sweep-v2",
            owners=owners_of(GROUP),
            kinds={"lightgbm", "delta"},
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
    # a run takes a batch of trials: the inputs are read and joined once, and the batch
    # shares one MLflow child run, instead of per trial (the overhead of a 1,000-trial sweep)
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=SETTINGS.sweep_trials_per_run),
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
    """A batch of sweep trials (partitions = trial ids, registered by cli/sweep.py; one or a
    range per run): for each, walk-forward LightGBM over the trial's months, out-of-sample
    scores and the long-short backtest; one MLflow child run of the sweep's parent run for
    the batch (each trial's metrics as a step, its models under ``trials/<id>/``), a
    registry row and the daily returns per trial."""
    # run economics; a multi-asset step: each output gets the measurements and half the cost
    with measured(context, output_name=SWEEP_OUTPUTS) as meter:
        tracking: MlflowTracking = context.resources.tracking
        warehouse = context.resources.io_manager.warehouse
        trial_ids = list(context.partition_keys)
        specs = [load_trial_spec(warehouse, trial_id) for trial_id in trial_ids]
        for trial_id, spec in zip(trial_ids, specs, strict=True):
            if spec.trial_id != trial_id:
                raise refuse(f"sweep_plan row of {trial_id} hashes to {spec.trial_id}: plan corrupted")
        if len({spec.sweep for spec in specs}) != 1:
            raise refuse(f"trials {trial_ids[0]}..{trial_ids[-1]} belong to several sweeps "
                         f"{sorted({spec.sweep for spec in specs})}: launch one sweep per run")
        joined = join_features_labels(pit_features.frame, labels.frame)
        columns = feature_columns(pit_features.frame)
        prices = total_return_index(market_bars.frame, corporate_actions.frame)
        fits: dict = {}  # trials that differ only in strategy parameters share their models
        results = [run_trial(joined, columns, pit_features.frame, prices, spec, fits) for spec in specs]
        inputs = {
            "pit_features": pit_features,
            "labels": labels,
            "market_bars": market_bars,
            "corporate_actions": corporate_actions,
        }
        # collect_lineage, not asset_lineage.lineage_of: that reads context.asset_key, which a
        # multi-asset (registry + returns) does not have
        lineage = collect_lineage(
            asset_key="sweep_trials",
            partition_keys=trial_ids,
            input_versions=input_versions(inputs),
            config={spec.trial_id: json.loads(spec.to_json()) for spec in specs},
            seeds={spec.trial_id: spec.lgbm["seed"] for spec in specs},
            feature_versions=feature_versions(),
            dagster_run_id=context.run_id,
        )
        sweep = specs[0].sweep
        parent = find_parent_run(tracking, sweep)
        returns = pl.concat([
            result.daily.select("date", pl.lit(spec.trial_id).alias("trial_id"),
                                pl.col("net_return").cast(pl.Float64))
            for spec, result in zip(specs, results, strict=True)
        ])
        hashes = [predictions_hash(result.predictions) for result in results]
        name = f"trial {trial_ids[0]}" if len(trial_ids) == 1 else f"trials {trial_ids[0]}..{trial_ids[-1]}"
        with tracking.run(
            name,
            lineage,
            tags={SWEEP_TAG: sweep, TRIAL_TAG: ",".join(trial_ids), "quant.sweep_role": "trial",
                  "quant.trials": len(trial_ids),
                  # the batch's scores, trial by trial: what `reproduce` compares a rebuild with
                  "quant.predictions_sha256": hashlib.sha256("\n".join(hashes).encode()).hexdigest()},
            parent_run_id=parent,
            output=returns,
        ) as run:
            # each trial's metrics as one step of the batch run (MLflow charts them by trial)
            tracking.log_step_metrics([result.metrics for result in results])
            tracking.log_dict(
                {"trials": [{"step": step, "trial_id": spec.trial_id, "params": spec.params,
                             "metrics": result.metrics, "predictions_sha256": digest}
                            for step, (spec, result, digest)
                            in enumerate(zip(specs, results, hashes, strict=True))]},
                "trials.json",
            )
            tracking.log_texts({f"trials/{spec.trial_id}/models/{month}.txt": model.model_str
                                for spec, result in zip(specs, results, strict=True)
                                for month, model in result.models.items()})
        registry = pl.DataFrame(
            [
                {
                    "trial_id": spec.trial_id,
                    "sweep": spec.sweep,
                    "params": json.dumps(spec.params, sort_keys=True),
                    "spec": spec.to_json(),
                    "months": ",".join(spec.months),
                    **{k: float(result.metrics.get(k, float("nan"))) for k in TRIAL_METRICS},
                    "model_sha256": json.dumps({m: t.sha256 for m, t in result.models.items()}),
                    "predictions_sha256": digest,
                    "input_versions": json.dumps(lineage["input_versions"], sort_keys=True),
                    "mlflow_run_id": run.info.run_id,
                    "parent_run_id": parent,
                }
                for spec, result, digest in zip(specs, results, hashes, strict=True)
            ]
        )
        sharpes = {spec.trial_id: float(result.metrics.get("sharpe", float("nan")))
                   for spec, result in zip(specs, results, strict=True)}
        context.log.info(
            f"{len(trial_ids)} trials of sweep {sweep}, best Sharpe "
            f"{max(sharpes.values(), default=float('nan')):.2f}, MLflow run {run.info.run_id}"
        )
        meter.rows(rows_in=pit_features.frame.height, rows_out=registry.height, output="sweep_trials")
        meter.rows(rows_out=returns.height, output="trial_returns")
    meta = {"trials": len(trial_ids), "trial_sharpes": MetadataValue.json(sharpes),
            **lineage_metadata(lineage, [run.info.run_id])}
    yield Output(registry, "sweep_trials", metadata=meta)
    yield Output(returns, "trial_returns", metadata={"days": returns["date"].n_unique(),
                                                     "trials": len(trial_ids)})


ModelSweepConfig = config_class(
    "ModelSweepConfig", MonthlySweepSpace,
    doc="The monthly model sweep's search space (trials/monthly.py: MONTHLY_SPACE), as JSON.",
)


@asset(
    group_name=GROUP,
    owners=owners_of(GROUP),
    kinds={"lightgbm", "mlflow", "delta"},
    partitions_def=monthly_partitions,
    metadata={"partition_expr": "date"},
    backfill_policy=BackfillPolicy.single_run(),
    code_version="model-sweep-v1",
    retry_policy=IO_RETRY,  # Delta (quant_assets/retries.py)
    ins={
        "pit_features": AssetIn(partition_mapping=up_to_month_end()),
        "labels": AssetIn(partition_mapping=up_to_month_end()),
        "market_bars": AssetIn(partition_mapping=AllPartitionMapping()),
    },
    automation_condition=month_closed(("pit_features", "labels")),
)
def model_sweep(
    context: AssetExecutionContext,
    config: ModelSweepConfig,
    pit_features: VersionedFrame,
    labels: VersionedFrame,
    market_bars: VersionedFrame,
    corporate_actions: VersionedFrame,
):
    """The month's trials of a small grid of LightGBM hyper-parameters and strategy
    parameters (``trials/monthly.py``), each evaluated like a sweep trial on the month
    alone: their daily returns (date, trial_id, params, net_return), trials of the
    validation report's DSR and PBO."""
    with measured(context) as meter:  # run costs: wall/CPU/memory/rows/cost
        space = config.to(MonthlySweepSpace).space(SETTINGS.embargo_days, SETTINGS.model_seed)
        joined = join_features_labels(pit_features.frame, labels.frame)
        prices = total_return_index(market_bars.frame, corporate_actions.frame)
        parts, sharpes = [], {}
        for month in months_of(context):
            rows, metrics = evaluate_sweep_month(
                joined, feature_columns(pit_features.frame), pit_features.frame, prices, space, month
            )
            parts.append(rows)
            sharpes.update({k: float(m.get("sharpe", float("nan"))) for k, m in metrics.items()})
        frame = pl.concat(parts)
        meter.rows(rows_in=pit_features.frame.height, rows_out=frame.height)
    return Output(
        frame,
        metadata={
            "trials": frame["trial_id"].n_unique(),
            "trial_sharpes": MetadataValue.json(sharpes),
            "input_versions": MetadataValue.json(input_versions(
                {"pit_features": pit_features, "labels": labels, "market_bars": market_bars,
                 "corporate_actions": corporate_actions})),
        },
    )
