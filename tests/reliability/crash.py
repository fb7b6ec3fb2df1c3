"""Crash-safety harness: a range backfill in a subprocess, killed with SIGKILL at a random
moment, then checked and rerun.

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

    from resources.warehouse import Warehouse, content_hash

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
    from servers import start_server, stop_process_group

    if work.exists():
        shutil.rmtree(work)
    if base is not None:
        shutil.copytree(base, work)
    work.mkdir(parents=True, exist_ok=True)
    before = table_state(work)
    server = start_server(
        [sys.executable, str(HERE), "backfill", str(work), start, end],
        log_path=work.parent / f"{work.name}.log", env=backfill_env(work), cwd=REPO,
    )
    try:
        deadline = time.monotonic() + timeout
        while (len(_committed(server.tail(10**7))) < after_commits
               and server.process.poll() is None and time.monotonic() < deadline):
            time.sleep(0.05)
        time.sleep(delay)
        exited = server.process.poll() is not None
    finally:
        stop_process_group(server.process)  # SIGKILL to the whole group
    committed = _committed(server.tail(10**7))
    trial = Trial(after_commits, delay, committed, exited)
    try:
        after = table_state(work)
    except Exception as exc:  # a table that does not open is the failure being looked for
        trial.problems.append(f"a table does not open after the kill: {exc!r}")
        return trial
    for t, entry in after.items():
        ref = reference[t]
        if t not in DAILY:
            if entry["hash"] != ref["hash"]:
                trial.problems.append(f"{t}: content differs from the reference")
            continue
        for day, digest in entry["days"].items():
            if ref["days"].get(day) != digest:
                trial.problems.append(
                    f"{t} {day}: partial or foreign partition ({entry['rows_per_day'][day]} rows, "
                    f"reference {reference[t]['rows_per_day'].get(day)})"
                )
    for day in committed:
        if day == "reference":
            continue
        for t in DAILY:
            if day not in after.get(t, {}).get("days", {}):
                trial.problems.append(f"{t} {day}: committed before the kill but missing")
    for t, entry in before.items():  # what the base state held is still there
        for day in entry.get("days", {}):
            if day not in after[t]["days"]:
                trial.problems.append(f"{t} {day}: present before the run, missing after the kill")
    run_backfill(work, start, end)
    final = table_state(work)
    for t in TABLES:
        if final.get(t, {}).get("hash") != reference[t]["hash"]:
            trial.problems.append(f"{t}: the rerun did not converge to the reference content hash")
    return trial


def kill_points(n: int, n_commits: int, step_seconds: float, seed: int) -> list[tuple[int, float]]:
    """``n`` (after_commits, delay) pairs: a commit count in 0..n_commits-1 and a delay
    within one step of the run, so most kills land inside a write or between two."""
    rng = random.Random(seed)
    return [(rng.randrange(n_commits), round(rng.uniform(0.0, step_seconds), 2)) for _ in range(n)]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "backfill":
        sys.exit(_backfill(*sys.argv[2:]))
    sys.exit(f"usage: {sys.argv[0]} backfill HOME START_DAY END_DAY")
