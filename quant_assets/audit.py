"""Audit trail: an append-only Delta table ``audit_log`` of who did what, when and why.

One row per action: ``materialize`` (an asset partition written), ``register`` (a model
version registered), ``promote`` / ``rollback`` (a registry alias moved), ``download``
(an artefact fetched), ``serve`` (a scorer loaded a model version to serve it), ``gate``
(the promotion gate's decision on a month's comparison: promote now, wait for a person, or
nothing to promote), ``capital`` (a day's target weights cut by the capital rule). Columns (``AUDIT_SCHEMA``): event_id, time (UTC), actor, action,
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

Who writes rows: the run-status sensors of ``sensors/audit.py`` (one ``materialize`` row per
asset and run, ``materialize_failed`` per failed run), the model registry
(``resources/model_registry.py``: promote, rollback) and the command line
(``python -m quant_assets audit`` reads them back).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

AUDIT_TABLE = "audit_log"
ACTIONS = ("materialize", "materialize_failed", "register", "promote", "rollback", "download",
           "serve", "gate", "capital")
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
    from quant_assets.warehouse import Warehouse

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

    from quant_assets.warehouse import storage_options_from_env

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
