"""What the golden flow leaves outside the Delta warehouse holds no raw positions, weights,
per-instrument predictions or strategy state, and no secret from the environment.

One demo run (a subprocess, as `make demo` runs it) into a tmp QUANT_HOME with sentinel
values in the secret-bearing environment variables; then every place a user or operator
can see is scanned:

- MLflow: every run's params, tags, metric keys and artifacts (files read), registered
  models, versions and their tags;
- Dagster: every event of every run (messages and metadata, serialised), plus every file
  under DAGSTER_HOME (compute logs, SQLite storage, raw bytes);
- Delta: the commitInfo (commit metadata) of every commit of every table;
- the demo's stdout/stderr;
- and, for the secrets, every byte of every file under QUANT_HOME.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import pytest
from dagster import DagsterInstance
from dagster._serdes import serialize_value

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("security")]

REPO = Path(__file__).resolve().parents[1]
SENTINELS = {
    "AWS_SECRET_ACCESS_KEY": "SENTINELsecretKEY9f3a1c",
    "AWS_SESSION_TOKEN": "SENTINELsessionTOKEN77d2",
    "QUANT_DB_PASSWORD": "SENTINELdbPASSWORD5e81",
    "DAGSTER_PG_PASSWORD": "SENTINELpgPASSWORD0b4c",
    "MLFLOW_TRACKING_PASSWORD": "SENTINELmlflowPASSWORD3a9e",
}
# an instrument id of the simulator, e.g. SIM0012; weights/scores/positions would carry them
INSTRUMENT = re.compile(r"SIM\d{4}")
# a model's weights (state_json) must not reach the event log; the column's name in a table
# asset's column schema (dagster/column_schema: {"name": "state_json", ...}) may
FORBIDDEN = (INSTRUMENT, re.compile(r'(?<!"name": ")state_json'))


def _findings(where: str, text: str) -> list[str]:
    found = []
    for value in SENTINELS.values():
        if value in text:
            found.append(f"{where}: secret sentinel {value}")
    for pattern in FORBIDDEN:
        match = pattern.search(text)
        if match:
            start = max(match.start() - 80, 0)
            found.append(f"{where}: {pattern.pattern!r} in ...{text[start:match.end() + 80]!r}")
    return found


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("security") / "home"
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update(SENTINELS, QUANT_HOME=str(home), PYTHONWARNINGS="ignore",
               # the whole flow, shorter: two model months, 12 instruments (~40 s less)
               QUANT_END_DATE="2023-02-28", QUANT_N_INSTRUMENTS="12")
    proc = subprocess.run(
        [sys.executable, "-m", "quant_assets", "demo"], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return home, proc


def test_no_secret_bytes_anywhere_under_quant_home(demo_home):
    home, proc = demo_home
    found = []
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {v}" for v in SENTINELS.values() if v.encode() in data]
    found += _findings("demo stdout", proc.stdout) + _findings("demo stderr", proc.stderr)
    assert found == []


def test_mlflow_holds_no_raw_positions_predictions_or_secrets(demo_home):
    home, _ = demo_home
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    found: list[str] = []
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert runs, "the demo logged no MLflow runs"
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            name = run.info.run_name
            found += _findings(f"{name} params", json.dumps(run.data.params))
            found += _findings(f"{name} tags", json.dumps(run.data.tags))
            found += _findings(f"{name} metric keys", json.dumps(sorted(run.data.metrics)))
            local = Path(client.download_artifacts(run.info.run_id, "", f"{tmp}/{run.info.run_id}"))
            for path in local.rglob("*"):
                if path.is_file():
                    found += _findings(f"{name} artifact {path.name}",
                                       path.read_bytes().decode("utf-8", "replace"))
    for model in client.search_registered_models():
        found += _findings(f"model {model.name}", json.dumps(
            {"tags": model.tags, "description": model.description}))
        for version in client.search_model_versions(f"name='{model.name}'"):
            found += _findings(f"model {model.name} v{version.version}", json.dumps(
                {"tags": version.tags, "description": version.description}))
    assert found == []


def test_dagster_event_log_holds_no_raw_positions_predictions_or_secrets(demo_home):
    home, _ = demo_home
    found: list[str] = []
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = instance.get_runs()
        assert runs
        for run in runs:
            found += _findings(f"run {run.run_id} tags/config",
                               json.dumps({"tags": run.tags, "config": run.run_config}, default=str))
            for entry in instance.all_logs(run.run_id):
                found += _findings(f"run {run.run_id[:8]} event", serialize_value(entry))
    for path in (home / "dagster").rglob("*"):
        if path.is_file():
            found += _findings(f"file {path}", path.read_bytes().decode("utf-8", "replace"))
    assert found == []


def test_delta_commit_metadata_holds_no_secrets_or_instrument_data(demo_home):
    from deltalake import DeltaTable

    home, _ = demo_home
    found: list[str] = []
    logs = sorted((home / "warehouse").rglob("_delta_log"))
    assert len(logs) >= 10
    for log in logs:
        table = DeltaTable(str(log.parent))
        for commit in table.history():
            found += _findings(f"{log.parent.name} commit {commit.get('version')}",
                               json.dumps(commit, default=str))
    assert found == []


def test_scanner_flags_what_it_looks_for():
    """The scan can fail: each forbidden kind of content is found in a sample."""
    assert _findings("x", '{"weights": {"SIM0042": 0.013}}')
    assert _findings("x", "state_json={...}")
    assert _findings("x", '{"state_json": "{\\"w\\": [0.1]}"}')
    assert _findings("x", '{"__class__": "TableColumn", "name": "state_json", "type": "string"}') == []
    assert _findings("x", "token=" + SENTINELS["AWS_SECRET_ACCESS_KEY"])
    assert _findings("x", '{"sharpe": 1.2, "n_instruments": 30}') == []
