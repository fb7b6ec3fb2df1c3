"""Concurrent writers of one Delta table on the local filesystem (see concurrency.py).

- 4 processes write 100 different day partitions at once: none lost, none duplicated,
  every row from the writer that owned its day, every commit its own Delta version;
- 2 processes write the same partition at once, round after round: each race ends with
  one complete version of the partition (one writer's rows, all of them); without a retry
  the loser gets CommitFailedError, with ``retrying_write`` both commit.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from concurrency import INSTRUMENTS, TEST_ID_KEY, day_frame, day_window
from servers import start_server, stop_process_group

from quant_assets.warehouse import Warehouse

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reliability")]

SCRIPT = Path(__file__).with_name("concurrency.py")
REPO = Path(__file__).resolve().parents[2]
DAY0 = dt.date(2022, 1, 3)
TABLE = "concurrent"


def _seed(root: Path) -> Warehouse:
    # the table exists first: writers then all take the predicate-overwrite path
    wh = Warehouse(str(root))
    before = DAY0 - dt.timedelta(days=1)
    wh.write([TABLE], day_frame(before, 99), day_window(before))
    return wh


def _run_writers(root: Path, tmp: Path, jobs: list[tuple[int, list[dt.date]]], extra=()):
    start_at = time.time() + 3.0  # after every interpreter has imported deltalake
    procs = []
    try:
        for tag, days in jobs:
            args = [sys.executable, str(SCRIPT), *extra, str(root), TABLE, str(tag),
                    f"{start_at:.3f}", *[d.isoformat() for d in days]]
            procs.append(start_server(args, log_path=tmp / f"writer-{tag}.log", cwd=REPO))
        for p in procs:
            p.process.wait(timeout=300)
    finally:
        for p in procs:
            stop_process_group(p.process)
    results = []
    for p in procs:
        assert p.process.returncode == 0, p.tail()
        results += [json.loads(line) for line in p.tail(10**7).splitlines() if line.startswith("{")]
    return results


@pytest.fixture(scope="module")
def hundred(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hundred")
    root = tmp / "wh"
    wh = _seed(root)
    seeded = wh.read([TABLE]).frame
    days = [DAY0 + dt.timedelta(days=i) for i in range(100)]
    jobs = [(w, days[w::4]) for w in range(4)]  # interleaved: neighbours race each other
    return root, wh, seeded, jobs, _run_writers(root, tmp, jobs)


def _commit_meta(root: Path, version: int) -> dict:
    log = root / TABLE / "_delta_log" / f"{version:020d}.json"
    for line in log.read_text().splitlines():
        action = json.loads(line)
        if "commitInfo" in action:
            return action["commitInfo"]
    raise AssertionError(f"no commitInfo in {log}")


def test_four_writers_hundred_partitions_none_lost_none_duplicated(hundred):
    root, wh, seeded, jobs, results = hundred
    assert len(results) == 100 and all(r["ok"] for r in results), [r for r in results if not r["ok"]]
    true_versions = [r["true_version"] for r in results]
    assert len(set(true_versions)) == 100  # each commit is its own Delta version
    for r in results:  # and the lookup proposed for Warehouse finds exactly that commit
        assert _commit_meta(root, r["true_version"])[TEST_ID_KEY] == r["marker"]
    frame = wh.read([TABLE]).frame
    assert frame.height == 101 * len(INSTRUMENTS)
    assert frame.select(pl.struct("date", "instrument_id").is_duplicated().any()).item() is False
    owner = {d: w for w, ds in jobs for d in ds}
    per_day = frame.group_by("date").agg(pl.col("writer").unique(), pl.len())
    for day, writers, n in per_day.iter_rows():
        assert n == len(INSTRUMENTS), day
        assert writers == [owner.get(day, 99)], day
    assert frame.filter(pl.col("date") < DAY0).equals(seeded)
    assert wh.version([TABLE]) == 100
    # delta-rs resolves different-partition races itself; count what surfaced to us
    print("conflicts retried by retrying_write:", sum(r["conflicts"] for r in results))


def test_write_result_version_is_the_writers_own_commit(hundred):
    _, _, _, _, results = hundred
    wrong = [r for r in results if r["version"] != r["true_version"]]
    assert wrong == [], f"{len(wrong)} of {len(results)} writes reported another commit's version"


@pytest.mark.parametrize("attempts", [1, 5], ids=["no-retry", "retrying_write"])
def test_two_writers_same_partition_end_with_one_complete_version(tmp_path, attempts):
    root = tmp_path / "wh"
    wh = _seed(root)
    outcomes: Counter[str] = Counter()
    for _ in range(3):  # three races of one write each
        results = _run_writers(
            root, tmp_path, [(1, [DAY0]), (2, [DAY0])], extra=[f"--attempts={attempts}"]
        )
        assert len(results) == 2
        for r in results:
            if not r["ok"]:
                assert "CommitFailedError" in r["error"], r
            outcomes["ok" if r["ok"] else "conflict"] += 1
        day = wh.read([TABLE], day_window(DAY0)).frame
        assert day.height == len(INSTRUMENTS)
        assert day["writer"].n_unique() == 1  # never a mix of the two writers
        winner = day["writer"][0]
        assert day.sort("instrument_id").equals(day_frame(DAY0, winner))
        assert any(r["ok"] and r["writer"] == winner for r in results)
    assert outcomes["ok"] >= 3
    if attempts > 1:
        assert outcomes["conflict"] == 0, outcomes
    print("outcomes:", dict(outcomes))


def test_a_write_finds_its_version_while_other_commits_keep_landing(tmp_path, monkeypatch):
    """Another writer's commit lands across 60 history listings in a row, more than the 50
    quick tries after which ``Warehouse.write`` once gave up under four writers ("commit ...
    not found in the Delta log"): it waits for a listing that nothing moved, looks past the
    50 latest commits (60 landed after its own), and returns its own commit's version
    (checked against the commit files, version_of_commit)."""
    import deltalake
    from concurrency import version_of_commit

    import quant_assets.warehouse as warehouse_module

    wh = _seed(tmp_path / "wh")
    uri = wh.uri([TABLE])
    real_history = deltalake.DeltaTable.history
    landing = {"left": 60, "day": DAY0 + dt.timedelta(days=200)}

    def history_with_a_commit_landing(self, *args, **kwargs):
        listed = real_history(self, *args, **kwargs)
        if landing["left"]:  # a real commit of another partition, between listing and check
            landing["left"] -= 1
            landing["day"] += dt.timedelta(days=1)
            deltalake.write_deltalake(uri, day_frame(landing["day"], 7).to_arrow(), mode="append")
        return listed

    monkeypatch.setattr(deltalake.DeltaTable, "history", history_with_a_commit_landing)
    monkeypatch.setattr(warehouse_module.time, "sleep", lambda seconds: None)  # the pauses, not the point
    marker = "the-write-under-test"
    result = wh.write([TABLE], day_frame(DAY0, 1), day_window(DAY0), {TEST_ID_KEY: marker})
    assert landing["left"] == 0  # every listing until the 61st moved
    assert result.version == version_of_commit(wh, [TABLE], TEST_ID_KEY, marker)
    assert result.version < wh.table([TABLE]).version()  # 60 commits landed after it
