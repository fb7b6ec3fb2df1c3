"""Concurrent writers of one Delta table, each in its own process.

What delta-rs (deltalake 1.6.6) does with concurrent predicate overwrites, as measured by
tests/reliability/test_concurrency.py on a local folder:

- different partitions (``date = d`` predicates that no other writer's new files can
  match): every commit lands; delta-rs re-reads the log, checks the winners' added files
  against this transaction's predicate and retries the commit itself;
- the same partition: the loser raises ``deltalake.exceptions.CommitFailedError``
  ("a concurrent transactions added new data"); nothing of it is visible and the table
  keeps one complete version of the partition (the winner's).

- ``WriteResult.version`` can be wrong under concurrency: ``DeltaTable.history()`` labels
  commits by counting down from the version the table object was loaded at, but lists the
  commit files present when it is called (it also ignores ``limit`` then), so a commit
  landing in between shifts every label. ``Warehouse._version_of_write`` trusts a listing
  only when the version did not move across it; ``version_of_commit`` checks its answer
  against the commit files.

``retrying_write`` is the writer-level answer proposed for ``Warehouse.write``: a
predicate overwrite carries the partition's whole content, so running it again after a
conflict is safe (last writer wins, never a mix). Which run wins is decided by the Dagster
run queue (a tag concurrency limit per partition), not here.

Command line (one writer process, used by the tests):
``python tests/reliability/concurrency.py [--attempts=N] ROOT TABLE TAG START_AT DAY...`` writes
each day's frame (see ``day_frame``) and prints one JSON line per write.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import polars as pl
from deltalake.exceptions import CommitFailedError

from quant_assets.warehouse import (
    PartitionWindow,
    Selection,
    Warehouse,
    WarehouseError,
    WriteResult,
)

TEST_ID_KEY = "quant.test_write"

INSTRUMENTS = [f"SIM{i:04d}" for i in range(8)]


def day_frame(day: dt.date, tag: int) -> pl.DataFrame:
    """A partition's rows; every row carries the writer's tag so a mix would show."""
    return pl.DataFrame(
        {
            "date": [day] * len(INSTRUMENTS),
            "instrument_id": INSTRUMENTS,
            "value": [float(tag) + i / 100 for i in range(len(INSTRUMENTS))],
            "writer": [tag] * len(INSTRUMENTS),
        }
    )


def day_window(day: dt.date) -> PartitionWindow:
    return PartitionWindow("date", day, day + dt.timedelta(days=1))


def version_of_commit(warehouse: Warehouse, key: Sequence[str], meta_key: str, value: str) -> int:
    """The Delta version of the commit whose commit metadata has ``meta_key == value``.

    Read from the commit files themselves (a local table): ``_delta_log/<version>.json`` is
    written once and never changed, so no concurrent commit can shift what this finds. An
    independent check of ``Warehouse.write``'s own answer, which goes through ``history()``.
    """
    log = Path(warehouse.uri(key)) / "_delta_log"
    for path in sorted(log.glob("*.json"), reverse=True):
        for line in path.read_text().splitlines():
            info = json.loads(line).get("commitInfo")
            if info is not None and info.get(meta_key) == value:
                return int(path.stem)
    raise WarehouseError(f"{'/'.join(key)}: no commit with {meta_key}={value} in {log}")


def retrying_write(
    warehouse: Warehouse,
    key: Sequence[str],
    frame: pl.DataFrame,
    selection: Selection | None = None,
    commit_metadata: dict[str, str] | None = None,
    attempts: int = 5,
    base_delay: float = 0.05,
) -> tuple[WriteResult, int]:
    """``warehouse.write`` again on a commit conflict, with jittered exponential back-off.

    Returns (result, conflicts seen). Safe because the write replaces the selection with
    the whole of ``frame``: a repeat cannot leave a mix of two writers' rows.
    """
    conflicts = 0
    while True:
        try:
            return warehouse.write(key, frame, selection, commit_metadata), conflicts
        except CommitFailedError:
            conflicts += 1
            if conflicts >= attempts:
                raise
            time.sleep(base_delay * 2 ** (conflicts - 1) * (1 + random.random()))


def _main(argv: list[str]) -> int:
    attempts = 5
    if argv and argv[0].startswith("--attempts="):
        attempts = int(argv.pop(0).split("=", 1)[1])
    root, table, tag, start_at, *days = argv
    warehouse = Warehouse(root)
    while time.time() < float(start_at):  # all writers start together
        time.sleep(0.001)
    for text in days:
        day = dt.date.fromisoformat(text)
        out: dict[str, object] = {"day": text, "writer": int(tag)}
        marker = uuid.uuid4().hex
        try:
            result, conflicts = retrying_write(
                warehouse, [table], day_frame(day, int(tag)), day_window(day),
                {TEST_ID_KEY: marker}, attempts=attempts,
            )
            out.update(
                ok=True, version=result.version, conflicts=conflicts, marker=marker,
                true_version=version_of_commit(warehouse, [table], TEST_ID_KEY, marker),
            )
        except CommitFailedError as exc:
            out.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
