"""The audit trail: the append-only audit_log table (quant_assets/audit.py), its actor, the
registry alias changes (resources/model_registry.py: promote, rollback), the run recorder
(sensors/audit.py) and the command line (quant_assets/cli/audit.py)."""

from __future__ import annotations

import base64
import datetime as dt
import json

import mlflow
import polars as pl
import pytest
from dagster import DagsterInstance, asset, materialize
from deltalake import DeltaTable

from quant_assets import audit
from quant_assets.cli.audit import cli as audit_cli
from resources import model_registry
from sensors import audit as audit_sensors


@pytest.fixture()
def registry(tmp_path):
    """A tmp MLflow store with one registered model holding three versions."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("audit", artifact_location=(tmp_path / "art").as_uri())
    client.create_registered_model("quant-assets-lgbm")
    for _ in range(3):
        run = client.create_run(exp)
        client.create_model_version("quant-assets-lgbm", f"runs:/{run.info.run_id}/model",
                                    run_id=run.info.run_id)
    return client


def test_promotion_and_rollback_are_recorded(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("QUANT_AUDIT_ACTOR", "alice@research")
    root = str(tmp_path / "wh")
    monkeypatch.setenv("QUANT_WAREHOUSE_URI", root)
    name = "quant-assets-lgbm"
    model_registry.promote(registry, 1, name, reason="gate passed")
    model_registry.promote(registry, 3, name, reason="gate passed", dagster_run_id="run-3")
    model_registry.promote(registry, 3, name, reason="gate passed")  # no change: no row
    model_registry.rollback(registry, "drift alert", name)
    assert str(registry.get_model_version_by_alias(name, "champion").version) == "1"

    log = audit.read(root)
    assert log["action"].to_list() == ["promote", "promote", "rollback"]
    assert log["model_version"].to_list() == ["1", "3", "1"]
    assert set(log["actor"]) == {"alice@research"}
    rollback = log.row(2, named=True)
    assert rollback["reason"] == "drift alert" and rollback["object"] == name
    assert json.loads(rollback["tags"]) == {"alias": "champion", "previous_version": "3",
                                         "previous_model": name}
    assert log.row(1, named=True)["dagster_run_id"] == "run-3"
    assert log["time"].dtype == pl.Datetime("us", "UTC") and log["time"].is_sorted()
    assert audit.read(root, action="rollback").height == 1
    assert audit.read(root, since=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).height == 0


def test_log_is_append_only(tmp_path):
    root = str(tmp_path / "wh")
    for i in range(3):
        audit.record(audit.AuditEvent("download", "model", "m", model_version=str(i), actor="bob"),
                     root)
    table = DeltaTable(f"{root}/{audit.AUDIT_TABLE}")
    ops = [h["operation"] for h in table.history()]
    assert table.version() == 2 and set(ops) == {"WRITE"}
    assert all(h["operationParameters"]["mode"] == "Append" for h in table.history())
    assert audit.read(root)["model_version"].to_list() == ["0", "1", "2"]


def test_bad_events_are_refused(tmp_path):
    with pytest.raises(audit.AuditError, match="not one of"):
        audit.record(audit.AuditEvent("delete", "asset", "x"), str(tmp_path))
    with pytest.raises(audit.AuditError, match="timezone-aware"):
        audit.record(audit.AuditEvent("download", "model", "x", time=dt.datetime(2024, 1, 1)),
                     str(tmp_path))
    assert audit.read(str(tmp_path)).height == 0


def test_actor_from_environment_then_service_account(tmp_path):
    assert audit.current_actor({"QUANT_AUDIT_ACTOR": "svc", "USER": "u"}) == "svc"
    assert audit.current_actor({"LOGNAME": "l"}) == "l"
    claims = {"kubernetes.io": {"namespace": "quant", "serviceaccount": {"name": "runner"}}}
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    token = tmp_path / "token"
    token.write_text(f"header.{body}.signature")
    assert audit.current_actor({}, token) == "system:serviceaccount:quant:runner"
    assert audit.current_actor({}, tmp_path / "missing") == "unknown"


def test_secret_like_tags_are_dropped(tmp_path):
    root = str(tmp_path / "wh")
    audit.record(audit.AuditEvent("materialize", "asset", "a", actor="x",
                                  tags={"team": "q", "db_password": "hunter2", "API_KEY": "k"}),
                 root)
    row = audit.read(root).row(0, named=True)
    assert json.loads(row["tags"]) == {"team": "q"}


def test_successful_run_is_recorded_per_asset_and_partition(tmp_path):
    from dagster import StaticPartitionsDefinition

    parts = StaticPartitionsDefinition(["a", "b"])

    @asset(partitions_def=parts)
    def thing(context) -> None:
        return None

    root = str(tmp_path / "wh")
    with DagsterInstance.ephemeral() as instance:
        result = materialize([thing], partition_key="b", instance=instance,
                             tags={"quant/reason": "nightly"})
        assert result.success
        run = instance.get_run_by_id(result.run_id)
        assert audit_sensors.record_run(instance, run, root=root) == 1
        audit_sensors.record_run(instance, run, success=False, root=root)
    log = audit.read(root)
    first = log.row(0, named=True)
    assert (first["action"], first["object"], first["partitions"]) == ("materialize", "thing", ["b"])
    assert first["reason"] == "nightly" and first["dagster_run_id"] == result.run_id
    assert log["action"].to_list() == ["materialize", "materialize_failed"]


def test_audit_sensors_run_by_default():
    from dagster import DefaultSensorStatus, RunStatusSensorDefinition

    for sensor in (audit_sensors.audit_run_success_sensor, audit_sensors.audit_run_failure_sensor):
        assert isinstance(sensor, RunStatusSensorDefinition)
        assert sensor.default_status == DefaultSensorStatus.RUNNING


def test_cli_filters_and_prints(tmp_path, capsys):
    root = str(tmp_path / "wh")
    audit.record([
        audit.AuditEvent("promote", "model", "m", model_version="2", actor="a", reason="gate"),
        audit.AuditEvent("materialize", "asset", "market_bars", partitions=("2022-01-03",
                         "2022-01-04"), actor="a", dagster_run_id="abcdef123456"),
    ], root)
    assert audit_cli(["--warehouse", root, "--action", "promote"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "a promote m v2 (gate)" in out[0]
    assert audit_cli(["--warehouse", root, "--json", "--since", "2000-01-01"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [r["action"] for r in rows] == ["promote", "materialize"]
    with pytest.raises(SystemExit):
        audit_cli(["--warehouse", root, "--since", "yesterday"])
