"""SIGKILL range backfills at random moments (crash.py): every table still opens, no
partition is partially visible, what was committed stays, and a rerun converges to the
uninterrupted run's content hashes. Two chains:

- the daily stage (market_bars + pit_features, one run per trading day);
- the monthly backtest chain (lgbm_model -> oos_predictions -> backtest over the test
  range's months), one run per month or one run over the range, MLflow model files
  checked against the model rows.

Default: a handful of kills (2 daily, 2 monthly), chosen mid-run; each trial costs a kill
plus a full rerun (~25 s daily, ~35 s monthly on 2 cores). QUANT_NIGHTLY=1: QUANT_CRASH_KILLS
kills in total (default 50), split between the chains (daily gets the odd one);
QUANT_CRASH_KILLS_DAILY / QUANT_CRASH_KILLS_MONTHLY override either share; QUANT_CRASH_SEED
seeds the kill points. Every kill point is tried before the test fails on any problem. Each
kill prints one JSON line (kill point, what was committed before it, partitions checked,
problems; pytest -s shows them) and appends it to the file QUANT_CRASH_RECORD when set.

Plus one kill at a fixed point inside MLflow's SQLite store creation (what a fresh home's
first model month does): resources/tracking.py creates the store in a temporary file and
links it into place, so the kill leaves no store or a complete one.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from crash import (
    as_range_point,
    backfill_in,
    kill_and_check,
    kill_points,
    mlflow_init_killed_then_used,
    model_file_problems,
    monthly_kill_and_check,
    monthly_state,
    prepare_monthly_base,
    run_monthly,
    table_state,
    timeline_kill_points,
)
from dagster import DagsterInstance

from quant_assets.partitions import monthly_partitions
from quant_assets.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reliability")]

START, END = "2022-03-01", "2022-03-03"
MONTHS = monthly_partitions.get_partition_keys()  # 2023-01 .. 2023-04 in the test range
NIGHTLY = os.environ.get("QUANT_NIGHTLY") == "1"
TOTAL = int(os.environ.get("QUANT_CRASH_KILLS", "50"))
DAILY_KILLS = int(os.environ.get("QUANT_CRASH_KILLS_DAILY", str(TOTAL - TOTAL // 2)))
MONTHLY_KILLS = int(os.environ.get("QUANT_CRASH_KILLS_MONTHLY", str(TOTAL // 2)))
SEED = int(os.environ.get("QUANT_CRASH_SEED", "20261121"))


def report(chain: str, index: int, trial) -> None:
    line = json.dumps(trial.record(chain, index), sort_keys=True)
    print(line, flush=True)
    path = os.environ.get("QUANT_CRASH_RECORD")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


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
    points = kill_points(DAILY_KILLS, 4, step, seed=SEED)
    if not NIGHTLY:  # the default pair: inside the first day, and while overwriting day 2
        points = [(1, step * 0.5), (2, step * 0.3)]
    trials = []
    for i, (after, delay) in enumerate(points):
        base = None if i % 2 == 0 else ref_home
        trial = kill_and_check(base, tmp_path / f"trial-{i}", ref_state, START, END, after, delay)
        trials.append(trial)
        report("daily", i, trial)
        if not trial.problems:  # a failed trial's home stays for inspection
            shutil.rmtree(tmp_path / f"trial-{i}", ignore_errors=True)
    mid_run = [t for t in trials if not t.exited_before_kill and len(t.committed_before_kill) > 1]
    print(f"daily: {len(trials)} kills; {len(mid_run)} after >= 1 commit and before the end; "
          f"{sum(t.checked for t in trials)} partitions checked; "
          f"commits at kill: {[len(t.committed_before_kill) for t in trials]}")
    # every kill point is tried (the sweep's figures), then any problem fails the test
    failed = [(i, t.record("daily", i)) for i, t in enumerate(trials) if t.problems]
    assert failed == [], failed
    assert any(not t.exited_before_kill for t in trials)  # at least one real crash


@pytest.fixture(scope="module")
def monthly_reference(tmp_path_factory):
    """The chain's upstream (base) and one uninterrupted run of the chain on a copy of it,
    in a subprocess like the trials: its content hashes and timeline."""
    root = tmp_path_factory.mktemp("crash-monthly")
    base = root / "base"
    prepare_monthly_base(base)
    ref_home = root / "reference"
    shutil.copytree(base, ref_home)
    timeline = run_monthly(ref_home, MONTHS[0], MONTHS[-1], "months")
    assert [line for line, _ in timeline] == ["ready", *MONTHS]
    state = monthly_state(ref_home)
    for t in ("lgbm_model", "oos_predictions", "backtest"):
        assert sorted(state[t]["months"]) == MONTHS, t
    problems, n_models = model_file_problems(ref_home, state)
    assert problems == [] and n_models == len(MONTHS)
    return base, ref_home, state, timeline


# A kill while MLflow creates its SQLite store (the first model month of a
# fresh home) leaves a half-migrated mlflow.db that every later run fails on ("table
# datasets already exists"); the nightly sweep draws such points, the default run keeps
# to points after that so that it does not fail by timing alone.

# trial i: base state and mode, in turn (fresh = upstream only; reference = a copy of the
# finished reference, so the kill lands while committed months are being overwritten)
SCENARIOS = [("fresh", "months"), ("reference", "months"), ("fresh", "range"),
             ("reference", "range")]


def test_monthly_chain_sigkill_at_random_points_loses_nothing(monthly_reference, tmp_path):
    base, ref_home, ref_state, timeline = monthly_reference
    if NIGHTLY:
        points = timeline_kill_points(MONTHLY_KILLS, timeline, seed=SEED + 1)
        scenarios = [SCENARIOS[i % len(SCENARIOS)] for i in range(len(points))]
    else:
        # the default pair: mid-way through month 2 of a fresh home, and half-way through a
        # range run overwriting every month. Not inside month 1 of a fresh home (MLflow store
        # creation, see above SCENARIOS)
        times = [t for _, t in timeline]
        points = [(2, (times[2] - times[1]) * 0.5), (1, (times[-1] - times[0]) * 0.5)]
        scenarios = [SCENARIOS[0], SCENARIOS[3]]
    trials = []
    for i, ((after, delay), (base_name, mode)) in enumerate(zip(points, scenarios, strict=True)):
        if mode == "range" and NIGHTLY:
            after, delay = as_range_point((after, delay), timeline)
        work = tmp_path / f"trial-{i}"
        trial = monthly_kill_and_check(
            base if base_name == "fresh" else ref_home, work, ref_state, MONTHS[0], MONTHS[-1],
            mode, after, delay, base_name=base_name,
        )
        trials.append(trial)
        report("monthly", i, trial)
        if not trial.problems:  # a failed trial's home stays for inspection
            shutil.rmtree(work, ignore_errors=True)
    crashed = [t for t in trials if not t.exited_before_kill]
    print(f"monthly: {len(trials)} kills, {len(crashed)} before the end; "
          f"{sum(t.checked for t in trials)} partitions checked; commits at kill: "
          f"{[len(t.committed_before_kill) for t in trials]}")
    failed = [(i, t.record("monthly", i)) for i, t in enumerate(trials) if t.problems]
    assert failed == [], failed
    assert crashed  # at least one real crash


def test_kill_inside_mlflow_store_creation_leaves_a_usable_store(tmp_path):
    """What the sweep's fresh-home kills in the first model month found, at a fixed point:
    killed right after a migration's DDL, before its version stamp."""
    killed, after, tail = mlflow_init_killed_then_used(tmp_path / "home")
    assert killed == -9  # it did die inside the store creation
    assert after == 0, tail


def test_the_exactly_once_check_finds_duplicates_and_orphans(tmp_path):
    """The crash trials' MLflow check can fail: two FINISHED runs under one run key, two
    model versions of one run, a row pointing at a FAILED run and a run left RUNNING."""
    import hashlib
    import sqlite3

    art = tmp_path / "art"
    art.mkdir()
    (art / "model_str.txt").write_text("tree")
    sha = hashlib.sha256(b"tree").hexdigest()
    with sqlite3.connect(tmp_path / "mlflow.db") as conn:
        conn.executescript(
            "CREATE TABLE runs (run_uuid TEXT, name TEXT, status TEXT, artifact_uri TEXT);"
            "CREATE TABLE tags (key TEXT, value TEXT, run_uuid TEXT);"
            "CREATE TABLE model_versions (name TEXT, version INT, run_id TEXT);"
        )
        conn.executemany("INSERT INTO runs VALUES (?, ?, ?, ?)", [
            ("a", "lgbm_model", "FINISHED", art.as_uri()), ("b", "lgbm_model", "FINISHED", art.as_uri()),
            ("c", "lgbm_model", "FAILED", art.as_uri()), ("d", "backtest", "RUNNING", art.as_uri()),
        ])
        conn.executemany("INSERT INTO tags VALUES ('quant.run_key', ?, ?)", [("k1", "a"), ("k1", "b"), ("k2", "c")])
        conn.executemany("INSERT INTO model_versions VALUES ('quant-assets-lgbm', ?, ?)", [(1, "a"), (2, "a")])
    state = {"lgbm_model": {"models": {"2023-01-01": ("a", sha), "2023-02-01": ("c", sha)}}}
    assert model_file_problems(tmp_path, state) == ([
        "run key k1: 2 FINISHED MLflow runs (exactly once: at most 1)",
        "quant-assets-lgbm: 2 model versions registered by MLflow run a",
        "lgbm_model 2023-02-01: the row's MLflow run c is FAILED",
    ], 2)
    problems, _ = model_file_problems(tmp_path, state, settled=True)
    assert "MLflow run d (backtest) still RUNNING after the rerun" in problems
    # one run per key, one version per run, rows on FINISHED runs: nothing to report
    good = {"lgbm_model": {"models": {"2023-01-01": ("a", sha)}}}
    with sqlite3.connect(tmp_path / "mlflow.db") as conn:
        conn.execute("DELETE FROM runs WHERE run_uuid IN ('b', 'd')")
        conn.execute("DELETE FROM model_versions WHERE version = 2")
    assert model_file_problems(tmp_path, good, settled=True) == ([], 1)
