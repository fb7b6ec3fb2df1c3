"""Sweeps on Dagster and MLflow: trials as dynamic partitions, resumable, with a trial registry.

- `register_sweep` writes the trials of a search space to the `sweep_plan` Delta table (trial
  id -> resolved spec, which is all the `sweep_trials` asset needs to run a partition), adds
  the missing trial ids to the `sweep_trials` dynamic partitions of an instance and creates
  the sweep's MLflow parent run (once). It returns the trials still pending: those without a
  row in the trial registry (the `sweep_trials` table), so a resumed sweep never reruns a
  finished trial.
- `sweep_trials_job` + `sweep_trials_sensor` run every registered, not yet materialised trial
  as its own run (pool limits locally, one Kubernetes Job per trial deployed);
  `run_sweep` does the same in this process, one trial after another (tests, notebooks).
- `export_best_trial` writes the best trial's reproducibility bundle (params, resolved spec,
  lineage with Delta versions, model strings) under QUANT_HOME and logs it to the parent run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from dagster import (
    AssetKey,
    AssetSelection,
    DagsterInstance,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    define_asset_job,
    sensor,
)

from quant_assets.lineage import collect_lineage
from quant_assets.models.sweep import SearchSpace, TrialSpec, plan_trials
from quant_assets.partitions import monthly_partitions, sweep_trial_partitions
from quant_assets.warehouse import PartitionKeys, Warehouse
from resources.tracking import MlflowTracking

PLAN_TABLE = ["sweep_plan"]
REGISTRY_TABLE = ["sweep_trials"]
RETURNS_TABLE = ["trial_returns"]
SWEEP_TAG = "quant.sweep"
ROLE_TAG = "quant.sweep_role"
TRIAL_TAG = "quant.trial_id"


def default_months() -> list[str]:
    """Every monthly partition as YYYY-MM (a space without months sweeps all of them)."""
    return [key[:7] for key in monthly_partitions.get_partition_keys()]


def completed_trials(warehouse: Warehouse, sweep: str | None = None) -> set[str]:
    """Trial ids with a row in the trial registry (of `sweep`, or of any sweep)."""
    if not warehouse.exists(REGISTRY_TABLE):
        return set()
    frame = warehouse.read(REGISTRY_TABLE, columns=["trial_id", "sweep"]).frame
    if sweep is not None:
        frame = frame.filter(pl.col("sweep") == sweep)
    return set(frame["trial_id"].to_list())


def load_trial_spec(warehouse: Warehouse, trial_id: str) -> TrialSpec:
    if not warehouse.exists(PLAN_TABLE):
        raise ValueError(f"trial {trial_id}: no sweep_plan table; register the sweep first")
    rows = warehouse.read(PLAN_TABLE, PartitionKeys("trial_id", (trial_id,))).frame
    if rows.is_empty():
        raise ValueError(
            f"trial {trial_id} is not in sweep_plan: register its sweep with "
            "quant_assets.models.sweeps.register_sweep before running the partition"
        )
    return TrialSpec.from_json(rows.item(0, "spec"))


def sweep_parent_run(tracking: MlflowTracking, space: SearchSpace) -> str:
    """Id of the sweep's MLflow parent run, created on first use (tags quant.sweep=name,
    quant.sweep_role=parent; the search space is its lineage config)."""
    client = tracking.client()
    found = client.search_runs(
        [tracking.experiment_id()],
        filter_string=f"tags.`{SWEEP_TAG}` = '{space.name}' and tags.`{ROLE_TAG}` = 'parent'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    if found:
        return found[0].info.run_id
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
    client = tracking.client()
    found = client.search_runs(
        [tracking.experiment_id()],
        filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}' and tags.`{ROLE_TAG}` = 'parent'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    if not found:
        raise ValueError(f"sweep {sweep}: no MLflow parent run; register the sweep first")
    return found[0].info.run_id


@dataclass
class SweepRegistration:
    sweep: str
    trial_ids: list[str]
    added_partitions: list[str]
    pending: list[str]
    parent_run_id: str


def register_sweep(
    instance: DagsterInstance,
    warehouse: Warehouse,
    tracking: MlflowTracking,
    space: SearchSpace,
) -> SweepRegistration:
    """Plan the trials of `space`, add only the missing ones (plan rows, dynamic partitions),
    ensure the parent run; the pending trials are those not yet in the registry."""
    trials = plan_trials(space, default_months())
    ids = [t.trial_id for t in trials]
    planned = set()
    if warehouse.exists(PLAN_TABLE):
        planned = set(warehouse.read(PLAN_TABLE, columns=["trial_id"]).frame["trial_id"])
    new = [t for t in trials if t.trial_id not in planned]
    if new:
        rows = pl.DataFrame(
            {
                "trial_id": [t.trial_id for t in new],
                "sweep": [t.sweep for t in new],
                "params": [json.dumps(t.params, sort_keys=True) for t in new],
                "spec": [t.to_json() for t in new],
            }
        )
        warehouse.write(PLAN_TABLE, rows, PartitionKeys("trial_id", tuple(rows["trial_id"])))
    existing = set(instance.get_dynamic_partitions(sweep_trial_partitions.name))
    added = [i for i in ids if i not in existing]
    if added:
        instance.add_dynamic_partitions(sweep_trial_partitions.name, added)
    parent = sweep_parent_run(tracking, space)
    done = completed_trials(warehouse, space.name)
    return SweepRegistration(space.name, ids, added, [i for i in ids if i not in done], parent)


sweep_trials_job = define_asset_job(
    "sweep_trials_job",
    selection=AssetSelection.assets("sweep_trials", "trial_returns"),
    partitions_def=sweep_trial_partitions,
    description="One sweep trial (a sweep_trials dynamic partition): walk-forward models, "
    "out-of-sample predictions, backtest, a trial registry row and its daily returns.",
)


@sensor(job=sweep_trials_job, minimum_interval_seconds=30)
def sweep_trials_sensor(context: SensorEvaluationContext):
    """A run per registered trial that is not materialised yet; the run key is the trial id,
    so a trial is requested once (a failed trial is rerun by launching its partition)."""
    registered = context.instance.get_dynamic_partitions(sweep_trial_partitions.name)
    done = context.instance.get_materialized_partitions(AssetKey("sweep_trials"))
    pending = [key for key in registered if key not in done]
    if not pending:
        return SkipReason("every registered sweep trial is materialised")
    return [RunRequest(run_key=key, partition_key=key) for key in pending]


def run_sweep(
    space: SearchSpace,
    resources: dict[str, Any],
    instance: DagsterInstance,
    limit: int | None = None,
) -> SweepRegistration:
    """Register `space` and materialise its pending trials in this process, one run per
    trial (at most `limit` of them). Returns the registration as it was before running."""
    from dagster import materialize

    from quant_assets.data.assets import corporate_actions, fundamentals, market_bars, universe
    from quant_assets.features.assets import labels, pit_features
    from quant_assets.models.assets import sweep_trial

    warehouse = resources["io_manager"].warehouse
    registration = register_sweep(instance, warehouse, resources["tracking"], space)
    todo = registration.pending if limit is None else registration.pending[:limit]
    upstream = [universe, corporate_actions, fundamentals, market_bars, pit_features, labels]
    for trial_id in todo:
        result = materialize(
            [*upstream, sweep_trial],
            selection=[sweep_trial],
            partition_key=trial_id,
            resources=resources,
            instance=instance,
            raise_on_error=True,
        )
        assert result.success
    return registration


def best_trial(registry: pl.DataFrame) -> dict[str, Any]:
    """The registry row with the highest Sharpe ratio (ties: smallest trial id)."""
    ranked = registry.with_columns(
        _key=pl.when(pl.col("sharpe").is_finite()).then(pl.col("sharpe")).otherwise(-math.inf)
    ).sort(["_key", "trial_id"], descending=[True, False])
    if ranked.is_empty():
        raise ValueError("the trial registry holds no trials of this sweep")
    return ranked.drop("_key").row(0, named=True)


def export_best_trial(
    warehouse: Warehouse, tracking: MlflowTracking, sweep: str, quant_home: Path
) -> Path:
    """Write the best trial's bundle to QUANT_HOME/sweeps/<sweep>/best_trial and log it to
    the sweep's parent run as the `best_trial/` artifact folder. The bundle is enough to
    rebuild the trial: trial.json (registry row: params, resolved spec, metrics, Delta input
    versions, MLflow ids), lineage.json (the child run's), models/<YYYY-MM>.txt."""
    registry = warehouse.read(REGISTRY_TABLE).frame.filter(pl.col("sweep") == sweep)
    best = best_trial(registry)
    folder = Path(quant_home) / "sweeps" / sweep / "best_trial"
    (folder / "models").mkdir(parents=True, exist_ok=True)
    client = tracking.client()
    client.download_artifacts(best["mlflow_run_id"], "models", str(folder))
    expected = {f"{m}.txt" for m in json.loads(best["model_sha256"])}
    found = {p.name for p in (folder / "models").iterdir()}
    if found != expected:
        raise ValueError(
            f"trial {best['trial_id']}: MLflow run {best['mlflow_run_id']} holds model files "
            f"{sorted(found)}, expected {sorted(expected)}"
        )
    lineage = tracking.load_lineage(best["mlflow_run_id"])
    (folder / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True, default=str))
    (folder / "trial.json").write_text(
        json.dumps({**best, "n_trials": registry.height}, indent=2, sort_keys=True, default=str)
    )
    client.log_artifacts(find_parent_run(tracking, sweep), str(folder), "best_trial")
    return folder
