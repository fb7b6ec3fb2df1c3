"""Lineage of an asset materialisation, the Dagster side of the one lineage logger (one call per
model, backtest and report; `resources.tracking.MlflowTracking.run` is the MLflow side).

``lineage_of`` builds the lineage record (``quant_assets.lineage``) from the step's
context and the versioned inputs; ``lineage_metadata`` is the essentials as Dagster
output metadata, with the MLflow run id, so that either system leads to the other.

Every table a step reads through the IO manager is noted here (``note_read``, called by
``resources.io_manager``), so the record holds the Delta version of *every* input the step
read (``input_tables``), not only those the asset passes explicitly: ``python -m quant_assets
reproduce`` pins them all when it rebuilds the step.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from dagster import AssetExecutionContext, MetadataValue

from quant_assets.lineage import collect_lineage
from quant_assets.settings import load_settings
from quant_assets.warehouse import VersionedFrame

# (Dagster run id, op name) -> {table uri: (table key, Delta version)}: what the IO manager
# loaded for a step. Steps load their inputs in the process that runs them (every executor),
# so a process-wide note is enough; only the most recent steps are kept.
_READS: OrderedDict[tuple[str, str], dict[str, tuple[str, int]]] = OrderedDict()
_MAX_STEPS = 256


def note_read(run_id: str, op_name: str, table: str, uri: str, version: int | None) -> None:
    """Record that step (run_id, op_name) read ``table`` at Delta ``version``."""
    if version is None:
        return
    reads = _READS.setdefault((run_id, op_name), {})
    _READS.move_to_end((run_id, op_name))
    reads[uri] = (table, int(version))
    while len(_READS) > _MAX_STEPS:
        _READS.popitem(last=False)


def step_reads(run_id: str, op_name: str) -> dict[str, tuple[str, int]]:
    return dict(_READS.get((run_id, op_name), {}))


def input_versions(inputs: Mapping[str, VersionedFrame]) -> dict[str, int]:
    return {name: vf.version for name, vf in inputs.items() if vf.version is not None}


def input_tables(
    inputs: Mapping[str, VersionedFrame], reads: Mapping[str, tuple[str, int]] | None = None
) -> dict[str, int]:
    """Version of every table read: the IO manager's reads of the step, plus the explicit
    inputs (a table read straight through the warehouse is named by its URI's last part)."""
    tables = {table: version for table, version in (reads or {}).values()}
    for vf in inputs.values():
        if vf.version is None:
            continue
        known = (reads or {}).get(vf.uri)
        tables[known[0] if known else vf.uri.rstrip("/").rsplit("/", 1)[-1]] = int(vf.version)
    return tables


def lineage_of(
    context: AssetExecutionContext,
    *,
    inputs: Mapping[str, VersionedFrame],
    config: dict[str, Any],
    seeds: dict[str, int],
    partition_keys: list[str] | None = None,
    feature_versions: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
    asset_key: str | None = None,
) -> dict[str, Any]:
    """``asset_key``: which output's key names the lineage, for a multi-asset (Dagster
    refuses ``context.asset_key`` there)."""
    if partition_keys is None:
        partition_keys = list(context.partition_keys) if context.has_partition_key_range or context.has_partition_key else []
    return collect_lineage(
        asset_key=asset_key or context.asset_key.to_user_string(),
        partition_keys=partition_keys,
        input_versions=input_versions(inputs),
        input_tables=input_tables(inputs, step_reads(context.run_id, context.op_def.name)),
        config=config,
        seeds=seeds,
        feature_versions=feature_versions,
        dagster_run_id=context.run_id,
        dagster_job=context.job_name,
        extra=extra,
    )


def explain_command(previous_run_id: str, run_id: str) -> str:
    return f"python -m quant_assets explain {previous_run_id} {run_id}"


def mlflow_run_url(run_id: str, ui_url: str | None = None) -> str:
    """The run's page in the MLflow UI (its ``/#/runs/<id>`` route finds the experiment)."""
    return f"{(ui_url or load_settings().mlflow_ui_url).rstrip('/')}/#/runs/{run_id}"


def lineage_metadata(lineage: Mapping[str, Any], mlflow_run_ids: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "mlflow_run_ids": MetadataValue.json(mlflow_run_ids),
        "input_versions": MetadataValue.json(lineage["input_versions"]),
        "git_commit": str(lineage["git_commit"]),
        "git_dirty": str(lineage["git_dirty"]),
        "config_hash": lineage["config_hash"],
        "seeds": MetadataValue.json(lineage["seeds"]),
    }
    # clickable in the UI; a monthly model asset links each month's run
    for i, run_id in enumerate(mlflow_run_ids[:24]):
        meta["mlflow_run" if len(mlflow_run_ids) == 1 else f"mlflow_run_{i + 1}"] = MetadataValue.url(
            mlflow_run_url(run_id))
    # set by MlflowTracking.run: the last finished run of the same asset and partitions
    previous = lineage.get("previous_run_id")
    if previous and mlflow_run_ids:
        meta["explain_previous"] = MetadataValue.md(
            "What changed since the previous run of these partitions:\n\n"
            f"`{explain_command(previous, mlflow_run_ids[-1])}`"
        )
    return meta
