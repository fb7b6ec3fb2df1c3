"""The one model registry: registered model names, the ``champion`` / ``previous_champion``
aliases, promotion and rollback, in MLflow's model registry.

Every alias move goes through ``promote`` and ``rollback`` here (the promotion gate's
``champion_model`` asset, the serving alarm, the command line, tests), so promotion and
rollback agree on what ``previous_champion`` means, and each move is written to the audit
trail. Functions take an ``MlflowClient`` (``MlflowTracking.client()``), so they work against
any tracking URI. Which model a version is (the exact LightGBM string or GRU weights behind
it) is the ``lgbm_model`` / ``seq_model`` Delta row of the run that registered it: see
``quant_assets.serving.served``.

One champion for the desk, whichever family it is: the ``champion`` alias is held by at most
one of the registered models (``REGISTERED_MODELS``), and so is ``previous_champion``.
Promoting a version of one family moves the aliases off the other family's registered model
(its champion becomes the ``previous_champion``); a rollback moves ``champion`` back to the
``previous_champion``, across families when the previous champion was the other family's.
With one family in use this is the plain alias move of one registered model.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:  # mlflow is imported where it is used (see resources/tracking.py)
    from mlflow import MlflowClient

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
    from mlflow.exceptions import MlflowException
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def version_info(client: MlflowClient, version: int, name: str = MODEL_NAME) -> VersionInfo:
    """The run behind ``name`` version ``version`` and its ``quant.model_sha256`` tag."""
    from mlflow.exceptions import MlflowException
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


def champion_info(client: MlflowClient, alias: str = CHAMPION) -> VersionInfo | None:
    """The version behind ``alias`` among the registered models (the desk's one champion,
    whichever family), or None when no registered model holds it."""
    holder = alias_holder(client, alias)
    return version_info(client, holder[1], holder[0]) if holder else None


def family_of(name: str) -> str:
    """The model family ("lgbm" | "seq") of a registered model name."""
    for family, registered in REGISTERED_MODELS.items():
        if registered == name:
            return family
    raise RegistryError(f"{name!r} is none of the registered models {sorted(REGISTERED_MODELS.values())}")


def alias_holder(client: MlflowClient, alias: str = CHAMPION) -> tuple[str, int] | None:
    """(registered model, version) holding ``alias`` among the registered models; an alias
    held by two models (set by hand) is refused rather than guessed."""
    held = [(n, v) for n in REGISTERED_MODELS.values() if (v := alias_version(client, alias, n)) is not None]
    if len(held) > 1:
        raise RegistryError(f"'{alias}' is held by several registered models {held}: keep one")
    return held[0] if held else None


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
    previous_model: str | None = None  # the registered model of ``previous_version``


def promote(
    client: MlflowClient,
    version: int,
    name: str = MODEL_NAME,
    *,
    reason: str = "",
    dagster_run_id: str | None = None,
) -> Promotion:
    """Make ``name`` v``version`` the champion. The previous champion (another version, of
    this family or the other) becomes ``previous_champion``; promoting the current champion
    again changes nothing (and records nothing). ``reason`` and ``dagster_run_id`` go into
    the audit row."""
    from mlflow.exceptions import MlflowException
    version = int(version)
    try:
        client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"model version {name!r} v{version} does not exist in the registry") from exc
    current = alias_holder(client, CHAMPION)
    if current == (name, version):
        previous = alias_holder(client, PREVIOUS_CHAMPION)
        return Promotion(name, version, previous[1] if previous else None, False,
                         previous[0] if previous else None)
    for other in REGISTERED_MODELS.values():  # one previous champion for the desk
        if alias_version(client, PREVIOUS_CHAMPION, other) is not None:
            client.delete_registered_model_alias(other, PREVIOUS_CHAMPION)
    if current is not None:
        client.set_registered_model_alias(current[0], PREVIOUS_CHAMPION, str(current[1]))
        if current[0] != name:
            client.delete_registered_model_alias(current[0], CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    audit.record(audit.AuditEvent(
        "promote", "model", name, model_version=str(version), reason=reason,
        dagster_run_id=dagster_run_id,
        tags={"alias": CHAMPION, "previous_version": str(current[1] if current else ""),
              "previous_model": current[0] if current else ""},
    ))
    return Promotion(name, version, current[1] if current else None, True,
                     current[0] if current else None)


@dataclass(frozen=True)
class Rollback:
    from_version: int
    to_version: int
    reason: str
    from_model: str = MODEL_NAME
    to_model: str = MODEL_NAME


def rollback(client: MlflowClient, reason: str, name: str | None = None,
             now: dt.datetime | None = None) -> Rollback:
    """Move ``champion`` back to ``previous_champion`` (of whichever family holds it) and tag
    the demoted version with the reason. ``previous_champion`` is then removed: the registry
    knows no older good version, so a second alarm cannot bounce between the two. ``name``
    (optional) is the registered model the caller believes holds ``champion``."""
    current = alias_holder(client, CHAMPION)
    if current is None or (name is not None and current[0] != name):
        raise RegistryError(f"{name or 'no registered model'}: no '{CHAMPION}' alias to roll back")
    previous = alias_holder(client, PREVIOUS_CHAMPION)
    if previous is None:
        raise RegistryError(
            f"{current[0]}: champion is version {current[1]} and there is no "
            f"'{PREVIOUS_CHAMPION}' to roll back to"
        )
    stamp = (now or dt.datetime.now(dt.UTC)).isoformat()
    demoted_name, demoted = current
    client.set_model_version_tag(demoted_name, str(demoted), ROLLBACK_REASON_TAG, reason[:5000])
    client.set_model_version_tag(demoted_name, str(demoted), ROLLBACK_TIME_TAG, stamp)
    client.set_model_version_tag(demoted_name, str(demoted), ROLLBACK_TO_TAG, str(previous[1]))
    if previous[0] != demoted_name:
        client.delete_registered_model_alias(demoted_name, CHAMPION)
    client.set_registered_model_alias(previous[0], CHAMPION, str(previous[1]))
    client.delete_registered_model_alias(previous[0], PREVIOUS_CHAMPION)
    audit.record(audit.AuditEvent(
        "rollback", "model", previous[0], model_version=str(previous[1]), reason=reason,
        tags={"alias": CHAMPION, "previous_version": str(demoted), "previous_model": demoted_name},
    ))
    return Rollback(demoted, previous[1], reason, demoted_name, previous[0])


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
