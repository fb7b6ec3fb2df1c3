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
from resources.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    FLOW_RUN_TAG,
    MONTH_TAG,
    MlflowTracking,
    flatten_params,
)

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
    assert got.data.params["lgbm.num_leaves"] == str(trained.config.num_leaves)
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


def test_experiment_opens_in_model_training_mode(tracking):
    """MLflow 3 shows an experiment without mlflow.experimentKind as GenAI (traces); ours is
    tagged for model training, also when the store was made before the tag existed."""
    client = tracking.client()
    exp = client.get_experiment(tracking.experiment_id())
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    client.delete_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG)
    tracking.experiment_id()
    assert client.get_experiment(exp.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_runs_of_one_dagster_run_share_a_flow_parent(tracking, trained):
    """One parent run per Dagster run; its month runs are children; a retry of a step resumes
    its run under the same parent; the parent is no result (no asset key, no run key)."""
    def lineage(month, dagster_run):
        return collect_lineage(asset_key="lgbm_model", partition_keys=[month], input_versions={},
                               config={}, seeds={}, dagster_run_id=dagster_run, dagster_job="models_job")

    ids = []
    for month in ("2022-08", "2022-09", "2022-08"):  # the third is a retry of the first
        with tracking.run(f"lgbm_model {month}", lineage(month, "flow-1")) as run:
            ids.append(run.info.run_id)
    with tracking.run("lgbm_model 2022-08", lineage("2022-08", "flow-2")) as other:
        pass
    client = tracking.client()
    assert ids[0] == ids[2]
    parents = {client.get_run(i).data.tags["mlflow.parentRunId"] for i in ids}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert parent.data.tags[FLOW_RUN_TAG] == "flow-1" and parent.info.run_name.startswith("models_job ")
    assert "quant.asset_key" not in parent.data.tags and "quant.run_key" not in parent.data.tags
    assert parent.info.status == "FINISHED"
    assert client.get_run(other.info.run_id).data.tags["mlflow.parentRunId"] != parent.info.run_id
    flows = client.search_runs([tracking.experiment_id()], filter_string=f"tags.`{FLOW_RUN_TAG}` = 'flow-1'")
    assert len(flows) == 1


def test_model_named_after_its_month_with_curves(tracking, trained):
    """The logged model is named after the month it serves, the registered version says the
    month, and the learning curves are metric steps (logged again by a retry: same rows)."""
    lineage = _lineage({"lgbm": "curves"}, "curves-run")
    for _ in range(2):  # the second attempt resumes the run
        with tracking.run("lgbm_model 2022-07", lineage) as run:
            uri, version = tracking.log_lgbm_model(trained, registered_model_name="qa-month", month=MONTH)
            n = tracking.log_curves(trained.curves)
    client = tracking.client()
    logged = mlflow.get_logged_model(uri.removeprefix("models:/"))
    assert logged.name == "lgbm-2022-07"
    mv = client.get_model_version("qa-month", str(version))
    assert mv.tags[MONTH_TAG] == "2022-07" and "July 2022" in mv.description
    assert set(trained.curves) >= {"train_l2", "valid_l2"}
    history = client.get_metric_history(run.info.run_id, "curve_valid_l2")
    assert [m.step for m in history] == list(range(1, len(trained.curves["valid_l2"]) + 1))
    assert n == sum(len(v) for v in trained.curves.values())


def test_a_flow_run_left_running_by_a_kill_is_ended(tracking):
    """A step killed between creating its flow run and ending it left it RUNNING: the next
    run's reconcile ends it (no run stays RUNNING after a rerun: tests/reliability)."""
    client = tracking.client()
    stuck = client.create_run(tracking.experiment_id(), tags={FLOW_RUN_TAG: "killed-flow"}).info.run_id
    lineage = collect_lineage(asset_key="lgbm_model", partition_keys=["2022-10"], input_versions={},
                              config={}, seeds={}, dagster_run_id="after-kill")
    with tracking.run("lgbm_model 2022-10", lineage):
        pass
    assert client.get_run(stuck).info.status == "FINISHED"
