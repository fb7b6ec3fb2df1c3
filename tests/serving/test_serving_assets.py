"""The serving assets on a real world (Delta, SQLite MLflow registry, Dagster):
``daily_scores`` follows the `champion` alias and reproduces ``oos_predictions`` of the
same version bit for bit; ``drift_report`` and ``signal_health`` of a day."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import polars as pl
import pytest
from conftest import day_rows
from dagster import DagsterInstance, materialize
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from quant_assets.serving import assets as serving_assets
from resources import model_registry as registry

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serving")]

DAY = "2023-02-28"


def _run(world, selection, instance, *, key=None, start=None, end=None):
    tags = {}
    if start is not None:
        tags = {ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end}
    result = materialize(world.assets, selection=selection, partition_key=key, tags=tags,
                         resources=world.resources, instance=instance)
    assert result.success
    return result


@pytest.fixture(scope="module")
def scored(world):
    """January scored while v(2023-01) was champion, February after promoting v(2023-02);
    then the drift report and the signal health of the last February day."""
    with DagsterInstance.ephemeral() as instance:
        registry.promote(world.client, world.versions["2023-01"])
        jan = _run(world, [serving_assets.daily_scores], instance, start="2023-01-03", end="2023-01-31")
        registry.promote(world.client, world.versions["2023-02"])
        feb = _run(world, [serving_assets.daily_scores], instance, start="2023-02-01", end=DAY)
        monitors = _run(world, [serving_assets.drift_report, serving_assets.signal_health],
                        instance, key=DAY)
    return {"jan": jan, "feb": feb, "monitors": monitors}


def test_daily_scores_equal_oos_predictions_of_the_same_version(world, scored):
    scores = world.warehouse.read(["daily_scores"]).frame
    oos = world.warehouse.read(["oos_predictions"]).frame
    models = world.warehouse.read(["lgbm_model"]).frame
    assert scores.columns == ["date", "instrument_id", "score", "model_version", "model_sha256"]
    for month, first, last in (("2023-01", "2023-01-03", "2023-01-31"), ("2023-02", "2023-02-01", DAY)):
        version = world.versions[month]
        sha = models.filter(pl.col("registered_version") == version)["sha256"].item()
        window = (pl.col("date") >= dt.date.fromisoformat(first)) & (pl.col("date") <= dt.date.fromisoformat(last))
        live = scores.filter(window).sort("date", "instrument_id")
        backtest = oos.filter(window).sort("date", "instrument_id")
        assert live.height == backtest.height > 0
        assert (live["model_version"] == version).all() and (live["model_sha256"] == sha).all()
        assert (backtest["model_sha256"] == sha).all()
        assert live["instrument_id"].to_list() == backtest["instrument_id"].to_list()
        # byte for byte: the float64 bit patterns
        assert live["score"].to_numpy().tobytes() == backtest["score"].to_numpy().tobytes()


def test_daily_scores_metadata_names_the_version(world, scored):
    for name, month in (("jan", "2023-01"), ("feb", "2023-02")):
        [event] = scored[name].get_asset_materialization_events()[:1]
        meta = event.materialization.metadata
        assert meta["model_version"].value == world.versions[month]
        assert meta["model_month"].value == f"{month}-01"


def test_daily_scores_without_champion_fails_clearly(world, scored):
    client = world.client
    current = registry.alias_version(client)
    client.delete_registered_model_alias(registry.MODEL_NAME, registry.CHAMPION)
    try:
        with DagsterInstance.ephemeral() as instance:
            result = materialize(world.assets, selection=[serving_assets.daily_scores],
                                 partition_key="2023-02-27", resources=world.resources,
                                 instance=instance, raise_on_error=False)
        assert not result.success
        [failure] = [e for e in result.all_events if e.is_step_failure]
        assert "no 'champion' alias" in failure.event_specific_data.error.to_string()
    finally:
        client.set_registered_model_alias(registry.MODEL_NAME, registry.CHAMPION, str(current))


def test_drift_report_covers_every_feature_and_the_score(world, scored):
    report = day_rows(world.warehouse.read(["drift_report"]).frame, DAY)
    models = world.warehouse.read(["lgbm_model"]).frame
    record = models.filter(pl.col("registered_version") == world.versions["2023-02"]).row(0, named=True)
    features = json.loads(record["feature_cols"])
    assert sorted(report["column"].to_list()) == sorted([*features, "score"])
    assert (report["model_version"] == world.versions["2023-02"]).all()
    assert report["reference_start"][0] == record["train_start"]
    assert report["reference_end"][0] == record["train_end"]
    score = report.filter(pl.col("column") == "score").row(0, named=True)
    scores = world.warehouse.read(["daily_scores"]).frame
    last5 = scores.filter(pl.col("date") <= dt.date.fromisoformat(DAY))["date"].unique().sort()[-5:]
    assert score["n_current"] == scores.filter(pl.col("date").is_in(last5.implode())).height
    assert score["n_reference"] > 5000
    measured = report.filter(pl.col("psi").is_not_null())
    assert measured.height >= len(features) - 2
    assert (measured["psi"] >= 0).all()
    assert ((measured["ks_pvalue"] >= 0) & (measured["ks_pvalue"] <= 1)).all()
    meta = scored["monitors"].asset_materializations_for_node("drift_report")[0].metadata
    assert meta["score_psi"].value == pytest.approx(score["psi"])


def test_signal_health_compares_realised_with_backtest(world, scored):
    health = day_rows(world.warehouse.read(["signal_health"]).frame, DAY).row(0, named=True)
    assert health["n_live_days"] == 21
    assert np.isfinite(health["realised_sharpe"]) and health["backtest_std"] > 0
    z = (health["realised_sharpe"] - health["backtest_mean"]) / health["backtest_std"]
    assert health["z_score"] == pytest.approx(z)
    assert health["breach"] == (abs(z) > 2.0)
    assert health["capital_multiplier"] == (0.5 if health["breach"] else 1.0)
    assert health["model_versions"] == f"{world.versions['2023-01']},{world.versions['2023-02']}"
