"""The serving assets on a real world (Delta, SQLite MLflow registry, Dagster):
``daily_scores`` follows the `champion` alias, whichever model family holds it, and
reproduces that family's out-of-sample predictions of the same version bit for bit;
``drift_report``, ``signal_health`` and ``target_weights`` of a day."""

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
    assert scores.columns == ["date", "instrument_id", "score", "model_version", "model_sha256",
                              "model_family"]
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


def test_daily_scores_without_champion_scores_nothing_and_succeeds(world, scored):
    """Before the first promotion a day has no scores: nothing is written, nothing after
    the scores runs, and the run succeeds (an unattended flow must not fail every day)."""
    client = world.client
    current = registry.alias_version(client)
    client.delete_registered_model_alias(registry.MODEL_NAME, registry.CHAMPION)
    before = world.warehouse.read(["daily_scores"])
    try:
        with DagsterInstance.ephemeral() as instance:
            result = materialize(world.assets, selection=[serving_assets.daily_scores, serving_assets.drift_report],
                                 partition_key="2023-02-27", resources=world.resources,
                                 instance=instance, raise_on_error=False)
        assert result.success
        assert result.get_asset_materialization_events() == []
        skipped = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SKIPPED"}
        assert skipped == {"drift_report"}
        assert world.warehouse.read(["daily_scores"]).version == before.version
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


def test_target_weights_are_the_backtests_book_times_the_multiplier(world, scored):
    """The day's target weights are the weights the backtest decides at the day's close for
    the day's scores (backtest.strategy, the spec recorded on the backtest's rows), times
    the capital multiplier of the day's signal health."""
    from quant_assets.backtest.strategy import backtest_scores, backtested_spec
    from quant_assets.features import total_return_index

    with DagsterInstance.ephemeral() as instance:
        result = _run(world, [serving_assets.target_weights], instance, key=DAY)
    weights = day_rows(world.warehouse.read(["target_weights"]).frame, DAY)
    health = day_rows(world.warehouse.read(["signal_health"]).frame, DAY).row(0, named=True)
    scores = day_rows(world.warehouse.read(["daily_scores"]).frame, DAY)
    bars = world.warehouse.read(["market_bars"]).frame
    prices = total_return_index(bars, world.warehouse.read(["corporate_actions"]).frame)
    spec = backtested_spec(world.warehouse.read(["backtest"]).frame)
    day = dt.date.fromisoformat(DAY)
    run = backtest_scores(scores.select("date", "instrument_id", "score"),
                          prices.filter(pl.col("date") == day), spec)
    expected = {n: w for n, w in zip(run.instruments, run.decided[-1], strict=True) if w != 0.0}
    assert dict(zip(weights["instrument_id"], weights["weight"], strict=True)) == expected
    assert (weights["capital_multiplier"] == health["capital_multiplier"]).all()
    assert weights["target_weight"].to_list() == [w * health["capital_multiplier"] for w in weights["weight"]]
    # dollar neutral, gross 1 (the default spec), before the multiplier
    assert abs(weights["weight"].sum()) < 1e-12 and weights["weight"].abs().sum() == pytest.approx(1.0)
    assert (weights["model_version"] == world.versions["2023-02"]).all()
    meta = result.asset_materializations_for_node("target_weights")[0].metadata
    assert meta["capital_multiplier"].value == health["capital_multiplier"]


def test_target_weights_apply_a_cut_and_audit_it(world, scored, tmp_path):
    """A breached signal health halves every target weight, and the cut is in the audit
    trail (the capital rule acted on, not only computed)."""
    from quant_assets import audit

    health = world.warehouse.read(["signal_health"]).frame
    day = dt.date.fromisoformat(DAY)
    window = __import__("quant_assets.warehouse", fromlist=["PartitionWindow"]).PartitionWindow(
        "date", day, day + dt.timedelta(days=1))
    cut = health.filter(pl.col("date") == day).with_columns(
        breach=pl.lit(True), capital_multiplier=pl.lit(0.5), status=pl.lit("forced breach (test)"))
    world.warehouse.write(["signal_health"], cut, window)
    try:
        with DagsterInstance.ephemeral() as instance:
            _run(world, [serving_assets.target_weights], instance, key=DAY)
        weights = day_rows(world.warehouse.read(["target_weights"]).frame, DAY)
        assert (weights["capital_multiplier"] == 0.5).all()
        assert weights["target_weight"].abs().sum() == pytest.approx(0.5)
        rows = audit.read(world.settings.warehouse_uri, action="capital")
        assert rows.height >= 1 and rows["reason"][-1] == "capital x0.5: forced breach (test)"
        assert rows["partitions"][-1].to_list() == [DAY]
    finally:
        world.warehouse.write(["signal_health"], health.filter(pl.col("date") == day), window)


def test_a_gru_champion_scores_like_its_out_of_sample_predictions(world, scored):
    """The champion can be the GRU: promoting its version moves the one `champion` off the
    LightGBM model, and the day's scores are the GRU's out-of-sample predictions of that
    version bit for bit (each instrument's sequence over the days before it)."""
    gru = world.seq_versions["2023-02"]
    lgbm_champion = registry.alias_version(world.client)
    done = registry.promote(world.client, gru, registry.SEQ_MODEL_NAME)
    try:
        assert (done.previous_model, done.previous_version) == (registry.MODEL_NAME, lgbm_champion)
        assert registry.alias_version(world.client) is None  # one champion for the desk
        day = "2023-02-27"
        with DagsterInstance.ephemeral() as instance:
            _run(world, [serving_assets.daily_scores, serving_assets.drift_report,
                         serving_assets.signal_health, serving_assets.target_weights], instance, key=day)
        live = day_rows(world.warehouse.read(["daily_scores"]).frame, day)
        oos = day_rows(world.warehouse.read(["seq_predictions"]).frame, day)
        assert (live["model_family"] == "seq").all() and (live["model_version"] == gru).all()
        assert live["instrument_id"].to_list() == oos["instrument_id"].to_list()
        assert live["score"].to_numpy().tobytes() == oos["score"].to_numpy().tobytes()
        drift = day_rows(world.warehouse.read(["drift_report"]).frame, day)
        assert (drift["model_family"] == "seq").all() and drift.filter(pl.col("column") == "score").height == 1
        weights = day_rows(world.warehouse.read(["target_weights"]).frame, day)
        assert (weights["model_family"] == "seq").all() and weights.height > 0
    finally:
        registry.promote(world.client, lgbm_champion, registry.MODEL_NAME)
    assert registry.alias_version(world.client, registry.CHAMPION, registry.SEQ_MODEL_NAME) is None
