"""MLflow tracking resource: the one place that talks to MLflow.

Every model, backtest and report materialisation opens one run with `MlflowTracking.run`,
which records the lineage (see `quant_assets.lineage`) as `quant.*` tags and as the
`lineage.json` artifact. Only aggregate metrics and report artifacts are logged; raw
predictions and positions stay in Delta.

Exactly once under retries and kills. A step may run its block again: Dagster retries it
(RetryPolicy) in the same Dagster run, or a killed step is run again by a new Dagster run.
So every run carries a deterministic key (``quant.run_key``: asset, partitions, Dagster run)
and ``run`` looks for it before creating one:

- a run with the same key (an earlier attempt of this step in this Dagster run) is resumed,
  whatever its status, instead of creating a second one; a model is registered only if no
  version of that run exists yet (``log_lgbm_model``/``log_seq_model``), so one FINISHED run
  and at most one model version exist per (asset, partition, Dagster run);
- a run stays marked ``quant.pending_commit`` until a later run of the same asset finds that
  its Dagster run committed the asset's Delta table (the commit's ``dagster.run_id``); one
  whose step process is gone (same host, pid and start time) without that commit -- killed
  mid-block, or after the block but before the commit -- is an orphan: it is marked FAILED
  with a ``quant.orphaned`` reason (its model version, if any, gets the same tag), and never
  counts as a result. A run of another host whose process cannot be checked stays pending.

Parent runs. Every run opened inside a Dagster run is the child (``mlflow.parentRunId``) of
one flow run per Dagster run (tag ``quant.flow_run``: the Dagster run id), so MLflow shows a
flow's monthly model, backtest and report runs together. The flow run is looked up before it is
created; two steps of one Dagster run that create it at once both keep the earliest and delete
theirs. It holds no lineage and no result (no ``quant.asset_key``, no run key): the exactly-once
counts are about its children only. It is FINISHED from its creation (nothing runs in it); its
children's statuses say how the flow went.

`ReplayTracking` is the tracking of a rebuild (``python -m quant_assets reproduce``): it
reads the real store (pinning aliases to the versions the logged run used) and logs the
rebuilt runs to a throwaway store.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import math
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

# mlflow is imported where a function talks to MLflow, not here: importing it takes ~2 s
# (as long as the rest of the code location), and every process that loads the definitions
# imports this module -- a run worker, each step worker (most steps never log to MLflow), a
# code server, a sensor's evaluation.
if TYPE_CHECKING:
    import mlflow
    from mlflow.tracking import MlflowClient

from quant_assets import audit
from quant_assets.instance import relax_local_sqlite
from quant_assets.lineage import lineage_tags

# MLflow limits (mlflow.utils.validation)
MAX_KEY_LENGTH = 250
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000

LINEAGE_ARTIFACT = "lineage.json"
MODEL_ARTIFACT = "model"

# Run tags of the exactly-once protocol (module docstring) and of what a run produced.
RUN_KEY_TAG = "quant.run_key"
PENDING_TAG = "quant.pending_commit"
ORPHAN_TAG = "quant.orphaned"
HOST_TAG, PID_TAG, PID_START_TAG = "quant.host", "quant.pid", "quant.pid_start"
OUTPUT_TAG = "quant.output_sha256"  # content hash of the rows the asset writes (warehouse)
PREVIOUS_RUN_TAG = "quant.previous_run_id"
MODEL_SHA256_TAG = "quant.model_sha256"
FLOW_RUN_TAG = "quant.flow_run"  # on a flow's parent run: its Dagster run id
PARENT_RUN_TAG = "mlflow.parentRunId"
MONTH_TAG = "quant.month"  # on a registered model version: the month its model serves
# MLflow 3 opens an experiment without this tag in GenAI mode (traces); ours trains models
# (the UI's ExperimentKind enum: "custom_model_development")
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# columns that name the run which wrote a row, not its content: out of OUTPUT_TAG's hash
RUN_SPECIFIC_COLUMNS = ("mlflow_run_id", "model_uri", "registered_version", "parent_run_id")


def model_name(family: str, month: dt.date | None) -> str:
    """The logged model's name: the family and the month it serves (``lgbm-2023-07``)."""
    return f"{family}-{month:%Y-%m}" if month is not None else MODEL_ARTIFACT


def _truncate(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts -> dotted keys; values stringified and truncated to MLflow's limits."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
            continue
        if isinstance(value, list | tuple):
            text = json.dumps(list(value), default=str)
        else:
            text = str(value)
        out[_truncate(name, MAX_KEY_LENGTH)] = _truncate(text, MAX_PARAM_VAL_LENGTH)
    return out


def finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The entries of `metrics` that are finite real numbers, as floats."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[_truncate(str(key), MAX_KEY_LENGTH)] = number
    return out


def ensure_sqlite_store(tracking_uri: str, artifact_root: str = "") -> None:
    """Create a local SQLite MLflow store all at once, if it does not exist yet.

    MLflow builds its schema lazily, on first use, as a chain of Alembic migrations each
    committed on its own: a process killed in the middle (SIGKILL, OOM, a pod eviction)
    leaves a half-migrated file on which every later run fails ("table datasets already
    exists"). So the schema is built in a private temporary file next to the store and
    only a complete store is put in place, with ``os.link`` (atomic, never replaces a
    file: a concurrent creator's equal store wins). A kill leaves at most a stray
    ``.mlflow.db.init-*`` file, never a broken store.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    if path.exists():
        rebase_moved_store(path, artifact_root)
        return
    import uuid

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.init-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        # the tracking store's schema includes the model registry's tables
        store = SqlAlchemyStore(f"sqlite:///{tmp}", _artifact_root(artifact_root) or str(path.parent / "mlruns"))
        store.engine.dispose()
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)


# Where a local SQLite store holds absolute artifact locations (file:// URIs).
_LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
)
_REBASED: set[str] = set()
# (tracking URI, experiment, Dagster run id) -> the flow's parent run (MlflowTracking._flow_run)
_FLOW_RUNS: dict[tuple[str, str, str], str] = {}


def rebase_moved_store(db: Path, artifact_root: str) -> bool:
    """Point a moved or copied local store's artifact locations at its new home.

    MLflow writes absolute ``file://`` artifact locations into the store (experiments, runs,
    logged models, model versions). A QUANT_HOME copied elsewhere kept the original's, so
    its new runs wrote their artifacts into the original home. The store is created with its
    artifact root next to it (``ensure_sqlite_store``: experiment 0 at ``<root>/0``); when
    that root is in another folder than the store but has the configured root's name (the
    default layout, ``<home>/mlflow.db`` + ``<home>/mlartifacts``), the store was moved, and
    every location under the old root is rewritten under the configured one -- in the store
    being opened, never in the original. Checked once per store and process.
    """
    import sqlite3
    from urllib.parse import unquote, urlparse

    new_root = _artifact_root(artifact_root)
    key = f"{db.resolve()}|{new_root}"
    if key in _REBASED or not new_root or not new_root.startswith("file:"):
        return False
    _REBASED.add(key)
    new_path = Path(unquote(urlparse(new_root).path))
    if new_path.parent != db.resolve().parent:
        return False  # not the co-located layout: nothing is inferred
    with sqlite3.connect(db, timeout=30) as conn:
        row = conn.execute("SELECT artifact_location FROM experiments WHERE experiment_id = 0").fetchone()
        if not row or not str(row[0]).startswith("file:") or not str(row[0]).endswith("/0"):
            return False
        old_root = str(row[0])[: -len("/0")]
        old_path = Path(unquote(urlparse(old_root).path))
        if old_root == new_root or old_path.name != new_path.name or old_path.parent == new_path.parent:
            return False
        for table, column in _LOCATION_COLUMNS:
            conn.execute(
                f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 - fixed names
                f"WHERE substr({column}, 1, ?) = ?",
                (new_root + "/", len(old_root) + 2, len(old_root) + 1, old_root + "/"),
            )
    return True


# MLflow's quiet settings (explicit environment settings still win): no telemetry calls
# (deployments have no outside network), no progress bars, no run URLs on stdout, no
# environment variable names recorded with models. MLflow reads them when it acts, so they
# are set when this resource is first used, not when the module is imported.
_QUIET_MLFLOW = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_RECORD_ENV_VARS_IN_MODEL_LOGGING": "false",
}


def _prepare_process(tracking_uri: str) -> None:
    for name, value in _QUIET_MLFLOW.items():
        os.environ.setdefault(name, value)
    if tracking_uri.startswith("sqlite:///"):
        # a local store: one fsync per MLflow write is not worth it (see quant_assets.instance)
        relax_local_sqlite(Path(tracking_uri.removeprefix("sqlite:///")).parent)


@contextmanager
def registry_of(uri: str) -> Iterator[None]:
    """The model registry of ``log_model(registered_model_name=...)`` set to ``uri`` for the
    call only. MLflow registers through its process-global registry URI, which
    ``set_registry_uri`` also exports to the environment (MLFLOW_REGISTRY_URI): left set, it
    sent every later client without an explicit registry, and every subprocess, to that store
    (a rebuild's throwaway store, a download's). There is no public getter of the unset
    global, hence the internal module attribute."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils

    before, before_env = registry_utils._registry_uri, os.environ.get("MLFLOW_REGISTRY_URI")
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        registry_utils._registry_uri = before
        if before_env is None:
            os.environ.pop("MLFLOW_REGISTRY_URI", None)
        else:
            os.environ["MLFLOW_REGISTRY_URI"] = before_env


def run_key(lineage: Mapping[str, Any]) -> str | None:
    """The key of (asset, partitions, Dagster run); None outside a Dagster run."""
    dagster_run_id = lineage.get("dagster_run_id")
    if not dagster_run_id:
        return None
    text = "\0".join([str(lineage.get("asset_key", "")),
                      ",".join(lineage.get("partition_keys") or []), str(dagster_run_id)])
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def output_hash(frame: Any) -> str:
    """``OUTPUT_TAG``: the content hash of an asset's rows, without run identifiers."""
    from quant_assets.warehouse import content_hash

    return content_hash(frame, RUN_SPECIFIC_COLUMNS)


def _process_start(pid: int) -> str | None:
    """Start time of process ``pid`` (clock ticks since boot; tells a reused pid apart)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5), after "pid (comm)"


def process_tags() -> dict[str, str]:
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid),
            PID_START_TAG: _process_start(pid) or ""}


def process_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the process that opened a run still runs: None when it cannot be told (another
    host, or no process tags)."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG):
        return None
    pid = int(tags[PID_TAG])
    if pid == os.getpid():
        return True
    started = _process_start(pid)
    if started is None:
        if Path("/proc").is_dir():
            return False
        try:  # no procfs (macOS): the pid alone
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return started == tags.get(PID_START_TAG) if tags.get(PID_START_TAG) else True


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def _artifact_root(location: str) -> str | None:
    if not location:
        return None
    if "://" in location or location.startswith("file:"):
        return location
    return Path(location).expanduser().resolve().as_uri()


class MlflowTracking(dg.ConfigurableResource):
    """MLflow runs, metrics, artifacts and registered LightGBM models for the pipeline."""

    tracking_uri: str = Field(description="MLflow tracking URI (sqlite:///..., http://...)")
    artifact_location: str = Field(
        default="",
        description="Artifact root for experiments this resource creates ('' = MLflow default)",
    )
    experiment: str = Field(default="quant-assets", description="MLflow experiment name")
    warehouse_root: str = Field(
        default="",
        description="Delta warehouse root: where an orphan check looks for a run's commit, and "
        "the audit trail of registrations ('' = QUANT_WAREHOUSE_URI, no orphan check)",
    )

    def _store(self) -> MlflowClient:
        """A client of the store this resource writes to (its registry too: a client without
        one takes the process's global registry URI, whatever set it last)."""
        from mlflow.tracking import MlflowClient
        _prepare_process(self.tracking_uri)
        ensure_sqlite_store(self.tracking_uri, self.artifact_location)
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def client(self) -> MlflowClient:
        """A fresh client bound to this resource's tracking URI (a local SQLite store is
        created complete or not at all, see `ensure_sqlite_store`)."""
        return self._store()

    def experiment_id(self) -> str:
        """Id of `experiment` in the store runs are read from (see ReplayTracking)."""
        return self._experiment_id()

    def _experiment_id(self) -> str:
        """Id of `experiment` in the store this resource writes to, created (with
        `artifact_location`) if missing."""
        from mlflow.exceptions import MlflowException
        client = self._store()
        found = client.get_experiment_by_name(self.experiment)
        if found is None:
            try:
                return client.create_experiment(
                    self.experiment, artifact_location=_artifact_root(self.artifact_location),
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                )
            except MlflowException:
                # another process created it between our lookup and create
                found = client.get_experiment_by_name(self.experiment)
                if found is None:
                    raise
        if found.tags.get(EXPERIMENT_KIND_TAG) is None:  # a store made before the tag was set
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return found.experiment_id

    @contextmanager
    def run(
        self,
        name: str,
        lineage: dict[str, Any],
        params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        parent_run_id: str | None = None,
        output: Any = None,
    ) -> Iterator[mlflow.ActiveRun]:
        """An active MLflow run carrying `lineage` as tags and as `lineage.json`.

        The run ends FINISHED when the block exits normally and FAILED on an exception.
        `parent_run_id` makes it a child run (sweeps: parent trial registry, child trials).
        `output`: the frame the asset writes; its content hash becomes the tag
        ``quant.output_sha256`` (what ``reproduce`` compares a rebuild with). Inside a Dagster
        run the run is opened exactly once per (asset, partitions, Dagster run): see the
        module docstring. The last finished run of the same asset and partitions by another
        Dagster run is recorded as ``previous_run_id`` in the lineage (``explain`` it).
        """
        import mlflow.lightgbm
        _prepare_process(self.tracking_uri)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.lightgbm.autolog(disable=True)  # we log models explicitly, once
        experiment_id = self._experiment_id()
        key = run_key(lineage)
        resume = None
        if key is not None:
            store = self._store()
            resume = self._same_key_run(store, experiment_id, key)
            self.reconcile(str(lineage.get("asset_key", "")), str(lineage["dagster_run_id"]))
            previous = self._previous_run(store, experiment_id, lineage)
            if previous:
                lineage["previous_run_id"] = previous
        run_tags = {**lineage_tags(lineage), **{str(k): str(v) for k, v in (tags or {}).items()}}
        if key is not None:
            run_tags.update({RUN_KEY_TAG: key, PENDING_TAG: "1", **process_tags()})
            if lineage.get("previous_run_id"):
                run_tags[PREVIOUS_RUN_TAG] = lineage["previous_run_id"]
        if output is not None:
            run_tags[OUTPUT_TAG] = output_hash(output)
        flow = None
        if key is not None and parent_run_id is None and mlflow.active_run() is None:
            flow = self._flow_run(experiment_id, lineage)
            if flow is not None:
                # the tag, not start_run(parent_run_id=): a resumed run keeps the same parent
                run_tags[PARENT_RUN_TAG] = flow
        run_tags = {
            _truncate(k, MAX_KEY_LENGTH): _truncate(v, MAX_TAG_VAL_LENGTH)
            for k, v in run_tags.items()
        }
        if resume is not None:
            # an earlier attempt of this step: resumed (RUNNING again), never a second run
            started = mlflow.start_run(run_id=resume, tags=run_tags, log_system_metrics=False,
                                       nested=mlflow.active_run() is not None)
        else:
            started = mlflow.start_run(
                experiment_id=experiment_id,
                run_name=name,
                tags=run_tags,
                parent_run_id=self._parent(parent_run_id),
                nested=mlflow.active_run() is not None,
                log_system_metrics=False,
            )
        with started as active:
            mlflow.log_text(
                json.dumps(lineage, sort_keys=True, indent=2, default=str), LINEAGE_ARTIFACT
            )
            if params:
                mlflow.log_params(flatten_params(params))
            yield active
        if flow is not None:  # the flow run's end time follows its latest child
            self._store().set_terminated(flow, "FINISHED")

    def _parent(self, parent_run_id: str | None) -> str | None:
        return parent_run_id

    def _flow_run(self, experiment_id: str, lineage: Mapping[str, Any]) -> str | None:
        """The parent run of the Dagster run that ``lineage`` belongs to, created on first use
        (see the module docstring)."""
        dagster_run_id = str(lineage["dagster_run_id"])
        cache_key = (self.tracking_uri, experiment_id, dagster_run_id)
        if cache_key in _FLOW_RUNS:
            return _FLOW_RUNS[cache_key]
        client = self._store()

        def existing() -> list:
            return client.search_runs(
                [experiment_id], filter_string=f"tags.`{FLOW_RUN_TAG}` = '{_quote(dagster_run_id)}'",
                max_results=20,
            )

        found = existing()
        mine = None
        if not found:
            job = lineage.get("dagster_job") or "flow"
            mine = client.create_run(
                experiment_id, run_name=f"{job} {dagster_run_id[:8]}",
                tags={FLOW_RUN_TAG: dagster_run_id, "quant.dagster_run_id": dagster_run_id,
                      "quant.dagster_job": str(job), "mlflow.note.content":
                      f"Dagster run {dagster_run_id} ({job}): its model, backtest and report runs "
                      "are the children of this run."},
            ).info.run_id
            # ended at once: a container has no work of its own, and a Dagster run killed
            # before any child finished must not leave it RUNNING (each child's end moves
            # its end time on)
            client.set_terminated(mine, "FINISHED")
            found = existing()
        winner = min(found, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id
        if mine is not None and mine != winner:  # two steps created it at once: keep one
            client.delete_run(mine)
        _FLOW_RUNS[cache_key] = winner
        return winner

    @staticmethod
    def _same_key_run(client: MlflowClient, experiment_id: str, key: str) -> str | None:
        """The newest run with ``key`` (an earlier attempt of the step); older duplicates,
        which only a store written before this protocol can hold, are marked FAILED."""
        found = client.search_runs(
            [experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
            order_by=["attributes.start_time DESC"], max_results=50,
        )
        for extra in found[1:]:
            if extra.info.status != "FAILED":
                client.set_terminated(extra.info.run_id, "FAILED")
                client.set_tag(extra.info.run_id, ORPHAN_TAG, "duplicate of run " + found[0].info.run_id)
        return found[0].info.run_id if found else None

    @staticmethod
    def _previous_run(client: MlflowClient, experiment_id: str, lineage: Mapping[str, Any]) -> str | None:
        partitions = _truncate(",".join(lineage.get("partition_keys") or []), MAX_TAG_VAL_LENGTH)
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`quant.asset_key` = '{_quote(str(lineage.get('asset_key')))}' "
            f"and tags.`quant.partitions` = '{_quote(partitions)}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=20,
        )
        for run in found:
            if run.data.tags.get("quant.dagster_run_id") != lineage.get("dagster_run_id"):
                return run.info.run_id
        return None

    def reconcile(self, asset_key: str, current_dagster_run_id: str | None = None) -> dict[str, list[str]]:
        """Settle the pending runs of ``asset_key`` (module docstring): confirmed (their Dagster
        run committed the table), orphaned (their process is gone without that commit) or
        left pending (cannot tell yet). Returns the run ids of each outcome."""
        client = self._store()
        outcome: dict[str, list[str]] = {"confirmed": [], "orphaned": [], "pending": []}
        # a flow run is ended as soon as it is created; one still RUNNING lost its process
        # between the two calls (killed): ended here (harmless if that process still lives)
        for flow in client.search_runs(
            [self._experiment_id()],
            filter_string=f"tags.`{FLOW_RUN_TAG}` != '' and attributes.status = 'RUNNING'", max_results=100,
        ):
            client.set_terminated(flow.info.run_id, "FINISHED")
        pending = client.search_runs(
            [self._experiment_id()],
            filter_string=f"tags.`quant.asset_key` = '{_quote(asset_key)}' and tags.`{PENDING_TAG}` = '1'",
            max_results=1000,
        )
        committed: dict[str, bool | None] = {}
        for run in pending:
            tags = run.data.tags
            dagster_run = tags.get("quant.dagster_run_id") or ""
            if dagster_run == current_dagster_run_id:
                continue
            alive = process_alive(tags)
            if alive:
                outcome["pending"].append(run.info.run_id)
                continue
            if run.info.status == "RUNNING" and alive is False:
                self._orphan(client, run.info.run_id, "its step process ended while the run was "
                             "open (killed): not a result")
                outcome["orphaned"].append(run.info.run_id)
                continue
            if dagster_run not in committed:
                committed[dagster_run] = self.committed(asset_key, dagster_run, run.info.start_time)
            if committed[dagster_run]:
                client.delete_tag(run.info.run_id, PENDING_TAG)
                outcome["confirmed"].append(run.info.run_id)
            elif committed[dagster_run] is False and alive is False and run.info.status == "FINISHED":
                self._orphan(client, run.info.run_id, f"Dagster run {dagster_run} ended without "
                             f"committing {asset_key} (its step was killed): not a result")
                outcome["orphaned"].append(run.info.run_id)
            else:
                outcome["pending"].append(run.info.run_id)
        return outcome

    def committed(self, asset_key: str, dagster_run_id: str, since_ms: int | None = None) -> bool | None:
        """Whether Dagster run ``dagster_run_id`` committed ``asset_key``'s Delta table (the
        IO manager writes the run id into each commit); None without a warehouse root."""
        if not self.warehouse_root or not dagster_run_id:
            return None
        from quant_assets.warehouse import Warehouse

        warehouse = Warehouse(self.warehouse_root)
        key = asset_key.split("/")
        if not warehouse.exists(key):
            return False
        table = warehouse.table(key)
        limit = 100
        while True:
            history = table.history(limit=limit)
            if any(entry.get("dagster.run_id") == dagster_run_id for entry in history):
                return True
            oldest = min((entry.get("timestamp") or 0 for entry in history), default=0)
            if len(history) < limit or (since_ms is not None and oldest < since_ms - 60_000):
                return False
            limit *= 4

    def _orphan(self, client: MlflowClient, run_id: str, reason: str) -> None:
        client.set_terminated(run_id, "FAILED")
        client.set_tag(run_id, ORPHAN_TAG, reason)
        client.delete_tag(run_id, PENDING_TAG)
        for version in client.search_model_versions(f"run_id = '{run_id}'"):
            client.set_model_version_tag(version.name, version.version, ORPHAN_TAG, reason)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> dict[str, float]:
        """Log the finite numeric entries of `metrics` to the active run; returns them."""
        import mlflow
        clean = finite_metrics(metrics)
        if clean:
            mlflow.log_metrics(clean, step=step)
        return clean

    def log_text(self, text: str, artifact_file: str) -> None:
        import mlflow
        mlflow.log_text(text, artifact_file)

    def log_texts(self, texts: Mapping[str, str]) -> None:
        """Log many small text artifacts (path -> text) in one call: written to a temporary
        folder and logged as a tree (a sweep batch's models: one store call, not one per
        file)."""
        import mlflow
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in texts.items():
                path = Path(tmp) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            mlflow.log_artifacts(tmp)

    def log_step_metrics(self, steps: list[Mapping[str, Any]]) -> int:
        """Log ``steps[k]``'s finite metrics at step k of the active run, in batches (a
        sweep's batch run: one step per trial, charted by MLflow like a curve); every point
        carries the run's start time, so a resumed run logging again writes the same rows.
        Returns the points logged."""
        import mlflow
        from mlflow.entities import Metric

        run = mlflow.active_run()
        if run is None:
            raise RuntimeError("log_step_metrics must be called inside an active run(...) block")
        stamp = run.info.start_time
        points = [Metric(_truncate(name, MAX_KEY_LENGTH), value, stamp, step)
                  for step, metrics in enumerate(steps)
                  for name, value in finite_metrics(metrics).items()]
        return self._log_points(run.info.run_id, points)

    def log_curves(self, curves: Mapping[str, list[float]], step_offset: int = 1) -> int:
        """Log each curve (a value per boosting round or epoch) as the steps of one metric of
        the active run (MLflow's chart of a metric's history: a learning curve); non-finite
        points are left out. Every point carries the run's start time, so a resumed run that
        logs its curves again writes the same rows, not a second history. Returns the points."""
        import mlflow
        from mlflow.entities import Metric

        run = mlflow.active_run()
        if run is None:
            raise RuntimeError("log_curves must be called inside an active run(...) block")
        stamp = run.info.start_time
        points = [Metric(_truncate(f"curve_{name}", MAX_KEY_LENGTH), float(v), stamp, step + step_offset)
                  for name, values in curves.items() for step, v in enumerate(values)
                  if v is not None and math.isfinite(v)]
        return self._log_points(run.info.run_id, points)

    def _log_points(self, run_id: str, points: list) -> int:
        client = self._store()
        for start in range(0, len(points), 1000):  # MLflow's batch limit
            client.log_batch(run_id, metrics=points[start : start + 1000])
        return len(points)

    def log_table(self, frame: Any, artifact_file: str) -> None:
        """A polars frame as a CSV artifact (read in MLflow's artifact view)."""
        import mlflow
        mlflow.log_text(frame.write_csv(), artifact_file)

    def log_image(self, png: bytes, artifact_file: str) -> None:
        """PNG bytes as an artifact (shown inline in MLflow's artifact view)."""
        import mlflow
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_bytes(png)
            folder = str(Path(artifact_file).parent)
            mlflow.log_artifact(str(path), None if folder == "." else folder)

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        """Log a JSON (or .yaml/.yml) artifact; values JSON-encoded with default=str."""
        import mlflow
        if artifact_file.endswith((".yaml", ".yml")):
            mlflow.log_dict(json.loads(json.dumps(data, default=str)), artifact_file)
        else:
            mlflow.log_text(json.dumps(data, sort_keys=True, indent=2, default=str), artifact_file)

    def log_lgbm_model(
        self, trained: Any, registered_model_name: str | None = None, month: dt.date | None = None
    ) -> tuple[str, int | None]:
        """Log `trained` with the MLflow LightGBM flavour to the active run.

        Returns (model_uri, registered version or None). The exact model string is also
        stored as `model_str.txt` with its sha256 as a run tag. A run that already has a
        version of `registered_model_name` (an earlier attempt of the step) keeps it: the
        model is neither logged nor registered again. ``month``: the month the model serves,
        its logged name (``lgbm-2023-07``) and its registered version's tag and description.
        """
        import lightgbm
        import mlflow.lightgbm
        from mlflow.models.signature import ModelSignature
        from mlflow.types.schema import ColSpec, Schema

        def log(name: str | None):
            booster = trained.booster()
            signature = ModelSignature(
                inputs=Schema([ColSpec("double", c) for c in trained.feature_cols]),
                outputs=Schema([ColSpec("double")]),
            )
            return mlflow.lightgbm.log_model(
                booster,
                name=model_name("lgbm", month),
                registered_model_name=name,
                signature=signature,
                pip_requirements=[f"lightgbm=={lightgbm.__version__}"],
                tags={MODEL_SHA256_TAG: trained.sha256},
            )

        uri, version = self._log_model_once(log, registered_model_name, month, "LightGBM")
        mlflow.log_text(trained.model_str, "model_str.txt")
        mlflow.set_tags(
            {
                MODEL_SHA256_TAG: trained.sha256,
                "quant.best_iteration": str(trained.best_iteration),
            }
        )
        return uri, version

    def log_seq_model(
        self, trained, registered_model_name: str | None = None, month: dt.date | None = None
    ) -> tuple[str, int | None]:
        """Log a ``TrainedSeqModel`` with the MLflow PyTorch flavour to the active run.

        Returns (model_uri, registered version or None). The exact weights (``torch.save``
        bytes of the state dict, what ``TrainedSeqModel.sha256`` hashes) are also stored as
        ``state.pt`` and the sha256 is the run tag ``quant.model_sha256``, as for LightGBM.
        Registered once per run, as `log_lgbm_model`.
        """
        import mlflow.pytorch  # torch is heavy: only when a sequence model is logged
        import torch

        if mlflow.active_run() is None:
            raise RuntimeError("log_seq_model must be called inside an active run(...) block")

        def log(name: str | None):
            return mlflow.pytorch.log_model(
                trained.module(),
                name=model_name("seq", month),
                registered_model_name=name,
                # explicit requirements: inferring them imports the model in a subprocess (slow)
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                tags={MODEL_SHA256_TAG: trained.sha256},
                # pickle, not MLflow's default pt2: pt2 is a torch.export trace tied to an
                # example input's shapes; the pickled SeqNet class is importable wherever this
                # package is installed
                serialization_format="pickle",
            )

        uri, version = self._log_model_once(log, registered_model_name, month, "GRU")
        mlflow.log_dict(
            {
                "feature_cols": list(trained.feature_cols),
                "feature_mean": list(trained.feature_mean),
                "feature_std": list(trained.feature_std),
                "config": trained.config.to_dict(),
            },
            "scaler.json",
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "state.pt"
            path.write_bytes(trained.state_bytes)
            mlflow.log_artifact(str(path))
        mlflow.set_tags({MODEL_SHA256_TAG: trained.sha256})
        return uri, version

    def _log_model_once(self, log, registered_model_name: str | None, month: dt.date | None = None,
                        kind: str = "model") -> tuple[str, int | None]:
        """Log (and register) a model in the active run unless the run already registered a
        version of `registered_model_name`; record a new registration in the audit trail and
        name the version after its month (tag and description)."""
        import mlflow
        run = mlflow.active_run()
        if run is None:
            raise RuntimeError("log a model inside an active run(...) block")
        run_id = run.info.run_id
        if registered_model_name:
            existing = self.registered_version_of_run(registered_model_name, run_id)
            if existing is not None:
                self._name_version(registered_model_name, existing, month, kind)
                self._audit_registration(registered_model_name, existing, run_id, once=True)
                return existing.source, int(existing.version)
        with registry_of(self.tracking_uri):
            info = log(registered_model_name)
        version = info.registered_model_version
        if version is None:
            return info.model_uri, None
        registered = self._store().get_model_version(registered_model_name, str(version))
        self._name_version(registered_model_name, registered, month, kind)
        self._audit_registration(registered_model_name, registered, run_id)
        return info.model_uri, int(version)

    def _name_version(self, name: str, version, month: dt.date | None, kind: str) -> None:
        """The month a version serves, as its tag and description (an attempt killed between
        registering and naming is named by the retry: idempotent)."""
        if month is None or version.tags.get(MONTH_TAG) == f"{month:%Y-%m}":
            return
        client = self._store()
        client.set_model_version_tag(name, str(version.version), MONTH_TAG, f"{month:%Y-%m}")
        client.update_model_version(
            name, str(version.version),
            description=f"{kind} model for {month:%B %Y} ({month:%Y-%m}): trained walk-forward on "
            f"data before {month:%Y-%m}, it scores that month out of sample.",
        )

    def registered_version_of_run(self, name: str, run_id: str):
        """The version of registered model `name` that run `run_id` registered, or None."""
        found = self._store().search_model_versions(f"name = '{_quote(name)}' and run_id = '{run_id}'")
        return min(found, key=lambda v: int(v.version)) if found else None

    def _audit_registration(self, name: str, version, run_id: str, once: bool = False) -> None:
        root = self.warehouse_root or None
        if once:  # an earlier attempt registered it; its row may be missing if it was killed
            rows = audit.read(root, action="register", obj=name)
            if rows.height and (rows["model_version"] == str(version.version)).any():
                return
        tags = self._store().get_run(run_id).data.tags
        audit.record(audit.AuditEvent(
            "register", "model", name, model_version=str(version.version),
            partitions=tuple(p for p in tags.get("quant.partitions", "").split(",") if p),
            reason=f"{tags.get('quant.asset_key', 'model')} run {run_id}",
            dagster_run_id=tags.get("quant.dagster_run_id") or None,
            tags={"mlflow_run_id": run_id, "asset": tags.get("quant.asset_key", ""),
                  "model_sha256": tags.get(MODEL_SHA256_TAG, "")},
        ), root)

    def load_lineage(self, run_id: str) -> dict[str, Any]:
        """The `lineage.json` of a run."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client().download_artifacts(run_id, LINEAGE_ARTIFACT, tmp)
            return json.loads(Path(path).read_text())


@functools.cache
def _replay_client_class() -> type:
    """The class below, defined on first use: it subclasses ``MlflowClient``, and mlflow is
    imported only where a function talks to MLflow (see the imports at the top)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    class _ReplayClient(MlflowClient):
        """A read-only client of the real store whose aliases resolve to pinned versions (the
        versions a logged run used, whatever the alias points to now)."""

        def __init__(self, tracking_uri: str, pinned_aliases: Mapping[str, int]):
            super().__init__(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            self._pins = dict(pinned_aliases)

        def get_model_version_by_alias(self, name: str, alias: str):
            pinned = self._pins.get(f"{name}@{alias}")
            if pinned is None:
                return super().get_model_version_by_alias(name, alias)
            return self.get_model_version(name, str(pinned))

        def _refuse(self, *args, **kwargs):
            raise MlflowException("a rebuild only reads the real MLflow store")

        set_registered_model_alias = delete_registered_model_alias = _refuse
        create_model_version = delete_model_version = set_model_version_tag = _refuse
        create_run = set_terminated = set_tag = delete_tag = log_batch = _refuse

    return _ReplayClient


class ReplayTracking(MlflowTracking):
    """The tracking of a rebuild: runs, models and registrations go to the throwaway store at
    `tracking_uri`; reads (`client()`, `experiment_id()`, `load_lineage`) go to `source_uri`,
    read only, with `pinned_aliases` ("name@alias" -> version) resolving aliases."""

    source_uri: str = Field(description="the real MLflow store the logged run is in")
    pinned_aliases: dict[str, int] = Field(default_factory=dict)

    def client(self) -> MlflowClient:
        _prepare_process(self.source_uri)
        return _replay_client_class()(self.source_uri, self.pinned_aliases)

    def experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException
        found = self.client().get_experiment_by_name(self.experiment)
        if found is None:
            raise MlflowException(f"no experiment {self.experiment!r} in {self.source_uri}")
        return found.experiment_id

    def _parent(self, parent_run_id: str | None) -> str | None:
        return None  # the parent is in the real store; the rebuild's run stands alone

    def _flow_run(self, experiment_id: str, lineage: Mapping[str, Any]) -> str | None:
        return None
