"""The trial registry of sweeps, in Delta: the plan (trial id -> resolved spec), the registry
(one row per finished trial: params, metrics, MLflow child run) and the trials' daily returns
(the returns matrix of the validation report's DSR and PBO).

Pure storage over the warehouse (no Dagster, no MLflow).
"""

from __future__ import annotations

import json
import math
from typing import Any

import polars as pl

from quant_assets.trials.search import TrialSpec
from quant_assets.warehouse import PartitionKeys, Warehouse

PLAN_TABLE = ["sweep_plan"]
REGISTRY_TABLE = ["sweep_trials"]
RETURNS_TABLE = ["trial_returns"]
SWEEP_TAG = "quant.sweep"
ROLE_TAG = "quant.sweep_role"
TRIAL_TAG = "quant.trial_id"


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
            "`python -m quant_assets sweep` (quant_assets.cli.sweep.register_sweep) first"
        )
    return TrialSpec.from_json(rows.item(0, "spec"))


def planned_trials(warehouse: Warehouse, sweep: str | None = None) -> set[str]:
    """Trial ids with a row in the plan (of `sweep`, or of any sweep)."""
    if not warehouse.exists(PLAN_TABLE):
        return set()
    frame = warehouse.read(PLAN_TABLE, columns=["trial_id", "sweep"]).frame
    if sweep is not None:
        frame = frame.filter(pl.col("sweep") == sweep)
    return set(frame["trial_id"])


def add_to_plan(warehouse: Warehouse, trials: list[TrialSpec]) -> list[TrialSpec]:
    """Write the trials not planned yet; returns them (a plan row is never replaced)."""
    planned = planned_trials(warehouse)
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
    return new


def best_trial(registry: pl.DataFrame) -> dict[str, Any]:
    """The registry row with the highest Sharpe ratio (ties: smallest trial id)."""
    ranked = registry.with_columns(
        _key=pl.when(pl.col("sharpe").is_finite()).then(pl.col("sharpe")).otherwise(-math.inf)
    ).sort(["_key", "trial_id"], descending=[True, False])
    if ranked.is_empty():
        raise ValueError("the trial registry holds no trials of this sweep")
    return ranked.drop("_key").row(0, named=True)




def pending_batches(registered: list[str], done: set[str], size: int) -> list[list[str]]:
    """The registered trials not done, as batches of at most `size` trials that are
    consecutive in the registration order (a run's partition range covers exactly its
    batch: a finished trial between two pending ones splits them, so it is never rerun)."""
    if size < 1:
        raise ValueError(f"batch size {size} must be >= 1")
    batches: list[list[str]] = []
    current: list[str] = []
    for key in registered:
        if key in done:
            if current:
                batches.append(current)
            current = []
            continue
        current.append(key)
        if len(current) == size:
            batches.append(current)
            current = []
    if current:
        batches.append(current)
    return batches


def sweep_results(warehouse: Warehouse, sweep: str) -> dict[str, float]:
    """Trial id -> Sharpe ratio of the finished trials of `sweep` (what an adaptive sweep's
    study is told)."""
    if not warehouse.exists(REGISTRY_TABLE):
        return {}
    frame = warehouse.read(REGISTRY_TABLE, columns=["trial_id", "sweep", "sharpe"]).frame
    frame = frame.filter(pl.col("sweep") == sweep)
    return dict(zip(frame["trial_id"], frame["sharpe"].cast(pl.Float64), strict=True))

