"""SIGKILL a market_bars + pit_features range backfill at random moments (crash.py): every
table still opens, no day is partially visible, what was committed stays, and a rerun
converges to the uninterrupted run's content hashes.

Default: 2 kills (one into a fresh warehouse, one into a copy of the finished reference,
so the kill lands while existing partitions are being overwritten); each trial costs a
kill plus a full rerun (~1 min on 2 shared cores). QUANT_NIGHTLY=1:
QUANT_CRASH_KILLS kills (default 50).
"""

from __future__ import annotations

import os
import time

import pytest
from crash import backfill_in, kill_and_check, kill_points, table_state
from dagster import DagsterInstance

from quant_assets.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reliability")]

START, END = "2022-03-01", "2022-03-03"
NIGHTLY = os.environ.get("QUANT_NIGHTLY") == "1"
KILLS = int(os.environ.get("QUANT_CRASH_KILLS", "50")) if NIGHTLY else 2


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    home = tmp_path_factory.mktemp("crash-ref") / "home"
    old = os.environ["QUANT_HOME"]
    os.environ["QUANT_HOME"] = str(home)
    try:
        settings = Settings.from_env()
    finally:
        os.environ["QUANT_HOME"] = old
    committed: list[str] = []
    t0 = time.monotonic()
    with DagsterInstance.ephemeral() as instance:  # the uninterrupted run, in this process
        backfill_in(instance, settings, START, END, report=committed.append)
    elapsed = time.monotonic() - t0
    state = table_state(home)
    assert committed[0] == "reference" and len(committed) == 4  # 3 trading days
    assert len(state["market_bars"]["days"]) == 3
    return home, state, elapsed


def test_sigkill_at_random_points_loses_nothing(reference, tmp_path):
    ref_home, ref_state, elapsed = reference
    # 4 commits (reference tables, then 3 days); a step is about one of them
    step = elapsed / 4
    points = kill_points(KILLS, 4, step, seed=int(os.environ.get("QUANT_CRASH_SEED", "20261121")))
    if not NIGHTLY:  # the default pair: inside the first day, and while overwriting day 2
        points = [(1, step * 0.5), (2, step * 0.3)]
    trials = []
    for i, (after, delay) in enumerate(points):
        base = None if i % 2 == 0 else ref_home
        trial = kill_and_check(base, tmp_path / f"trial-{i}", ref_state, START, END, after, delay)
        trials.append(trial)
        assert trial.problems == [], (i, trial)
    mid_run = [t for t in trials if not t.exited_before_kill and len(t.committed_before_kill) > 1]
    print(f"{len(trials)} kills; {len(mid_run)} after >= 1 commit and before the end; "
          f"commits at kill: {[len(t.committed_before_kill) for t in trials]}")
    assert any(not t.exited_before_kill for t in trials)  # at least one real crash
