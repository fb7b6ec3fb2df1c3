"""The local event log's batched writes (quant_assets/instance.py: LocalSqliteEventLogStorage).

Dagster hands a run's planned events and a partitioned output's materialisations to
``store_event_batch`` when DAGSTER_EVENT_BATCH_SIZE is set, which the local instance sets;
the local storage writes a batch in one transaction per shard instead of event by event.

- the same events, stored one by one by Dagster's stock SQLite storage and in batches by the
  local one, leave every table of every database file identical (the run's shard and the
  index shard: events, asset key rows, asset tags, asset check executions);
- range runs (two partitioned assets, a blocking asset check, a run whose check fails) on a
  local instance, which batches, read back exactly as on a stock instance, which does not:
  materialised partitions, materialisation and planned records, asset records, the UI's
  per-partition status (materialised, failed) and the check executions;
- a batch that fails part way stores nothing of itself and keeps what was stored before it;
  Dagster then stores its events one by one, so none is lost and none is stored twice;
- opening a local instance sets DAGSTER_EVENT_BATCH_SIZE, and keeps a value set by hand.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSpec,
    AssetKey,
    BackfillPolicy,
    DagsterEventType,
    DagsterInstance,
    DailyPartitionsDefinition,
    Failure,
    IOManager,
    Output,
    asset,
    materialize,
)
from dagster._core.event_api import EventRecordsFilter
from dagster._core.events import (
    BATCH_WRITABLE_EVENTS,
    DagsterEventBatchMetadata,
    generate_event_batch_id,
)
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from quant_assets.instance import EVENT_BATCH_ENV, LocalSqliteEventLogStorage, local_instance_yaml

DAYS = DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-02-01")
CHECK = "positive"
UPSTREAM, DOWNSTREAM = AssetKey("daily"), AssetKey("daily_next")
# two passing range runs that overlap (a partition materialised twice, asset key rows
# updated), then one whose blocking check fails (no materialisation, failed partitions)
RUNS = [("2024-01-01", "2024-01-10", True), ("2024-01-08", "2024-01-15", True), ("2024-01-16", "2024-01-18", False)]
CHECK_PASSES = {"value": True}


class _NoStorage(IOManager):
    def handle_output(self, context, obj) -> None:
        pass

    def load_input(self, context):
        return None


@asset(partitions_def=DAYS, code_version="1", backfill_policy=BackfillPolicy.multi_run(31),
       check_specs=[AssetCheckSpec(CHECK, asset="daily", blocking=True)])
def daily(context):
    for key in context.partition_keys:
        context.add_asset_metadata({"day": key}, partition_key=key)
    passed = CHECK_PASSES["value"]
    yield AssetCheckResult(check_name=CHECK, passed=passed, metadata={"days": len(context.partition_keys)})
    if not passed:
        raise Failure("check failed", allow_retries=False)
    yield Output(None, metadata={"run_days": len(context.partition_keys)})


@asset(partitions_def=DAYS, code_version="1", backfill_policy=BackfillPolicy.multi_run(31))
def daily_next(context, daily):
    return Output(None, metadata={"run_days": len(context.partition_keys)})


def _run_all(instance: DagsterInstance) -> None:
    for start, end, passes in RUNS:
        CHECK_PASSES["value"] = passes
        result = materialize(
            [daily, daily_next], instance=instance, resources={"io_manager": _NoStorage()},
            tags={ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end},
            raise_on_error=False,
        )
        assert result.success is passes
    CHECK_PASSES["value"] = True


@pytest.fixture
def batch_env():
    """DAGSTER_EVENT_BATCH_SIZE unset at the start, restored after."""
    before = os.environ.pop(EVENT_BATCH_ENV, None)
    yield
    os.environ.pop(EVENT_BATCH_ENV, None)
    if before is not None:
        os.environ[EVENT_BATCH_ENV] = before


def _stock_instance(home: Path) -> DagsterInstance:
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    instance = DagsterInstance.from_config(str(home))
    assert type(instance.event_log_storage) is SqliteEventLogStorage
    return instance


def _local_instance(home: Path) -> DagsterInstance:
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(local_instance_yaml(home))
    instance = DagsterInstance.from_config(str(home))
    assert type(instance.event_log_storage) is LocalSqliteEventLogStorage
    return instance


@pytest.fixture
def stock_runs(tmp_path, batch_env):
    """The runs on a stock instance (Dagster's SQLite event log, no batching)."""
    with _stock_instance(tmp_path / "stock") as instance:
        assert EVENT_BATCH_ENV not in os.environ
        _run_all(instance)
        yield instance


def _runs_oldest_first(instance: DagsterInstance) -> list[str]:
    return [run.run_id for run in reversed(instance.get_runs())]


def _tables(base_dir: Path, run_names: dict[str, str]) -> dict:
    """Every row of every table of every database file, in rowid order; run ids as the
    run's position (each replay's storages hold the same runs); columns that SQLite fills
    with the time of the write left out."""
    dump = {}
    for path in sorted(base_dir.glob("*.db")):
        conn = sqlite3.connect(path)
        try:
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"):
                cursor = conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid')  # noqa: S608 (names from sqlite_master)
                columns = [c[0] for c in cursor.description]
                keep = [i for i, c in enumerate(columns) if c not in ("create_timestamp", "update_timestamp", "migration_completed")]
                rows = [tuple(row[i] for i in keep) for row in cursor.fetchall()]
                name = run_names.get(path.stem, path.stem)
                dump[name, table] = ([columns[i] for i in keep], rows)
        finally:
            conn.close()
    return dump


def _batches(events: list) -> list[list]:
    """The events as Dagster hands them to the storage when batching: consecutive events of the
    batchable kinds (a run's planned events, an output's materialisations) together."""
    out: list[list] = []
    for event in events:
        batchable = event.is_dagster_event and event.dagster_event_type in BATCH_WRITABLE_EVENTS
        if batchable and out and len(out[-1]) and out[-1][-1].is_dagster_event \
                and out[-1][-1].dagster_event_type in BATCH_WRITABLE_EVENTS:
            out[-1].append(event)
        else:
            out.append([event])
    return out


@pytest.mark.parametrize("grouping", ["as Dagster batches", "a whole run a batch"])
def test_batched_writes_leave_the_same_tables_as_single_writes(stock_runs, tmp_path, grouping):
    """Dagster batches only asset events and planned check events; a whole run in one batch
    also puts run status events and check evaluations (written by Dagster's own method, in
    the batch's transaction) through it."""
    runs = _runs_oldest_first(stock_runs)
    logs = {run_id: stock_runs.all_logs(run_id) for run_id in runs}
    stock = SqliteEventLogStorage(str(tmp_path / "replay-stock"))
    local = LocalSqliteEventLogStorage(str(tmp_path / "replay-local"))
    sizes = []
    for run_id in runs:
        for event in logs[run_id]:
            stock.store_event(event)
        for batch in _batches(logs[run_id]) if grouping == "as Dagster batches" else [logs[run_id]]:
            local.store_event_batch(batch)
            sizes.append(len(batch))
    # the batches are real: planned events of two assets and a check, materialisations
    assert max(sizes) >= 10
    names = {run_id: f"run{i}" for i, run_id in enumerate(runs)}
    expected = _tables(tmp_path / "replay-stock", names)
    got = _tables(tmp_path / "replay-local", names)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name] == expected[name], name
    # and not vacuously: every run has its events, the index its asset rows and check rows
    assert all(expected[f"run{i}", "event_logs"][1] for i in range(len(runs)))
    assert len(expected["index", "asset_keys"][1]) == 2
    columns, checks = expected["index", "asset_check_executions"]
    # a planned row per partition of each run (10 + 8 + 3), and each run's evaluation
    statuses = Counter(row[columns.index("execution_status")] for row in checks)
    assert statuses == {"PLANNED": 21, "SUCCEEDED": 2, "FAILED": 1}


def _reads(instance: DagsterInstance) -> dict:
    """What the UI and the automation read back, run ids as the run's position."""
    runs = {run_id: i for i, run_id in enumerate(_runs_oldest_first(instance))}
    storage = instance.event_log_storage
    out: dict = {}
    for key in (UPSTREAM, DOWNSTREAM):
        out[key, "materialized"] = sorted(instance.get_materialized_partitions(key))
        out[key, "materializations"] = [
            (r.storage_id, runs[r.run_id], r.partition_key, dict(r.asset_materialization.metadata),
             dict(r.asset_materialization.tags or {}))
            for r in instance.fetch_materializations(key, limit=1000, ascending=True).records
        ]
        out[key, "planned"] = [
            (r.storage_id, runs[r.run_id], r.partition_key)
            for r in storage.get_event_records(
                EventRecordsFilter(DagsterEventType.ASSET_MATERIALIZATION_PLANNED, asset_key=key), ascending=True)
        ]
        (record,) = instance.get_asset_records([key])
        entry = record.asset_entry
        out[key, "asset record"] = (
            entry.last_materialization_record.storage_id, entry.last_materialization_record.partition_key,
            runs[entry.last_run_id], entry.last_materialization_record.timestamp is not None)
        status = get_and_update_asset_status_cache_value(instance, key, DAYS)
        out[key, "status"] = (
            status.latest_storage_id,
            DAYS.deserialize_subset(status.serialized_materialized_partition_subset).get_partition_keys(),
            DAYS.deserialize_subset(status.serialized_failed_partition_subset).get_partition_keys(),
            DAYS.deserialize_subset(status.serialized_in_progress_partition_subset).get_partition_keys(),
        )
    out["check"] = sorted(
        (r.id, runs[r.run_id], r.status.value, r.partition, r.event.dagster_event_type.value if r.event else None)
        for r in storage.get_asset_check_execution_history(AssetCheckKey(UPSTREAM, CHECK), limit=1000)
    )
    return out


def test_range_runs_read_back_the_same_with_batched_writes(stock_runs, tmp_path, monkeypatch):
    batches: list[int] = []
    single = LocalSqliteEventLogStorage.store_event_batch

    def counted(self, events):
        batches.append(len(events))
        return single(self, events)

    monkeypatch.setattr(LocalSqliteEventLogStorage, "store_event_batch", counted)
    expected = _reads(stock_runs)
    with _local_instance(tmp_path / "local") as instance:
        assert os.environ[EVENT_BATCH_ENV] == "1000"
        _run_all(instance)
        got = _reads(instance)
    # Dagster batched: each run's planned events (one per partition of each asset, one for the
    # check), each passing run's materialisations of each asset
    assert batches == [21, 10, 10, 17, 8, 8, 7]
    assert got == expected
    # and the reads are not empty: both passing runs' days, the failing run's days failed
    assert expected[UPSTREAM, "materialized"] == [f"2024-01-{d:02d}" for d in range(1, 16)]
    assert expected[UPSTREAM, "status"][2] == ["2024-01-16", "2024-01-17", "2024-01-18"]
    # (Dagster records a range run's evaluation in a row of its own, next to the partitions'
    # planned rows: the same on both)
    assert {status for _, _, status, _, _ in expected["check"]} == {"PLANNED", "SUCCEEDED", "FAILED"}


def test_a_batch_that_fails_part_way_stores_nothing_and_loses_nothing(stock_runs, tmp_path, monkeypatch):
    runs = _runs_oldest_first(stock_runs)
    logs = {run_id: stock_runs.all_logs(run_id) for run_id in runs}
    names = {run_id: f"run{i}" for i, run_id in enumerate(runs)}
    stock = SqliteEventLogStorage(str(tmp_path / "replay-stock"))
    for run_id in runs:
        for event in logs[run_id]:
            stock.store_event(event)

    with _local_instance(tmp_path / "local") as instance:
        storage = instance.event_log_storage
        base = Path(storage._base_dir)
        first, second = runs[0], runs[1]
        for batch in _batches(logs[first]):
            storage.store_event_batch(batch)
        second_batches = _batches(logs[second])
        # the second run's materialisations of the upstream asset: a batch of 8
        failing = next(b for b in second_batches
                       if len(b) > 1 and b[0].dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION)
        for batch in second_batches:
            if batch is failing:
                break
            storage.store_event_batch(batch)
        before = _tables(base, names)

        # fails after the run shard's rows and the index's event rows are written, before the
        # asset key rows: the last step of the batch
        calls = {"n": 0}
        rows = LocalSqliteEventLogStorage._store_asset_key_rows

        def fails_once(self, conn, asset_events):
            calls["n"] += 1
            if calls["n"] == 1:
                raise OSError("disk went away")
            return rows(self, conn, asset_events)

        monkeypatch.setattr(LocalSqliteEventLogStorage, "_store_asset_key_rows", fails_once)
        with pytest.raises(OSError, match="disk went away"):
            storage.store_event_batch(failing)
        failing_at = _tables(base, names)
        assert failing_at == before  # nothing of the batch, everything stored before it

        # through Dagster: the batch fails again (reset), Dagster falls back to single writes
        calls["n"] = 0
        batch_id = generate_event_batch_id()
        for i, event in enumerate(failing):
            instance.handle_new_event(event, batch_metadata=DagsterEventBatchMetadata(batch_id, i == len(failing) - 1))
        assert calls["n"] == 1  # the batch was tried once, then no more batch writes
        rest = second_batches[second_batches.index(failing) + 1:]
        for batch in rest:
            storage.store_event_batch(batch)
        for run_id in runs[2:]:
            for batch in _batches(logs[run_id]):
                storage.store_event_batch(batch)
        got = _tables(base, names)

    expected = _tables(tmp_path / "replay-stock", names)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name] == expected[name], name


def test_a_local_instance_sets_the_batch_size_and_keeps_one_set_by_hand(tmp_path, batch_env):
    with _local_instance(tmp_path / "a"):
        assert os.environ[EVENT_BATCH_ENV] == "1000"
    os.environ[EVENT_BATCH_ENV] = "0"
    with _local_instance(tmp_path / "b"):
        assert os.environ[EVENT_BATCH_ENV] == "0"
