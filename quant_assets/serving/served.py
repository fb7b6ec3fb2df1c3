"""The model behind a registered version, as serving uses it.

Pure (no MLflow): the registry (``resources.model_registry``) says which run registered a
version and which sha256 it was tagged with; the model itself is the ``lgbm_model`` Delta row
written by that run (``mlflow_run_id``): the exact model string, its sha256, the feature
columns and the training window (the drift reference). The sha256 is checked against the
run's tag, so a row and a registry entry cannot silently disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from quant_assets.models.lgbm import TrainedModel


class ServedModelError(LookupError):
    pass


@dataclass(frozen=True)
class ServedModel:
    """A registered version and the model behind it."""

    version: int
    run_id: str
    model: TrainedModel
    record: dict[str, Any]


def model_record(lgbm_models: pl.DataFrame, run_id: str) -> dict[str, Any]:
    """The ``lgbm_model`` row written by MLflow run ``run_id``."""
    rows = lgbm_models.filter(pl.col("mlflow_run_id") == run_id)
    if rows.height != 1:
        raise ServedModelError(
            f"lgbm_model has {rows.height} rows for MLflow run {run_id}: the month was "
            "retrained since this version was registered (re-promote a current version)"
        )
    return rows.row(0, named=True)


def served_model(
    version: int, run_id: str, tagged_sha256: str | None, lgbm_models: pl.DataFrame
) -> ServedModel:
    """The model of a registered version (its run ``run_id``, tagged ``tagged_sha256``)
    from the ``lgbm_model`` table (or the rows of it that may hold the version)."""
    record = model_record(lgbm_models, run_id)
    model = TrainedModel.from_record(record)  # verifies model_str against its sha256
    if tagged_sha256 is not None and tagged_sha256 != model.sha256:
        raise ServedModelError(
            f"version {version}: lgbm_model sha256 {model.sha256} != run tag {tagged_sha256}"
        )
    return ServedModel(int(version), run_id, model, record)
