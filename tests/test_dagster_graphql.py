"""A real client: ``dagster dev`` (webserver + daemon) on 127.0.0.1 against a temporary
DAGSTER_HOME and QUANT_HOME, driven only through the GraphQL API.

1. ``launchRun`` of ``reference_data_job`` (universe, corporate actions, fundamentals);
2. ``launchPartitionBackfill`` (partitions by asset, as ranges) of ``market_bars`` from the
   first trading day to the last day of the feature range, and of ``pit_features`` over ten
   trading days (2022-06-01 .. 2022-06-14), executed by the daemon under the assets'
   backfill policies (``market_bars`` single run, ``pit_features`` up to QUANT_FEATURE_DAYS_PER_RUN days a run);
3. waits for the backfill, then checks through GraphQL that its runs succeeded and are in
   the instance (one run per asset, as the policies say), and reads the Delta tables: the
   ``pit_features`` dates are exactly the ten requested days, each day has one row per
   instrument that has a bar that day, and no (date, instrument_id) appears twice.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from shutil import which
from typing import Any

import polars as pl
import pytest
import requests
from servers import LOCALHOST, ServerProcess, daemon_env, free_port, running_server

# The same instance settings as ``make demo`` writes (telemetry and nux off, SQLite storage).
from quant_assets.instance import local_instance_yaml

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("servers")]

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = REPO_ROOT / "workspace.yaml"
LOCATION = "quant_assets"  # workspace.yaml
REPOSITORY = "__repository__"  # the implicit repository of a Definitions object

# Ten consecutive trading days (no US market holiday between them; Juneteenth 2022 was
# observed on the 20th): the feature range of the backfill.
PIT_DAYS = [
    "2022-06-01", "2022-06-02", "2022-06-03", "2022-06-06", "2022-06-07",
    "2022-06-08", "2022-06-09", "2022-06-10", "2022-06-13", "2022-06-14",
]
SERVER_START_TIMEOUT = 120.0
RUN_TIMEOUT = 120.0
BACKFILL_TIMEOUT = 240.0
POLL_INTERVAL = 1.0

RUN_TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
BACKFILL_DONE = {"COMPLETED", "COMPLETED_SUCCESS"}
BACKFILL_TERMINAL = BACKFILL_DONE | {"COMPLETED_FAILED", "FAILED", "CANCELED"}
BACKFILL_TAG = "dagster/backfill"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

# --------------------------------------------------------------------------- client


class GraphQLError(AssertionError):
    pass


class GraphQLClient:
    """A minimal client of the webserver's /graphql endpoint."""

    def __init__(self, url: str, server: ServerProcess | None = None) -> None:
        self.url = url
        self.server = server
        self.session = requests.Session()

    def __call__(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.server is not None:
            self.server.check_alive()
        response = self.session.post(
            self.url, json={"query": query, "variables": variables or {}}, timeout=60
        )
        try:
            body = response.json()
        except ValueError:
            raise GraphQLError(f"HTTP {response.status_code}: {response.text[:2000]}") from None
        if body.get("errors"):
            raise GraphQLError(f"GraphQL errors: {body['errors']}")
        response.raise_for_status()
        return body["data"]


def _error_text(result: dict[str, Any]) -> str:
    """A GraphQL error object (PythonError or another Error) as text."""
    parts = [f"{result.get('__typename')}: {result.get('message', '')}"]
    if result.get("stack"):
        parts.append("".join(result["stack"]))
    for error in result.get("errors") or []:  # RunConfigValidationInvalid
        parts.append(str(error.get("message")))
    return "\n".join(parts)


WORKSPACE_QUERY = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message stack }
        }
      }
    }
    ... on PythonError { message stack }
  }
}
"""

LAUNCH_RUN = """
mutation ($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

LAUNCH_BACKFILL = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

RUN_QUERY = """
query ($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

BACKFILL_QUERY = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      id
      status
      numPartitions
      isAssetBackfill
      error { message stack }
      runs { runId status }
    }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

RUNS_QUERY = """
query ($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs {
      results {
        runId
        jobName
        status
        startTime
        endTime
        tags { key value }
        assetSelection { path }
      }
    }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

RUN_EVENTS_QUERY = """
query ($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run {
      eventConnection(limit: 2000) {
        events {
          __typename
          ... on MessageEvent { message level stepKey }
          ... on ExecutionStepFailureEvent { error { ...ErrorChain } }
          ... on RunFailureEvent { error { ...ErrorChain } }
          ... on EngineEvent { error { ...ErrorChain } }
        }
      }
    }
  }
}
fragment ErrorChain on PythonError {
  message
  stack
  errorChain { error { message stack } }
}
"""

DAEMONS_QUERY = """
query {
  instance {
    daemonHealth {
      allDaemonStatuses {
        daemonType required healthy
        lastHeartbeatErrors { message }
      }
    }
  }
}
"""

PARTITION_STATS_QUERY = """
query ($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode { partitionStats { numMaterialized numPartitions numFailed } }
    ... on Error { message }
  }
}
"""


# --------------------------------------------------------------------------- server


@dataclass
class DagsterDev:
    server: ServerProcess
    graphql: GraphQLClient
    quant_home: Path
    dagster_home: Path

    @property
    def warehouse(self) -> Path:
        return self.quant_home / "warehouse"

    def diagnostics(self) -> str:
        """The failure messages an assertion should show: daemons and the server log."""
        try:
            daemons = self.graphql(DAEMONS_QUERY)["instance"]["daemonHealth"]["allDaemonStatuses"]
        except Exception as exc:  # the server may be the problem
            daemons = f"<daemon health unavailable: {exc}>"
        return f"daemons: {daemons}\n--- dagster dev log ({self.server.log_path}) ---\n{self.server.tail()}"


def _dagster_executable() -> str:
    here = Path(sys.executable).parent / "dagster"
    if here.exists():
        return str(here)
    found = which("dagster")
    if found is None:
        pytest.skip("the dagster CLI is not installed")
    return found


def _server_env(quant_home: Path, dagster_home: Path) -> dict[str, str]:
    env = dict(os.environ)  # the test range of conftest.py (QUANT_START_DATE, ...)
    for name in ("QUANT_WAREHOUSE_URI", "QUANT_MLFLOW_URI", "QUANT_MLFLOW_ARTIFACTS",
                 "QUANT_LANDING_DIR", "PYTEST_CURRENT_TEST"):
        env.pop(name, None)
    # The code server imports quant_assets/resources/sensors from this checkout, as the test
    # process does (an editable install made before a package gained its __init__.py maps it
    # as a namespace package, and `from resources import build_resources` then fails).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.update(
        QUANT_HOME=str(quant_home),
        DAGSTER_HOME=str(dagster_home),
        DAGSTER_DISABLE_TELEMETRY="true",
        PYTHONUNBUFFERED="1",
    )
    return env


def _wait_for_location(graphql: GraphQLClient, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    entries: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        workspace = graphql(WORKSPACE_QUERY)["workspaceOrError"]
        if workspace["__typename"] != "Workspace":
            raise GraphQLError(_error_text(workspace))
        entries = workspace["locationEntries"]
        entry = next((e for e in entries if e["name"] == LOCATION), None)
        if entry is not None and entry["loadStatus"] == "LOADED":
            loaded = entry["locationOrLoadError"] or {}
            if loaded.get("__typename") == "PythonError":
                pytest.fail(f"code location {LOCATION} failed to load:\n{_error_text(loaded)}")
            return
        time.sleep(POLL_INTERVAL)
    raise GraphQLError(f"code location {LOCATION} not loaded after {timeout:.0f}s: {entries}")


@pytest.fixture
def dagster_dev(tmp_path: Path) -> Iterator[DagsterDev]:
    """``dagster dev`` on a free port of 127.0.0.1 with its own DAGSTER_HOME and QUANT_HOME
    under tmp_path; its process group is killed on teardown, whatever happened."""
    quant_home = tmp_path / "quant"
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir(parents=True)
    quant_home.mkdir(parents=True)
    # the demo's instance settings; runs leave the queue within a second, not five
    (dagster_home / "dagster.yaml").write_text(
        local_instance_yaml(dagster_home) + "run_queue:\n  dequeue_interval_seconds: 1\n"
    )
    port = free_port()
    args = [_dagster_executable(), "dev", "-w", str(WORKSPACE), "-h", LOCALHOST, "-p", str(port)]
    with running_server(
        args,
        log_path=tmp_path / "dagster-dev.log",
        env=daemon_env(_server_env(quant_home, dagster_home)),  # backfill ticks of 2 s
        cwd=REPO_ROOT,
        ready_url=f"http://{LOCALHOST}:{port}/server_info",
        timeout=SERVER_START_TIMEOUT,
    ) as server:
        graphql = GraphQLClient(f"http://{LOCALHOST}:{port}/graphql", server)
        _wait_for_location(graphql, SERVER_START_TIMEOUT)
        yield DagsterDev(server, graphql, quant_home, dagster_home)


# --------------------------------------------------------------------------- helpers


def _python_error_text(error: dict[str, Any], stack_lines: int = 12) -> str:
    """A PythonError and its causes, each with the end of its stack."""
    parts = []
    for i, err in enumerate([error] + [link["error"] for link in error.get("errorChain") or []]):
        stack = "".join((err.get("stack") or [])[-stack_lines:])
        parts.append(f"{'caused by: ' if i else ''}{err['message'].strip()}\n{stack}")
    return "\n".join(parts)


def _failure_messages(graphql: GraphQLClient, run_id: str) -> str:
    """Step and run failure messages (with stacks) and error-level logs of one run."""
    data = graphql(RUN_EVENTS_QUERY, {"runId": run_id})["runOrError"]
    lines = []
    for event in (data.get("eventConnection") or {}).get("events", []):
        error = event.get("error")
        if error or event.get("level") in ("ERROR", "CRITICAL"):
            lines.append(f"[{event['__typename']}] {event.get('stepKey') or ''} {event.get('message', '')}")
            if error:
                lines.append(_python_error_text(error))
    return "\n".join(lines) or "<no failure events>"


def _runs(graphql: GraphQLClient, tags: dict[str, str] | None = None) -> list[dict[str, Any]]:
    run_filter = {"tags": [{"key": k, "value": v} for k, v in tags.items()]} if tags else None
    result = graphql(RUNS_QUERY, {"filter": run_filter})["runsOrError"]
    if result["__typename"] != "Runs":
        raise GraphQLError(_error_text(result))
    return result["results"]


def _launch_job(dev: DagsterDev, job_name: str) -> str:
    params = {
        "selector": {
            "repositoryLocationName": LOCATION,
            "repositoryName": REPOSITORY,
            "jobName": job_name,
        },
        "runConfigData": {},
    }
    result = dev.graphql(LAUNCH_RUN, {"params": params})["launchRun"]
    if result["__typename"] != "LaunchRunSuccess":
        raise GraphQLError(f"launchRun {job_name}: {_error_text(result)}")
    return result["run"]["runId"]


def _wait_for_run(dev: DagsterDev, run_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    status = "?"
    while time.monotonic() < deadline:
        run = dev.graphql(RUN_QUERY, {"runId": run_id})["runOrError"]
        if run["__typename"] != "Run":
            raise GraphQLError(_error_text(run))
        status = run["status"]
        if status in RUN_TERMINAL:
            return status
        time.sleep(POLL_INTERVAL)
    pytest.fail(f"run {run_id} still {status} after {timeout:.0f}s\n{dev.diagnostics()}")


def _wait_for_backfill(dev: DagsterDev, backfill_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    backfill: dict[str, Any] = {}
    while time.monotonic() < deadline:
        backfill = dev.graphql(BACKFILL_QUERY, {"id": backfill_id})["partitionBackfillOrError"]
        if backfill["__typename"] != "PartitionBackfill":
            raise GraphQLError(_error_text(backfill))
        if backfill["status"] in BACKFILL_TERMINAL:
            return backfill
        time.sleep(POLL_INTERVAL)
    runs = _runs(dev.graphql, {BACKFILL_TAG: backfill_id})
    failures = "\n".join(
        f"run {r['runId']} ({r['status']}):\n{_failure_messages(dev.graphql, r['runId'])}"
        for r in runs if r["status"] not in ("SUCCESS", "STARTED", "STARTING", "QUEUED")
    )
    pytest.fail(
        f"backfill {backfill_id} still {backfill.get('status')} after {timeout:.0f}s; runs: "
        f"{[(r['runId'], r['status']) for r in runs]}\n{failures}\n{dev.diagnostics()}"
    )


def _tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


def _assets(run: dict[str, Any]) -> set[str]:
    return {"/".join(a["path"]) for a in run["assetSelection"] or []}


# --------------------------------------------------------------------------- test


def test_graphql_range_backfill_of_pit_features(dagster_dev: DagsterDev) -> None:
    from quant_assets.partitions import trading_day_partitions

    dev = dagster_dev
    t0 = time.monotonic()
    all_days = trading_day_partitions.get_partition_keys()
    first_day, last_day = PIT_DAYS[0], PIT_DAYS[-1]
    # the calendar agrees that these are consecutive trading days
    assert [d for d in all_days if first_day <= d <= last_day] == PIT_DAYS
    # market_bars from the first trading day: covers every lookback the features can use
    bar_days = [d for d in all_days if d <= last_day]

    # 1. reference data through a plain run of its job
    ref_run_id = _launch_job(dev, "reference_data_job")
    ref_status = _wait_for_run(dev, ref_run_id, RUN_TIMEOUT)
    assert ref_status == "SUCCESS", (
        f"reference_data_job run {ref_run_id}: {ref_status}\n"
        f"{_failure_messages(dev.graphql, ref_run_id)}\n{dev.diagnostics()}"
    )
    t_ref = time.monotonic()

    # 2. a partition-range asset backfill executed by the daemon
    params = {
        "partitionsByAssets": [
            {
                "assetKey": {"path": ["market_bars"]},
                "partitions": {"ranges": [{"start": bar_days[0], "end": last_day}]},
            },
            {
                "assetKey": {"path": ["pit_features"]},
                "partitions": {"ranges": [{"start": first_day, "end": last_day}]},
            },
        ],
        "title": "test_dagster_graphql",
        "tags": [{"key": "quant/test", "value": "graphql-backfill"}],
    }
    launched = dev.graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    if launched["__typename"] != "LaunchBackfillSuccess":
        raise GraphQLError(f"launchPartitionBackfill: {_error_text(launched)}")
    backfill_id = launched["backfillId"]
    backfill = _wait_for_backfill(dev, backfill_id, BACKFILL_TIMEOUT)
    t_backfill = time.monotonic()

    runs = _runs(dev.graphql, {BACKFILL_TAG: backfill_id})
    failed = [r for r in runs if r["status"] != "SUCCESS"]
    assert backfill["status"] in BACKFILL_DONE and not failed, (
        f"backfill {backfill_id}: {backfill['status']} {backfill.get('error')}\n"
        + "\n".join(
            f"run {r['runId']} {sorted(_assets(r))} ({r['status']}):\n"
            f"{_failure_messages(dev.graphql, r['runId'])}"
            for r in failed
        )
        + f"\n{dev.diagnostics()}"
    )
    assert backfill["isAssetBackfill"]
    assert backfill["numPartitions"] is None or backfill["numPartitions"] >= len(PIT_DAYS)

    # 3a. the runs: in the instance, as few as the backfill policies allow
    instance_run_ids = {r["runId"] for r in _runs(dev.graphql)}
    assert ref_run_id in instance_run_ids
    assert {r["runId"] for r in runs} <= instance_run_ids
    assert {r["runId"] for r in backfill["runs"]} == {r["runId"] for r in runs}
    bar_runs = [r for r in runs if "market_bars" in _assets(r)]
    pit_runs = [r for r in runs if "pit_features" in _assets(r)]
    summary = [
        (r["runId"][:8], sorted(_assets(r)), _tags(r).get(RANGE_START_TAG),
         _tags(r).get(RANGE_END_TAG), f"{(r['endTime'] or 0) - (r['startTime'] or 0):.1f}s")
        for r in runs
    ]
    # market_bars: one range run. pit_features: multi_run(1040) asks for one run, but the
    # daemon may launch a first chunk while market_bars' per-partition materialisations
    # are still being recorded (seen under load), so allow a few, contiguous, no overlap.
    assert len(bar_runs) == 1, summary
    assert 1 <= len(pit_runs) <= 3, summary
    bar_tags = _tags(bar_runs[0])
    assert (bar_tags.get(RANGE_START_TAG), bar_tags.get(RANGE_END_TAG)) == (bar_days[0], last_day)
    chunks = sorted((_tags(r).get(RANGE_START_TAG), _tags(r).get(RANGE_END_TAG)) for r in pit_runs)
    covered = [d for start, end in chunks for d in PIT_DAYS if start <= d <= end]
    assert covered == PIT_DAYS, summary  # every day exactly once, in order

    stats = dev.graphql(PARTITION_STATS_QUERY, {"key": {"path": ["pit_features"]}})
    node = stats["assetNodeOrError"]
    assert node["__typename"] == "AssetNode", node
    assert node["partitionStats"]["numMaterialized"] == len(PIT_DAYS), node
    assert node["partitionStats"]["numFailed"] == 0, node

    # 3b. the Delta tables: exactly the requested days, one row per instrument with a bar
    bars = pl.read_delta(str(dev.warehouse / "market_bars"))
    features = pl.read_delta(str(dev.warehouse / "pit_features"))
    expected_days = [dt.date.fromisoformat(d) for d in PIT_DAYS]
    assert sorted(bars["date"].unique().to_list()) == [dt.date.fromisoformat(d) for d in bar_days]
    assert sorted(features["date"].unique().to_list()) == expected_days

    duplicated = features.filter(pl.struct("date", "instrument_id").is_duplicated())
    assert duplicated.is_empty(), duplicated.select("date", "instrument_id").unique().head(10)

    n_instruments = int(os.environ["QUANT_N_INSTRUMENTS"])
    bar_ids = bars.group_by("date").agg(pl.col("instrument_id").unique().sort().alias("ids"))
    feature_ids = features.group_by("date").agg(pl.col("instrument_id").sort().alias("ids"))
    bars_by_day = {row["date"]: row["ids"] for row in bar_ids.iter_rows(named=True)}
    features_by_day = {row["date"]: row["ids"] for row in feature_ids.iter_rows(named=True)}
    for day in expected_days:
        ids = features_by_day[day]
        assert 20 <= len(ids) <= n_instruments, (day, len(ids))
        assert ids == bars_by_day[day], (
            f"{day}: {len(ids)} feature rows vs {len(bars_by_day[day])} bars; "
            f"missing {sorted(set(bars_by_day[day]) - set(ids))}, "
            f"extra {sorted(set(ids) - set(bars_by_day[day]))}"
        )

    print(
        f"\nreference run {t_ref - t0:.1f}s, backfill {t_backfill - t_ref:.1f}s "
        f"({len(runs)} runs: {summary}), checks {time.monotonic() - t_backfill:.1f}s; "
        f"{features.height} feature rows over {len(PIT_DAYS)} days"
    )
