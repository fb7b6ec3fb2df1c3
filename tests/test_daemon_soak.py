"""Unattended operation through the real Dagster daemon (tests/daemon_soak.py): a
``dagster-daemon run`` and a gRPC code server on a fake clock (libfaketime) evaluate the daily
schedule, the landing sensor and the automation sensor while the clock moves through trading
days, from an instance that holds only the history.

The short variant (QUANT_SOAK_DAEMON=1, ``make soak-daemon-short``) runs 2023-11-22..2023-12-08:
Thanksgiving 2023-11-23 closed, the 2023-11-24 half day, the November month end (its models
when the label of 11-30 exists, on 12-07), a malformed landing file on 11-22, and on 12-08
the bars of 11-28 restated through the landing folder. The long one (QUANT_SOAK=1 as well,
``make soak-daemon``) runs 2023-10-25..2023-12-08, 32 trading days: two month ends and two
restatements. Both print their figures (fake days, runs, materialisations, wall time).

Asserted from the instance's records, with tests/test_automation.py's expectations (the
same record format): every expected partition of every asset materialised exactly once,
plus once more for each restatement that changed what it reads; each month's models
retrained once (by the restatement); every day's scores by the champion of the run's time
(a person promotes after the first month's models); the rejected file requested nothing;
and here: every run after the history is the schedule's, the landing sensor's or the
automation sensor's, and succeeded; the schedule built each session once and no closed day.

Not in ``make test``: a fake trading day costs about a minute of real time (each run is a
process that imports the code location), the short variant about 25 minutes (1,517 s
measured), the long one about 70 minutes (4,120 s measured) (figures: README, "Automation: what runs by itself")."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import test_automation as ta

from quant_assets import calendar

DRIVER = Path(__file__).with_name("daemon_soak.py")
D = dt.date.fromisoformat

SHORT = ta.Case("2023-04-03", "2023-11", D("2023-11-22"), D("2023-12-08"),
                ((D("2023-12-08"), D("2023-11-28")),), D("2023-11-22"), "2023-04-03")
LONG = ta.Case("2023-04-03", "2023-10", D("2023-10-25"), D("2023-12-08"),
               ((D("2023-11-10"), D("2023-11-01")), (D("2023-12-08"), D("2023-11-28"))),
               D("2023-10-26"), "2023-04-03")
CASE = LONG if os.environ.get("QUANT_SOAK") == "1" else SHORT
# every session's bars arrive as a file after its cutoff, except this one's (the vendor never
# sends it): the schedule builds that day from the configured source
NO_FILE = D("2023-11-29")

pytestmark = [
    pytest.mark.skipif(os.environ.get("QUANT_SOAK_DAEMON") != "1" and not os.environ.get("QUANT_SOAK_DAEMON_RECORD"),
                       reason="the real daemon on a fake clock: ~25 min (README; QUANT_SOAK_DAEMON=1, make soak-daemon-short)"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libfaketime is Linux only"),
]

DAEMON_ORIGINS = {"schedule:daily_features_schedule", "sensor:landing_files_sensor", "sensor:automation_sensor"}


RECORD = os.environ.get("QUANT_SOAK_DAEMON_RECORD")  # check the record of an earlier run again


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    if RECORD:
        return json.loads(Path(RECORD).read_text())
    tmp = tmp_path_factory.mktemp("daemon-soak")
    env = {**os.environ, "QUANT_HOME": str(tmp / "home"), "DAGSTER_HOME": str(tmp / "dagster"),
           "QUANT_START_DATE": CASE.execute_start, "QUANT_END_DATE": "",
           "QUANT_FIRST_MODEL_MONTH": CASE.first_model_month, "QUANT_N_INSTRUMENTS": "10",
           "QUANT_LABEL_HORIZON": str(ta.HORIZON), "QUANT_CALENDAR": ta.CAL, "PYTHONWARNINGS": "ignore"}
    out = tmp / "soak.json"
    args = [sys.executable, str(DRIVER), str(out), "--first", CASE.first.isoformat(),
            "--last", CASE.last.isoformat(), f"--bad-landing={CASE.bad_landing}",
            "--daily-files", f"--no-file={NO_FILE}",
            *(f"--restate={on}:{day}" for on, day in CASE.restatements)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=4 * 3600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-8000:]
    record = json.loads(out.read_text())
    print("\ndaemon soak:", json.dumps(record["figures"]))
    return record


@pytest.fixture
def expected(monkeypatch):
    """tests/test_automation.py's expectations, for this soak's case."""
    monkeypatch.setattr(ta, "CASE", CASE)


# tests/test_automation.py's checks, the execute mode's included (the record has its format)
AUTOMATION_CHECKS = [
    ta.test_each_day_is_served_once_and_once_more_per_restatement,
    ta.test_labels_wait_for_their_horizon_and_follow_restated_bars,
    ta.test_each_month_is_built_once_its_last_label_exists_and_once_per_restatement,
    ta.test_days_without_a_session_build_no_day,
    ta.test_nothing_is_built_that_no_rule_asks_for,
    ta.test_execute_a_person_promotes_after_the_first_months_models,
    ta.test_execute_each_day_is_scored_by_the_champion_of_its_evaluation,
    ta.test_execute_a_malformed_landing_file_is_rejected_and_starts_nothing,
]


@pytest.mark.parametrize("check", AUTOMATION_CHECKS, ids=lambda f: f.__name__.removeprefix("test_"))
def test_as_the_automation_scenario_expects(soak, expected, check):
    check(soak)


def test_every_run_is_the_daemons_and_succeeded(soak):
    history_end = f"{CASE.first}T12"
    for run in soak["runs"]:
        # or refused by the blocking validation gate (QUANT_AUTO_PROMOTE=wait: a person decides)
        assert run["status"] == "SUCCESS" or run["blocked_by"], run
        if run["origin"] == "history":
            assert run["created"] < history_end, run  # loaded before the daemon started
        else:
            assert run["origin"] in DAEMON_ORIGINS, run
            assert run["key"] or not run["assets"] or set(run["assets"]) <= set(ta.REPORTS), run


def test_each_session_is_built_once_from_its_file_or_else_by_the_schedule(soak):
    sessions = [d.isoformat() for d in calendar.trading_days(CASE.first, CASE.last, ta.CAL)]
    scheduled = sorted(r["key"] for r in soak["runs"] if r["origin"] == "schedule:daily_features_schedule")
    # the schedule's tick finds every day whose file came built, and skips the holiday
    assert scheduled == [NO_FILE.isoformat()]
    landed = sorted(r["key"] for r in soak["runs"] if r["origin"] == "sensor:landing_files_sensor")
    fed = [d for d in sessions if d != NO_FILE.isoformat()]
    # each file's day once, and each restated day once more
    assert landed == sorted(fed + [day.isoformat() for _, day in CASE.restatements])
    assert soak["execute"]["landing"]["run_requests"] == 0


def test_figures(soak):
    figures = soak["figures"]
    assert figures["trading_days"] == len(calendar.trading_days(CASE.first, CASE.last, ta.CAL))
    assert figures["runs"] > figures["trading_days"] and figures["materialisations"] > figures["runs"]
    if CASE is LONG:
        assert figures["trading_days"] >= 30
