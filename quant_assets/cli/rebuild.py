"""Rebuild a logged run from its lineage: what ``reproduce`` and ``explain`` share.

Every run the platform logs carries its lineage (``lineage.json``: asset key, partition
keys, the Delta version of every table the step read, config, seeds, feature versions, code
hash and git commit). A run is rebuilt by executing *the asset's own step again*, in an
ephemeral Dagster instance, with

- the Delta IO manager pinned to the logged versions (``PinnedDeltaIOManager``: Delta time
  travel through ``quant_assets.warehouse``; a table the lineage did not record is read as it
  was at the run's time), capturing the output instead of writing it;
- the logged config as run config and the logged partitions;
- ``resources.tracking.ReplayTracking``: reads from the real MLflow store with registry
  aliases pinned to the versions the run used, rebuilt runs logged to a throwaway store.

So a rebuild runs exactly the code that built the run (no second copy of any asset body), and
what differs from today's assets is picked up without edits here. ``KINDS`` is the dispatch
table: asset key -> the assets its step materialises and the hashes its run must carry;
a new asset kind is one entry.
"""

from __future__ import annotations

import datetime as dt
import math
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from quant_assets.settings import Settings
from quant_assets.warehouse import Warehouse, content_hash

MODEL_TAG = "quant.model_sha256"
PREDICTIONS_TAG = "quant.predictions_sha256"
OUTPUT_TAG = "quant.output_sha256"
# columns naming the run that wrote a row (as resources.tracking.RUN_SPECIFIC_COLUMNS)
RUN_SPECIFIC = ("mlflow_run_id", "model_uri", "registered_version", "parent_run_id")


class ReproduceError(RuntimeError):
    """The run cannot be reproduced (unknown run, unsupported asset, missing lineage, an
    input version that no longer exists...): exit code 2, with the reason."""


@dataclass(frozen=True)
class Kind:
    """How the runs of one asset are rebuilt: the assets its step materialises together (a
    multi-asset step names all of them) and the hash tags its runs log."""

    selection: tuple[str, ...]
    hashes: tuple[str, ...]


# asset key of a run (lineage "asset_key") -> how it is rebuilt
KINDS: dict[str, Kind] = {
    "lgbm_model": Kind(("lgbm_model",), (MODEL_TAG, PREDICTIONS_TAG)),
    "seq_model": Kind(("seq_model",), (MODEL_TAG, PREDICTIONS_TAG)),
    "backtest": Kind(("backtest",), (OUTPUT_TAG,)),
    "seq_backtest": Kind(("seq_backtest",), (OUTPUT_TAG,)),
    # one step, two tables: Dagster refuses to run one output of it alone
    "strategy_grid": Kind(("strategy_grid", "strategy_grid_returns"), (OUTPUT_TAG,)),
    "validation_report": Kind(("validation_report",), (OUTPUT_TAG,)),
    "seq_validation_report": Kind(("seq_validation_report",), (OUTPUT_TAG,)),
    "sweep_trials": Kind(("sweep_trials", "trial_returns"), (PREDICTIONS_TAG, OUTPUT_TAG)),
    "daily_scores": Kind(("daily_scores",), (OUTPUT_TAG,)),
}


# --- the logged run ----------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    name: str
    status: str
    start_time: int
    tags: dict[str, str]
    metrics: dict[str, float]
    params: dict[str, str]
    lineage: dict[str, Any]

    @property
    def asset_key(self) -> str:
        return str(self.lineage.get("asset_key") or self.tags.get("quant.asset_key") or "")

    @property
    def partition_keys(self) -> list[str]:
        return list(self.lineage.get("partition_keys") or [])

    @property
    def dagster_run_id(self) -> str | None:
        return self.lineage.get("dagster_run_id")

    def input_tables(self) -> dict[str, int]:
        """Delta version of every table the step read (older lineage: by input name)."""
        tables = self.lineage.get("input_tables")
        if tables is None:
            tables = self.lineage.get("input_versions") or {}
        return {k: int(v) for k, v in tables.items()}

    def logged_hashes(self) -> dict[str, str]:
        return {k: v for k, v in self.tags.items() if k.startswith("quant.") and k.endswith("_sha256")
                and k != "quant.code_sha256"}

    def describe(self) -> str:
        parts = self.partition_keys
        span = ""
        if parts:
            span = f" [{parts[0]}" + (f" .. {parts[-1]}, {len(parts)} partitions]" if len(parts) > 1 else "]")
        return f"{self.asset_key}{span}"

    def created_at_ms(self) -> int | None:
        text = self.lineage.get("created_at") or self.tags.get("quant.created_at")
        if not text:
            return None
        return int(dt.datetime.fromisoformat(text).timestamp() * 1000)


def load_run(tracking, run_id: str, *, results_only: bool = True) -> LoggedRun:
    """The MLflow run ``run_id`` with its lineage; a run that is not a finished result
    (running, failed, an orphan of a killed step) raises ReproduceError."""
    from mlflow.exceptions import MlflowException

    try:
        run = tracking.client().get_run(run_id)
    except MlflowException as exc:
        raise ReproduceError(f"no MLflow run {run_id!r} in {tracking.tracking_uri}: {exc.message}") from exc
    tags = dict(run.data.tags)
    if "quant.asset_key" not in tags:
        raise ReproduceError(f"run {run_id} ({run.info.run_name}) is not a pipeline run: no lineage")
    if results_only and run.info.status != "FINISHED":
        why = tags.get("quant.orphaned") or "it did not finish"
        raise ReproduceError(f"run {run_id} is {run.info.status}, not a result: {why}")
    try:
        lineage = tracking.load_lineage(run_id)
    except (MlflowException, OSError) as exc:
        raise ReproduceError(f"run {run_id} has no readable lineage.json: {exc}") from exc
    return LoggedRun(run_id, run.info.run_name or "", run.info.status, run.info.start_time or 0,
                     tags, dict(run.data.metrics), dict(run.data.params), lineage)


# --- code ---------------------------------------------------------------------------------

CODE_PATHS = ("quant_assets", "resources", "sensors")


@dataclass(frozen=True)
class CodeState:
    """The code of the logged run against the code running now."""

    logged_commit: str | None
    logged_dirty: bool | None
    logged_hash: str | None
    commit: str | None
    dirty: bool | None
    hash: str
    changed_files: tuple[str, ...] = ()

    @property
    def same(self) -> bool:
        if self.logged_hash:
            return self.logged_hash == self.hash
        # lineage without a code hash: only a clean checkout of the same commit is the same
        return bool(self.logged_commit) and self.logged_commit == self.commit and \
            self.logged_dirty is False and self.dirty is False

    def describe(self) -> str:
        def state(commit, dirty):
            return f"{(commit or 'unknown')[:12]}{' (dirty)' if dirty else ''}"

        text = f"logged {state(self.logged_commit, self.logged_dirty)}, running {state(self.commit, self.dirty)}"
        if self.same:
            return f"identical ({text})"
        files = f"; {len(self.changed_files)} files differ: {', '.join(self.changed_files[:6])}" \
            f"{' ...' if len(self.changed_files) > 6 else ''}" if self.changed_files else ""
        return f"DIFFERS ({text}{files})"


def repo_root() -> Path | None:
    out = _git("rev-parse", "--show-toplevel")
    return Path(out.strip()) if out else None


def _git(*args: str, cwd: Path | None = None) -> str | None:
    from quant_assets import lineage as lineage_module

    where = cwd or Path(lineage_module.__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True,
                             timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def code_state(lineage: Mapping[str, Any]) -> CodeState:
    from quant_assets.lineage import code_sha256, git_state

    commit, dirty = git_state()
    logged = lineage.get("git_commit")
    changed: tuple[str, ...] = ()
    if logged and logged != "unknown":
        diff = _git("diff", "--name-only", logged, "--", *CODE_PATHS)
        changed = tuple(line for line in (diff or "").splitlines() if line.endswith(".py"))
    return CodeState(logged, lineage.get("git_dirty"), lineage.get("code_sha256"), commit, dirty,
                     code_sha256(), changed)


# --- pinned reads ---------------------------------------------------------------------------


class UnreadableVersion(ReproduceError):
    pass


def version_as_of(warehouse: Warehouse, key: Sequence[str], when_ms: int) -> int | None:
    """The Delta version of table ``key`` current at ``when_ms`` (None: not created yet)."""
    if not warehouse.exists(key):
        return None
    versions = [int(h["version"]) for h in warehouse.table(key).history()
                if (h.get("timestamp") or 0) <= when_ms]
    return max(versions) if versions else None


def table_versions_as_of(warehouse: Warehouse, tables: Sequence[str], when_ms: int) -> dict[str, int | None]:
    return {t: version_as_of(warehouse, t.split("/"), when_ms) for t in tables}


@dataclass(frozen=True)
class PinnedWarehouse(Warehouse):
    """The warehouse as a logged run saw it: a table with a logged version is read at that
    version; any other at the version current at the run's time (``as_of_ms``; ``None``:
    today's). Records what it read and refuses a version that no longer exists."""

    pins: Mapping[str, int] = field(default_factory=dict)
    as_of_ms: int | None = None
    reads: dict[str, tuple[int | None, str]] = field(default_factory=dict)

    def _version(self, key: Sequence[str]) -> tuple[int | None, str]:
        table = "/".join(key)
        if table in self.pins:
            return self.pins[table], "logged"
        if self.as_of_ms is not None:
            return version_as_of(Warehouse(self.root), key, self.as_of_ms), "as of the run's time"
        return None, "current"

    def exists(self, key: Sequence[str]) -> bool:
        if not super().exists(key):
            return False
        version, how = self._version(key)
        return version is not None or how == "current"

    def read(self, key, selection=None, version=None, columns=None):
        how = "asked"
        if version is None:
            version, how = self._version(key)
        table = "/".join(key)
        try:
            out = super().read(key, selection, version, columns)
        except Exception as exc:  # noqa: BLE001 - any failure to open the version is the answer
            raise UnreadableVersion(
                f"{table} v{version} cannot be read any more (vacuumed, or its log expired): "
                f"{type(exc).__name__}: {str(exc)[:300]}"
            ) from exc
        self.reads[table] = (out.version, how)
        return out


# --- the rebuild ------------------------------------------------------------------------------


@dataclass
class Rebuilt:
    """What a rebuild produced: its run's hash tags and metrics, the rows of each output."""

    tags: dict[str, str]
    metrics: dict[str, float]
    outputs: dict[str, pl.DataFrame]
    reads: dict[str, tuple[int | None, str]]


_SESSIONS: dict[str, dict[str, Any]] = {}


def _pinned_io_manager_class():
    from dagster import InputContext, OutputContext

    from quant_assets.retries import refuse
    from resources.io_manager import DeltaIOManager

    class PinnedDeltaIOManager(DeltaIOManager):
        """The Delta IO manager of a rebuild: reads through a PinnedWarehouse, keeps the
        outputs in memory instead of writing them."""

        session: str

        @property
        def warehouse(self) -> Warehouse:
            return _SESSIONS[self.session]["warehouse"]

        def load_input(self, context: InputContext):
            try:
                return super().load_input(context)
            except UnreadableVersion as exc:
                _SESSIONS[self.session]["errors"].append(str(exc))
                raise refuse(str(exc)) from exc

        def handle_output(self, context: OutputContext, obj) -> None:
            if obj is not None:
                _SESSIONS[self.session]["outputs"][context.asset_key.to_user_string()] = getattr(obj, "frame", obj)

    return PinnedDeltaIOManager


def _assets():
    from quant_assets.definitions import defs

    return list(defs.assets)


def assets_def_of(key: str):
    from dagster import AssetKey

    found = [a for a in _assets() if AssetKey.from_user_string(key) in a.keys]
    if not found:
        raise ReproduceError(f"no asset {key!r} in this code location")
    return found[0]


def _run_config(assets_def, config: Mapping[str, Any] | None) -> dict:
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    schema = assets_def.op.config_schema
    fields = getattr(getattr(schema, "config_type", None), "fields", None) if schema else None
    if not fields:
        return quiet
    # the lineage's config may carry more than the op's config (e.g. the report's variants)
    known = {k: v for k, v in (config or {}).items() if k in fields}
    return {**quiet, "ops": {assets_def.op.name: {"config": known}}}


def rebuild(run: LoggedRun, settings: Settings, *, latest: bool = False) -> Rebuilt:
    """Execute the run's step again on the inputs as they were (``latest``: as they are)."""
    import uuid

    from dagster import AssetKey, DagsterInstance, DynamicPartitionsDefinition, materialize
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )
    from mlflow import MlflowClient

    from resources import build_resources
    from resources.tracking import ReplayTracking

    kind = KINDS.get(run.asset_key)
    if kind is None:
        raise ReproduceError(
            f"run {run.run_id} is a {run.asset_key} run; reproduce rebuilds {', '.join(sorted(KINDS))} runs"
        )
    assets_def = assets_def_of(kind.selection[0])
    served = (run.lineage.get("extra") or {}).get("served_model") or {}
    pins = {} if latest else run.input_tables()
    as_of = None if latest else run.created_at_ms()
    session = uuid.uuid4().hex
    _SESSIONS[session] = {
        "warehouse": PinnedWarehouse(settings.warehouse_uri, pins=pins, as_of_ms=as_of),
        "outputs": {}, "errors": [],
    }
    try:
        with tempfile.TemporaryDirectory(prefix="quant-rebuild-") as tmp, \
                DagsterInstance.ephemeral() as instance:
            tracking = ReplayTracking(
                tracking_uri=f"sqlite:///{tmp}/mlflow.db", artifact_location=f"{tmp}/artifacts",
                warehouse_root=f"{tmp}/warehouse", source_uri=settings.mlflow_uri,
                pinned_aliases=({f"{served['name']}@{served['alias']}": int(served["version"])}
                                if served and not latest else {}),
            )
            resources = {**build_resources(settings), "tracking": tracking,
                         "io_manager": _pinned_io_manager_class()(root=settings.warehouse_uri, session=session)}
            keys = run.partition_keys
            tags: dict[str, str] = {}
            partition_key = None
            pdef = assets_def.partitions_def
            if keys and isinstance(pdef, DynamicPartitionsDefinition):
                instance.add_dynamic_partitions(pdef.name, keys)
            if len(keys) == 1:
                partition_key = keys[0]
            elif len(keys) > 1:
                tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
            result = materialize(
                _assets(), selection=[AssetKey.from_user_string(k) for k in kind.selection],
                partition_key=partition_key, tags=tags, resources=resources, instance=instance,
                run_config=_run_config(assets_def, run.lineage.get("config")), raise_on_error=False,
            )
            errors = _SESSIONS[session]["errors"]
            if errors:
                raise ReproduceError("an input version the run read is gone: " + "; ".join(errors))
            if not result.success:
                failures = [e.event_specific_data.error.message.strip().splitlines()[0]
                            for e in result.all_events
                            if e.is_step_failure and e.event_specific_data and e.event_specific_data.error]
                raise ReproduceError(f"the rebuild of {run.describe()} failed: {'; '.join(failures)[:2000]}")
            replay = MlflowClient(tracking_uri=tracking.tracking_uri, registry_uri=tracking.tracking_uri)
            rebuilt = [r for exp in replay.search_experiments() for r in replay.search_runs([exp.experiment_id])
                       if r.data.tags.get("quant.asset_key") == run.asset_key
                       and r.data.tags.get("quant.partitions", "") == ",".join(keys)]
            if not rebuilt:
                raise ReproduceError(f"the rebuild of {run.describe()} logged no run for those partitions")
            mine = rebuilt[0]
            return Rebuilt(
                tags={k: v for k, v in mine.data.tags.items() if k.endswith("_sha256")},
                metrics=dict(mine.data.metrics),
                outputs=dict(_SESSIONS[session]["outputs"]),
                reads=dict(_SESSIONS[session]["warehouse"].reads),
            )
    finally:
        _SESSIONS.pop(session, None)


# --- the committed output of a run ----------------------------------------------------------


def committed_version(warehouse: Warehouse, table: str, dagster_run_id: str | None) -> int | None:
    """The last Delta version of ``table`` committed by Dagster run ``dagster_run_id``."""
    key = table.split("/")
    if not dagster_run_id or not warehouse.exists(key):
        return None
    found = [int(h["version"]) for h in warehouse.table(key).history()
             if h.get("dagster.run_id") == dagster_run_id]
    return max(found) if found else None


def partition_filter(table: str, keys: Sequence[str]) -> pl.Expr | None:
    """Rows of ``table`` in partitions ``keys`` (None: unpartitioned, every row)."""
    from dagster import AssetKey, TimeWindowPartitionsDefinition

    assets_def = assets_def_of(table)
    pdef = assets_def.partitions_def
    if not keys or pdef is None:
        return None
    column = assets_def.metadata_by_key.get(AssetKey.from_user_string(table), {}).get("partition_expr", "date")
    if isinstance(pdef, TimeWindowPartitionsDefinition):
        start = pdef.time_window_for_partition_key(keys[0]).start.date()
        end = pdef.time_window_for_partition_key(keys[-1]).end.date()
        return (pl.col(column) >= start) & (pl.col(column) < end)
    return pl.col(column).is_in(list(keys))


def rows_hash(frame: pl.DataFrame) -> str:
    return content_hash(frame, [c for c in RUN_SPECIFIC if c in frame.columns])


# --- metrics ------------------------------------------------------------------------------------


def same_number(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b
