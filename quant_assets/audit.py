"""Audit trail: an append-only Delta table ``audit_log`` of who did what, when and why.

One row per action: ``materialize`` (an asset partition written), ``register`` (a model
version registered), ``promote`` / ``rollback`` (a registry alias moved), ``download``
(an artefact fetched), ``serve`` (a scorer loaded a model version to serve it). Columns (``AUDIT_SCHEMA``): event_id, time (UTC), actor, action,
object_type, object (asset key or model name), partitions / model_version, reason,
dagster_run_id, tags (JSON of the run tags).

Who: ``QUANT_AUDIT_ACTOR``, else ``USER`` / ``LOGNAME``, else the Kubernetes service account
of the pod (the projected token's ``kubernetes.io/serviceaccount/service-account.name``
claim), else ``unknown``. Only names are recorded, never tokens or secrets, and tags whose
key looks like a credential are dropped.

Rows go through ``Warehouse.append``, never ``Warehouse.write``: the latter replaces a
selection or a whole table, which is right for assets and wrong for a log that must only
ever grow. An append commit only adds files, so concurrent appenders never conflict and no
earlier row can be replaced. The table lives at ``<warehouse>/audit_log``.

Entry points for the code location (registered by the lead):
- ``audit_run_success_sensor`` / ``audit_run_failure_sensor``: run-status sensors that
  record one ``materialize`` row per asset (with its partitions) of every successful run,
  and a ``materialize_failed`` row per failed run;
- ``audit_hook``: a success hook for jobs that prefer hooks over sensors;
- ``cli(argv)``: ``python -m quant_assets audit [--action A] [--since ISO] [--object O]``.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

AUDIT_TABLE = "audit_log"
ACTIONS = ("materialize", "materialize_failed", "register", "promote", "rollback", "download",
           "serve")
AUDIT_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "time": pl.Datetime("us", "UTC"),
    "actor": pl.String(),
    "action": pl.String(),
    "object_type": pl.String(),  # "asset" | "model"
    "object": pl.String(),
    "partitions": pl.List(pl.String()),
    "model_version": pl.String(),
    "reason": pl.String(),
    "dagster_run_id": pl.String(),
    "tags": pl.String(),
}
_SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
# tag keys that could carry a credential; their values never reach the log
_SECRET_KEY = re.compile(r"(secret|password|passwd|token|credential|api[_-]?key|private)", re.I)
_MAX_PARTITIONS = 10_000


class AuditError(ValueError):
    pass


def _service_account(token_path: Path = _SA_TOKEN) -> str | None:
    """The pod's service account name from its (JWT) token claims; the token itself is
    only decoded, never stored."""
    try:
        payload = token_path.read_text().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        k8s = claims.get("kubernetes.io", {})
        name = k8s.get("serviceaccount", {}).get("name")
        namespace = k8s.get("namespace")
        if name:
            return f"system:serviceaccount:{namespace}:{name}" if namespace else name
    except (OSError, IndexError, ValueError, AttributeError):
        return None
    return None


def current_actor(env: Mapping[str, str] | None = None, token_path: Path = _SA_TOKEN) -> str:
    env = os.environ if env is None else env
    for name in ("QUANT_AUDIT_ACTOR", "USER", "LOGNAME"):
        if env.get(name):
            return env[name]
    return _service_account(token_path) or "unknown"


def _clean_tags(tags: Mapping[str, str] | None) -> str:
    safe = {str(k): str(v) for k, v in (tags or {}).items() if not _SECRET_KEY.search(str(k))}
    return json.dumps(safe, sort_keys=True)


@dataclass(frozen=True)
class AuditEvent:
    action: str
    object_type: str
    object: str
    partitions: tuple[str, ...] = ()
    model_version: str | None = None
    reason: str = ""
    dagster_run_id: str | None = None
    tags: Mapping[str, str] | None = None
    actor: str | None = None
    time: dt.datetime | None = None

    def row(self) -> dict:
        if self.action not in ACTIONS:
            raise AuditError(f"audit action {self.action!r} is not one of {ACTIONS}")
        if self.object_type not in ("asset", "model"):
            raise AuditError(f"audit object_type {self.object_type!r} must be 'asset' or 'model'")
        when = self.time or dt.datetime.now(dt.UTC)
        if when.tzinfo is None:
            raise AuditError("audit time must be timezone-aware (UTC)")
        return {
            "event_id": uuid.uuid4().hex,
            "time": when.astimezone(dt.UTC),
            "actor": self.actor or current_actor(),
            "action": self.action,
            "object_type": self.object_type,
            "object": self.object,
            "partitions": list(self.partitions)[:_MAX_PARTITIONS],
            "model_version": self.model_version,
            "reason": self.reason,
            "dagster_run_id": self.dagster_run_id,
            "tags": _clean_tags(self.tags),
        }


def _warehouse_root(root: str | None) -> str:
    if root:
        return root
    from quant_assets.settings import get_settings

    return get_settings().warehouse_uri


def record(events: Sequence[AuditEvent] | AuditEvent, root: str | None = None) -> int:
    """Append events to ``<warehouse>/audit_log`` in one commit; returns the rows written."""
    from resources.warehouse import Warehouse

    events = [events] if isinstance(events, AuditEvent) else list(events)
    if not events:
        return 0
    frame = pl.DataFrame([e.row() for e in events], schema=AUDIT_SCHEMA)
    # append only: see the module docstring for why not Warehouse.write
    Warehouse(_warehouse_root(root)).append(
        [AUDIT_TABLE], frame, {"quant.audit_rows": str(frame.height)}
    )
    return frame.height


def read(
    root: str | None = None,
    action: str | None = None,
    since: dt.datetime | None = None,
    obj: str | None = None,
) -> pl.DataFrame:
    """Audit rows (oldest first), optionally filtered; empty when nothing was recorded."""
    from deltalake import DeltaTable

    from resources.warehouse import storage_options_from_env

    root = _warehouse_root(root)
    uri = root.rstrip("/") + "/" + AUDIT_TABLE
    options = storage_options_from_env(root)
    if not DeltaTable.is_deltatable(uri, storage_options=options):
        return pl.DataFrame(schema=AUDIT_SCHEMA)
    lf = pl.scan_delta(uri, storage_options=options or None)
    if action:
        lf = lf.filter(pl.col("action") == action)
    if since:
        lf = lf.filter(pl.col("time") >= since.astimezone(dt.UTC))
    if obj:
        lf = lf.filter(pl.col("object") == obj)
    return lf.sort("time", "event_id").collect()


# --- registry actions -------------------------------------------------------------------


def record_alias_change(
    client,
    model_name: str,
    alias: str,
    version: str | int,
    action: str,
    reason: str,
    root: str | None = None,
    dagster_run_id: str | None = None,
) -> AuditEvent:
    """Move ``alias`` of ``model_name`` to ``version`` with an MlflowClient and record it.

    ``action`` is ``promote`` or ``rollback``; the previous version goes into the tags so
    the log alone tells what a rollback undid. The alias moves first: a row is written
    only for a change that happened.
    """
    if action not in ("promote", "rollback"):
        raise AuditError(f"alias change action must be promote or rollback, got {action!r}")
    from mlflow.exceptions import MlflowException

    try:
        previous = str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        previous = ""
    client.set_registered_model_alias(model_name, alias, str(version))
    event = AuditEvent(
        action=action, object_type="model", object=model_name, model_version=str(version),
        reason=reason, dagster_run_id=dagster_run_id,
        tags={"alias": alias, "previous_version": previous},
    )
    record(event, root)
    return event


# --- Dagster: materialisations of a run -------------------------------------------------


def run_materializations(instance, run_id: str) -> list[tuple[str, tuple[str, ...]]]:
    """(asset key, partitions) per asset materialised by the run, partitions sorted."""
    from dagster import DagsterEventType

    parts: dict[str, set[str]] = {}
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        mat = entry.asset_materialization
        if mat is None:
            continue
        key = mat.asset_key.to_user_string()
        parts.setdefault(key, set())
        if mat.partition:
            parts[key].add(mat.partition)
    return [(k, tuple(sorted(v))) for k, v in sorted(parts.items())]


def record_run(instance, run, success: bool = True, root: str | None = None) -> int:
    """Audit rows for one finished Dagster run (a run object with run_id and tags)."""
    tags = dict(run.tags or {})
    reason = tags.get("quant/reason") or tags.get("dagster/backfill") or tags.get(
        "dagster/schedule_name") or tags.get("dagster/sensor_name") or ""
    if not success:
        return record(AuditEvent(
            action="materialize_failed", object_type="asset", object=run.job_name,
            reason=reason, dagster_run_id=run.run_id, tags=tags,
        ), root)
    events = [
        AuditEvent(action="materialize", object_type="asset", object=key, partitions=parts,
                   reason=reason, dagster_run_id=run.run_id, tags=tags)
        for key, parts in run_materializations(instance, run.run_id)
    ]
    return record(events, root)


def _dagster_entry_points():
    from dagster import DagsterRunStatus, run_status_sensor, success_hook

    # context parameters are unannotated: with postponed annotations Dagster cannot resolve
    # a type imported in this local scope

    @run_status_sensor(
        run_status=DagsterRunStatus.SUCCESS,
        monitor_all_code_locations=False,
        description="Append one audit_log row per asset materialised by each successful run.",
        minimum_interval_seconds=30,
    )
    def audit_run_success_sensor(context):  # RunStatusSensorContext
        record_run(context.instance, context.dagster_run, success=True)

    @run_status_sensor(
        run_status=DagsterRunStatus.FAILURE,
        description="Append an audit_log row for each failed run.",
        minimum_interval_seconds=30,
    )
    def audit_run_failure_sensor(context):  # RunStatusSensorContext
        record_run(context.instance, context.dagster_run, success=False)

    @success_hook(name="audit_hook")
    def audit_hook(context):  # HookContext
        # per step: the step's own materialisations (the run is still going)
        keys = [
            (e.asset_materialization.asset_key.to_user_string(), e.asset_materialization.partition)
            for e in context.instance.all_logs(context.run_id)
            if e.asset_materialization is not None and e.step_key == context.step_key
        ]
        by_key: dict[str, set[str]] = {}
        for key, part in keys:
            by_key.setdefault(key, set()).update([part] if part else [])
        run = context.instance.get_run_by_id(context.run_id)
        record([
            AuditEvent(action="materialize", object_type="asset", object=key,
                       partitions=tuple(sorted(parts)), dagster_run_id=context.run_id,
                       tags=dict(run.tags) if run else {})
            for key, parts in sorted(by_key.items())
        ])

    return audit_run_success_sensor, audit_run_failure_sensor, audit_hook


def __getattr__(name: str):
    # the Dagster objects are built on first use so that importing the module (the CLI,
    # the serving code) does not import Dagster
    if name in ("audit_run_success_sensor", "audit_run_failure_sensor", "audit_hook"):
        objs = dict(zip(
            ("audit_run_success_sensor", "audit_run_failure_sensor", "audit_hook"),
            _dagster_entry_points(), strict=True,
        ))
        globals().update(objs)
        return objs[name]
    raise AttributeError(name)


# --- command line -----------------------------------------------------------------------


def _parse_since(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--since {text!r} is not an ISO date or time") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def format_rows(frame: pl.DataFrame) -> Iterable[str]:
    for r in frame.iter_rows(named=True):
        what = r["object"] + (f" v{r['model_version']}" if r["model_version"] else "")
        parts = r["partitions"] or []
        if parts:
            what += f" [{parts[0]}" + (f" .. {parts[-1]}, {len(parts)}]" if len(parts) > 1 else "]")
        run = f" run {r['dagster_run_id'][:8]}" if r["dagster_run_id"] else ""
        why = f" ({r['reason']})" if r["reason"] else ""
        yield f"{r['time'].isoformat()} {r['actor']} {r['action']} {what}{run}{why}"


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m quant_assets audit``: print the audit trail, oldest first."""
    parser = argparse.ArgumentParser(prog="quant_assets audit", description=cli.__doc__)
    parser.add_argument("--action", choices=ACTIONS)
    parser.add_argument("--since", type=_parse_since, help="ISO date/time (UTC if no zone)")
    parser.add_argument("--object", dest="obj", help="asset key or model name")
    parser.add_argument("--warehouse", help="warehouse root (default: QUANT_WAREHOUSE_URI)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    frame = read(args.warehouse, args.action, args.since, args.obj)
    if args.json:
        for row in frame.iter_rows(named=True):
            print(json.dumps(row, default=str))
    else:
        for line in format_rows(frame):
            print(line)
    return 0
