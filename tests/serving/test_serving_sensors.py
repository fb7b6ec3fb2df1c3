"""The serving alarm sensor: Dagster's sensor testing API on a real instance, Delta
warehouse and SQLite MLflow registry; then once through a real ``dagster-daemon``."""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from dagster import (
    AssetMaterialization,
    DagsterInstance,
    SensorResult,
    SkipReason,
    build_sensor_context,
)
from mlflow import MlflowClient
from servers import start_server

from quant_assets.instance import local_instance_yaml
from quant_assets.serving import drift
from quant_assets.warehouse import PartitionWindow, Warehouse
from resources import model_registry as registry
from resources.io_manager import DeltaIOManager
from resources.tracking import MlflowTracking
from sensors.monitoring import ALERTS_TABLE, serving_alarm_sensor

DAY = "2023-02-28"
REPO = Path(__file__).resolve().parents[2]


def make_registry(home: Path) -> MlflowClient:
    """Versions 1 and 2 of the model, champion 2 with previous_champion 1."""
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    client.create_registered_model(registry.MODEL_NAME)
    for _ in range(2):
        client.create_model_version(registry.MODEL_NAME, source=str(home / "artifacts"), run_id=None)
    registry.promote(client, 1)
    assert registry.promote(client, 2).previous_version == 1
    return client


def write_partition(wh: Warehouse, asset: str, frame: pl.DataFrame) -> None:
    day = dt.date.fromisoformat(DAY)
    wh.write([asset], frame.with_columns(date=pl.lit(day)), PartitionWindow("date", day, day + dt.timedelta(days=1)))


def drift_rows(score_psi: float, version: int = 2) -> pl.DataFrame:
    """A drift_report partition as the asset writes it: PSIs and the verdict of its policy."""
    table = pl.DataFrame({"column": ["f1", "f2", "score"], "psi": [0.01, 0.02, score_psi],
                          "model_version": [version] * 3})
    return drift.with_verdict(table)[0]


def health_row(breach: bool, version: int = 2) -> pl.DataFrame:
    return pl.DataFrame({"breach": [breach], "status": ["realised 21d Sharpe -3.10 is -4.20 sd"],
                         "model_version": [version], "capital_multiplier": [0.5 if breach else 1.0]})


def resources(home: Path) -> dict:
    return {"tracking": MlflowTracking(tracking_uri=f"sqlite:///{home / 'mlflow.db'}"),
            "io_manager": DeltaIOManager(root=str(home / "warehouse"))}


def test_breach_records_an_alert_and_rolls_back_once(tmp_path):
    client = make_registry(tmp_path)
    wh = Warehouse(str(tmp_path / "warehouse"))
    write_partition(wh, "drift_report", drift_rows(0.61))
    write_partition(wh, "signal_health", health_row(True))
    with DagsterInstance.ephemeral() as instance:
        instance.report_runless_asset_event(AssetMaterialization("drift_report", partition=DAY))
        ctx = build_sensor_context(instance=instance, resources=resources(tmp_path))
        result = serving_alarm_sensor(ctx)
        assert isinstance(result, SensorResult)
        assert registry.alias_version(client, registry.CHAMPION) == 1
        assert registry.alias_version(client, registry.PREVIOUS_CHAMPION) is None
        tags = client.get_model_version(registry.MODEL_NAME, "2").tags
        assert tags[registry.ROLLBACK_REASON_TAG] == "drift: score PSI 0.610 > 0.25"
        assert tags[registry.ROLLBACK_TO_TAG] == "1"
        alerts = wh.read(ALERTS_TABLE).frame
        assert alerts.height == 1
        assert alerts.row(0, named=True)["action"] == "rolled back champion v2 -> v1"

        # the realised-Sharpe alarm about v2 arrives later: recorded, no second rollback
        instance.report_runless_asset_event(AssetMaterialization("signal_health", partition=DAY))
        ctx = build_sensor_context(instance=instance, cursor=result.cursor, resources=resources(tmp_path))
        second = serving_alarm_sensor(ctx)
        assert isinstance(second, SensorResult)
        alerts = wh.read(ALERTS_TABLE).frame.sort("source")
        assert alerts["source"].to_list() == ["drift_report", "signal_health"]
        assert alerts.row(1, named=True)["action"] == "no rollback: champion is v1, the alarm concerns v2"
        assert alerts.row(1, named=True)["reason"].startswith("realised Sharpe: ")
        assert registry.alias_version(client, registry.CHAMPION) == 1

        # nothing new: skipped, nothing written
        ctx = build_sensor_context(instance=instance, cursor=second.cursor, resources=resources(tmp_path))
        assert isinstance(serving_alarm_sensor(ctx), SkipReason)
        assert wh.read(ALERTS_TABLE).frame.height == 2


def test_calm_reports_change_nothing(tmp_path):
    client = make_registry(tmp_path)
    wh = Warehouse(str(tmp_path / "warehouse"))
    write_partition(wh, "drift_report", drift_rows(0.05))
    write_partition(wh, "signal_health", health_row(False))
    with DagsterInstance.ephemeral() as instance:
        for asset in ("drift_report", "signal_health"):
            instance.report_runless_asset_event(AssetMaterialization(asset, partition=DAY))
        result = serving_alarm_sensor(build_sensor_context(instance=instance, resources=resources(tmp_path)))
    assert isinstance(result, SkipReason)
    assert registry.alias_version(client, registry.CHAMPION) == 2
    assert not wh.exists(ALERTS_TABLE)


@pytest.mark.parametrize(("policy", "breach"), [(drift.DriftPolicy(), True),
                                               (drift.DriftPolicy(max_features_over=5), False)])
def test_the_alarm_acts_on_the_drift_verdict_of_the_asset_policy(tmp_path, policy, breach):
    """One drift policy: four features over PSI 0.25 with a calm score. Under the asset's
    default policy (more than 3 features) that is drift, and the sensor rolls back; under a
    policy allowing 5 it is not, and the sensor does nothing. (The sensor used to re-judge
    with its own limit of 10 features, so the asset's breach never reached the alarm.)"""
    client = make_registry(tmp_path)
    wh = Warehouse(str(tmp_path / "warehouse"))
    table = pl.DataFrame({"column": ["f1", "f2", "f3", "f4", "f5", "score"],
                          "psi": [0.4, 0.5, 0.3, 0.26, 0.01, 0.02], "model_version": [2] * 6})
    rows, verdict = drift.with_verdict(table, policy)
    assert verdict.breach is breach
    write_partition(wh, "drift_report", rows)
    with DagsterInstance.ephemeral() as instance:
        instance.report_runless_asset_event(AssetMaterialization("drift_report", partition=DAY))
        serving_alarm_sensor(build_sensor_context(instance=instance, resources=resources(tmp_path)))
    assert registry.alias_version(client, registry.CHAMPION) == (1 if breach else 2)
    assert wh.exists(ALERTS_TABLE) is breach


@pytest.mark.slow
@pytest.mark.xdist_group("serving")
def test_daemon_runs_the_sensor_and_rolls_back(tmp_path):
    home = tmp_path / "quant"
    dagster_home = tmp_path / "dagster"
    home.mkdir()
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(local_instance_yaml(dagster_home))
    client = make_registry(home)
    write_partition(Warehouse(str(home / "warehouse")), "drift_report", drift_rows(0.9))
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.report_runless_asset_event(AssetMaterialization("drift_report", partition=DAY))
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_file:\n"
        f"      relative_path: {REPO / 'tests' / 'serving' / 'daemon_defs.py'}\n"
        f"      working_directory: {REPO}\n"
        "      location_name: serving_alarms\n"
    )
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "QUANT_HOME": str(home),
           "PYTHONWARNINGS": "ignore"}
    daemon = start_server(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(workspace)],
        log_path=tmp_path / "daemon.log", env=env, cwd=REPO,
    )
    warehouse = Warehouse(str(home / "warehouse"))
    try:
        # the tick rolls back first and records the alert at its end: wait for both before
        # the daemon is killed (stopping it on the rollback alone lost the alert's write)
        deadline = time.monotonic() + 150
        while registry.alias_version(client, registry.CHAMPION) != 1 or not warehouse.exists(ALERTS_TABLE):
            daemon.check_alive()
            assert time.monotonic() < deadline, f"no rollback and alert by the daemon; log:\n{daemon.tail()}"
            time.sleep(0.5)
    finally:
        daemon.stop()
    alerts = warehouse.read(ALERTS_TABLE).frame
    assert alerts["action"].to_list() == ["rolled back champion v2 -> v1"]
    reason = client.get_model_version(registry.MODEL_NAME, "2").tags[registry.ROLLBACK_REASON_TAG]
    assert reason == "drift: score PSI 0.900 > 0.25"
