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
QUANT_AUTO_PROMOTE=wait.

Execute mode (the ``[execute]`` cases; QUANT_SOAK_EXECUTE=1, ``make soak-execute``): the same
scenario with every build really run (``automation_scenario.py --execute``), and the same
assertions on the materialisations the runs recorded, except that the serving chain
records nothing while there is no champion (daily_scores has ``output_required=False``, its
dependents are skipped): it is requested as in recorded mode and built only by the runs
that had a champion. Also: after the first month's models a person promotes the latest
LightGBM version, and every day's scores are by the champion of its evaluation (none before
it); a malformed landing file is rejected by the landing sensor (moved to ``rejected/``
with its reason, no run requested). A failed run fails the scenario with its error."""

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
    bad_landing: dt.date  # execute mode: the day a malformed landing file arrives
    # execute mode: a longer history, as real models need it: the first month's training rows
    # (labels ending before the month, less the embargo) must reach the models'
    # min_train_rows (1000) with 10 instruments, i.e. 100+ sessions before the first month
    execute_start: str


SHORT = Case("2023-10-02", "2023-11", D("2023-11-20"), D("2023-12-12"),
             ((D("2023-12-11"), D("2023-11-28")),), D("2023-11-21"), "2023-04-03")
SOAK = Case("2023-06-01", "2023-08", D("2023-09-01"), D("2024-01-12"),
            ((D("2023-10-20"), D("2023-10-05")), (D("2023-12-11"), D("2023-11-28"))), D("2023-09-06"),
            "2022-12-01")
CASE = SOAK if os.environ.get("QUANT_SOAK") == "1" else SHORT
EXECUTE = os.environ.get("QUANT_SOAK_EXECUTE") == "1"
MODES = ["recorded", pytest.param("execute", marks=pytest.mark.skipif(
    not EXECUTE, reason="execute mode really runs every build (minutes): QUANT_SOAK_EXECUTE=1, "
    "make soak-execute"))]


def run_scenario(tmp: Path, case: Case, execute: bool = False) -> dict:
    env = {**os.environ, "QUANT_HOME": str(tmp / "home"),
           "QUANT_START_DATE": case.execute_start if execute else case.start,
           "QUANT_END_DATE": "", "QUANT_FIRST_MODEL_MONTH": case.first_model_month,
           "QUANT_N_INSTRUMENTS": "10", "QUANT_LABEL_HORIZON": str(HORIZON), "QUANT_CALENDAR": CAL,
           "QUANT_AUTO_PROMOTE": "wait", "PYTHONWARNINGS": "ignore"}
    out = tmp / "scenario.json"
    args = [sys.executable, str(SCENARIO), str(out), "--first", case.first.isoformat(),
            "--last", case.last.isoformat(), *(f"--restate={on}:{day}" for on, day in case.restatements)]
    if execute:
        args += ["--execute", f"--bad-landing={case.bad_landing}"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=3600)
    # a failed run ends the scenario with RunFailed: its step errors are the tail
    assert done.returncode == 0, done.stderr[-8000:]
    return json.loads(out.read_text())


_RECORDS: dict[str, dict] = {}  # one scenario per mode and session, shared by the fixtures


def _record(mode: str, tmp_path_factory) -> dict:
    if mode not in _RECORDS:
        record = run_scenario(tmp_path_factory.mktemp(f"automation-{mode}"), CASE, execute=mode == "execute")
        print(f"\nautomation scenario ({mode}):", json.dumps(record["figures"]))
        _RECORDS[mode] = record
    return _RECORDS[mode]


@pytest.fixture(scope="module", params=MODES)
def scenario(request, tmp_path_factory):
    return _record(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The execute-mode record (the cases of execute mode only, below)."""
    if not EXECUTE:
        pytest.skip("execute mode really runs every build (minutes): QUANT_SOAK_EXECUTE=1, make soak-execute")
    return _record("execute", tmp_path_factory)


def _days(first, last):
    return [d.isoformat() for d in calendar.trading_days(first, last, CAL)]


def _shift(day: str, n: int) -> str:
    return calendar.shift_trading_days(D(day), n, CAL).isoformat()


def _when(day) -> str:  # the scenario's evaluation time of a day (after its cutoff)
    return f"{day}T23:30"


def _restated_at(scenario, on) -> str:
    """When the restatement of day ``on`` landed: the record's time where it has one (the
    daemon soak: after ON's own bars file was built), else the scenario's evaluation of ON
    (the restatement lands before ON's own build)."""
    return scenario.get("restated_at", {}).get(on.isoformat(), _when(on))


def _rebuilt_by(scenario, on, day) -> list[str]:
    """The days whose features read the restated ``day`` (it and every later day: features
    look back weeks) and were built before its restatement landed."""
    first = scenario["first_built"]["pit_features"]
    return [d for d in _days(day, on) if first.get(d, _when(d)) < _restated_at(scenario, on)]


def _requested(scenario) -> dict[str, dict[str, int]]:
    """How often each asset partition was requested (recorded mode: what was built)."""
    out: dict[str, dict[str, int]] = {}
    for tick in scenario["ticks"]:
        for asset, keys in tick["requested"].items():
            for key in keys:
                out.setdefault(asset, {}).setdefault(key, 0)
                out[asset][key] += 1
    return out


def test_each_day_is_served_once_and_once_more_per_restatement(scenario):
    built, requested = scenario["built"], _requested(scenario)
    days = _days(CASE.first, CASE.last)
    assert "2023-11-23" not in days and "2023-11-24" in days  # Thanksgiving; the half day trades
    serving = {d: 1 for d in days}
    features = {d: 1 for d in days}
    for on, day in CASE.restatements:
        # the restated day and every later day built before it landed read the bar
        for d in _rebuilt_by(scenario, on, day):
            serving[d] += 1
            features[d] += 1
    # execute mode: the serving runs without a champion record nothing (no scores, dependents
    # skipped); every run of a day with a champion builds the chain
    scored = serving
    if "execute" in scenario:
        scored = {}
        for run in scenario["execute"]["scores"]:
            if run["champion"] is not None:
                scored[run["day"]] = scored.get(run["day"], 0) + 1
        assert scored and len(scored) < len(days)  # some days scored, the first ones not
    for asset in DAILY_SERVING:
        assert requested[asset] == serving, asset
        assert dict(built.get(asset, {})) == scored, asset
    assert {d: n for d, n in built["pit_features"].items() if d >= CASE.first.isoformat()} == features


def test_labels_wait_for_their_horizon_and_follow_restated_bars(scenario):
    built, first_built = scenario["built"], scenario["first_built"]
    for day, count in built["labels"].items():
        if first_built["labels"][day] < CASE.first.isoformat() + "T23":
            continue  # history, loaded before the clock started
        bars_in = first_built["market_bars"][_shift(day, HORIZON)]
        assert first_built["labels"][day] >= bars_in, day  # never before its horizon's bars
        # once more per restatement of a bar it reads (D <= X <= D + h) after it was built
        again = sum(day <= x.isoformat() <= _shift(day, HORIZON) and first_built["labels"][day] < _restated_at(scenario, on)
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


def test_nothing_is_requested_beside_a_run_that_rebuilds_what_it_reads(scenario):
    """Requested on one tick, differently partitioned assets go to separate runs, which the
    sensor starts side by side: a month beside the rebuild of a day it reads (its features
    or labels), or a report beside the rebuild of a month, would read the old rows and be
    built again after them (seen through the real daemon, tests/daemon_soak.py)."""
    for tick in scenario["ticks"]:
        requested = tick["requested"]
        days = {k for a in ("pit_features", "labels") for k in requested.get(a, [])}
        for asset in MONTHLY:
            for month in requested.get(asset, []):
                end = (calendar.next_month(D(month)) - dt.timedelta(days=1)).isoformat()
                assert not {d for d in days if d <= end}, (tick["time"], asset, month, sorted(days))
        if any(a in requested for a in REPORTS):
            assert not any(a in requested for a in (*MONTHLY, *GRID)), tick


def test_days_without_a_session_build_no_day(scenario):
    for tick in scenario["ticks"]:
        if "not a trading day" in tick["trigger"]:
            daily = {a: k for a, k in tick["requested"].items() if a not in (*MONTHLY, *GRID, *REPORTS)}
            assert daily == {}, tick


def test_nothing_is_built_that_no_rule_asks_for(scenario):
    expected = {"market_bars", "pit_features", "labels", *DAILY_SERVING, *MONTHLY, *GRID, *REPORTS,
                "universe", "corporate_actions", "fundamentals", "benchmark", "data_source"}
    assert set(scenario["built"]) == expected


# ---- execute mode only ------------------------------------------------------------------


def _champion_at(executed, time: str) -> int | None:
    """The champion at an evaluation time: the version of the last promotion before it."""
    before = [p for p in executed["execute"]["promotions"] if p["time"] < time]
    return before[-1]["version"] if before else None


def test_execute_a_person_promotes_after_the_first_months_models(executed):
    promotions = executed["execute"]["promotions"]
    assert promotions, "no champion was ever promoted"
    first_month = min(executed["first_built"]["lgbm_model"].values())
    assert first_month < promotions[0]["time"]  # the models first, then the review
    # one promotion: the automation promotes nothing (wait), and the restatement that
    # retrained the champion's month (lgbm_model built again) leaves the champion serving:
    # every later day is scored by it (test_execute_each_day_is_scored_by_the_champion_of_its_evaluation)
    assert sum(n - 1 for n in executed["built"]["lgbm_model"].values()) >= 1  # retrained
    assert len(promotions) == 1, promotions
    assert "champion_model" not in executed["built"]  # QUANT_AUTO_PROMOTE=wait


def test_execute_each_day_is_scored_by_the_champion_of_its_evaluation(executed):
    runs = executed["execute"]["scores"]
    assert runs
    last_run: dict[str, dict] = {}
    for run in runs:
        # the champion the run saw is the one of its evaluation time
        assert run["champion"] == _champion_at(executed, run["time"]), run
        # and its rows carry that version; without a champion nothing is scored
        assert run["model_version"] == run["champion"], run
        last_run[run["day"]] = run
    stored = executed["execute"]["stored_scores"]
    # the stored rows of a day are those of its last run: by that run's champion, or none
    for day, run in last_run.items():
        if run["champion"] is None:
            assert day not in stored, (day, stored.get(day))
        else:
            assert stored.get(day) == [run["champion"]], day
    assert set(stored) <= set(last_run)  # nothing scored that no run scored
    unscored = [d for d, r in last_run.items() if r["champion"] is None]
    assert unscored and stored  # days before any champion, days after it


def test_execute_a_malformed_landing_file_is_rejected_and_starts_nothing(executed):
    landing = executed["execute"]["landing"]
    assert landing["day"] == CASE.bad_landing.isoformat()
    assert landing["run_requests"] == 0, landing
    # recorded as the platform records a rejection: moved to rejected/ with its reason
    assert landing["moved_to_rejected"] and not landing["left_in_landing"], landing
    assert landing["file"] in landing["reason"] and f"'{landing['rule']}'" in landing["reason"], landing
    assert landing["file"] not in (landing["cursor"] or "")  # not marked seen: nothing ran for it
    # and no extra build of its day (exactly once is asserted above)
    assert executed["built"]["market_bars"][landing["day"]] == 1


def test_execute_figures(executed):
    figures = executed["figures"]
    assert figures["mode"] == "execute"
    assert figures["real_runs"] >= figures["runs"]  # plus history, schedule and restatement runs
    assert figures["real_materialisations"] > 0
    print("\nexecute figures:", json.dumps(figures))
