"""Transient faults during the golden flow on the production stack: the run completes and
nothing is lost.

The stack is test_production_stack.py's (its server helpers, imported): a real Postgres
holding the Dagster instance (deploy/dagster.yaml) and MLflow's backend, SeaweedFS's S3
gateway, an MLflow tracking server. ``python -m quant_assets demo`` (the golden flow, one
Dagster run per stage) runs against it in a subprocess while the test injects, in one run:

1. S3 errors, for the whole flow: every S3 client (delta-rs for the warehouse, boto3 in the
   MLflow server's artifact proxy and in Dagster's compute log manager) talks to the gateway
   through ``faults.S3FaultProxy``, which answers one request in ``S3_EVERY`` with
   ``503 SlowDown``, ``500 InternalError`` or a dropped connection, in turn, instead of
   forwarding it; the clients retry those themselves, except a dropped Delta commit (a
   conditional put is not resent). A few chosen requests get a fault that the client never
   retries (``ESCAPING``: a ``400 RequestTimeout`` on a labels and an oos_predictions data
   file, a dropped connection on lgbm_model's and strategy_grid's commits): the step fails and the asset's
   RetryPolicy (quant_assets/retries.py) has to run it again.
2. A Postgres restart while the daily stage's run is in progress: as soon as the run writes
   its first market_bars file, the postmaster gets SIGTERM (smart shutdown: new connections
   are refused, open ones finish), exits, and is started again on the same port and data
   directory once the run worker has been refused a connection.
3. An MLflow server outage from the start of the model stage: its process group is killed
   (SIGKILL) when the stage starts, and it is started again once the run's MLflow client has
   failed to reach it.

Faults are scheduled on what the run does (requests seen by the proxy, lines in the run's
log), never on sleeps, and nothing is timed. Then: every stage's run is SUCCESS, every fault
fired (the proxy's counts, a refused probe connection while each server was down, the run's
own retry messages), and nothing was lost: each Delta table's content hash equals a
fault-free reference run's (the same flow on the local embedded default), the Dagster run
history in Postgres holds the same materialisations as the reference's (none missing, none
doubled by a retry), and the MLflow runs the tables point to are FINISHED with the same
artifacts and metrics as the reference's, exactly once: one FINISHED run per (asset,
partitions, Dagster run) and one registered model version per run, however often a step
was retried after it had logged to MLflow (the retry resumes that attempt's run).

~3-5 minutes: the servers and the reference run start side by side, then the faulted flow.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from faults import FaultPlan, S3FaultProxy, table_of, under
from servers import (
    LOCALHOST,
    http_status,
    start_server,
    wait_for_http,
    wait_for_port,
)
from test_golden_flow import RUN_SPECIFIC, TABLES
from test_production_stack import (
    BUCKET,
    GATE_JOB,
    JOBS,
    PG_PASSWORD,
    PG_USER,
    RANGE,
    mlflow_server,
    platform_env,
    postgres_server,
    seaweedfs_s3,
)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("servers")]

REPO = Path(__file__).resolve().parents[2]
S3_EVERY = 7  # one S3 request in 7 gets a fault (503, 500, dropped connection in turn)


def _put(table: str, what: str):
    """The PUT of a data file (``data``) or of a Delta commit (``commit``) of ``table``."""
    def predicate(method: str, target: str) -> bool:
        if method != "PUT" or table_of(target) != table:
            return False
        if what == "data":
            return target.endswith(".parquet")
        return "/_delta_log/" in target and target.endswith(".json")
    return predicate


def _mlflow_put(method: str, target: str) -> bool:
    return method == "PUT" and under(target, "mlflow")


# Faults that get past the S3 client's own retries, each on the first request it matches:
# the step fails and the asset's RetryPolicy must run it again. (job, step, request, fault)
ESCAPING = [
    # 400 RequestTimeout on a data file: object_store retries 5xx, never a 4xx
    ("labels_job", "labels", _put("labels", "data"), "timeout"),
    ("monthly_models_job", "oos_predictions", _put("oos_predictions", "data"), "timeout"),
    # a dropped connection on a Delta commit (a conditional put, which object_store does not
    # resend), after lgbm_model has logged its MLflow run and registered its model
    ("monthly_models_job", "lgbm_model", _put("lgbm_model", "commit"), "reset"),
    # the same on the CPU-bound grid's commit: it once failed the run here when the periodic
    # faults happened to drop it (the grid had no RetryPolicy), so it is injected every time
    ("strategy_grid_job", "strategy_grid", _put("strategy_grid", "commit"), "reset"),
]
# and on the first two MLflow artifact uploads, which the MLflow server's boto3 retries
MLFLOW_ONCE = [(_mlflow_put, "reset"), (_mlflow_put, "503")]
# identifiers of the MLflow run/model version that wrote a row: a retried step logs again
RUN_IDENTITY = (*RUN_SPECIFIC, "registered_version")
# what the run worker's clients log when they retry (dagster-postgres, urllib3 under MLflow):
# library records, which the demo writes to $QUANT_HOME/demo-third-party.log, not its console
PG_RETRY = "Retrying failed database connection"
HTTP_RETRY = "Retrying ("
STAGE_MODELS = "[4/8]"


def _wait(condition, what: str, timeout: float, demo=None, interval: float = 0.05) -> bool:
    """Poll ``condition`` until true (True), ``timeout`` passes (False) or the demo exits."""
    deadline = time.monotonic() + timeout
    while not condition():
        if demo is not None and not demo.alive():
            raise AssertionError(f"the run exited while waiting for {what}:\n{demo.tail()}")
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def _log(server) -> str:
    return server.log_path.read_text(errors="replace")


def _library_log(home: Path) -> str:
    """What the demo's libraries logged (``cli.demo.THIRD_PARTY_LOG``): their retries."""
    from quant_assets.cli.demo import THIRD_PARTY_LOG

    path = home / THIRD_PARTY_LOG
    return path.read_text(errors="replace") if path.exists() else ""


def _pg_connects(port: int) -> bool:
    import psycopg2

    try:
        psycopg2.connect(host=LOCALHOST, port=port, user=PG_USER, password=PG_PASSWORD,
                         dbname="dagster", connect_timeout=3).close()
        return True
    except psycopg2.OperationalError:
        return False


def restart_postgres(pg, port: int, demo, home: Path) -> dict:
    """Restart Postgres under the running flow (QUANT_HOME ``home``); returns what proves the
    fault happened."""
    mark = len(_library_log(home))
    old_pid = pg.pid
    os.kill(pg.pid, signal.SIGTERM)  # smart shutdown: refuse new connections, let open ones end
    assert _wait(lambda: not pg.alive(), "postgres to shut down", 120), (
        "postgres still waits for open sessions after 120 s:\n" + pg.tail())
    refused = not _pg_connects(port)  # our own client is refused while it is down
    # the run worker tries to connect (its next event) and is refused; then bring it back
    # while dagster-postgres is still retrying (exponential backoff, ~11 s in all)
    hit = _wait(lambda: PG_RETRY in _library_log(home)[mark:], "the run to hit the outage", 120, demo)
    pg.restart()
    wait_for_port(LOCALHOST, port, timeout=60, server=pg)
    assert _wait(lambda: _pg_connects(port), "postgres to accept connections", 60), pg.tail()
    return {"refused": refused, "run_retried": hit, "old_pid": old_pid, "new_pid": pg.pid}


def mlflow_outage(ml, uri: str, demo, home: Path) -> dict:
    """Kill the MLflow server as the model stage starts; restart it once the run's client
    has failed to reach it."""
    mark = len(_library_log(home))
    ml.stop()  # SIGKILL to its process group (gunicorn/uvicorn workers included)
    refused = http_status(f"{uri}/health") is None

    def client_failed() -> bool:
        new = _library_log(home)[mark:]
        return any(HTTP_RETRY in line and "/api/2.0/mlflow" in line for line in new.splitlines())

    hit = _wait(client_failed, "the run's MLflow client to fail", 180, demo)
    ml.restart()
    wait_for_http(f"{uri}/health", timeout=180, server=ml)
    return {"refused": refused, "client_retried": hit}


@pytest.fixture(scope="module")
def faulted(tmp_path_factory):
    pytest.importorskip(
        "dagster_postgres",
        reason="dagster-postgres==0.29.27 (the instance storage of a deployment) is not installed",
    )
    root = Path(tempfile.mkdtemp(prefix="quant-faults-"))
    os.chmod(root, 0o755)  # postgres runs as nobody when we are root
    t0 = time.monotonic()
    base_env = {k: v for k, v in os.environ.items()
                if k not in ("DAGSTER_HOME", "QUANT_WAREHOUSE_URI", "QUANT_MLFLOW_URI",
                             "QUANT_MLFLOW_ARTIFACTS", "AWS_S3_ALLOW_UNSAFE_RENAME",
                             "AWS_SESSION_TOKEN", "AWS_PROFILE")}
    base_env.update(RANGE, PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
    with contextlib.ExitStack() as stack:
        # the fault-free reference: the same flow on the local embedded default, started
        # first so that it runs while the servers boot
        ref_home = root / "reference"
        reference = start_server([sys.executable, "-m", "quant_assets", "demo"],
                                 log_path=root / "reference.log", cwd=REPO,
                                 env={**base_env, "QUANT_HOME": str(ref_home)})
        stack.callback(reference.stop)
        s3_server, s3_endpoint, wait_for_s3 = stack.enter_context(seaweedfs_s3(root))
        pg, pg_port = stack.enter_context(postgres_server(root))
        s3 = wait_for_s3()
        proxy = stack.enter_context(S3FaultProxy(s3_endpoint))
        # MLflow's pool would hold connections open through a smart shutdown: one per request
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")
            ml, mlflow_uri = stack.enter_context(mlflow_server(root, pg_port, proxy.endpoint))
        home = root / "quant"
        # every S3 client goes through the faults
        env = platform_env(home, mlflow_uri, proxy.endpoint, pg_port)
        wait_for_http(f"{mlflow_uri}/health", timeout=180, server=ml)
        assert reference.process.wait(timeout=600) == 0, reference.tail()
        t_ready = time.monotonic()

        # the faulted run
        proxy.set_plan(FaultPlan(every=S3_EVERY, once=[
            *((request, fault) for _, _, request, fault in ESCAPING), *MLFLOW_ONCE]))
        first_bars = proxy.when(lambda m, t: m == "PUT" and table_of(t) == "market_bars"
                                and t.endswith(".parquet"))
        demo = start_server([sys.executable, "-m", "quant_assets", "demo"],
                            log_path=root / "demo.log", cwd=REPO, env={**base_env, **env})
        stack.callback(demo.stop)
        assert _wait(first_bars.is_set, "the first market_bars write", 600, demo), demo.tail()
        pg_fault = restart_postgres(pg, pg_port, demo, home)
        assert _wait(lambda: STAGE_MODELS in _log(demo), "the model stage", 600, demo), demo.tail()
        ml_fault = mlflow_outage(ml, mlflow_uri, demo, home)
        code = demo.process.wait(timeout=900)
        t_done = time.monotonic()
        proxy.set_plan(FaultPlan())  # the checks read through the proxy: no more faults
        for server in (pg, s3_server, ml):
            server.check_alive()
        assert code == 0, demo.tail(8000) + "\nmlflow log:\n" + ml.tail(3000)
        print(f"stack + reference {t_ready - t0:.0f}s, faulted flow {t_done - t_ready:.0f}s")
        yield {
            "env": env, "root": root, "ref_home": ref_home, "pg_port": pg_port, "s3": s3,
            "mlflow_uri": mlflow_uri, "proxy": proxy, "pg_fault": pg_fault,
            "ml_fault": ml_fault, "demo_log": _log(demo), "pg": pg, "ml": ml,
        }
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def stack_env(faulted):
    with pytest.MonkeyPatch.context() as mp:
        for name, value in faulted["env"].items():
            mp.setenv(name, value)
        mp.delenv("AWS_S3_ALLOW_UNSAFE_RENAME", raising=False)
        yield faulted


def _history(dagster_home: str) -> dict:
    """Runs, per job the event types of its run, materialisations (job, asset, partition)
    and step retries (job, step) of the Dagster instance at ``dagster_home``."""
    from dagster import DagsterEventType, DagsterInstance

    out = {"runs": [], "types": {}, "materialised": Counter(), "retries": Counter(),
           "retry_errors": [], "gate": []}
    with DagsterInstance.from_config(dagster_home) as instance:
        runs = instance.get_runs()
        # the gate's run fails when the blocking gate check fails: that is its verdict, kept
        # apart (status, check outcomes) and compared with the fault-free reference's
        for run in runs:
            if run.job_name == GATE_JOB:
                out["gate"].append((run.status, [
                    e.dagster_event.event_specific_data.passed for e in instance.all_logs(run.run_id)
                    if e.dagster_event is not None
                    and e.dagster_event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION]))
        out["runs"] = [run for run in runs if run.job_name != GATE_JOB]
        for run in out["runs"]:
            events = [e.dagster_event for e in instance.all_logs(run.run_id)
                      if e.dagster_event is not None]
            # the demo runs the monthly job once per model family (an asset selection each)
            label = run.job_name + (f"[{','.join(sorted(k.to_user_string() for k in run.asset_selection))}]"
                                    if run.asset_selection else "")
            out["types"][label] = [e.event_type for e in events]
            for e in events:
                if e.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                    mat = e.step_materialization_data.materialization
                    out["materialised"][
                        (run.job_name, mat.asset_key.to_user_string(), mat.partition)] += 1
                if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY:
                    out["retries"][(run.job_name, e.step_key)] += 1
                    error = e.event_specific_data.error
                    cause = error.cause or error
                    out["retry_errors"].append(
                        f"{e.step_key}: {cause.cls_name}: {cause.message.strip()[:240]}")
    return out


@pytest.fixture(scope="module")
def histories(stack_env):
    return _history(stack_env["env"]["DAGSTER_HOME"]), _history(str(stack_env["ref_home"] / "dagster"))


def _multi_output_steps() -> dict[str, str]:
    """Asset -> its step, for the steps of the definitions that write several assets."""
    from quant_assets.definitions import defs

    return {key.to_user_string(): assets_def.op.name
            for assets_def in defs.resolve_asset_graph().assets_defs
            if assets_def.is_executable and len(assets_def.keys) > 1 for key in assets_def.keys}


def test_every_fault_fired(faulted):
    proxy = faulted["proxy"]
    s3_faults = proxy.faults()
    on_warehouse = proxy.faults(lambda r: table_of(r.target) is not None)
    on_mlflow = proxy.faults(lambda r: under(r.target, "mlflow"))
    tables_hit = {table_of(r.target) for r in proxy.snapshot() if r.fault} - {None}
    print(f"S3: {len(proxy.snapshot())} requests, faults {dict(s3_faults)}; warehouse "
          f"{dict(on_warehouse)} on {sorted(tables_hit)}; MLflow artifacts {dict(on_mlflow)}")
    print(f"Postgres restart: {faulted['pg_fault']}; MLflow outage: {faulted['ml_fault']}")
    assert {"503", "500", "reset", "timeout"} <= set(s3_faults)
    assert {"reset", "503"} <= set(on_mlflow)
    # the I/O-bound assets' tables with the most requests (40-60 each, in runs of several
    # requests per read or write) got S3 faults (the others usually do too: printed above)
    assert {"market_bars", "pit_features", "labels", "lgbm_model", "oos_predictions"} <= tables_hit
    for _, _, request, fault in ESCAPING:  # each escaping fault hit its request
        assert any(r.fault == fault and request(r.method, r.target) for r in proxy.snapshot())
    pg = faulted["pg_fault"]
    assert pg["refused"] and pg["old_pid"] != pg["new_pid"]
    assert pg["run_retried"], "the run worker never tried Postgres while it was down"
    ml = faulted["ml_fault"]
    assert ml["refused"]
    assert ml["client_retried"], "the run's MLflow client never tried the server while it was down"


def test_every_run_succeeded_and_history_is_complete(histories):
    from dagster import DagsterEventType, DagsterRunStatus

    got, want = histories
    print("step retries (STEP_UP_FOR_RETRY):", dict(got["retries"]))
    for line in got["retry_errors"]:
        print("  ", line)
    # one run per job, and the monthly job's once per model family
    assert {r.job_name for r in got["runs"]} == JOBS and len(got["runs"]) == len(want["runs"]) == len(JOBS) + 1
    assert len(got["types"]) == len(got["runs"])
    assert {r.status for r in got["runs"]} == {DagsterRunStatus.SUCCESS}
    # one gate run each, with the same verdict as the reference; a failed run only by its check
    assert len(got["gate"]) == 1 and got["gate"] == want["gate"], (got["gate"], want["gate"])
    status, passed = got["gate"][0]
    assert passed and (status == DagsterRunStatus.SUCCESS) == all(passed)
    for job, types in got["types"].items():
        assert DagsterEventType.RUN_SUCCESS in types and DagsterEventType.STEP_FAILURE not in types
        # every attempt (a retry starts with STEP_RESTARTED) ended in success or a retry
        attempts = (types.count(DagsterEventType.STEP_START)
                    + types.count(DagsterEventType.STEP_RESTARTED))
        ends = (types.count(DagsterEventType.STEP_SUCCESS)
                + types.count(DagsterEventType.STEP_UP_FOR_RETRY))
        assert attempts == ends, (job, Counter(types))
    # what the S3 client did not retry, the asset's RetryPolicy did
    assert {(job, step) for job, step, _, _ in ESCAPING} <= set(got["retries"])
    # every materialisation of the reference is in Postgres (none lost), once (none doubled),
    # except for a step with several outputs retried after one of them had committed: the
    # retry writes that output again (the same rows, replacing its partition) and Dagster
    # records it again, once per such retry (strategy_grid: a dropped commit of its returns)
    assert set(got["materialised"]) == set(want["materialised"])
    extra = got["materialised"] - want["materialised"]
    steps = _multi_output_steps()
    for (job, asset, partition), n in extra.items():
        assert asset in steps and n <= got["retries"][(job, steps[asset])], (job, asset, partition, n)


def test_delta_tables_equal_the_fault_free_reference(stack_env):
    from quant_assets.warehouse import Warehouse, content_hash

    faulted = Warehouse(f"s3://{BUCKET}/warehouse")
    reference = Warehouse(str(stack_env["ref_home"] / "warehouse"))
    for table in TABLES:
        got, want = faulted.read([table]).frame, reference.read([table]).frame
        assert got.height == want.height > 0, table
        assert content_hash(got, RUN_IDENTITY) == content_hash(want, RUN_IDENTITY), table
        if "date" in got.columns and "instrument_id" in got.columns:
            assert got.select("date", "instrument_id").is_duplicated().sum() == 0, table


def test_mlflow_runs_and_artifacts_are_complete(stack_env, histories):
    from mlflow import MlflowClient

    from quant_assets.warehouse import Warehouse

    def runs(client: MlflowClient) -> list:
        # the results, not the parent run of each Dagster run (a retried flow has more of them)
        exp = client.get_experiment_by_name("quant-assets")
        return [r for r in client.search_runs([exp.experiment_id]) if "quant.flow_run" not in r.data.tags]

    def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
        out = set()
        for info in client.list_artifacts(run_id, path):
            out |= artifacts(client, run_id, info.path) if info.is_dir else {info.path}
        return out

    client = MlflowClient(tracking_uri=stack_env["mlflow_uri"])
    ref = MlflowClient(tracking_uri=f"sqlite:///{stack_env['ref_home'] / 'mlflow.db'}")
    got, want = runs(client), runs(ref)
    ref_by_name = {r.info.run_name: r for r in want}
    assert len(ref_by_name) == len(want)
    # exactly once (issue 16): every run of the reference is there once FINISHED, however
    # often its step was retried (a retry resumes the attempt's run: same asset, partitions
    # and Dagster run); a duplicate that a lost response made is marked FAILED, never counted
    finished = [r for r in got if r.info.status == "FINISHED"]
    names = Counter(r.info.run_name for r in finished)
    assert set(names) == set(ref_by_name)
    extra = {name: n - 1 for name, n in names.items() if n > 1}
    keys = Counter(r.data.tags.get("quant.run_key") for r in finished)
    others = Counter(r.info.status for r in got if r.info.status != "FINISHED")
    print(f"MLflow: {len(finished)} FINISHED runs ({len(want)} in the reference), others {dict(others)}; "
          f"retried steps: {sorted({step for _, step in histories[0]['retries']})}")
    assert extra == {} and all(n == 1 for n in keys.values()), (extra, keys)
    assert set(others) <= {"FAILED"}
    versions = client.search_model_versions("name = 'quant-assets-lgbm'")
    per_run = Counter(v.run_id for v in versions)
    assert all(n == 1 for n in per_run.values()), per_run  # one model version per run
    assert set(per_run) <= {r.info.run_id for r in finished}
    got = finished

    wh = Warehouse(f"s3://{BUCKET}/warehouse")
    referenced = {}
    for table in ("lgbm_model", "backtest", "validation_report"):
        frame = wh.read([table]).frame
        if "mlflow_run_id" in frame.columns:
            referenced.update({run_id: table for run_id in frame["mlflow_run_id"].drop_nulls()})
    by_id = {r.info.run_id: r for r in got}
    assert referenced and set(referenced) <= set(by_id)
    # the runs the tables point to: the reference's artifacts, metrics and parameters
    for name in ref_by_name:
        candidates = [r for r in got if r.info.run_name == name]
        run = next((r for r in candidates if r.info.run_id in referenced), candidates[-1])
        want_run = ref_by_name[name]
        assert artifacts(client, run.info.run_id) == artifacts(ref, want_run.info.run_id), name
        assert run.data.params == want_run.data.params, name
        assert set(run.data.metrics) == set(want_run.data.metrics), name
    models = wh.read(["lgbm_model"]).frame
    ref_models = Warehouse(str(stack_env["ref_home"] / "warehouse")).read(["lgbm_model"]).frame
    assert models["sha256"].to_list() == ref_models["sha256"].to_list()
    for row in models.iter_rows(named=True):
        run = by_id[row["mlflow_run_id"]]
        want_run = ref_by_name[run.info.run_name]
        assert run.data.tags["quant.model_sha256"] == row["sha256"]
        assert run.data.metrics == want_run.data.metrics
        # the registered version the table names is this run's model
        version = client.get_model_version("quant-assets-lgbm", str(row["registered_version"]))
        assert version.run_id == row["mlflow_run_id"]
        with tempfile.TemporaryDirectory() as tmp:  # the bytes round-trip through the proxy
            path = client.download_artifacts(run.info.run_id, "model_str.txt", tmp)
            assert Path(path).read_text() == row["model_str"]
