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

Writes {"ticks": [{"time", "trigger", "requested": {asset: [keys]}}], "built":
{asset: {key: count}}, "first_built": {asset: {key: time}}, "figures": {...}} to OUT.json
and prints the figures (days, evaluations, runs, materialisations, wall time).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections import defaultdict

from dagster import AssetMaterialization, DagsterInstance, evaluate_automation_conditions

from quant_assets import calendar
from quant_assets.definitions import defs
from quant_assets.settings import load_settings

UNPARTITIONED = ("universe", "corporate_actions", "fundamentals", "benchmark", "data_source")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="where the JSON record goes")
    parser.add_argument("--first", required=True, type=dt.date.fromisoformat, help="first day the clock runs")
    parser.add_argument("--last", required=True, type=dt.date.fromisoformat, help="last day the clock runs")
    parser.add_argument("--restate", action="append", default=[], metavar="ON:DAY",
                        help="on day ON, the bars of the already built DAY are restated")
    args = parser.parse_args(argv)
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

    with DagsterInstance.ephemeral() as instance:

        def record(asset: str, key: str | None, when: dt.datetime) -> None:
            instance.report_runless_asset_event(AssetMaterialization(asset_key=asset, partition=key))
            built[asset][key or ""] += 1
            first_built[asset].setdefault(key or "", when.isoformat())

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
            ticks.append({"time": when.isoformat(), "trigger": trigger, "requested": requested})
            for asset, keys in requested.items():
                for key in keys:
                    record(asset, key or None, when)
            return sum(len(k) for k in requested.values())

        # history before the clock starts: reference tables, bars, features and labels
        start = dt.datetime.combine(first, dt.time(0), tzinfo=dt.UTC)
        for asset in UNPARTITIONED:
            record(asset, None, start)
        for day in calendar.trading_days(settings.start_date, first - dt.timedelta(days=1)):
            record("market_bars", day.isoformat(), start)
            record("pit_features", day.isoformat(), start)
            if calendar.shift_trading_days(day, settings.label_horizon) < first:
                record("labels", day.isoformat(), start)
        tick(start, "history loaded")  # the first tick sees everything as new: settles it

        day = first
        while day <= last:
            when = dt.datetime.combine(day, dt.time(23, 30), tzinfo=dt.UTC)
            if calendar.is_trading_day(day):
                # the daily schedule's run: the day's bars and features after the cutoff
                record("market_bars", day.isoformat(), when)
                record("pit_features", day.isoformat(), when)
                trigger = f"features of {day}"
            else:
                trigger = f"{day}: not a trading day"
            for restated in restatements.get(day.isoformat(), []):
                # the landing sensor's run of a restated, already built day
                record("market_bars", restated, when)
                record("pit_features", restated, when)
                trigger += f"; {restated} restated"
            for n in range(6):  # evaluate until nothing more is asked (what runs enable)
                if not tick(when + dt.timedelta(minutes=n), trigger if n == 0 else "settle"):
                    break
            day += dt.timedelta(days=1)

    wall = time.perf_counter() - started
    record_ = {"ticks": ticks, "built": built, "first_built": first_built,
               "figures": {"days": (last - first).days + 1,
                           "trading_days": len(calendar.trading_days(first, last)),
                           "evaluations": len(ticks),
                           "runs": sum(len({k for keys in t["requested"].values() for k in keys})
                                       for t in ticks),  # one run per partition key and tick
                           "materialisations": sum(len(v) for t in ticks for v in t["requested"].values()),
                           "wall_s": round(wall, 1)}}
    with open(args.out, "w") as fh:
        json.dump(record_, fh, indent=1)
    print(json.dumps(record_["figures"]))


if __name__ == "__main__":
    main(sys.argv[1:])
