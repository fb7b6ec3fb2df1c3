"""Benchmark: point-in-time features of a whole history, raw polars versus a Dagster backfill.

    .venv/bin/python benchmarks/feature_backfill.py            # 500 instruments x 10 years
    .venv/bin/python benchmarks/feature_backfill.py --quick    # 50 instruments x 1 year
    .venv/bin/python benchmarks/feature_backfill.py --instruments 200 --years 2

Both parts use the same simulated market (the seeded simulator, as the `market_source`
resource builds it) and run in the same invocation:

(a) raw: `compute_features` of every trading day in one process (no Dagster, no Delta).
(b) Dagster: in a child process with its own QUANT_* environment (the partitions are built
    from it at import) and a temporary DAGSTER_HOME prepared as local runs do
    (`prepare_local_instance` + `relax_local_sqlite`): the reference tables and the landed
    `market_bars` are materialised first (not timed: (a) starts from tables in memory
    too), then `pit_features` (with its blocking look-ahead check) runs over the whole range
    in the runs a range backfill launches: one run per chunk of the backfill policy's
    `max_partitions_per_run` days, tagged with the chunk's partition range. Runs are executed in process so that the time
    spent in each part can be measured: Dagster's event storage, feature computation, the
    leak check, Delta writes and reads (the rest: market_bars slicing and quality rules,
    run and step bookkeeping).

``--repeats N`` (default 3) runs the pair N times, (a) then (b) each round, so that a change
of load hits both; the figures printed are medians over the rounds (the breakdown is the
median round's, by (b)'s wall time), with every round's pair listed below them.

Prints both wall times, the ratio (b) / (a), the number of runs and (b)'s breakdown.
``--profile FILE`` writes a cProfile of (b)'s timed runs (for finding where the time goes:
profiling inflates (b), so not for the ratio).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _range(years: float, end: dt.date) -> tuple[dt.date, dt.date]:
    from quant_assets import calendar

    start = end - dt.timedelta(days=round(365.25 * years))
    while not calendar.is_trading_day(start):
        start += dt.timedelta(days=1)
    return start, end


def raw_features(n_instruments: int, seed: int, start: dt.date, end: dt.date) -> dict:
    """(a): every day's features in this process, from the simulated tables."""
    from quant_assets.calendar import trading_days
    from quant_assets.data.simulator import SimulatorConfig, simulate_market
    from quant_assets.features import compute_features

    market = simulate_market(SimulatorConfig(n_instruments=n_instruments, start=start, end=end, seed=seed))
    days = trading_days(start, end)
    t0, c0 = time.perf_counter(), time.process_time()
    frame = compute_features(market.universe, market.market_bars, market.corporate_actions, market.fundamentals, days)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    # not part of (a): what saving its frame costs a hand-rolled pipeline (one Parquet file,
    # LZ4 as the warehouse writes), printed beside the ratio to show how much of (b)'s extra
    # time is persisting the result at all
    with tempfile.TemporaryDirectory() as folder:
        w0 = time.perf_counter()
        frame.write_parquet(Path(folder) / "pit_features.parquet", compression="lz4")
        write = time.perf_counter() - w0
    return {"wall_s": wall, "cpu_s": cpu, "days": len(days), "rows": frame.height, "features": frame.width - 2,
            "bars": market.market_bars.height, "parquet_write_s": write}


# --------------------------------------------------------------------------- (b), child side


class _Timers:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.items: dict[str, int] = defaultdict(int)
        self._depth: dict[str, int] = defaultdict(int)

    def wrap(self, owner, attr: str, name: str, items=lambda args: 1) -> None:
        """Time ``owner.attr`` under ``name``. Several methods may share a name: only the
        outermost call is counted (a batch write that falls back to single writes counts once),
        with ``items(args)`` items (events of a batch)."""
        inner = getattr(owner, attr)

        def timed(*args, **kwargs):
            self._depth[name] += 1
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self._depth[name] -= 1
                if not self._depth[name]:
                    self.seconds[name] += time.perf_counter() - t0
                    self.cpu[name] += time.process_time() - c0
                    self.calls[name] += 1
                    self.items[name] += items(args)

        setattr(owner, attr, timed)

    def clear(self) -> None:
        for counter in (self.seconds, self.cpu, self.calls, self.items):
            counter.clear()


def dagster_child(home: Path) -> dict:
    """(b), run in a child whose QUANT_* environment is already set."""
    from quant_assets.instance import prepare_local_instance, relax_local_sqlite

    prepare_local_instance(home / "dagster")
    relax_local_sqlite(home)

    from dagster import AssetKey, DagsterInstance
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    import quant_assets.features.assets as feature_assets
    from quant_assets.definitions import defs
    from quant_assets.partitions import trading_day_partitions
    from quant_assets.warehouse import Warehouse

    timers = _Timers()
    instance = DagsterInstance.get()
    t0 = time.perf_counter()
    reference = defs.get_job_def("reference_data_job").execute_in_process(instance=instance)
    assert reference.success
    reference_s = time.perf_counter() - t0

    store = type(instance.event_log_storage)
    print("event log storage:", store.__name__, file=sys.stderr)
    # single events and batches (DAGSTER_EVENT_BATCH_SIZE: Dagster hands a run's planned events
    # and a partitioned output's materialisations to store_event_batch)
    timers.wrap(store, "store_event", "dagster_event_store")
    timers.wrap(store, "store_event_batch", "dagster_event_store", items=lambda args: len(args[1]))
    timers.wrap(feature_assets, "compute_features", "compute_features")
    timers.wrap(feature_assets.guard, "find_leaks", "leak_check")
    timers.wrap(Warehouse, "write", "delta_write")
    timers.wrap(Warehouse, "read", "delta_read")

    job = defs.get_job_def("daily_features_job")
    policy = feature_assets.pit_features.backfill_policy
    keys = trading_day_partitions.get_partition_keys()
    step = policy.max_partitions_per_run or len(keys)
    chunks = [keys[i : i + step] for i in range(0, len(keys), step)]

    def tags(chunk: list[str]) -> dict[str, str]:
        return {ASSET_PARTITION_RANGE_START_TAG: chunk[0], ASSET_PARTITION_RANGE_END_TAG: chunk[-1]}

    # the landed bars first (not timed, like the reference tables): (b) is the feature backfill
    b0 = time.perf_counter()
    for chunk in chunks:
        bars = job.execute_in_process(instance=instance, tags=tags(chunk), asset_selection=[AssetKey("market_bars")])
        assert bars.success
    bars_s = time.perf_counter() - b0
    timers.clear()
    runs = []
    profile_to = os.environ.get("FEATURE_BACKFILL_PROFILE")
    profiler = cProfile.Profile() if profile_to else None
    t0, c0 = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    for chunk in chunks:
        r0 = time.perf_counter()
        result = job.execute_in_process(instance=instance, tags=tags(chunk), asset_selection=[AssetKey("pit_features")])
        if not result.success:
            raise SystemExit(f"run for {chunk[0]}..{chunk[-1]} failed")
        runs.append({"days": len(chunk), "wall_s": time.perf_counter() - r0, "run_id": result.run_id})
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile_to)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    # the runs' events counted after the timing: reading a run's log back (~1 ms an event) is
    # not part of the backfill
    for run in runs:
        run["events"] = len(instance.all_logs(run.pop("run_id")))
    features = Warehouse(os.environ["QUANT_WAREHOUSE_URI"]).read(["pit_features"]).frame
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "reference_s": reference_s,
        "bars_s": bars_s,
        "runs": runs,
        "rows": features.height,
        "days": len(keys),
        "seconds": dict(timers.seconds),
        "cpu": dict(timers.cpu),
        "calls": dict(timers.calls),
        "items": dict(timers.items),
        "event_batch_size": os.environ.get("DAGSTER_EVENT_BATCH_SIZE"),
    }


def run_dagster(n_instruments: int, seed: int, start: dt.date, end: dt.date, tmpdir: str | None = None,
                profile: str | None = None) -> dict:
    """(b): start the child with its own environment and read its JSON answer."""
    with tempfile.TemporaryDirectory(prefix="feature-backfill-", dir=tmpdir) as tmp:
        home = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QUANT_", "DAGSTER_HOME"))}
        first_month = (start.replace(day=1) + dt.timedelta(days=62)).replace(day=1)
        env.update({
            "QUANT_HOME": str(home),
            "QUANT_WAREHOUSE_URI": str(home / "warehouse"),
            "QUANT_START_DATE": start.isoformat(),
            "QUANT_END_DATE": end.isoformat(),
            "QUANT_FIRST_MODEL_MONTH": first_month.strftime("%Y-%m"),
            "QUANT_N_INSTRUMENTS": str(n_instruments),
            "QUANT_SEED": str(seed),
            "QUANT_ENV": "local",
            "PYTHONWARNINGS": "ignore",
            "DAGSTER_DISABLE_TELEMETRY": "true",
        })
        if profile:
            env["FEATURE_BACKFILL_PROFILE"] = str(Path(profile).resolve())
        out = home / "result.json"
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(home), "--child-out", str(out)],
            env=env, cwd=REPO, capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"dagster child failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def median_round(rounds: list[tuple[dict, dict]]) -> tuple[dict, dict, dict]:
    """Medians over rounds of (a, b): (a)'s and (b)'s wall and CPU, their ratios, and the
    round whose (b) wall time is the median (for the breakdown)."""
    med = {
        "a_wall": statistics.median(a["wall_s"] for a, _ in rounds),
        "a_cpu": statistics.median(a["cpu_s"] for a, _ in rounds),
        "b_wall": statistics.median(b["wall_s"] for _, b in rounds),
        "b_cpu": statistics.median(b["cpu_s"] for _, b in rounds),
        "ratio_wall": statistics.median(b["wall_s"] / a["wall_s"] for a, b in rounds),
        "ratio_cpu": statistics.median(b["cpu_s"] / a["cpu_s"] for a, b in rounds),
        "a_parquet_write": statistics.median(a["parquet_write_s"] for a, _ in rounds),
        "ratio_to_a_with_parquet": statistics.median(b["wall_s"] / (a["wall_s"] + a["parquet_write_s"]) for a, b in rounds),
    }
    ordered = sorted(rounds, key=lambda r: r[1]["wall_s"])
    a, b = ordered[(len(ordered) - 1) // 2]
    return a, b, med


def report(rounds: list[tuple[dict, dict]], n_instruments: int, start: dt.date, end: dt.date) -> str:
    a, b, med = median_round(rounds)
    events = sum(r["events"] for r in b["runs"])
    s, c, n = b["seconds"], b["cpu"], b["calls"]
    parts = ("dagster_event_store", "compute_features", "leak_check", "delta_write", "delta_read")
    rest_wall = b["wall_s"] - sum(s.get(k, 0.0) for k in parts)
    rest_cpu = b["cpu_s"] - sum(c.get(k, 0.0) for k in parts)
    stored = b["items"].get("dagster_event_store", 0)
    writes = n.get("dagster_event_store", 0)

    def row(label: str, key: str, note: str = "") -> str:
        return f"  {label:<24}{s.get(key, 0):8.1f} s wall {c.get(key, 0):8.1f} s CPU{note}"

    lines = [
        f"market: {n_instruments} instruments, {start} .. {end}: {a['days']} trading days, "
        f"{a['bars']:,} bars; {a['features']} features, {a['rows']:,} feature rows",
        "(CPU = process CPU time, all threads: on a shared, loaded machine wall time also counts waiting)",
        f"medians of {len(rounds)} round(s), (a) then (b) in each; load average before: {rounds[0][0].get('load', '?')}",
        f"(a) raw polars, one process:            {med['a_wall']:8.1f} s wall {med['a_cpu']:8.1f} s CPU",
        f"(b) Dagster range backfill into Delta:  {med['b_wall']:8.1f} s wall {med['b_cpu']:8.1f} s CPU  "
        f"({len(b['runs'])} runs of <= {max(r['days'] for r in b['runs'])} days; reference tables "
        f"{b['reference_s']:.1f} s and market_bars {b['bars_s']:.1f} s before it, not counted)",
        f"ratio (b) / (a):                        {med['ratio_wall']:8.2f} wall {med['ratio_cpu']:8.2f} CPU"
        "  (median of the rounds' ratios)",
        f"(not the target) (a) plus writing its frame to one Parquet file: {med['a_parquet_write']:.1f} s more; "
        f"(b) / that {med['ratio_to_a_with_parquet']:.2f}",
        "rounds (a / b wall s): " + ", ".join(f"{ra['wall_s']:.1f} / {rb['wall_s']:.1f}" for ra, rb in rounds),
        f"runs: {len(b['runs'])}; rows written by (b) equal (a)'s: "
        f"{all(rb['rows'] == ra['rows'] for ra, rb in rounds)}",
        f"where (b)'s time goes (the median round, (b) {b['wall_s']:.1f} s):",
        row("Dagster event storage", "dagster_event_store",
            f"  ({stored} events stored in {writes} writes (DAGSTER_EVENT_BATCH_SIZE="
            f"{b.get('event_batch_size')}), {events} in the runs' logs; "
            f"{1000 * s.get('dagster_event_store', 0) / max(1, stored):.1f} ms wall, "
            f"{1000 * c.get('dagster_event_store', 0) / max(1, stored):.1f} ms CPU each)"),
        row("compute_features", "compute_features"),
        row("leak check (sampled)", "leak_check"),
        row("Delta writes", "delta_write", f"  ({n.get('delta_write', 0)} commits)"),
        row("Delta reads", "delta_read"),
        f"  {'rest':<24}{rest_wall:8.1f} s wall {rest_cpu:8.1f} s CPU"
        "  (run/step bookkeeping, input loading)",
        "per run: " + ", ".join(f"{r['days']}d {r['wall_s']:.1f}s/{r['events']}ev" for r in b["runs"]),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instruments", type=int, default=500)
    parser.add_argument("--years", type=float, default=10.0)
    parser.add_argument("--end", default="2024-12-31")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="50 instruments x 1 year")
    parser.add_argument("--tmpdir", help="where (b)'s QUANT_HOME goes (default: the system temp "
                        "folder; /dev/shm shows how much of the event storage time is disk I/O)")
    parser.add_argument("--profile", help="write a cProfile of (b)'s timed runs to this file "
                        "(inflates (b)'s figures: for finding where the time goes, not for the ratio)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (a) then (b); medians are printed")
    parser.add_argument("--json", action="store_true", help="also print the raw figures as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        Path(args.child_out).write_text(json.dumps(dagster_child(Path(args.child))))
        return
    if args.quick:
        args.instruments, args.years = 50, 1.0
    start, end = _range(args.years, dt.date.fromisoformat(args.end))
    rounds = []
    for _ in range(max(1, args.repeats)):
        load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
        a = raw_features(args.instruments, args.seed, start, end)
        a["load"] = load
        b = run_dagster(args.instruments, args.seed, start, end, args.tmpdir, args.profile)
        rounds.append((a, b))
    print(report(rounds, args.instruments, start, end))
    if args.json:
        print(json.dumps({"medians": median_round(rounds)[2], "rounds": [{"raw": ra, "dagster": rb} for ra, rb in rounds]}))


if __name__ == "__main__":
    main()
