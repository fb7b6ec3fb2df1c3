"""The Delta warehouse: the one write path and the one read path for every table.

Every asset is a Delta table at ``<warehouse root>/<asset key joined by "/">``. The root
is a local folder (default) or ``s3://bucket/prefix``; S3 options come from the
standard AWS environment variables, so the same code runs locally and deployed.

Why our own IO manager rather than dagster-deltalake's ``DeltaLakePolarsIOManager``
(0.29.27): it turns a time window into ``date = start``. A range backfill then writes a
multi-day frame with a one-day predicate (delta-rs rejects the write, or with a fresh
table appends it) and a downstream read of a range silently returns only the first day.
``tests/test_warehouse.py`` reproduces both. Here a time window ``[start, end)`` is
written with the predicate ``col >= start AND col < end`` and read with the same filter;
an unpartitioned asset overwrites its table; a partitioned table is never overwritten
whole. Every write records the exact Delta version it committed (found through a write
id in the commit metadata, so concurrent writers cannot confuse it).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from deltalake import (
    ColumnProperties,
    CommitProperties,
    DeltaTable,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, TableNotFoundError

# Environment variables that delta-rs understands for object stores. They are read at
# call time (never stored in config or metadata) so secrets stay in the environment.
_STORAGE_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ALLOW_HTTP",
    "AWS_S3_ALLOW_UNSAFE_RENAME",
    "AWS_CONDITIONAL_PUT",
    "AWS_S3_LOCKING_PROVIDER",
    "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
)

WRITE_ID_KEY = "quant.write_id"
WRITE_ATTEMPTS = 5
# how long a writer may wait for a moment when no other commit lands while it reads which
# version its own commit got (Warehouse._version_of_write); writers of other partitions of
# the same table commit back to back during a backfill
VERSION_LOOKUP_S = 120.0


def storage_options_from_env(uri: str) -> dict[str, str]:
    if not uri.startswith(("s3://", "s3a://")):
        return {}
    return {k: os.environ[k] for k in _STORAGE_ENV if os.environ.get(k)}


@dataclass(frozen=True)
class PartitionWindow:
    """Rows with ``start <= column < end`` (a time window or a range of them)."""

    column: str
    start: dt.date
    end: dt.date

    def predicate(self) -> str:
        return f"{self.column} >= '{self.start.isoformat()}' AND {self.column} < '{self.end.isoformat()}'"

    def expr(self) -> pl.Expr:
        return (pl.col(self.column) >= self.start) & (pl.col(self.column) < self.end)

    def describe(self) -> str:
        return f"{self.column} in [{self.start}, {self.end})"


@dataclass(frozen=True)
class PartitionKeys:
    """Rows whose ``column`` is one of ``keys`` (static or dynamic partitions)."""

    column: str
    keys: tuple[str, ...]

    def predicate(self) -> str:
        quoted = ", ".join("'" + k.replace("'", "''") + "'" for k in self.keys)
        return f"{self.column} IN ({quoted})"

    def expr(self) -> pl.Expr:
        return pl.col(self.column).is_in(list(self.keys))

    def describe(self) -> str:
        return f"{self.column} in {list(self.keys)}"


Selection = PartitionWindow | PartitionKeys


@dataclass(frozen=True)
class VersionedFrame:
    """A frame read from Delta together with the table version it was read at.

    Annotate an asset input with this type to get the version for lineage.
    """

    frame: pl.DataFrame
    version: int | None
    uri: str
    selection: Selection | None = None


@dataclass
class WriteResult:
    uri: str
    version: int
    rows: int
    selection: Selection | None
    metadata: dict[str, Any] = field(default_factory=dict)


class WarehouseError(ValueError):
    pass


class MissingTableError(WarehouseError):
    """The table has no Delta log: it was never materialised (the same on every retry)."""


@dataclass(frozen=True)
class Warehouse:
    """Delta tables under one root. Pure storage: no Dagster in here."""

    root: str

    def uri(self, key: Sequence[str]) -> str:
        if not key:
            raise WarehouseError("empty table key")
        return self.root.rstrip("/") + "/" + "/".join(key)

    def options(self) -> dict[str, str]:
        return storage_options_from_env(self.root)

    def exists(self, key: Sequence[str]) -> bool:
        return DeltaTable.is_deltatable(self.uri(key), storage_options=self.options())

    def table(self, key: Sequence[str], version: int | None = None) -> DeltaTable:
        uri = self.uri(key)
        try:
            return DeltaTable(uri, version=version, storage_options=self.options())
        except TableNotFoundError as exc:
            raise MissingTableError(
                f"table {'/'.join(key)} does not exist at {uri}: materialise it first"
            ) from exc

    def version(self, key: Sequence[str]) -> int | None:
        return self.table(key).version() if self.exists(key) else None

    def read(
        self,
        key: Sequence[str],
        selection: Selection | None = None,
        version: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> VersionedFrame:
        table = self.table(key, version)
        lf = pl.scan_delta(table)
        if selection is not None:
            lf = lf.filter(selection.expr())
        if columns is not None:
            lf = lf.select(columns)
        return VersionedFrame(lf.collect(), table.version(), self.uri(key), selection)

    def write(
        self,
        key: Sequence[str],
        frame: pl.DataFrame,
        selection: Selection | None = None,
        commit_metadata: dict[str, str] | None = None,
    ) -> WriteResult:
        """The one Delta write path.

        With a selection: replace exactly the selected rows (predicate overwrite); every
        row of ``frame`` must fall inside the selection, otherwise nothing is written.
        Without: replace the whole table (unpartitioned assets only).
        """
        name = "/".join(key)
        if not isinstance(frame, pl.DataFrame):
            raise WarehouseError(f"{name}: expected a polars DataFrame, got {type(frame).__name__}")
        uri = self.uri(key)
        if selection is not None:
            _check_inside(name, frame, selection)
        write_id = uuid.uuid4().hex
        meta = {WRITE_ID_KEY: write_id, **(commit_metadata or {})}
        props = CommitProperties(custom_metadata=meta)
        data = frame.to_arrow()
        writer = _writer_properties(frame)
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                exists = self.exists(key)
                if selection is None:
                    write_deltalake(
                        uri, data, mode="overwrite", schema_mode="overwrite",
                        storage_options=self.options(), commit_properties=props, writer_properties=writer,
                    )
                elif not exists:
                    write_deltalake(
                        uri, data, mode="append", storage_options=self.options(),
                        commit_properties=props, writer_properties=writer,
                    )
                else:
                    write_deltalake(
                        uri, data, mode="overwrite", predicate=selection.predicate(),
                        schema_mode="merge", storage_options=self.options(),
                        commit_properties=props, writer_properties=writer,
                    )
                break
            except CommitFailedError:
                # a concurrent commit touched the same rows (delta-rs resolves writers of
                # different partitions itself). The frame is the selection's whole content,
                # so writing it again is safe: last writer wins, never a mix.
                if attempt == WRITE_ATTEMPTS:
                    raise
                time.sleep(0.05 * 2 ** (attempt - 1) * (1 + random.random()))
        version = self._version_of_write(key, write_id)
        return WriteResult(uri=uri, version=version, rows=frame.height, selection=selection)

    def append(
        self, key: Sequence[str], frame: pl.DataFrame, commit_metadata: dict[str, str] | None = None
    ) -> WriteResult:
        """Add rows, never replace any (append-only tables such as ``audit_log``)."""
        write_id = uuid.uuid4().hex
        props = CommitProperties(custom_metadata={WRITE_ID_KEY: write_id, **(commit_metadata or {})})
        write_deltalake(
            self.uri(key), frame.to_arrow(), mode="append",
            storage_options=self.options(), commit_properties=props,
        )
        return WriteResult(self.uri(key), self._version_of_write(key, write_id), frame.height, None)

    def _version_of_write(self, key: Sequence[str], write_id: str) -> int:
        # history() labels commits counting down from the version it loaded, but lists the
        # log as it is when called (deltalake 1.6.6): a commit landing in between shifts
        # every label. Trust a listing only when the table version did not move across it.
        # Under concurrent writers the log can move across many listings in a row (four
        # writers of one table on two busy cores did across 50 quick tries), so wait with a
        # growing, jittered pause for a quiet moment: the writers pause between commits too.
        # The last 50 commits first; the whole log when more than that landed meanwhile.
        deadline = time.monotonic() + VERSION_LOOKUP_S
        attempt, limit = 0, 50
        while True:
            table = self.table(key)
            loaded = table.version()
            history = table.history(limit=limit)
            if self.table(key).version() == loaded:
                for entry in history:
                    if entry.get(WRITE_ID_KEY) == write_id:
                        return int(entry["version"])
                if limit is None or len(history) < limit:
                    raise WarehouseError(f"{'/'.join(key)}: commit {write_id} not found in the Delta log")
                limit = None
                continue
            if time.monotonic() > deadline:
                raise WarehouseError(
                    f"{'/'.join(key)}: the Delta log kept moving for {VERSION_LOOKUP_S:.0f} s; the version of "
                    f"commit {write_id} is unknown (the commit itself succeeded)")
            attempt += 1
            time.sleep(min(0.01 * 1.5 ** attempt, 1.0) * (0.5 + random.random()))


def _check_inside(name: str, frame: pl.DataFrame, selection: Selection) -> None:
    if selection.column not in frame.columns:
        raise WarehouseError(
            f"{name}: partition column {selection.column!r} is missing from the output "
            f"(columns: {frame.columns})"
        )
    col = frame.get_column(selection.column)
    if col.null_count():
        raise WarehouseError(f"{name}: {col.null_count()} rows have a null {selection.column!r}")
    if isinstance(selection, PartitionWindow) and col.dtype != pl.Date:
        raise WarehouseError(
            f"{name}: partition column {selection.column!r} must be Date, got {col.dtype}"
        )
    outside = frame.filter(~selection.expr())
    if outside.height:
        bad = outside.get_column(selection.column).unique().sort().head(5).to_list()
        raise WarehouseError(
            f"{name}: {outside.height} rows fall outside the partition "
            f"{selection.describe()} (e.g. {bad}); nothing was written"
        )


def content_hash(frame: pl.DataFrame, exclude: Sequence[str] = ()) -> str:
    """sha256 of a table's content, independent of row order and file layout: rows are
    sorted by every column, then each column's Arrow buffers are hashed in order."""
    import hashlib

    cols = [c for c in frame.columns if c not in set(exclude)]
    frame = frame.select(cols)
    sortable = [c for c in cols if frame.schema[c].is_numeric() or frame.schema[c] in (pl.String, pl.Date, pl.Boolean) or isinstance(frame.schema[c], pl.Datetime)]
    if sortable:
        frame = frame.sort(sortable, nulls_last=True)
    digest = hashlib.sha256()
    for name in cols:
        digest.update(name.encode())
        digest.update(str(frame.schema[name]).encode())
        # JSON of a column is exact for floats (shortest repr round-trips) and stable
        digest.update(frame.select(name).write_json().encode())
    return digest.hexdigest()


def _writer_properties(frame: pl.DataFrame) -> WriterProperties:
    """Parquet dictionary encoding for text columns only.

    delta-rs tries a dictionary for every column by default; on the wide float tables
    (82 feature columns) that attempt was ~85% of the write time (7.6 s -> 1.1 s for
    450k rows x 84 columns) and never pays off for continuous values. Keys and categories
    (strings) keep it.

    LZ4_RAW, not delta-rs's default Snappy: on the feature table Snappy saved nothing (289 MB,
    as uncompressed: continuous floats), while LZ4_RAW wrote 236 MB in 1.01 s against Snappy's
    1.28 s (457k rows x 84 columns, medians of 5; reads 0.28 s vs 0.25 s). pyarrow, polars,
    delta-rs, Spark and DuckDB all read LZ4_RAW.
    """
    text = [name for name, dtype in frame.schema.items() if dtype in (pl.String, pl.Categorical)]
    return WriterProperties(
        compression="LZ4_RAW",
        default_column_properties=ColumnProperties(dictionary_enabled=False),
        column_properties={name: ColumnProperties(dictionary_enabled=True) for name in text} or None,
    )
