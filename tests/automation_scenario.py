"""Weeks of unattended operation, compressed: a clock advances through trading days (a month
end, an exchange holiday and half day, late restatements) and at
each step Dagster's own automation evaluation (``evaluate_automation_conditions``, the call
the automation sensor makes, with an explicit evaluation time) decides what to build.

Run as a script (``python tests/automation_scenario.py OUT.json --first DAY --last DAY
[--restate ON:DAY]``) with the settings in the
environment: the partitions are built from them at import, and live (open-ended)
partitions need ``QUANT_END_DATE`` empty. What a tick requests is then "run": its
materialisations are recorded on the instance as the run would record them (no compute:
what is tested is *when* each partition is built and how often, not the rows; the rows of
each asset are tested by the flow tests). The daily feature schedule's run (bars + features
of a day after its cutoff) is recorded the same way, as the landing sensor's run of a
restated day.

With ``--execute`` every build really runs: the history (reference tables, bars and
features over a range run, the history's labels), each day's schedule run, each restated
day's run and every partition a tick requests are materialised with
``dagster.materialize`` (the code location's assets, ``build_resources(settings)``, the
instance the evaluation reads), grouped as the automation sensor's runs are: one run per
partition key and partitioning. A failed run stops the scenario with its error. Then also:
after the first month's models, the latest ``lgbm_model`` version is promoted by hand
(``QUANT_AUTO_PROMOTE=wait``: a person promotes, once: a restatement that retrains the
champion's month does not stop it serving), and each daily_scores run records the
champion of its evaluation and the version its rows carry; ``--bad-landing DAY`` drops a
malformed bars file into the landing folder on DAY and evaluates the landing sensor.

Writes {"ticks": [{"time", "trigger", "requested": {asset: [keys]}}], "built":
{asset: {key: count}}, "first_built": {asset: {key: time}}, "figures": {...}} to OUT.json
and prints the figures (days, evaluations, runs, materialisations, wall time). In execute
mode "built" counts the materialisations the runs really recorded (an asset with
``output_required=False`` may record none) and the record adds "execute": {"promotions",
"scores", "stored_scores", "landing"}.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    build_sensor_context,
    evaluate_automation_conditions,
    materialize,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from quant_assets import calendar
from quant_assets.definitions import defs
from quant_assets.partitions import label_partitions, trading_day_partitions
from quant_assets.settings import load_settings

UNPARTITIONED = ("universe", "corporate_actions", "fundamentals", "benchmark", "data_source")
BAD_LANDING_KIND = "nan_price"  # tests/data/bad_inputs/corpus.py: a NaN close, rule price_positive_finite


class RunFailed(RuntimeError):
    pass


class Executor:
    """Real runs (``--execute``): ``dagster.materialize`` of the code location's assets
    with the platform's resources on the scenario's instance, one run per partition key
    and partitioning (as the automation sensor launches them)."""

    def __init__(self, settings, instance: DagsterInstance, last: dt.date):
        from resources import build_resources

        # The simulator draws one market for [start, end] of the market_source resource; with
        # QUANT_END_DATE empty (live partitions) build_resources ends it at today's date, so
        # the simulated 2023 would change with the day the scenario runs (listings,
        # delistings and fundamentals are drawn over the whole range). The simulator's range
        # is set explicitly to the clock's range instead: the partitions stay live (built
        # at import from the environment, QUANT_END_DATE empty) and the evaluation clock
        # alone decides which days exist and are built; the bars of a day the clock has not
        # reached are simulated but never read (no partition of them is run).
        self.resources = build_resources(dataclasses.replace(settings, end_date=last))
        self.assets = list(defs.assets)  # the code location's assets (placed, as deployed)
        self.instance = instance
        self.graph = defs.resolve_asset_graph()
        self.runs = 0
        self.events: list[tuple[str, str, dict]] = []  # (asset, key, metadata) of the last run

    def client(self):
        """An MLflow client of the platform's tracking resource (registry and champion)."""
        return self.resources["tracking"].client()

    def run(self, selection, *, key: str | None = None, start: str | None = None,
            end: str | None = None, what: str = ""):
        tags = {ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end} if start else {}
        result = materialize(self.assets, selection=[AssetKey.from_user_string(a) for a in selection],
                             partition_key=key, tags=tags, resources=self.resources,
                             instance=self.instance, raise_on_error=False)
        self.runs += 1
        if not result.success:
            errors = [e.event_specific_data.error.to_string() for e in result.all_events
                      if e.is_step_failure and e.event_specific_data and e.event_specific_data.error]
            raise RunFailed(f"the run of {sorted(selection)} [{key or (start and f'{start}..{end}') or '-'}] "
                            f"({what}) failed:\n" + "\n".join(errors or ["(no step failure event)"]))
        out = []
        for event in result.get_asset_materialization_events():
            mat = event.event_specific_data.materialization
            out.append((mat.asset_key.to_user_string(), mat.partition or "",
                        {k: getattr(v, "value", v) for k, v in mat.metadata.items()}))
        return out

    def groups(self, requested: dict[str, list[str]]) -> list[tuple[str | None, list[str]]]:
        """(partition key, assets) per run: requested asset partitions grouped by partition
        key and partitions definition, unpartitioned assets in one run.

        The automation sensor launches a tick's runs together; here they run one after the
        other: the daily runs first (serving is what a day waits for, and a daily_scores
        run that reads the model tables after a restatement retrained the champion's month
        refuses the champion: see the report), then the months, then the unpartitioned
        reports, which follow the months they read."""
        by: dict[tuple, list[str]] = defaultdict(list)
        for asset, keys in requested.items():
            pdef = self.graph.get(AssetKey.from_user_string(asset)).partitions_def
            # daily (trading days or their lagged label days), monthly, unpartitioned
            kind = 2 if pdef is None else 0 if pdef in (trading_day_partitions, label_partitions) else 1
            for key in keys:
                by[(kind, key or "", id(pdef))].append(asset)
        return [(key or None, sorted(assets)) for (_, key, _), assets in sorted(by.items())]


def champion_version(client) -> int | None:
    from resources import model_registry

    info = model_registry.champion_info(client)
    return info.version if info else None


def promote_latest_lgbm(client, when: dt.datetime, why: str) -> int:
    """What a person does with QUANT_AUTO_PROMOTE=wait: promote the latest registered
    LightGBM version."""
    from resources import model_registry

    versions = client.search_model_versions(f"name='{model_registry.MODEL_NAME}'")
    latest = max(int(v.version) for v in versions)
    model_registry.promote(client, latest, model_registry.MODEL_NAME,
                           reason=f"automation scenario, {when.date()}: {why}")
    return latest


def drop_bad_landing_file(settings, instance: DagsterInstance, day: str, cursor: str | None) -> tuple[dict, str | None]:
    """A malformed bars file of ``day`` (the day's stored bars with a NaN close) lands; the
    landing sensor is evaluated once: what it requested and what it recorded."""
    import polars as pl

    from quant_assets.warehouse import Warehouse
    from sensors.landing import REJECTED, landing_files_sensor

    sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
    from bad_inputs.corpus import KINDS, write_kind

    kind = next(k for k in KINDS if k.name == BAD_LANDING_KIND)
    good = Warehouse(settings.warehouse_uri).read(["market_bars"]).frame.filter(
        pl.col("date") == dt.date.fromisoformat(day)).sort("date", "instrument_id")
    landing = Path(settings.landing_dir)
    path = write_kind(kind, good, landing)
    context = build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    result = landing_files_sensor.evaluate_tick(context)
    moved = landing / REJECTED / path.name
    reason = landing / REJECTED / (path.name + ".reason.txt")
    return {
        "day": day, "file": path.name, "rule": kind.rule,
        "run_requests": len(result.run_requests or []),
        "skip_message": result.skip_message,
        "cursor": result.cursor,  # the files the sensor has seen: a rejected one is not
        "left_in_landing": path.exists(),
        "moved_to_rejected": moved.exists(),
        "reason": reason.read_text() if reason.exists() else None,
    }, result.cursor


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="where the JSON record goes")
    parser.add_argument("--first", required=True, type=dt.date.fromisoformat, help="first day the clock runs")
    parser.add_argument("--last", required=True, type=dt.date.fromisoformat, help="last day the clock runs")
    parser.add_argument("--restate", action="append", default=[], metavar="ON:DAY",
                        help="on day ON, the bars of the already built DAY are restated")
    parser.add_argument("--execute", action="store_true",
                        help="really run every build (default: record the materialisations only)")
    parser.add_argument("--bad-landing", metavar="DAY", default=None,
                        help="with --execute: a malformed bars file lands on trading day DAY")
    args = parser.parse_args(argv)
    if args.bad_landing and not args.execute:
        parser.error("--bad-landing needs --execute")
    settings = load_settings()
    first, last = args.first, args.last
    restatements: dict[str, list[str]] = defaultdict(list)
    for item in args.restate:
        on, day = item.split(":")
        restatements[on].append(day)
    started = time.perf_counter()
    ticks: list[dict] = []
    built: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    first_built: dict[str, dict[str, str]] = defaultdict(dict)
    promotions: list[dict] = []  # execute: {"time", "version"}
    scores: list[dict] = []  # execute: each daily_scores run: its day, tick, champion, rows' version
    landing: dict = {}

    with DagsterInstance.ephemeral() as instance:
        executor = Executor(settings, instance, last) if args.execute else None

        def count(asset: str, key: str, when: dt.datetime) -> None:
            built[asset][key] += 1
            first_built[asset].setdefault(key, when.isoformat())

        def record(asset: str, key: str | None, when: dt.datetime) -> None:
            instance.report_runless_asset_event(AssetMaterialization(asset_key=asset, partition=key))
            count(asset, key or "", when)

        def run(selection, when: dt.datetime, what: str, **kw) -> None:
            """One real run; its materialisations are what was built."""
            for asset, key, _ in executor.run(selection, what=what, **kw):
                count(asset, key, when)

        def build_day(day: str, when: dt.datetime, what: str) -> None:
            """The daily feature run of a day (the schedule's, or the landing sensor's of a
            restated day): its bars and features."""
            if executor:
                run(["market_bars", "pit_features"], when, what, key=day)
            else:
                record("market_bars", day, when)
                record("pit_features", day, when)

        cursor = None

        def tick(when: dt.datetime, trigger: str) -> int:
            nonlocal cursor
            result = evaluate_automation_conditions(defs, instance, evaluation_time=when, cursor=cursor)
            cursor = result.cursor
            requested = {}
            for assets_def in defs.resolve_asset_graph().assets_defs:
                for key in assets_def.keys:
                    keys = result.get_requested_partitions(key)
                    if keys:
                        requested[key.to_user_string()] = sorted(k or "" for k in keys)
            entry = {"time": when.isoformat(), "trigger": trigger, "requested": requested}
            ticks.append(entry)
            if executor is None:
                for asset, keys in requested.items():
                    for key in keys:
                        record(asset, key or None, when)
            else:
                entry["runs"] = []
                for key, assets in executor.groups(requested):
                    champion = champion_version(executor.client()) if "daily_scores" in assets else None
                    events = executor.run(assets, key=key, what=f"tick {when.isoformat()}")
                    entry["runs"].append({"key": key or "", "assets": assets,
                                          "built": sorted({a for a, _, _ in events})})
                    for asset, k, _ in events:
                        count(asset, k, when)
                    if "daily_scores" in assets:
                        version = next((m.get("model_version") for a, _, m in events if a == "daily_scores"), None)
                        scores.append({"day": key, "time": when.isoformat(), "champion": champion,
                                       "model_version": version})
            return sum(len(k) for k in requested.values())

        # history before the clock starts: reference tables, bars, features and labels
        start = dt.datetime.combine(first, dt.time(0), tzinfo=dt.UTC)
        history = [d.isoformat() for d in calendar.trading_days(settings.start_date, first - dt.timedelta(days=1))]
        labelled = [d for d in history
                    if calendar.shift_trading_days(dt.date.fromisoformat(d), settings.label_horizon) < first]
        if executor:
            run(list(UNPARTITIONED), start, "history: reference data")
            run(["market_bars", "pit_features"], start, "history: bars and features",
                start=history[0], end=history[-1])
            run(["labels"], start, "history: labels", start=labelled[0], end=labelled[-1])
        else:
            for asset in UNPARTITIONED:
                record(asset, None, start)
            for day in history:
                record("market_bars", day, start)
                record("pit_features", day, start)
            for day in labelled:
                record("labels", day, start)
        tick(start, "history loaded")  # the first tick sees everything as new: settles it

        landing_cursor = None
        day = first
        while day <= last:
            when = dt.datetime.combine(day, dt.time(23, 30), tzinfo=dt.UTC)
            if calendar.is_trading_day(day):
                # the daily schedule's run: the day's bars and features after the cutoff
                build_day(day.isoformat(), when, f"features of {day}")
                trigger = f"features of {day}"
            else:
                trigger = f"{day}: not a trading day"
            for restated in restatements.get(day.isoformat(), []):
                # the landing sensor's run of a restated, already built day
                build_day(restated, when, f"{restated} restated")
                trigger += f"; {restated} restated"
            if args.bad_landing == day.isoformat():
                landing, landing_cursor = drop_bad_landing_file(settings, instance, day.isoformat(),
                                                                 landing_cursor)
                trigger += "; a malformed landing file"
            for n in range(6):  # evaluate until nothing more is asked (what runs enable)
                if not tick(when + dt.timedelta(minutes=n), trigger if n == 0 else "settle"):
                    break
            # the next morning a person reviews the first month's models and promotes, once: a
            # restatement that retrains the champion's month leaves the champion serving (its
            # row is read from the model table's earlier Delta version, served.model_record)
            why = None
            if executor and not promotions and built.get("lgbm_model"):
                why = "the first month's models reviewed"
            if why:
                promotions.append({"time": (when + dt.timedelta(hours=9)).isoformat(), "why": why,
                                   "version": promote_latest_lgbm(executor.client(), when, why)})
            day += dt.timedelta(days=1)

        stored_scores = {}
        if executor:
            from quant_assets.warehouse import Warehouse

            warehouse = Warehouse(settings.warehouse_uri)
            if warehouse.exists(["daily_scores"]):
                frame = warehouse.read(["daily_scores"]).frame
                for (d,), rows in frame.group_by(["date"]):
                    stored_scores[d.isoformat()] = sorted(rows["model_version"].unique().to_list())

    wall = time.perf_counter() - started
    figures = {"days": (last - first).days + 1,
               "trading_days": len(calendar.trading_days(first, last)),
               "evaluations": len(ticks),
               "runs": sum(len({k for keys in t["requested"].values() for k in keys})
                           for t in ticks),  # one run per partition key and tick
               "materialisations": sum(len(v) for t in ticks for v in t["requested"].values()),
               "wall_s": round(wall, 1)}
    if executor:
        figures.update({"mode": "execute",
                        # every real run: history, schedule and restatement runs, ticks' runs
                        "real_runs": executor.runs,
                        "real_materialisations": sum(n for keys in built.values() for n in keys.values())})
    record_ = {"ticks": ticks, "built": built, "first_built": first_built, "figures": figures}
    if executor:
        record_["execute"] = {"promotions": promotions, "scores": scores,
                              "stored_scores": stored_scores, "landing": landing}
    with open(args.out, "w") as fh:
        json.dump(record_, fh, indent=1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main(sys.argv[1:])
