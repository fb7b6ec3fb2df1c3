"""Unattended operation, compressed (tests/automation_scenario.py): a clock runs over XNYS
days with live partitions, the daily schedule's runs land each session's bars and
features, already built days are restated late, and Dagster's automation evaluation
decides every other build.

The short variant (here, in ``make test``) runs 2023-11-20..2023-12-12: Thanksgiving
2023-11-23 closed, 2023-11-24 a half day, the November month end, and on 2023-12-11 the
bars of 2023-11-28 restated. ``make soak`` (QUANT_SOAK=1) runs 2023-09-01..2024-01-12:
four month ends, Labor Day, Thanksgiving, Christmas and New Year, two restatements, and
prints its figures.

Asserted: every partition of every daily asset built exactly once, plus once more for each
restatement that changed what it reads; labels never before their horizon's bars; each
month's models, predictions, backtests and sweep once when its last session's label
exists (never at the month's end, before it) and once more per restatement of a day it
reads; the reports once per month and restatement; nothing daily on days without a
session; no asset built that no rule asks for; no champion moved with
QUANT_AUTO_PROMOTE=wait."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from quant_assets import calendar

SCENARIO = Path(__file__).with_name("automation_scenario.py")
HORIZON = 5
CAL = "XNYS"
DAILY_SERVING = ("daily_scores", "drift_report", "signal_health", "target_weights")
MONTHLY = ("lgbm_model", "oos_predictions", "backtest", "seq_model", "seq_predictions",
           "seq_backtest", "model_sweep")
REPORTS = ("validation_report", "seq_validation_report", "model_comparison")
GRID = ("strategy_grid", "strategy_grid_returns")
D = dt.date.fromisoformat


@dataclass(frozen=True)
class Case:
    start: str  # QUANT_START_DATE: history before the clock
    first_model_month: str
    first: dt.date  # the clock's first and last day
    last: dt.date
    restatements: tuple[tuple[dt.date, dt.date], ...]  # (on, restated day)


SHORT = Case("2023-10-02", "2023-11", D("2023-11-20"), D("2023-12-12"),
             ((D("2023-12-11"), D("2023-11-28")),))
SOAK = Case("2023-06-01", "2023-08", D("2023-09-01"), D("2024-01-12"),
            ((D("2023-10-20"), D("2023-10-05")), (D("2023-12-11"), D("2023-11-28"))))
CASE = SOAK if os.environ.get("QUANT_SOAK") == "1" else SHORT


def run_scenario(tmp: Path, case: Case) -> dict:
    env = {**os.environ, "QUANT_HOME": str(tmp / "home"), "QUANT_START_DATE": case.start,
           "QUANT_END_DATE": "", "QUANT_FIRST_MODEL_MONTH": case.first_model_month,
           "QUANT_N_INSTRUMENTS": "10", "QUANT_LABEL_HORIZON": str(HORIZON), "QUANT_CALENDAR": CAL,
           "QUANT_AUTO_PROMOTE": "wait", "PYTHONWARNINGS": "ignore"}
    out = tmp / "scenario.json"
    args = [sys.executable, str(SCENARIO), str(out), "--first", case.first.isoformat(),
            "--last", case.last.isoformat(), *(f"--restate={on}:{day}" for on, day in case.restatements)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    record = run_scenario(tmp_path_factory.mktemp("automation"), CASE)
    print("\nautomation scenario:", json.dumps(record["figures"]))
    return record


def _days(first, last):
    return [d.isoformat() for d in calendar.trading_days(first, last, CAL)]


def _shift(day: str, n: int) -> str:
    return calendar.shift_trading_days(D(day), n, CAL).isoformat()


def _when(day) -> str:  # the scenario's evaluation time of a day (after its cutoff)
    return f"{day}T23:30"


def test_each_day_is_served_once_and_once_more_per_restatement(scenario):
    built = scenario["built"]
    days = _days(CASE.first, CASE.last)
    assert "2023-11-23" not in days and "2023-11-24" in days  # Thanksgiving; the half day trades
    serving = {d: 1 for d in days}
    features = {d: 1 for d in days}
    for on, day in CASE.restatements:
        # the restated day and every later built day read the bar (features look back weeks)
        for d in _days(day, on - dt.timedelta(days=1)):
            serving[d] += 1
            features[d] += 1
    for asset in DAILY_SERVING:
        assert dict(built[asset]) == serving, asset
    assert {d: n for d, n in built["pit_features"].items() if d >= CASE.first.isoformat()} == features


def test_labels_wait_for_their_horizon_and_follow_restated_bars(scenario):
    built, first_built = scenario["built"], scenario["first_built"]
    for day, count in built["labels"].items():
        if first_built["labels"][day] < CASE.first.isoformat() + "T23":
            continue  # history, loaded before the clock started
        bars_in = first_built["market_bars"][_shift(day, HORIZON)]
        assert first_built["labels"][day] >= bars_in, day  # never before its horizon's bars
        # once more per restatement of a bar it reads (D <= X <= D + h) after it was built
        again = sum(day <= x.isoformat() <= _shift(day, HORIZON) and first_built["labels"][day] < _when(on)
                    for on, x in CASE.restatements)
        assert count == 1 + again, day


def test_each_month_is_built_once_its_last_label_exists_and_once_per_restatement(scenario):
    built, first_built = scenario["built"], scenario["first_built"]
    month = D(CASE.first_model_month + "-01")
    months = 0
    while True:
        last_session = calendar.shift_trading_days(calendar.next_month(month), -1, CAL)
        labelled = calendar.shift_trading_days(last_session, HORIZON, CAL)
        if labelled > CASE.last:
            break
        key = month.isoformat()
        # restatements, after the month was built, of a bar it reads: its features' (up to its
        # last session) or its labels' (up to h sessions after it)
        again = sum(x <= labelled and on > labelled for on, x in CASE.restatements)
        for asset in MONTHLY:
            assert built[asset].get(key) == 1 + again, (asset, key)
            # when its last session's label is in, not at the month's end before it
            assert first_built[asset][key] >= labelled.isoformat(), (asset, key)
        for asset in GRID:  # bars only: when the month appears, and per restated bar
            if calendar.next_month(month) <= CASE.first:
                # closed before the sensor first looked: history, which the automation never
                # builds (a backfill does)
                assert key not in built.get(asset, {}), (asset, key)
                continue
            grid_again = sum(x <= last_session and on >= calendar.next_month(month) for on, x in CASE.restatements)
            assert built[asset].get(key) == 1 + grid_again, (asset, key)
            assert first_built[asset][key] < (calendar.next_month(month) + dt.timedelta(days=1)).isoformat() + "T23:59"
        months += 1
        month = calendar.next_month(month)
    assert months >= (4 if CASE is SOAK else 1)
    # the reports follow each build of a month (the same tick's builds: once)
    for asset in REPORTS:
        assert set(built[asset]) == {""}
        assert built[asset][""] >= months
        assert built[asset][""] <= months + len(CASE.restatements) + months  # never per day
    assert "champion_model" not in built  # QUANT_AUTO_PROMOTE=wait: a person promotes


def test_days_without_a_session_build_no_day(scenario):
    for tick in scenario["ticks"]:
        if "not a trading day" in tick["trigger"]:
            daily = {a: k for a, k in tick["requested"].items() if a not in (*MONTHLY, *GRID, *REPORTS)}
            assert daily == {}, tick


def test_nothing_is_built_that_no_rule_asks_for(scenario):
    expected = {"market_bars", "pit_features", "labels", *DAILY_SERVING, *MONTHLY, *GRID, *REPORTS,
                "universe", "corporate_actions", "fundamentals", "benchmark", "data_source"}
    assert set(scenario["built"]) == expected
