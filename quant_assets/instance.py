"""Local Dagster instance set-up (SQLite under DAGSTER_HOME).

Relocatable: nothing in the instance file names an absolute path. The event log's
``base_dir`` is written relative (``history/runs``) and resolved against the home the
instance is opened from (``DAGSTER_HOME`` or ``DagsterInstance.from_config(dir)``), as
Dagster's own defaults are, so a copied or moved home (a backup restored, a second checkout,
a test fixture) writes its events into itself, never into the original. Homes written
before this kept an absolute path: ``prepare_local_instance`` makes it relative again.

Why a pragma and an idle connection: a range run writes a few Dagster events per partition, and Dagster's SQLite
storage opens a connection and commits for each one. With its default
``synchronous=FULL`` every commit waits for an fsync, which made the demo's daily stage
spend over half its time in fsync. Dagster already puts these databases in WAL mode, where
``synchronous=NORMAL`` keeps them consistent after a crash of the process (only a power
cut can lose the last commits), so local runs use NORMAL. Only SQLite files under
QUANT_HOME are touched; deployments use Postgres.

Batches: the local event log turns on Dagster's event batching (DAGSTER_EVENT_BATCH_SIZE) in
every process that builds it, and writes a batch (a run's planned events, a range run's
materialisations: one of each per partition) in one transaction per database file, with the
rows Dagster's single writes give (``LocalSqliteEventLogStorage.store_event_batch``).
"""

from __future__ import annotations

import atexit
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.events import (
    ASSET_CHECK_EVENTS,
    ASSET_EVENTS,
    EVENT_TYPE_TO_PIPELINE_RUN_STATUS,
    DagsterEventType,
)
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    AssetKeyTable,
    SqlEventLogStorageTable,
)
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import serialize_value
from sqlalchemy.pool import SingletonThreadPool

_LOCAL_INSTANCE_YAML = """\
# Local Dagster instance for quant-assets (SQLite under DAGSTER_HOME).
telemetry:
  enabled: false
nux:
  enabled: false
# Dagster's SQLite event log, with one SQLAlchemy engine per database file instead of one
# per operation, writing a batch of events in one transaction per database file
# (quant_assets/instance.py: LocalSqliteEventLogStorage; DAGSTER_EVENT_BATCH_SIZE).
event_log_storage:
  module: quant_assets.instance
  class: LocalSqliteEventLogStorage
  config:
    # relative: resolved against the instance's home (see the module docstring)
    base_dir: {events_dir}
"""
EVENTS_DIR = "history/runs"  # Dagster's default event log location under the home

_ROOTS: set[str] = set()
# One idle connection per local SQLite file, held for the life of the process: see
# `_relax_sqlite_sync`.
_KEEPERS: OrderedDict[str, sqlite3.Connection] = OrderedDict()
# Dagster shards its SQLite event log per run (a file per run): keep the most recently used
# files only, so a long-lived process does not pile up open files.
_MAX_KEEPERS = 32

# Dagster hands events to the event log storage's `store_event_batch` only when this is set
# (> 0) in the process that writes them: then a run's planned events (one per partition of each
# asset, and the asset checks') and a partitioned output's materialisations (one per partition)
# reach the storage as batches of at most this many, which LocalSqliteEventLogStorage writes in
# one transaction per shard. Set where the local instance's event log is built, so it holds in
# every process that writes to it: in-process runs, run workers, the daemon, the webserver.
EVENT_BATCH_ENV = "DAGSTER_EVENT_BATCH_SIZE"
EVENT_BATCH_SIZE = 1000


def _relax_sqlite_sync(dbapi_connection, _record) -> None:
    if "sqlite" not in type(dbapi_connection).__module__:
        return
    cursor = dbapi_connection.cursor()
    try:
        rows = cursor.execute("PRAGMA database_list").fetchall()
        path = rows[0][2] if rows else ""
        if path and any(path.startswith(root) for root in _ROOTS):
            cursor.execute("PRAGMA synchronous=NORMAL")
            # Dagster's SQLite storages open and close a connection per operation. Closing
            # the last connection to a WAL database checkpoints it and deletes the WAL file,
            # which cost ~10 ms of every stored event (a 10-year feature backfill stores
            # tens of thousands). An idle connection kept open makes no close the last one;
            # it holds no lock, and WAL still checkpoints automatically every 1000 pages.
            # Only once the file is in WAL mode: Dagster switches a new database to WAL
            # after creating it, which another open connection would block.
            if path in _KEEPERS:
                _KEEPERS.move_to_end(path)
            elif cursor.execute("PRAGMA journal_mode").fetchall() == [("wal",)]:
                keeper = sqlite3.connect(path, check_same_thread=False)
                # a WAL connection counts as open once it has read (fetchall: no statement
                # is left running, so it holds no lock a writer waits for)
                keeper.execute("SELECT count(*) FROM sqlite_master").fetchall()
                _KEEPERS[path] = keeper
                while len(_KEEPERS) > _MAX_KEEPERS:
                    _KEEPERS.popitem(last=False)[1].close()
    finally:
        cursor.close()


@atexit.register
def _checkpoint_keepers() -> None:
    """At exit, move each kept database's WAL into the database file and close the keeper.
    A process that ends without the interpreter's teardown (``quant_assets.cli.run``) closes
    no connection, so no close would checkpoint: the last commits would stay in the ``-wal``
    file, and a copy of the ``.db`` alone would lack them."""
    while _KEEPERS:
        keeper = _KEEPERS.popitem(last=False)[1]
        try:
            # PASSIVE: what no other process is reading or writing now, without waiting for
            # them (a daemon writing the same file would hold an exit for its busy timeout)
            keeper.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            pass  # the file's next connection replays what is left in the WAL
        finally:
            keeper.close()


def relax_local_sqlite(root: Path) -> None:
    """Use synchronous=NORMAL for SQLite databases under ``root`` in this process."""
    _ROOTS.add(str(Path(root).resolve()) + os.sep)
    if not sqlalchemy.event.contains(sqlalchemy.engine.Engine, "connect", _relax_sqlite_sync):
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", _relax_sqlite_sync)


def local_instance_yaml(dagster_home: Path | None = None) -> str:
    """The dagster.yaml of a local instance (the same for every home: nothing in it is
    absolute; ``dagster_home`` is accepted for callers that name it)."""
    # Dagster's default event log location, so that a home made before keeps its history
    return _LOCAL_INSTANCE_YAML.format(events_dir=EVENTS_DIR)


def make_relocatable(cfg: Path) -> bool:
    """Rewrite an absolute event-log ``base_dir`` of our storage class that ends in the
    default location (what homes written before wrote) as the relative one; True if changed.
    Done with a text edit, so comments and the rest of the file stay as they are."""
    import re

    text = cfg.read_text()
    if "class: LocalSqliteEventLogStorage" not in text:
        return False
    pattern = re.compile(r"^(\s*base_dir:\s*)(/\S*/" + re.escape(EVENTS_DIR) + r")\s*$", re.M)
    new = pattern.sub(lambda m: m.group(1) + EVENTS_DIR, text)
    if new == text:
        return False
    cfg.write_text(new)
    return True


def prepare_local_instance(dagster_home: Path) -> None:
    """Create DAGSTER_HOME with a SQLite dagster.yaml if it has none (or make an older one
    relocatable), and point the process at it."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    cfg = dagster_home / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text(local_instance_yaml(dagster_home))
    else:
        make_relocatable(cfg)
    os.environ["DAGSTER_HOME"] = str(dagster_home)


class LocalSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's run-sharded SQLite event log, reusing one engine and one connection per
    database file and thread, and writing a batch of events in one transaction per shard.

    Dagster's own SQLite storage is subclassed (an internal class, but the one Dagster's
    `event_log_storage` setting is meant to name for SQLite; this keeps its schema, migrations
    and reads, and changes only how connections are opened and how batches are written).

    Connections: `SqliteEventLogStorage._connect` builds a new SQLAlchemy engine and opens a
    new connection for every operation, and a stored event takes two to four operations; that
    was ~80% of the ~6 ms of CPU an event cost. Here each shard keeps an engine whose
    SingletonThreadPool holds one connection per thread between operations (WAL mode: an
    idle connection holds no lock; processes are started with spawn, so no connection
    crosses a fork). Dagster's busy timeout, lock and lazy schema set-up are unchanged;
    only the most recently used shards keep an engine.

    Batches (`store_event_batch`, used when DAGSTER_EVENT_BATCH_SIZE is set: see
    EVENT_BATCH_ENV): Dagster's default writes a batch as single events, each stored twice
    (the run's shard, then mirrored into the index shard with its asset tags, asset key row
    and asset check rows), each write its own transaction. A range run stores two events per
    partition that way (planned, materialised). Here a batch is one transaction on the run's
    shard holding one on the index shard, writing the same rows `store_event` writes, in the
    same order, so reads (materialisations, partition statuses, check executions) are the
    same; see `store_event_batch`.
    """

    _MAX_ENGINES = 64

    def __init__(self, base_dir: str, inst_data: Any = None) -> None:
        self._engines: OrderedDict[str, sqlalchemy.engine.Engine] = OrderedDict()
        # the connections store_event_batch holds open in this thread, by shard: Dagster's
        # methods it calls inside the batch (asset check rows) join its transaction
        self._batch = threading.local()
        self._relative_to_home: str | None = None
        if not os.path.isabs(base_dir):
            # resolved once the instance registers (its home is known then): relocatable
            self._relative_to_home = base_dir
            self._inst_data_pending = self._inst_data = inst_data
            return
        self._open(base_dir, inst_data)

    def _open(self, base_dir: str, inst_data: Any) -> None:
        # the instance's SQLite files (runs, schedules, event shards) live under its home
        # (<home>/history/runs): relax their fsyncs when the instance is built, in every
        # process that opens it (webserver, daemon, run workers), not as an import side effect
        relax_local_sqlite(Path(base_dir).resolve().parent.parent)
        # and batch the events Dagster can batch, in the same processes (a value set by hand,
        # 0 included, is kept)
        os.environ.setdefault(EVENT_BATCH_ENV, str(EVENT_BATCH_SIZE))
        super().__init__(base_dir, inst_data=inst_data)
        # store_event_batch opens the index shard inside the run shard's transaction
        self._db_lock = threading.RLock()

    def register_instance(self, instance: Any) -> None:
        if self._relative_to_home is not None:
            self._open(os.path.join(instance.root_directory, self._relative_to_home),
                       self._inst_data_pending)
            self._relative_to_home = None
        super().register_instance(instance)

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> LocalSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[sqlalchemy.engine.Connection]:
        joined = getattr(self._batch, "conns", {}).get(shard)
        if joined is not None:
            # inside store_event_batch, in its thread: part of its transaction
            yield joined
            return
        with self._db_lock:
            engine = self._engines.get(shard)
            if engine is None:
                engine = create_engine(
                    self.conn_string_for_shard(shard),
                    poolclass=SingletonThreadPool,
                    connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
                )
                self._engines[shard] = engine
                while len(self._engines) > self._MAX_ENGINES:
                    self._engines.popitem(last=False)[1].dispose()
            else:
                self._engines.move_to_end(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                with conn.begin():
                    yield conn

    @contextmanager
    def _joined(self, shard: str, conn: sqlalchemy.engine.Connection) -> Iterator[None]:
        conns = self._batch.__dict__.setdefault("conns", {})
        conns[shard] = conn
        try:
            yield
        finally:
            del conns[shard]

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Store the events as `store_event` stores each, in one transaction per shard.

        The index shard's transaction is committed inside the run shard's: if anything fails,
        both roll back and nothing of the batch is stored; Dagster then stores the batch's
        events one by one (`handle_new_event`), so an event is never lost nor stored twice.
        (Only a failure of the run shard's commit itself, after the index committed, could
        leave the batch's asset rows without their run events.) Events stored before the
        batch are never touched.
        """
        events = list(events)
        run_ids = {event.run_id for event in events}
        if len(events) < 2 or len(run_ids) != 1:
            super().store_event_batch(events)  # one by one, as Dagster does
            return
        rows = [self._event_to_row(event) for event in events]  # each event serialised once
        with self.run_connection(run_ids.pop()) as run_conn:
            run_conn.execute(SqlEventLogStorageTable.insert(), rows)
            with self.index_connection() as index_conn, self._joined(INDEX_SHARD_NAME, index_conn):
                self._index_batch(index_conn, events, rows)

    def _index_batch(self, conn: sqlalchemy.engine.Connection, events: list[EventLogEntry],
                     rows: list[dict[str, Any]]) -> None:
        """What `SqliteEventLogStorage.store_event` writes into the index shard, for each event
        in order: the mirrored event row; for asset events their indexed tags and their asset
        key's row; for asset check events their check execution rows. (Each table gets its rows
        in the events' order, so its ids are the ones single writes give.)"""
        mirrored = [
            (event, row) for event, row in zip(events, rows, strict=True)
            if event.is_dagster_event and (event.dagster_event_type in ASSET_EVENTS
                                           or event.dagster_event_type in ASSET_CHECK_EVENTS
                                           or event.dagster_event_type in EVENT_TYPE_TO_PIPELINE_RUN_STATUS)
        ]
        if not mirrored:
            return
        # one statement for the batch's event rows, their ids returned in the rows' order
        inserted = conn.execute(
            SqlEventLogStorageTable.insert().returning(SqlEventLogStorageTable.c.id, sort_by_parameter_order=True),
            [row for _, row in mirrored],
        )
        event_ids = [event_id for (event_id,) in inserted]
        asset_events: list[tuple[EventLogEntry, int]] = []
        for (event, _), event_id in zip(mirrored, event_ids, strict=True):
            kind = event.dagster_event_type
            if kind in ASSET_EVENTS:
                if event_id is None:
                    raise DagsterInvariantViolationError("Cannot store asset event tags for null event id.")
                asset_events.append((event, event_id))
            elif kind == DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED:
                self._store_check_planned(conn, event, event_id)
            elif kind in ASSET_CHECK_EVENTS:
                self.store_asset_check_event(event, event_id)  # joins this transaction
        if asset_events:
            self._store_asset_event_tags(conn, [e for e, _ in asset_events], [i for _, i in asset_events])
            self._store_asset_key_rows(conn, asset_events)

    def _store_asset_key_rows(self, conn: sqlalchemy.engine.Connection,
                              asset_events: list[tuple[EventLogEntry, int]]) -> None:
        """The asset key rows `_store_asset_event` leaves after each of the events in turn (an
        insert, or an update of the columns the event sets), written once per asset key: for
        each column, the value of the last event that sets it. A materialisation sets every
        column any asset event sets, so events before a key's last materialisation are skipped
        (Dagster serialises the whole event record for each materialisation's row)."""
        has_index_cols = self._has_asset_key_index_cols_on_connection(conn)
        order: dict[str, None] = {}  # keys in the order they first appear (new rows' ids)
        values: dict[str, dict[str, Any]] = {}
        complete: set[str] = set()
        for event, _ in asset_events:
            asset_key = event.dagster_event.asset_key if event.dagster_event else None
            if asset_key:
                order.setdefault(asset_key.to_string())
        for event, event_id in reversed(asset_events):
            asset_key = event.dagster_event.asset_key if event.dagster_event else None
            if not asset_key or asset_key.to_string() in complete:
                continue
            key = asset_key.to_string()
            merged = values.setdefault(key, {})
            for column, value in self._get_asset_entry_values(event, event_id, has_index_cols).items():
                merged.setdefault(column, value)
            if event.dagster_event.is_step_materialization:
                complete.add(key)
        for key in order:
            if not values.get(key):
                continue  # no event of this key sets a column: store_event writes nothing
            try:
                conn.execute(AssetKeyTable.insert().values(asset_key=key, **values[key]))
            except sqlalchemy.exc.IntegrityError:
                conn.execute(AssetKeyTable.update().values(**values[key]).where(AssetKeyTable.c.asset_key == key))

    def _store_check_planned(self, conn: sqlalchemy.engine.Connection, event: EventLogEntry, event_id: int) -> None:
        """`_store_asset_check_evaluation_planned` on this connection, serialising the event once
        (Dagster serialises it again for each partition's row), in one executemany."""
        if not self.supports_asset_checks:
            # what store_asset_check_event asserts
            raise RuntimeError("Asset checks require a database schema migration. Run `dagster instance migrate`.")
        planned = event.get_dagster_event().asset_check_planned_data
        keys = planned.partitions_subset.get_partition_keys() if planned.partitions_subset else [None]
        common = dict(
            asset_key=planned.asset_key.to_string(),
            check_name=planned.check_name,
            run_id=event.run_id,
            execution_status=AssetCheckExecutionRecordStatus.PLANNED.value,
            evaluation_event=serialize_value(event),
            evaluation_event_timestamp=self._event_insert_timestamp(event),
            evaluation_event_storage_id=event_id,
        )
        # executemany, not Dagster's multi-row VALUES: SQLAlchemy compiles one bind parameter per
        # value of that statement (~0.1 s for a 1,040-day run's rows); the rows are the same
        conn.execute(AssetCheckExecutionsTable.insert(), [dict(common, partition=key) for key in keys])
