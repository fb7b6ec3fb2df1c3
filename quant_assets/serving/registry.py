"""The MLflow model registry as serving sees it: which version is `champion`, the model
behind a version, and rolling `champion` back to `previous_champion`.

Aliases are read and written with MlflowClient directly (the promotion gate in
``quant_assets.validation`` sets them; serving only follows and, on an alarm, rolls back).

The model of a version is the ``lgbm_model`` Delta row written by the run that registered
it (``mlflow_run_id``): that row holds the exact model string, its sha256, the feature
columns and the training window (the drift reference). The sha256 is checked against the
run's ``quant.model_sha256`` tag, so a row and a registry entry cannot silently disagree.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import polars as pl
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from quant_assets import audit
from quant_assets.models.lgbm import TrainedModel

MODEL_NAME = "quant-assets-lgbm"
CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous_champion"
ROLLBACK_REASON_TAG = "quant.rollback_reason"
ROLLBACK_TIME_TAG = "quant.rolled_back_at"
ROLLBACK_TO_TAG = "quant.rolled_back_to"


class RegistryError(LookupError):
    pass


@dataclass(frozen=True)
class ServedModel:
    """A registered version and the model behind it."""

    version: int
    run_id: str
    model: TrainedModel
    record: dict[str, Any]


def alias_version(client: MlflowClient, alias: str = CHAMPION, name: str = MODEL_NAME) -> int | None:
    """The version behind ``alias`` of ``name``, or None if the alias (or model) is unset."""
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def promote(client: MlflowClient, version: int, name: str = MODEL_NAME) -> int | None:
    """Point ``champion`` at ``version``, keeping the former champion as
    ``previous_champion``; returns the former champion (None if there was none)."""
    current = alias_version(client, CHAMPION, name)
    if current == int(version):
        return current
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, str(current))
    client.set_registered_model_alias(name, CHAMPION, str(int(version)))
    audit.record(audit.AuditEvent(
        "promote", "model", name, model_version=str(int(version)),
        tags={"alias": CHAMPION, "previous_version": str(current or "")},
    ))
    return current


@dataclass(frozen=True)
class Rollback:
    from_version: int
    to_version: int
    reason: str


def rollback(client: MlflowClient, reason: str, name: str = MODEL_NAME,
             now: dt.datetime | None = None) -> Rollback:
    """Move ``champion`` back to ``previous_champion`` and tag the demoted version with
    the reason. ``previous_champion`` is then removed: the registry knows no older good
    version, so a second alarm cannot bounce between the two."""
    current = alias_version(client, CHAMPION, name)
    previous = alias_version(client, PREVIOUS_CHAMPION, name)
    if current is None:
        raise RegistryError(f"{name}: no '{CHAMPION}' alias to roll back")
    if previous is None:
        raise RegistryError(
            f"{name}: champion is version {current} and there is no '{PREVIOUS_CHAMPION}' "
            "to roll back to"
        )
    stamp = (now or dt.datetime.now(dt.UTC)).isoformat()
    client.set_model_version_tag(name, str(current), ROLLBACK_REASON_TAG, reason[:5000])
    client.set_model_version_tag(name, str(current), ROLLBACK_TIME_TAG, stamp)
    client.set_model_version_tag(name, str(current), ROLLBACK_TO_TAG, str(previous))
    client.set_registered_model_alias(name, CHAMPION, str(previous))
    client.delete_registered_model_alias(name, PREVIOUS_CHAMPION)
    audit.record(audit.AuditEvent(
        "rollback", "model", name, model_version=str(previous), reason=reason,
        tags={"alias": CHAMPION, "previous_version": str(current)},
    ))
    return Rollback(current, previous, reason)


def model_record(lgbm_models: pl.DataFrame, run_id: str) -> dict[str, Any]:
    """The ``lgbm_model`` row written by MLflow run ``run_id``."""
    rows = lgbm_models.filter(pl.col("mlflow_run_id") == run_id)
    if rows.height != 1:
        raise RegistryError(
            f"lgbm_model has {rows.height} rows for MLflow run {run_id}: the month was "
            "retrained since this version was registered (re-promote a current version)"
        )
    return rows.row(0, named=True)


def load_version(client: MlflowClient, lgbm_models: pl.DataFrame, version: int,
                 name: str = MODEL_NAME) -> ServedModel:
    """The model registered as ``name`` version ``version``; ``lgbm_models`` is the
    ``lgbm_model`` table (or the rows of it that may hold the version)."""
    mv = client.get_model_version(name, str(int(version)))
    if not mv.run_id:
        raise RegistryError(f"{name} version {version} has no MLflow run")
    record = model_record(lgbm_models, mv.run_id)
    model = TrainedModel.from_record(record)  # verifies model_str against its sha256
    tagged = client.get_run(mv.run_id).data.tags.get("quant.model_sha256")
    if tagged is not None and tagged != model.sha256:
        raise RegistryError(
            f"{name} version {version}: lgbm_model sha256 {model.sha256} != run tag {tagged}"
        )
    return ServedModel(int(version), mv.run_id, model, record)


def promoted_at(version: int, name: str = MODEL_NAME, alias: str = CHAMPION,
                root: str | None = None) -> dt.datetime | None:
    """When ``alias`` last moved to ``version`` (a promote or rollback row of the audit
    trail), or None if the trail has no such move (an alias set by hand)."""
    rows = audit.read(root, obj=name).filter(
        pl.col("action").is_in(["promote", "rollback"])
        & (pl.col("model_version") == str(int(version)))
        & (pl.col("tags").str.json_path_match("$.alias") == alias)
    )
    return rows["time"][-1] if rows.height else None


def load_alias(client: MlflowClient, lgbm_models: pl.DataFrame, alias: str = CHAMPION,
               name: str = MODEL_NAME) -> ServedModel:
    """The model behind ``alias`` (default ``champion``), resolved now."""
    version = alias_version(client, alias, name)
    if version is None:
        raise RegistryError(f"{name} has no '{alias}' alias: promote a version first")
    return load_version(client, lgbm_models, version, name)
