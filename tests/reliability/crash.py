"""Crash-safety harness: a range backfill in a subprocess, killed with SIGKILL at a random
moment, then checked and rerun. Two chains: the daily stage (below) and the monthly
backtest chain (``lgbm_model -> oos_predictions -> backtest``, section "Monthly chain").

The backfill (``python tests/reliability/crash.py backfill HOME START END``) materialises the
reference tables, then market_bars + pit_features one trading day per run (a multi-run
backfill, as the Dagster UI launches it), through a persistent Dagster instance under
HOME/dagster and the Delta warehouse under HOME/warehouse. It prints one line per
committed day so the harness can tell what was committed before the kill.

``kill_and_check`` runs one trial: start the backfill into a copy of a base state, kill its
process group after a random delay, then check

1. every Delta table opens and reads;
2. no partially written partition is visible: each stored day of each table equals the
   uninterrupted reference's rows for that day (all or nothing);
3. every day reported committed before the kill is present (and equal to the reference);
4. rerunning the range (uninterrupted) converges to the reference content hashes.

The reference is the same backfill (``backfill_in``) run uninterrupted; the test runs it
in its own process to skip one interpreter start-up.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
TABLES = ("universe", "corporate_actions", "fundamentals", "market_bars", "pit_features")
DAILY = ("market_bars", "pit_features")
COMMITTED = "committed "


def backfill_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "QUANT_WAREHOUSE_URI")}
    env.update(QUANT_HOME=str(home), PYTHONWARNINGS="ignore", PYTHONPATH=str(REPO))
    return env


def _backfill(home: str, start: str, end: str) -> int:
    """Runs in the subprocess (QUANT_HOME=home comes from its environment)."""
    from dagster import DagsterInstance

    from quant_assets.instance import prepare_local_instance
    from quant_assets.settings import Settings

    settings = Settings.from_env()
    assert str(settings.quant_home) == str(Path(home).resolve()), settings.quant_home
    prepare_local_instance(settings.dagster_home)
    with DagsterInstance.get() as instance:
        backfill_in(
            instance, settings, start, end, report=lambda what: print(COMMITTED + what, flush=True)
        )
    return 0


def backfill_in(instance, settings, start: str, end: str, report=lambda what: None) -> None:
    """The backfill itself: reference tables, then one run per trading day in [start, end].
    The test process calls it directly for the uninterrupted reference (no start-up cost)."""
    from dagster import materialize

    from quant_assets.data.assets import corporate_actions, fundamentals, market_bars, universe
    from quant_assets.features.assets import pit_features
    from quant_assets.partitions import trading_day_partitions
    from resources import build_resources

    resources = build_resources(settings)
    assets = [universe, corporate_actions, fundamentals, market_bars, pit_features]
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    ref = materialize(assets, selection=[universe, corporate_actions, fundamentals],
                      resources=resources, instance=instance, run_config=quiet)
    assert ref.success
    report("reference")
    keys = [k for k in trading_day_partitions.get_partition_keys() if start <= k <= end]
    for key in keys:
        result = materialize(assets, selection=[market_bars, pit_features], partition_key=key,
                             resources=resources, instance=instance, run_config=quiet)
        assert result.success, key
        report(key)


def run_backfill(home: Path, start: str, end: str, timeout: float = 600) -> list[str]:
    """An uninterrupted backfill; returns the committed lines."""
    proc = subprocess.run(
        [sys.executable, str(HERE), "backfill", str(home), start, end],
        cwd=REPO, env=backfill_env(home), capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"backfill failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return _committed(proc.stdout)


def table_state(home: Path) -> dict[str, dict]:
    """Per table: whole-table content hash and a content hash per day (daily tables)."""
    import polars as pl

    from quant_assets.warehouse import Warehouse, content_hash

    wh = Warehouse(str(home / "warehouse"))
    out: dict[str, dict] = {}
    for t in TABLES:
        if not wh.exists([t]):
            continue
        frame = wh.read([t]).frame  # raises if the table does not open
        entry = {"hash": content_hash(frame), "days": {}}
        if t in DAILY:
            for (day,), part in frame.group_by(["date"]):
                entry["days"][day.isoformat()] = content_hash(part)
            entry["rows_per_day"] = dict(
                frame.group_by("date").agg(pl.len()).select(
                    pl.col("date").cast(pl.String), "len").iter_rows()
            )
        out[t] = entry
    return out


@dataclass
class Trial:
    after_commits: int
    delay: float
    committed_before_kill: list[str]
    exited_before_kill: bool
    problems: list[str] = field(default_factory=list)
    # (table, partition) pairs compared with the reference after the kill
    checked: int = 0
    # Monthly chain: what the killed run's Dagster event log recorded as materialised
    materialized_before_kill: dict[str, list[str]] = field(default_factory=dict)
    base: str = "fresh"
    mode: str = "days"

    def record(self, chain: str, index: int) -> dict:
        """One JSON-able line per kill: the kill point, what was committed, what was checked."""
        return {
            "chain": chain, "trial": index, "base": self.base, "mode": self.mode,
            "kill_after_commits": self.after_commits, "kill_delay_s": self.delay,
            "exited_before_kill": self.exited_before_kill,
            "committed_before_kill": self.committed_before_kill,
            "materialized_before_kill": self.materialized_before_kill,
            "partitions_checked": self.checked, "problems": self.problems,
        }


def _committed(text: str) -> list[str]:
    return [line[len(COMMITTED):] for line in text.splitlines() if line.startswith(COMMITTED)]


def kill_and_check(
    base: Path | None, work: Path, reference: dict[str, dict], start: str, end: str,
    after_commits: int, delay: float, timeout: float = 600,
) -> Trial:
    """One trial (see the module docstring); ``base`` is copied into ``work`` first.

    The kill point: ``delay`` seconds after the backfill reported ``after_commits``
    commits (0 = after start), so kills spread over the whole run, start-up included.
    """
    if work.exists():
        shutil.rmtree(work)
    if base is not None:
        shutil.copytree(base, work)
    work.mkdir(parents=True, exist_ok=True)
    before = table_state(work)
    committed, exited = _run_and_kill(
        [sys.executable, str(HERE), "backfill", str(work), start, end], work,
        after_commits, delay, timeout,
    )
    trial = Trial(after_commits, delay, committed, exited,
                  base="fresh" if base is None else "reference")
    try:
        after = table_state(work)
    except Exception as exc:  # a table that does not open is the failure being looked for
        trial.problems.append(f"a table does not open after the kill: {exc!r}")
        return trial
    checked: set[tuple[str, str]] = set()
    for t, entry in after.items():
        ref = reference[t]
        if t not in DAILY:
            checked.add((t, ""))
            if entry["hash"] != ref["hash"]:
                trial.problems.append(f"{t}: content differs from the reference")
            continue
        for day, digest in entry["days"].items():
            checked.add((t, day))
            if ref["days"].get(day) != digest:
                trial.problems.append(
                    f"{t} {day}: partial or foreign partition ({entry['rows_per_day'][day]} rows, "
                    f"reference {reference[t]['rows_per_day'].get(day)})"
                )
    for day in committed:
        if day == "reference":
            continue
        for t in DAILY:
            checked.add((t, day))
            if day not in after.get(t, {}).get("days", {}):
                trial.problems.append(f"{t} {day}: committed before the kill but missing")
    for t, entry in before.items():  # what the base state held is still there
        for day in entry.get("days", {}):
            checked.add((t, day))
            if day not in after[t]["days"]:
                trial.problems.append(f"{t} {day}: present before the run, missing after the kill")
    try:
        run_backfill(work, start, end)
        final = table_state(work)
    except Exception as exc:
        trial.problems.append(f"the rerun failed: {exc}")
        trial.checked = len(checked)
        return trial
    for t in TABLES:
        if final.get(t, {}).get("hash") != reference[t]["hash"]:
            trial.problems.append(f"{t}: the rerun did not converge to the reference content hash")
    trial.checked = len(checked)
    return trial


def _run_and_kill(
    args: list[str], work: Path, after_commits: int, delay: float, timeout: float
) -> tuple[list[str], bool]:
    """Start ``args`` (a chain into ``work``) in its own process group; SIGKILL the group
    ``delay`` seconds after it printed ``after_commits`` commit lines. Returns the commit
    lines printed before the kill and whether it had exited already."""
    from servers import start_server

    server = start_server(args, log_path=work.parent / f"{work.name}.log",
                          env=backfill_env(work), cwd=REPO)
    try:
        deadline = time.monotonic() + timeout
        while (len(_committed(server.tail(10**7))) < after_commits
               and server.process.poll() is None and time.monotonic() < deadline):
            time.sleep(0.05)
        time.sleep(delay)
        exited = server.process.poll() is not None
    finally:
        server.stop()  # SIGKILL to the whole group
    return _committed(server.tail(10**7)), exited


def kill_points(n: int, n_commits: int, step_seconds: float, seed: int) -> list[tuple[int, float]]:
    """``n`` (after_commits, delay) pairs: a commit count in 0..n_commits-1 and a delay
    within one step of the run, so most kills land inside a write or between two."""
    rng = random.Random(seed)
    return [(rng.randrange(n_commits), round(rng.uniform(0.0, step_seconds), 2)) for _ in range(n)]


# --- Monthly chain ---------------------------------------------------------------------
#
# ``python tests/reliability/crash.py monthly HOME FIRST LAST MODE`` runs the monthly
# backtest chain (lgbm_model -> oos_predictions -> backtest, monthly_models_job's
# selection) over the month partitions [FIRST, LAST] through a persistent Dagster instance
# under HOME/dagster, MLflow under HOME (SQLite + artifacts) and the Delta warehouse under
# HOME/warehouse, whose upstream tables (simulated market, point-in-time features, labels)
# ``prepare_monthly_base`` wrote. MODE "months": one run per month, in order (how the
# monthly schedule and a restart run it; each backtest month starts from the stored end
# state of the month before); MODE "range": one run over the whole range (a UI backfill
# of the single-run backfill policy). It prints "committed ready" once the instance is
# open, then one line per committed month ("months") or "committed range" at the end.

MONTHLY = ("lgbm_model", "oos_predictions", "backtest")
BASE_TABLES = ("universe", "corporate_actions", "fundamentals", "market_bars", "pit_features",
               "labels")
# per-run identifiers of lgbm_model rows (MLflow run, model URI, registry version): a rerun
# gets new ones by design; everything else (model string, sha256, metrics...) must be equal
RUN_SPECIFIC = {"lgbm_model": ("mlflow_run_id", "model_uri", "registered_version")}
READY = "ready"
RANGE = "range"
MODEL_TEXT = "model_str.txt"  # the exact model string, logged next to the MLflow model


def settings_for(home: Path):
    from quant_assets.settings import Settings

    old = os.environ.get("QUANT_HOME")
    os.environ["QUANT_HOME"] = str(home)
    try:
        return Settings.from_env()
    finally:
        if old is None:
            os.environ.pop("QUANT_HOME", None)
        else:
            os.environ["QUANT_HOME"] = old


def prepare_monthly_base(home: Path) -> None:
    """The chain's upstream, written straight to Delta as the data/feature assets would
    (simulated market + real point-in-time features and labels over the settings' range)."""
    from quant_assets.models.synthetic import simulated_panel, write_panel
    from quant_assets.warehouse import Warehouse

    settings = settings_for(home)
    write_panel(Warehouse(settings.warehouse_uri),
                simulated_panel(n_instruments=settings.n_instruments, start=settings.start_date,
                                end=settings.end_date, seed=settings.seed))


def _monthly(home: str, first: str, last: str, mode: str) -> int:
    """Runs in the subprocess (QUANT_HOME=home comes from its environment)."""
    from dagster import DagsterInstance

    from quant_assets.instance import prepare_local_instance
    from quant_assets.settings import Settings

    settings = Settings.from_env()
    assert str(settings.quant_home) == str(Path(home).resolve()), settings.quant_home
    prepare_local_instance(settings.dagster_home)
    with DagsterInstance.get() as instance:
        chain_in(instance, settings, first, last, mode,
                 report=lambda what: print(COMMITTED + what, flush=True))
    return 0


def chain_in(instance, settings, first: str, last: str, mode: str = "months",
             report=lambda what: None) -> None:
    from dagster import materialize
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    from quant_assets.backtest.assets import backtest
    from quant_assets.data.assets import corporate_actions, fundamentals, market_bars, universe
    from quant_assets.features.assets import labels, pit_features
    from quant_assets.models.assets import lgbm_model, oos_predictions
    from resources import build_resources

    resources = build_resources(settings)
    assets = [universe, corporate_actions, fundamentals, market_bars, pit_features, labels,
              lgbm_model, oos_predictions, backtest]
    chain = [lgbm_model, oos_predictions, backtest]
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    report(READY)
    if mode == RANGE:
        tags = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
        result = materialize(assets, selection=chain, tags=tags, resources=resources,
                             instance=instance, run_config=quiet)
        assert result.success, (first, last)
        report(RANGE)
        return
    for month in month_keys(first, last):
        result = materialize(assets, selection=chain, partition_key=month, resources=resources,
                             instance=instance, run_config=quiet)
        assert result.success, month
        report(month)


def month_keys(first: str, last: str) -> list[str]:
    from quant_assets.partitions import monthly_partitions

    return [k for k in monthly_partitions.get_partition_keys() if first <= k <= last]


def monthly_args(home: Path, first: str, last: str, mode: str) -> list[str]:
    return [sys.executable, str(HERE), "monthly", str(home), first, last, mode]


def run_monthly(home: Path, first: str, last: str, mode: str = "months",
                timeout: float = 600) -> list[tuple[str, float]]:
    """An uninterrupted chain in a subprocess: its commit lines, each with the seconds since
    the process started at which the harness saw it (the timeline kill points are drawn on)."""
    from servers import start_server

    server = start_server(monthly_args(home, first, last, mode),
                          log_path=home.parent / f"{home.name}.log", env=backfill_env(home),
                          cwd=REPO)
    t0 = time.monotonic()
    seen: list[tuple[str, float]] = []
    try:
        while True:
            done = server.process.poll() is not None
            lines = _committed(server.tail(10**7))
            now = time.monotonic() - t0
            seen.extend((line, round(now, 3)) for line in lines[len(seen):])
            if done:
                break
            if now > timeout:
                raise RuntimeError(f"monthly chain over {timeout}s:\n{server.tail()}")
            time.sleep(0.05)
        code = server.process.returncode
    finally:
        server.stop()
    if code != 0:
        raise RuntimeError(f"monthly chain failed ({code}):\n{server.tail(8000)}")
    return seen


def monthly_state(home: Path, tables: tuple[str, ...] = BASE_TABLES + MONTHLY) -> dict[str, dict]:
    """Per table: a whole-table content hash, a hash and row count per month (chain tables),
    and the (MLflow run id, model sha256) of each lgbm_model month. Raises if a table does
    not open or read."""
    import polars as pl

    from quant_assets.warehouse import Warehouse, content_hash

    wh = Warehouse(str(home / "warehouse"))
    out: dict[str, dict] = {}
    for t in tables:
        if not wh.exists([t]):
            continue
        frame = wh.read([t]).frame
        exclude = RUN_SPECIFIC.get(t, ())
        entry: dict = {"hash": content_hash(frame, exclude)}
        if t in MONTHLY:
            month = pl.col("date").dt.truncate("1mo").cast(pl.String).alias("month")
            frame = frame.with_columns(month)
            entry["months"] = {
                m: content_hash(part.drop("month"), exclude)
                for (m,), part in frame.group_by(["month"])
            }
            entry["rows"] = dict(frame.group_by("month").len().iter_rows())
            if t == "lgbm_model":
                entry["models"] = {
                    r["month"]: (r["mlflow_run_id"], r["sha256"])
                    for r in frame.iter_rows(named=True)
                }
        out[t] = entry
    return out


def model_file_problems(home: Path, state: dict[str, dict], settled: bool = False) -> tuple[list[str], int]:
    """Each visible lgbm_model month's MLflow run is FINISHED and holds the exact model
    string whose sha256 the row records (the model file is logged before the row is
    committed). Exactly once (issue 16): at most one FINISHED MLflow run per run key (asset,
    partitions, Dagster run) and at most one registered model version per MLflow run,
    however the steps were killed; ``settled`` (after the rerun): no run is left RUNNING,
    a killed step's orphan was marked failed or reused. Read from MLflow's SQLite store
    directly (read-only; an MlflowClient would open and verify the whole store, seconds per
    trial)."""
    import contextlib
    import hashlib
    import sqlite3
    from urllib.parse import unquote, urlparse

    models = state.get("lgbm_model", {}).get("models", {})
    if not models:
        return [], 0
    db = settings_for(home).mlflow_uri.removeprefix("sqlite:///")
    problems = []
    # only SELECTs, on a plain connection: mode=ro fails ("attempt to write a readonly
    # database") when the killed writer left a WAL without its index, which only a writable
    # connection can rebuild; no process writes the store now
    with contextlib.closing(sqlite3.connect(db)) as conn:
        for key, n in conn.execute(
            "SELECT t.value, COUNT(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'quant.run_key' AND r.status = 'FINISHED' "
            "GROUP BY t.value HAVING COUNT(*) > 1"
        ):
            problems.append(f"run key {key}: {n} FINISHED MLflow runs (exactly once: at most 1)")
        for name, run_id, n in conn.execute(
            "SELECT name, run_id, COUNT(*) FROM model_versions GROUP BY name, run_id HAVING COUNT(*) > 1"
        ):
            problems.append(f"{name}: {n} model versions registered by MLflow run {run_id}")
        if settled:
            for run_id, name in conn.execute("SELECT run_uuid, name FROM runs WHERE status = 'RUNNING'"):
                problems.append(f"MLflow run {run_id} ({name}) still RUNNING after the rerun")
        for month, (run_id, sha) in sorted(models.items()):
            row = conn.execute("SELECT artifact_uri, status FROM runs WHERE run_uuid = ?",
                               (run_id,)).fetchone()
            if row is None:
                problems.append(f"lgbm_model {month}: MLflow run {run_id} not found")
                continue
            if row[1] != "FINISHED":
                problems.append(f"lgbm_model {month}: the row's MLflow run {run_id} is {row[1]}")
            path = Path(unquote(urlparse(row[0]).path)) / MODEL_TEXT
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError as exc:
                problems.append(f"lgbm_model {month}: model file of run {run_id}: {exc!r}")
                continue
            if digest != sha:
                problems.append(f"lgbm_model {month}: model file of run {run_id} does not "
                                f"hash to the row's sha256")
    return problems, len(models)


def materialized(dagster_home: Path) -> dict[str, list[str]]:
    """Partitions of the chain's assets that the instance's event log records as
    materialised (what Dagster considered committed when the process died)."""
    from dagster import AssetKey, DagsterInstance

    if not (dagster_home / "dagster.yaml").exists():
        return {}
    out = {}
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        for t in MONTHLY:
            records = instance.fetch_materializations(AssetKey(t), limit=10_000).records
            keys = sorted({r.partition_key for r in records if r.partition_key})
            if keys:
                out[t] = keys
    return out


def monthly_kill_and_check(
    base: Path, work: Path, reference: dict[str, dict], first: str, last: str, mode: str,
    after_commits: int, delay: float, base_name: str = "fresh", timeout: float = 600,
) -> Trial:
    """One monthly trial: copy ``base`` into ``work`` (without its Dagster instance), run
    the chain there and SIGKILL it ``delay`` s after ``after_commits`` commit lines, then

    1. every Delta table opens and reads (upstream tables unchanged);
    2. no partially written month is visible: each stored month of lgbm_model,
       oos_predictions and backtest equals the reference's month (all or nothing);
    3. every month committed before the kill (printed by the chain, or recorded as
       materialised by its Dagster event log), and every month the base held, is present
       and equal to the reference;
    4. every visible model row's MLflow model file hashes to the row's sha256;
    5. rerunning the range (same mode, uninterrupted) converges to the reference's content
       hashes, model files included.
    """
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(base, work, ignore=shutil.ignore_patterns("dagster"))
    before = monthly_state(work, MONTHLY)
    committed, exited = _run_and_kill(monthly_args(work, first, last, mode), work,
                                      after_commits, delay, timeout)
    trial = Trial(after_commits, delay, committed, exited, base=base_name, mode=mode)
    try:
        trial.materialized_before_kill = materialized(work / "dagster")
    except Exception as exc:
        trial.problems.append(f"the Dagster event log does not read after the kill: {exc!r}")
    try:
        after = monthly_state(work)
    except Exception as exc:  # a table that does not open is the failure being looked for
        trial.problems.append(f"a table does not open after the kill: {exc!r}")
        return trial
    checked: set[tuple[str, str]] = set()
    for t in BASE_TABLES:
        checked.add((t, ""))
        if after.get(t, {}).get("hash") != reference[t]["hash"]:
            trial.problems.append(f"{t}: upstream table changed by the chain")
    months = month_keys(first, last)
    required: dict[str, set[str]] = {t: set() for t in MONTHLY}
    for line in committed:
        if line == RANGE:
            for t in MONTHLY:
                required[t].update(months)
        elif line != READY:
            for t in MONTHLY:
                required[t].add(line)
    for t, keys in trial.materialized_before_kill.items():
        required[t].update(keys)
    for t in MONTHLY:
        required[t].update(before.get(t, {}).get("months", {}))
        ref = reference[t]
        stored = after.get(t, {}).get("months", {})
        for month, digest in stored.items():
            checked.add((t, month))
            if ref["months"].get(month) != digest:
                trial.problems.append(
                    f"{t} {month}: partial or foreign month ({after[t]['rows'][month]} rows, "
                    f"reference {ref['rows'].get(month)})"
                )
        for month in sorted(required[t]):
            checked.add((t, month))
            if month not in stored:
                trial.problems.append(f"{t} {month}: committed before the kill but missing")
    problems, n_models = model_file_problems(work, after)
    trial.problems += problems
    try:
        run_monthly(work, first, last, mode, timeout=timeout)
    except Exception as exc:
        trial.problems.append(f"the rerun failed: {exc}")
        trial.checked = len(checked)
        return trial
    try:
        final = monthly_state(work)
    except Exception as exc:
        trial.problems.append(f"a table does not open after the rerun: {exc!r}")
        trial.checked = len(checked)
        return trial
    for t in BASE_TABLES + MONTHLY:
        if final.get(t, {}).get("hash") != reference[t]["hash"]:
            trial.problems.append(f"{t}: the rerun did not converge to the reference content hash")
    problems, _ = model_file_problems(work, final, settled=True)
    trial.problems += [f"after the rerun: {p}" for p in problems]
    trial.checked = len(checked)
    return trial


def timeline_kill_points(
    n: int, timeline: list[tuple[str, float]], seed: int, startup_share: float = 0.1,
) -> list[tuple[int, float]]:
    """``n`` (after_commits, delay) pairs drawn uniformly over an uninterrupted run's
    timeline (commit lines with their times since start, the first being READY): a share
    ``startup_share`` inside the start-up (before READY), the rest between READY and the
    last commit, so each part of the run is hit in proportion to its duration."""
    rng = random.Random(seed)
    times = [t for _, t in timeline]
    points = []
    for _ in range(n):
        if rng.random() < startup_share:
            points.append((0, round(rng.uniform(0.0, times[0]), 2)))
            continue
        at = rng.uniform(times[0], times[-1])
        k = max(i for i, t in enumerate(times) if t <= at)  # commits before the kill: k + 1
        points.append((k + 1, round(at - times[k], 2)))
    return points


def as_range_point(point: tuple[int, float], timeline: list[tuple[str, float]]) -> tuple[int, float]:
    """The same moment of the run for MODE "range", which prints no line between READY and
    its end: (1, seconds after READY)."""
    after, delay = point
    if after == 0:
        return point
    times = [t for _, t in timeline]
    return 1, round(times[after - 1] + delay - times[0], 2)


# --- MLflow store creation ---------------------------------------------------------------
#
# A kill while the first model month of a fresh home creates MLflow's SQLite store, but at
# a chosen point: ``python crash.py mlflow-init HOME TABLE`` opens the pipeline's tracking
# resource on HOME and SIGKILLs itself right after MLflow's migrations create TABLE (the
# DDL is committed, the migration's version stamp is not), as the random sweep's kills did.

DIE_AFTER_TABLE = "datasets"  # created by a migration in the middle of MLflow's chain


def _mlflow_init(home: str, table: str) -> int:
    import signal

    from alembic.operations import Operations

    create = Operations.create_table

    def create_then_die(self, name, *args, **kwargs):
        out = create(self, name, *args, **kwargs)
        if name == table:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    Operations.create_table = create_then_die
    _use_tracking(home)
    return 0


def _use_tracking(home: str) -> None:
    from resources import build_resources

    tracking = build_resources(settings_for(Path(home)))["tracking"]
    with tracking.run("crash probe", {"asset_key": "crash_probe"}):
        tracking.log_metrics({"probe": 1.0})
    print(COMMITTED + "tracking", flush=True)


def mlflow_init_killed_then_used(home: Path, timeout: float = 300) -> tuple[int, int, str]:
    """(exit code of the run killed inside store creation, exit code of the next run that
    uses the store, the next run's output tail)."""
    home.mkdir(parents=True, exist_ok=True)
    killed = subprocess.run([sys.executable, str(HERE), "mlflow-init", str(home), DIE_AFTER_TABLE],
                            cwd=REPO, env=backfill_env(home), capture_output=True, text=True,
                            timeout=timeout)
    after = subprocess.run([sys.executable, str(HERE), "mlflow-use", str(home)], cwd=REPO,
                           env=backfill_env(home), capture_output=True, text=True, timeout=timeout)
    return killed.returncode, after.returncode, (after.stdout + after.stderr)[-3000:]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "backfill":
        sys.exit(_backfill(*sys.argv[2:]))
    if len(sys.argv) == 6 and sys.argv[1] == "monthly":
        sys.exit(_monthly(*sys.argv[2:]))
    if len(sys.argv) == 4 and sys.argv[1] == "mlflow-init":
        sys.exit(_mlflow_init(*sys.argv[2:]))
    if len(sys.argv) == 3 and sys.argv[1] == "mlflow-use":
        _use_tracking(sys.argv[2])
        sys.exit(0)
    sys.exit(f"usage: {sys.argv[0]} backfill HOME START_DAY END_DAY\n"
             f"       {sys.argv[0]} monthly HOME FIRST_MONTH LAST_MONTH months|range")
