"""MlflowTracking against a throwaway SQLite store (one store for the whole module)."""

from __future__ import annotations

import datetime as dt

import mlflow
import mlflow.lightgbm
import numpy as np
import pytest

from quant_assets.lineage import collect_lineage
from quant_assets.models.lgbm import LGBMConfig, train_lgbm
from quant_assets.models.walkforward import (
    WalkForwardConfig,
    join_features_labels,
    month_rows,
    select_training_rows,
)
from resources.tracking import MlflowTracking, flatten_params

FEATURES = ["f_signal", "f_noise1", "f_noise2", "f_noise3"]
MONTH = dt.date(2022, 7, 1)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> MlflowTracking:
    root = tmp_path_factory.mktemp("mlflow")
    return MlflowTracking(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_location=str(root / "artifacts"),
        experiment="quant-assets-test",
    )


@pytest.fixture(scope="module")
def trained(frames):
    features, labels = frames
    train = select_training_rows(join_features_labels(features, labels), MONTH, WalkForwardConfig())
    return train_lgbm(train, FEATURES, LGBMConfig(num_boost_round=40))


def _lineage(config, dagster_run_id="run-1"):
    # (asset, partitions, Dagster run) is the MLflow run key: a second MLflow run needs a
    # second Dagster run, the same key resumes the first (exactly once)
    return collect_lineage(
        asset_key="lgbm_model",
        partition_keys=["2022-07"],
        input_versions={"pit_features": 4, "labels": 2},
        config=config,
        seeds={"model": 11},
        dagster_run_id=dagster_run_id,
    )


def test_round_trip_registers_versions_and_reloads(tracking, trained, frames):
    features, _ = frames
    oos = month_rows(features, MONTH)
    expected = trained.predict(oos)
    config = {"lgbm": trained.config.to_dict(), "feature_cols": FEATURES}
    lineage = _lineage(config)

    uris, versions, run_ids = [], [], []
    for attempt in range(2):
        with tracking.run(
            "lgbm_model 2022-07", lineage if attempt == 0 else _lineage(config, "run-2"),
            params=config, tags={"stage": "test"},
        ) as run:
            logged = tracking.log_metrics({**trained.metrics, "bad": float("nan"), "s": "x"})
            uri, version = tracking.log_lgbm_model(trained, registered_model_name="qa-lgbm")
            tracking.log_dict({"summary": {"ic": 0.1, "day": dt.date(2022, 7, 1)}}, "report.json")
            tracking.log_text("# report\n", "report.md")
        uris.append(uri)
        versions.append(version)
        run_ids.append(run.info.run_id)
    assert versions == [1, 2]
    assert (
        "bad" not in logged
        and "s" not in logged
        and logged["valid_ic"] == trained.metrics["valid_ic"]
    )

    client = tracking.client()
    got = client.get_run(run_ids[0])
    assert got.info.status == "FINISHED"
    assert got.info.experiment_id == tracking.experiment_id()
    tags = got.data.tags
    assert tags["quant.config_hash"] == lineage["config_hash"]
    assert tags["quant.input_version.pit_features"] == "4"
    assert tags["quant.partitions"] == "2022-07"
    assert tags["quant.model_sha256"] == trained.sha256
    assert tags["stage"] == "test"
    assert got.data.params["lgbm.num_leaves"] == "15"
    assert got.data.metrics["valid_ic"] == pytest.approx(trained.metrics["valid_ic"])
    assert "bad" not in got.data.metrics

    back = tracking.load_lineage(run_ids[0])
    assert back["config_hash"] == lineage["config_hash"]
    assert back["input_versions"] == {"labels": 2, "pit_features": 4}
    artifacts = {a.path for a in client.list_artifacts(run_ids[0])}
    assert {"lineage.json", "report.json", "report.md", "model_str.txt"} <= artifacts
    assert mlflow.artifacts.load_text(f"runs:/{run_ids[0]}/model_str.txt") == trained.model_str
    # the experiment was created under the configured artifact root
    exp = client.get_experiment(got.info.experiment_id)
    assert exp.artifact_location.endswith("artifacts")

    X = oos.select(FEATURES).to_numpy()
    for model_uri in (uris[0], "models:/qa-lgbm/1", "models:/qa-lgbm/2"):
        booster = mlflow.lightgbm.load_model(model_uri)
        assert np.array_equal(booster.predict(X), expected)
    # the flavour's pyfunc accepts a frame with the signature's column names
    pyfunc = mlflow.pyfunc.load_model("models:/qa-lgbm/2")
    assert np.allclose(np.asarray(pyfunc.predict(oos.select(FEATURES).to_pandas())), expected)


def test_child_run_and_failed_run(tracking):
    with tracking.run("sweep", _lineage({"sweep": "s1"}, "sweep-run")) as parent:
        pass
    with tracking.run("trial 0", _lineage({"sweep": "s1"}, "trial-run"),
                      parent_run_id=parent.info.run_id) as child:
        pass
    client = tracking.client()
    assert client.get_run(child.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id

    with pytest.raises(RuntimeError):
        with tracking.run("boom", _lineage({"sweep": "s1"}, "boom-run")) as failed:
            raise RuntimeError("boom")
    assert client.get_run(failed.info.run_id).info.status == "FAILED"
    assert mlflow.active_run() is None


def test_flatten_params_truncates_and_flattens():
    flat = flatten_params({"a": {"b": 1, "c": [1, 2]}, "long": "x" * 7000})
    assert flat["a.b"] == "1" and flat["a.c"] == "[1, 2]"
    assert len(flat["long"]) == 6000
