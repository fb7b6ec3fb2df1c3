"""The one model registry: registered model names, the ``champion`` / ``previous_champion``
aliases, promotion and rollback, in MLflow's model registry.

Every alias move goes through ``promote`` and ``rollback`` here (the promotion gate's
``champion_model`` asset, the serving alarm, the command line, tests), so promotion and
rollback agree on what ``previous_champion`` means, and each move is written to the audit
trail. Functions take an ``MlflowClient`` (``MlflowTracking.client()``), so they work against
any tracking URI. Which model a version is (the exact LightGBM string behind it) is the
``lgbm_model`` Delta row of the run that registered it: see ``quant_assets.serving.served``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from quant_assets import audit

# One registered model per model family; every month's model is a version of it.
MODEL_NAME = "quant-assets-lgbm"
SEQ_MODEL_NAME = "quant-assets-seq"
REGISTERED_MODELS = {"lgbm": MODEL_NAME, "seq": SEQ_MODEL_NAME}  # model family -> name
CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous_champion"
MODEL_SHA256_TAG = "quant.model_sha256"
ROLLBACK_REASON_TAG = "quant.rollback_reason"
ROLLBACK_TIME_TAG = "quant.rolled_back_at"
ROLLBACK_TO_TAG = "quant.rolled_back_to"


class RegistryError(LookupError):
    pass


@dataclass(frozen=True)
class VersionInfo:
    """A registered version: the MLflow run that logged it and the sha256 it was tagged with."""

    name: str
    version: int
    run_id: str
    model_sha256: str | None


def alias_version(client: MlflowClient, alias: str = CHAMPION, name: str = MODEL_NAME) -> int | None:
    """The version behind ``alias`` of ``name``, or None if the alias (or model) is unset."""
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def version_info(client: MlflowClient, version: int, name: str = MODEL_NAME) -> VersionInfo:
    """The run behind ``name`` version ``version`` and its ``quant.model_sha256`` tag."""
    try:
        mv = client.get_model_version(name, str(int(version)))
    except MlflowException as exc:
        raise RegistryError(f"model version {name!r} v{version} does not exist in the registry") from exc
    if not mv.run_id:
        raise RegistryError(f"{name} version {version} has no MLflow run")
    tagged = client.get_run(mv.run_id).data.tags.get(MODEL_SHA256_TAG)
    return VersionInfo(name, int(version), mv.run_id, tagged)


def alias_info(client: MlflowClient, alias: str = CHAMPION, name: str = MODEL_NAME) -> VersionInfo:
    """``version_info`` of the version behind ``alias``, resolved now."""
    version = alias_version(client, alias, name)
    if version is None:
        raise RegistryError(f"{name} has no '{alias}' alias: promote a version first")
    return version_info(client, version, name)


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


@dataclass(frozen=True)
class Promotion:
    model_name: str
    version: int
    previous_version: int | None  # the champion before this promotion (None: first one)
    changed: bool  # False when ``version`` already was the champion


def promote(
    client: MlflowClient,
    version: int,
    name: str = MODEL_NAME,
    *,
    reason: str = "",
    dagster_run_id: str | None = None,
) -> Promotion:
    """Make ``version`` the champion. The previous champion (if another version) becomes
    ``previous_champion``; promoting the current champion again changes nothing (and records
    nothing). ``reason`` and ``dagster_run_id`` go into the audit row."""
    version = int(version)
    try:
        client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"model version {name!r} v{version} does not exist in the registry") from exc
    current = alias_version(client, CHAMPION, name)
    if current == version:
        return Promotion(name, version, alias_version(client, PREVIOUS_CHAMPION, name), False)
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, str(current))
    client.set_registered_model_alias(name, CHAMPION, str(version))
    audit.record(audit.AuditEvent(
        "promote", "model", name, model_version=str(version), reason=reason,
        dagster_run_id=dagster_run_id,
        tags={"alias": CHAMPION, "previous_version": str(current or "")},
    ))
    return Promotion(name, version, current, True)


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


# --- audited reads ---------------------------------------------------------------------------

REQUIRE_REASON_ENV = "QUANT_REQUIRE_REASON"


def require_reason(reason: str | None, command: str) -> str:
    """The reason given for reading a model; with QUANT_REQUIRE_REASON=1 an empty one is
    refused (RegistryError naming the command's --reason)."""
    import os

    text = (reason or "").strip()
    if not text and os.environ.get(REQUIRE_REASON_ENV, "").strip() in ("1", "true", "yes"):
        raise RegistryError(
            f"--reason is required ({REQUIRE_REASON_ENV}=1): say why {command} reads the model"
        )
    return text


def record_read(name: str, version: int, *, via: str, reason: str, run_id: str | None = None,
                root: str | None = None, extra: dict[str, str] | None = None) -> None:
    """A ``download`` row of the audit trail: who read which model version, when and why.
    Every read of a registered model outside the scorer's ``serve`` goes through here
    (``download-model``, ``reproduce``, ``explain``)."""
    audit.record(audit.AuditEvent(
        "download", "model", name, model_version=str(int(version)), reason=reason,
        tags={"via": via, **({"mlflow_run_id": run_id} if run_id else {}), **(extra or {})},
    ), root)


def versions_of_run(client: MlflowClient, run_id: str) -> list[tuple[str, int]]:
    """(registered model, version) of every version a run registered."""
    return sorted((v.name, int(v.version)) for v in client.search_model_versions(f"run_id = '{run_id}'"))
