"""Local Dagster instance set-up (SQLite under DAGSTER_HOME).

Why a pragma: a range run writes a few Dagster events per partition, and Dagster's SQLite
storage opens a connection and commits for each one. With its default
``synchronous=FULL`` every commit waits for an fsync, which made the demo's daily stage
spend over half its time in fsync. Dagster already puts these databases in WAL mode, where
``synchronous=NORMAL`` keeps them consistent after a crash of the process (only a power
cut can lose the last commits), so local runs use NORMAL. Only SQLite files under
QUANT_HOME are touched; deployments use Postgres.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy

LOCAL_INSTANCE_YAML = """\
# Local Dagster instance for quant-assets (SQLite under DAGSTER_HOME).
telemetry:
  enabled: false
nux:
  enabled: false
"""

_ROOTS: set[str] = set()


def _relax_sqlite_sync(dbapi_connection, _record) -> None:
    if "sqlite" not in type(dbapi_connection).__module__:
        return
    cursor = dbapi_connection.cursor()
    try:
        rows = cursor.execute("PRAGMA database_list").fetchall()
        path = rows[0][2] if rows else ""
        if path and any(path.startswith(root) for root in _ROOTS):
            cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def relax_local_sqlite(root: Path) -> None:
    """Use synchronous=NORMAL for SQLite databases under ``root`` in this process."""
    _ROOTS.add(str(Path(root).resolve()) + os.sep)
    if not sqlalchemy.event.contains(sqlalchemy.engine.Engine, "connect", _relax_sqlite_sync):
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", _relax_sqlite_sync)


def prepare_local_instance(dagster_home: Path) -> None:
    """Create DAGSTER_HOME with a SQLite dagster.yaml if it has none, and point the
    process at it."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    cfg = dagster_home / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text(LOCAL_INSTANCE_YAML)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
