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
"""

from __future__ import annotations

import os
import sqlite3
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from sqlalchemy.pool import SingletonThreadPool

_LOCAL_INSTANCE_YAML = """\
# Local Dagster instance for quant-assets (SQLite under DAGSTER_HOME).
telemetry:
  enabled: false
nux:
  enabled: false
# Dagster's SQLite event log, with one SQLAlchemy engine per database file instead of one
# per operation (quant_assets/instance.py: LocalSqliteEventLogStorage).
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
    database file and thread.

    Why: `SqliteEventLogStorage._connect` builds a new SQLAlchemy engine and opens a new
    connection for every operation, and a stored event takes two to four operations; that
    was ~80% of the ~6 ms of CPU an event cost, and a range backfill stores two events per
    partition (a 10-year feature backfill: ~5,000). Here each shard keeps an engine whose
    SingletonThreadPool holds one connection per thread between operations (WAL mode: an
    idle connection holds no lock; processes are started with spawn, so no connection
    crosses a fork). Dagster's busy timeout, lock and lazy schema set-up are unchanged;
    only the most recently used shards keep an engine.
    """

    _MAX_ENGINES = 64

    def __init__(self, base_dir: str, inst_data: Any = None) -> None:
        self._engines: OrderedDict[str, sqlalchemy.engine.Engine] = OrderedDict()
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
        super().__init__(base_dir, inst_data=inst_data)

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
