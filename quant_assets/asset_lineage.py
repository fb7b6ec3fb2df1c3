"""Lineage of an asset materialisation, the Dagster side of the one lineage logger (one call per
model, backtest and report; `resources.tracking.MlflowTracking.run` is the MLflow side).

``lineage_of`` builds the lineage record (``quant_assets.lineage``) from the step's
context and the versioned inputs; ``lineage_metadata`` is the essentials as Dagster
output metadata, with the MLflow run id, so that either system leads to the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import AssetExecutionContext, MetadataValue

from quant_assets.lineage import collect_lineage
from quant_assets.warehouse import VersionedFrame


def input_versions(inputs: Mapping[str, VersionedFrame]) -> dict[str, int]:
    return {name: vf.version for name, vf in inputs.items() if vf.version is not None}


def lineage_of(
    context: AssetExecutionContext,
    *,
    inputs: Mapping[str, VersionedFrame],
    config: dict[str, Any],
    seeds: dict[str, int],
    partition_keys: list[str] | None = None,
    feature_versions: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if partition_keys is None:
        partition_keys = list(context.partition_keys) if context.has_partition_key_range or context.has_partition_key else []
    return collect_lineage(
        asset_key=context.asset_key.to_user_string(),
        partition_keys=partition_keys,
        input_versions=input_versions(inputs),
        config=config,
        seeds=seeds,
        feature_versions=feature_versions,
        dagster_run_id=context.run_id,
        extra=extra,
    )


def lineage_metadata(lineage: Mapping[str, Any], mlflow_run_ids: list[str]) -> dict[str, Any]:
    return {
        "mlflow_run_ids": MetadataValue.json(mlflow_run_ids),
        "input_versions": MetadataValue.json(lineage["input_versions"]),
        "git_commit": str(lineage["git_commit"]),
        "git_dirty": str(lineage["git_dirty"]),
        "config_hash": lineage["config_hash"],
        "seeds": MetadataValue.json(lineage["seeds"]),
    }
