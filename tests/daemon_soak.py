"""Unattended operation through the real Dagster daemon: a ``dagster-daemon run`` and a code
server (``dagster api grpc``, a gRPC location of the workspace) run on a fake clock
(libfaketime: ``LD_PRELOAD`` of its library and ``FAKETIME_TIMESTAMP_FILE``; every run the
daemon launches inherits it) while this driver moves the clock through trading days.

Each trading day D: the clock is set to just after D's cutoff (the daemon's scheduler then
catches the daily schedule's tick, the sensors see a new evaluation time) and the driver
waits until the daemon is done with it: the schedule's tick of D evaluated, no run queued
or in flight, and the automation sensor and the landing sensor have each completed a tick
that started after the last run ended and requested nothing. While nothing runs the clock is
nudged forward a minute at a time, so the sensors' minimum intervals (fake seconds) pass
at once and no real time is slept on them. Non-trading weekdays (an exchange holiday) are
visited too: the schedule's tick skips them.

Files: ``--daily-files`` drops each session's bars (the seeded simulation's, as a vendor's
file) into the landing folder two minutes after its cutoff and waits for the landing
sensor's run of it, before the schedule's time (whose tick then finds the day built);
``--no-file DAY`` is a session whose file never comes, which the schedule builds.
``--restate ON:DAY`` drops a restated bars file of the already built DAY (its stored
bars, every price 0.2 % higher, with the day's own knowledge times) into the landing folder on ON, after
ON's own file (so ON's features read the restated bar too and are rebuilt: the record's
``restated_at``) and before ON's schedule, and waits for the landing sensor's run of it; ``--bad-landing DAY`` drops a
malformed bars file (a NaN close, tests/data/bad_inputs) on DAY, which the landing sensor
rejects. A person promotes the latest LightGBM version the morning after the first month's
models (QUANT_AUTO_PROMOTE=wait), as tests/automation_scenario.py --execute does.

The history before the clock (reference tables, bars and features, labels) is loaded by a
faked subprocess with ``automation_scenario.Executor`` (a backfill would do the same), at the
first day's 00:00.

Run as ``python tests/daemon_soak.py OUT.json --first DAY --last DAY [--restate ON:DAY]
[--bad-landing DAY]`` with the settings in the environment (live partitions:
QUANT_END_DATE empty; QUANT_SIMULATOR_END is set here to the last day so that every run
simulates the same market). Writes the record format of automation_scenario.py
(``ticks``: one entry per daemon run with what it asked for; ``built``/``first_built``
from the instance's materialisation records; ``execute``: promotions, scores,
stored_scores, landing) plus ``runs`` (every run: its origin, partition, assets) so that
tests/test_automation.py's assertions apply, and prints the figures (fake days, trading
days, runs, materialisations, wall time).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from servers import free_port, start_server  # noqa: E402

IN_FLIGHT = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
SCHEDULE = "daily_features_schedule"
LANDING = "landing_files_sensor"
AUTOMATION = "automation_sensor"
ORIGIN_TAGS = {"dagster/schedule_name": "schedule", "dagster/sensor_name": "sensor"}
LOCATION = "quant_assets"
RESTATE_FACTOR = 1.002


def faketime_library() -> Path:
    import libfaketime

    return Path(libfaketime.__file__).parent / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"


class FakeClock:
    """The fake time of every process started with ``env()``: real time plus the offset in
    the timestamp file ("+N" seconds), replaced atomically (a reader sees the old or the new
    file, never a partial one)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0.0
        self.started = False
        self._write(0.0)

    def _write(self, offset: float) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(f"{offset:+.0f}")
        os.replace(tmp, self.path)
        self.offset = round(offset)

    def set(self, when: dt.datetime) -> None:
        now = self.now()
        if self.started and when < now - dt.timedelta(seconds=1):
            raise ValueError(f"the clock only moves forward: {when} < {now}")
        # callers pass max(target, clock.now()): microseconds later it is "the past"
        when = max(when, now) if self.started else when
        self._write(when.timestamp() - time.time())
        self.started = True
        time.sleep(1.2)  # FAKETIME_CACHE_DURATION=1: every process reads the file again

    def nudge(self, seconds: float) -> None:
        self._write(self.offset + seconds)

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(time.time() + self.offset, dt.UTC)

    def env(self) -> dict[str, str]:
        return {"LD_PRELOAD": str(faketime_library()), "FAKETIME_TIMESTAMP_FILE": str(self.path),
                "FAKETIME_CACHE_DURATION": "1", "DONT_FAKE_MONOTONIC": "1"}


def instance_yaml(max_runs: int) -> str:
    return f"""run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: {max_runs}
run_launcher:
  module: dagster.core.launcher
  class: DefaultRunLauncher
telemetry:
  enabled: false
"""


def faked(clock: FakeClock, env: dict, *args: str) -> None:
    """A step of this script in a subprocess on the fake clock (what must be stamped with
    the fake time: the history's runs, a person's promotion)."""
    done = subprocess.run([sys.executable, __file__, *args], env={**env, **clock.env()},
                          capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"{args[0]} failed:\n{done.stderr[-6000:]}")


# ---- the faked steps ---------------------------------------------------------------------


def load_history(first: dt.date) -> None:
    """Reference tables, bars and features up to the day before ``first``, and the labels
    whose horizon ends before it, on the instance of DAGSTER_HOME."""
    from automation_scenario import UNPARTITIONED, Executor
    from dagster import DagsterInstance

    from quant_assets import calendar
    from quant_assets.settings import load_settings

    settings = load_settings()
    history = [d.isoformat() for d in calendar.trading_days(settings.start_date, first - dt.timedelta(days=1))]
    labelled = [d for d in history
                if calendar.shift_trading_days(dt.date.fromisoformat(d), settings.label_horizon) < first]
    with DagsterInstance.get() as instance:
        executor = Executor(settings, instance, settings.simulator_end)
        executor.run(list(UNPARTITIONED), what="history: reference data")
        executor.run(["market_bars", "pit_features"], start=history[0], end=history[-1], what="history: bars")
        executor.run(["labels"], start=labelled[0], end=labelled[-1], what="history: labels")


def promote(out: Path, why: str) -> None:
    from automation_scenario import promote_latest_lgbm

    from quant_assets.settings import load_settings
    from resources import build_resources

    client = build_resources(load_settings())["tracking"].client()
    now = dt.datetime.now(dt.UTC)  # the fake time
    version = promote_latest_lgbm(client, now, why)
    out.write_text(json.dumps({"time": now.isoformat(), "why": why, "version": version}))


# ---- files the driver drops --------------------------------------------------------------


def _stored_bars(settings, day: str):
    import polars as pl

    from quant_assets.warehouse import Warehouse

    return Warehouse(settings.warehouse_uri).read(["market_bars"]).frame.filter(
        pl.col("date") == dt.date.fromisoformat(day)).sort("date", "instrument_id")


def _land(settings, name: str, write) -> Path:
    """A file producer's drop: ``write(path)`` under an in-progress name (skipped by the
    sensor), then renamed, so a sensor tick judges the whole file, never one half written."""
    landing = Path(settings.landing_dir)
    landing.mkdir(parents=True, exist_ok=True)
    tmp = landing / f"_{name}"
    write(tmp)
    return tmp.rename(landing / name)


def drop_restated_file(settings, day: str) -> Path:
    """The stored bars of ``day``, every price 0.2 % higher: a vendor's re-delivery that
    corrects the record of the day (a small move, so every landing rule passes), with the
    day's own knowledge times, as the platform's restatement policy rebuilds the day's
    features with the corrected bars. (A correction stamped with its later arrival time
    replaces the day's bars with rows its own cutoff cannot see, and empties that day's
    point-in-time features: the bars table keeps one version per day; open, README.)"""
    import polars as pl

    bars = _stored_bars(settings, day)
    prices = [c for c in ("open", "high", "low", "close", "vwap") if c in bars.columns]
    bars = bars.with_columns(*(pl.col(c) * RESTATE_FACTOR for c in prices))
    return _land(settings, f"restated_{day}.parquet", bars.write_parquet)


def drop_day_file(settings, day: str) -> Path:
    """The vendor's file of ``day``: the day's bars as the configured market source has them
    (the seeded simulation the schedule would otherwise build from)."""
    import polars as pl

    from quant_assets.data.market import simulated_for
    from resources import build_resources

    source = build_resources(settings)["market_source"]
    bars = simulated_for(source).market_bars.filter(pl.col("date") == dt.date.fromisoformat(day))
    return _land(settings, f"bars_{day}.parquet", bars.sort("date", "instrument_id").write_parquet)


def drop_bad_file(settings, day: str) -> tuple[Path, str]:
    """automation_scenario's malformed file: the day's stored bars with a NaN close."""
    from automation_scenario import BAD_LANDING_KIND

    sys.path.insert(0, str(HERE / "data"))
    from bad_inputs.corpus import KINDS

    kind = next(k for k in KINDS if k.name == BAD_LANDING_KIND)
    bars = _stored_bars(settings, day)
    return _land(settings, f"{kind.name}{kind.suffix}", lambda tmp: kind.make(bars, tmp)), kind.rule


# ---- reading the instance ----------------------------------------------------------------


class Watch:
    """What the daemon did, read from the instance (DAGSTER_HOME)."""

    def __init__(self, instance):
        self.instance = instance
        self.states: dict[str, object] = {}

    def state(self, name: str):
        if name not in self.states:
            for state in self.instance.all_instigator_state():
                if state.instigator_name == name:
                    self.states[name] = state
        return self.states.get(name)

    def ticks(self, name: str, after: float) -> list:
        state = self.state(name)
        if state is None:
            return []
        return list(self.instance.get_ticks(state.instigator_origin_id, state.selector_id, after=after))

    def cursor(self, name: str) -> str | None:
        state = self.instance.get_instigator_state(self.state(name).instigator_origin_id,
                                                   self.state(name).selector_id)
        return getattr(state.instigator_data, "cursor", None)

    def runs(self) -> list:
        from dagster import RunsFilter

        out, cursor = [], None
        while True:
            page = self.instance.get_run_records(RunsFilter(), limit=1000, cursor=cursor, ascending=True)
            out += page
            if len(page) < 1000:
                return out
            cursor = page[-1].dagster_run.run_id

    def blocked(self, run_id: str) -> list[str] | None:
        """The steps of a failed run when every one failed as a blocking asset check (the
        validation gate refusing a month's models: the gate working, not a broken run);
        None when any step failed otherwise."""
        from dagster import DagsterEventType

        failures = self.instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
        steps = []
        for event in failures:
            error = event.dagster_event.event_specific_data.error
            if error is None or error.cls_name != "DagsterAssetCheckFailedError":
                return None
            steps.append(event.dagster_event.step_key)
        return steps or None

    def in_flight(self) -> list:
        return [r for r in self.runs() if r.dagster_run.status.value in IN_FLIGHT]

    def materialisations(self) -> list:
        """Every materialisation record (Dagster caps a page at 10,000: paged by cursor)."""
        from dagster import AssetRecordsFilter

        out = []
        for key in self.instance.get_asset_keys():
            cursor = None
            while True:
                page = self.instance.fetch_materializations(AssetRecordsFilter(key), limit=5000,
                                                            cursor=cursor, ascending=True)
                out += page.records
                if not page.has_more:
                    break
                cursor = page.cursor
        return out


def settle(clock: FakeClock, watch: Watch, since: float, *, schedule_tick: float | None,
           deadline: dt.datetime, daemon, server, timeout: float = 1800) -> None:
    """Wait until the daemon is done with the evaluation time ``since`` (module doc)."""
    from dagster._core.scheduler.instigation import TickStatus

    started = time.monotonic()
    while True:
        for process in (daemon, server):
            if not process.alive():
                raise RuntimeError(f"{process.args[:3]} exited:\n{process.tail()}")
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"the daemon did not settle at {clock.now()}:\n{daemon.tail()}")
        runs = watch.runs()
        busy = [r for r in runs if r.dagster_run.status.value in IN_FLIGHT]
        failed = [r for r in runs if r.dagster_run.status.value == "FAILURE" and not watch.blocked(r.dagster_run.run_id)]
        if failed:
            raise RuntimeError(f"run {failed[0].dagster_run.run_id} ({failed[0].dagster_run.job_name}, "
                               f"{failed[0].dagster_run.tags.get('dagster/partition')}) failed")
        scheduled = schedule_tick is None or any(
            t.status in (TickStatus.SUCCESS, TickStatus.SKIPPED) for t in watch.ticks(SCHEDULE, schedule_tick))
        if not busy and scheduled:
            last_end = max([since] + [r.end_time or 0 for r in runs])
            quiet = all(any(t.timestamp > last_end and t.status == TickStatus.SKIPPED for t in watch.ticks(name, last_end))
                        and not any(t.status == TickStatus.STARTED for t in watch.ticks(name, last_end))
                        for name in (AUTOMATION, LANDING))
            if quiet:
                return
            if clock.now() + dt.timedelta(minutes=1) < deadline:
                clock.nudge(60)  # the sensors' intervals pass at once
        time.sleep(2)


# ---- the driver --------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    if argv and argv[0] == "history":
        return load_history(dt.date.fromisoformat(argv[1]))
    if argv and argv[0] == "promote":
        return promote(Path(argv[1]), argv[2])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="where the JSON record goes")
    parser.add_argument("--first", required=True, type=dt.date.fromisoformat)
    parser.add_argument("--last", required=True, type=dt.date.fromisoformat)
    parser.add_argument("--restate", action="append", default=[], metavar="ON:DAY")
    parser.add_argument("--bad-landing", metavar="DAY", default=None)
    parser.add_argument("--daily-files", action="store_true",
                        help="drop each session's bars file in the landing folder after its cutoff")
    parser.add_argument("--no-file", action="append", default=[], metavar="DAY",
                        help="with --daily-files: a session whose file never comes (the schedule builds it)")
    parser.add_argument("--max-runs", type=int, default=3, help="the run queue's concurrency")
    parser.add_argument("--work", default=None, help="folder of the instance, logs and clock (default: beside OUT)")
    args = parser.parse_args(argv)
    first, last = args.first, args.last
    restatements: dict[str, list[str]] = defaultdict(list)
    for item in args.restate:
        on, day = item.split(":")
        restatements[on].append(day)

    work = Path(args.work or Path(args.out).resolve().parent / "daemon-soak")
    work.mkdir(parents=True, exist_ok=True)
    home = Path(os.environ.get("DAGSTER_HOME") or work / "dagster")
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(instance_yaml(args.max_runs))
    env = {**os.environ, "DAGSTER_HOME": str(home), "QUANT_END_DATE": "", "QUANT_AUTOMATION": "on",
           "QUANT_SIMULATOR_END": last.isoformat(), "QUANT_AUTO_PROMOTE": "wait",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "PYTHONWARNINGS": "ignore", "DAGSTER_DISABLE_TELEMETRY": "true"}
    env.setdefault("QUANT_LOCAL_EXECUTOR", "in_process")
    os.environ.update(env)  # this process reads the same settings and instance
    warnings.filterwarnings("ignore")

    from dagster import DagsterInstance

    from quant_assets import calendar
    from quant_assets.settings import load_settings

    settings = load_settings()
    clock = FakeClock(work / "faketime")
    started = time.perf_counter()
    clock.set(dt.datetime.combine(first, dt.time(0), tzinfo=dt.UTC))
    faked(clock, env, "history", first.isoformat())
    history_s = time.perf_counter() - started
    promotions: list[dict] = []
    landing: dict = {}
    days_seen: list[dict] = []  # (fake day, what happened)
    restated_at: dict[str, str] = {}  # ON: the fake time its restated file landed

    port = free_port()
    workspace = work / "workspace.yaml"
    workspace.write_text(f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {port}\n"
                         f"      location_name: {LOCATION}\n")
    fake_env = {**env, **clock.env()}
    with contextlib.ExitStack() as stack:
        server = start_server([sys.executable, "-m", "dagster", "api", "grpc", "--module-name",
                               "quant_assets.definitions", "--host", "127.0.0.1", "--port", str(port)],
                              log_path=work / "code-server.log", env=fake_env, cwd=str(REPO))
        stack.callback(server.stop)
        _wait_grpc(port, server)
        daemon = start_server([str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(workspace)],
                              log_path=work / "daemon.log", env=fake_env, cwd=str(work))
        stack.callback(daemon.stop)
        instance = stack.enter_context(DagsterInstance.get())
        watch = Watch(instance)
        # the daemon starts before the first day's schedule time: its scheduler counts ticks
        # from its first look at a schedule, then catches every tick the clock jumps over
        settle(clock, watch, clock.now().timestamp(), schedule_tick=None,
               deadline=dt.datetime.combine(first, dt.time(12), tzinfo=dt.UTC), daemon=daemon, server=server)

        def land(at: dt.datetime, deadline: dt.datetime, drop, *args):
            """At ``at`` (or now, if later) drop a file, then wait for a landing tick that
            started after it was there and for what it asked for."""
            clock.set(max(at, clock.now()))
            dropped = drop(settings, *args)
            settle(clock, watch, clock.now().timestamp() + 1, schedule_tick=None, deadline=deadline,
                   daemon=daemon, server=server)
            return dropped

        day = first
        while day <= last:
            if day.weekday() >= 5:  # no schedule tick, nothing lands: the clock jumps over
                day += dt.timedelta(days=1)
                continue
            cutoff = calendar.cutoff(day, settings.cutoff_time) if calendar.is_trading_day(day) else \
                dt.datetime.combine(day, dt.time(21), tzinfo=dt.UTC)
            deadline = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=dt.UTC) - dt.timedelta(minutes=10)
            what = []
            if args.daily_files and calendar.is_trading_day(day) and day.isoformat() not in args.no_file:
                # the day's file arrives after the cutoff, before the schedule's time: the
                # landing sensor builds the day, and the schedule's tick finds it built
                # the clock stays before the schedule's time (21:30) until the file's run is done
                land(cutoff + dt.timedelta(minutes=2), dt.datetime.combine(day, dt.time(21, 20), tzinfo=dt.UTC),
                     drop_day_file, day.isoformat())
                what.append("its bars file")
            elif args.daily_files and calendar.is_trading_day(day):
                what.append("no bars file")
            for restated in restatements.get(day.isoformat(), []):
                # after ON's cutoff, before its schedule: the correction's run first
                at = max(cutoff + dt.timedelta(minutes=5), clock.now())
                land(at, deadline - dt.timedelta(hours=1), drop_restated_file, restated)
                # ON's own file came first: its day reads the restated bar too and is rebuilt
                restated_at[day.isoformat()] = at.isoformat()
                what.append(f"{restated} restated")
            if args.bad_landing == day.isoformat():
                path, rule = land(cutoff + dt.timedelta(minutes=10), deadline - dt.timedelta(hours=1),
                                  drop_bad_file, day.isoformat())
                rejected = path.parent / "rejected" / path.name
                reason = rejected.with_name(rejected.name + ".reason.txt")
                landing = {"day": day.isoformat(), "file": path.name, "rule": rule,
                           "run_requests": sum(r.dagster_run.tags.get("quant/landing_file") == path.name
                                               for r in watch.runs()),
                           "cursor": watch.cursor(LANDING), "left_in_landing": path.exists(),
                           "moved_to_rejected": rejected.exists(),
                           "reason": reason.read_text() if reason.exists() else None}
                what.append("a malformed landing file")
            # the schedule's cron time (latest cutoff + 30 min) has passed: its tick is caught
            when = max(dt.datetime.combine(day, dt.time(21, 45), tzinfo=dt.UTC), clock.now())
            clock.set(when)
            tick_at = dt.datetime.combine(day, dt.time(21, 29), tzinfo=dt.UTC).timestamp()
            settle(clock, watch, when.timestamp(), schedule_tick=tick_at, deadline=deadline,
                   daemon=daemon, server=server)
            trading = calendar.is_trading_day(day)
            days_seen.append({"day": day.isoformat(), "trading": trading, "what": what,
                              "settled": clock.now().isoformat(), "real_s": round(time.perf_counter() - started, 1)})
            print(json.dumps(days_seen[-1]), flush=True)
            if not promotions and any(r.dagster_run.asset_selection and any(
                    k.to_user_string() == "lgbm_model" for k in r.dagster_run.asset_selection)
                    for r in watch.runs()):
                # the next morning a person reviews the first month's models and promotes
                clock.set(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(9), tzinfo=dt.UTC))
                out = work / "promotion.json"
                faked(clock, env, "promote", str(out), "the first month's models reviewed")
                promotions.append(json.loads(out.read_text()))
            day += dt.timedelta(days=1)
        record = build_record(watch, settings, first, last, promotions, landing, days_seen)
        record["restated_at"] = restated_at
        stack.close()
    wall = time.perf_counter() - started
    record["figures"].update({"wall_s": round(wall, 1), "history_s": round(history_s, 1)})
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(json.dumps(record["figures"]))


def _wait_grpc(port: int, server, timeout: float = 180) -> None:
    from servers import port_open

    started = time.monotonic()
    while not port_open("127.0.0.1", port):
        if not server.alive() or time.monotonic() - started > timeout:
            raise RuntimeError(f"the code server did not start:\n{server.tail()}")
        time.sleep(1)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def build_record(watch: Watch, settings, first, last, promotions, landing, days_seen) -> dict:
    """automation_scenario.py's record from the instance (module doc)."""
    from quant_assets import calendar

    built: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    first_built: dict[str, dict[str, str]] = defaultdict(dict)
    by_run: dict[str, list] = defaultdict(list)
    for rec in sorted(watch.materialisations(), key=lambda r: r.timestamp):
        asset, key = rec.asset_key.to_user_string(), rec.partition_key or ""
        built[asset][key] += 1
        first_built[asset].setdefault(key, _iso(rec.timestamp))
        by_run[rec.run_id].append(rec)
    runs, ticks, scores = [], [], []
    for r in watch.runs():
        run = r.dagster_run
        origin = next((f"{kind}:{run.tags[t]}" for t, kind in ORIGIN_TAGS.items() if t in run.tags), "history")
        key = run.tags.get("dagster/partition", "")
        assets = sorted(k.to_user_string() for k in (run.asset_selection or []))
        created = r.create_timestamp.timestamp()
        day = dt.datetime.fromtimestamp(created, dt.UTC).date()
        entry = {"run_id": run.run_id, "origin": origin, "job": run.job_name, "key": key, "assets": assets,
                 "status": run.status.value, "created": _iso(created),
                 "blocked_by": watch.blocked(run.run_id) if run.status.value == "FAILURE" else None,
                 "built": sorted({m.asset_key.to_user_string() for m in by_run[run.run_id]})}
        runs.append(entry)
        if origin == "history":
            continue
        trigger = f"{day}: not a trading day" if not calendar.is_trading_day(day) else f"{origin} on {day}"
        ticks.append({"time": entry["created"], "trigger": trigger, "requested": {a: [key] for a in assets}})
        if "daily_scores" in assets:
            before = [p for p in promotions if p["time"] < entry["created"]]
            mats = [m for m in by_run[run.run_id] if m.asset_key.to_user_string() == "daily_scores"]
            version = None
            if mats:
                meta = mats[0].event_log_entry.asset_materialization.metadata.get("model_version")
                version = getattr(meta, "value", meta)
            scores.append({"day": key, "time": entry["created"], "champion": before[-1]["version"] if before else None,
                           "model_version": version})
    stored_scores = {}
    from quant_assets.warehouse import Warehouse

    warehouse = Warehouse(settings.warehouse_uri)
    if warehouse.exists(["daily_scores"]):
        frame = warehouse.read(["daily_scores"]).frame
        for (d,), rows in frame.group_by(["date"]):
            stored_scores[d.isoformat()] = sorted(rows["model_version"].unique().to_list())
    daemon_runs = [r for r in runs if r["origin"] != "history"]
    figures = {"days": (last - first).days + 1, "trading_days": len(calendar.trading_days(first, last)),
               "runs": len(daemon_runs), "history_runs": len(runs) - len(daemon_runs),
               "runs_by_origin": {o: sum(r["origin"] == o for r in daemon_runs)
                                  for o in sorted({r["origin"] for r in daemon_runs})},
               "materialisations": sum(len(r["built"]) for r in daemon_runs),
               "all_materialisations": sum(n for keys in built.values() for n in keys.values()),
               "mode": "daemon"}
    return {"ticks": ticks, "built": built, "first_built": first_built, "runs": runs, "days": days_seen,
            "figures": figures,
            "execute": {"promotions": promotions, "scores": scores, "stored_scores": stored_scores,
                        "landing": landing}}


if __name__ == "__main__":
    main(sys.argv[1:])
