"""The golden flow end to end, as `make demo` runs it (small test range from conftest):
every stage really runs, the runs land in the Dagster instance, MLflow holds the lineage,
a second clean run gives identical Delta contents, and partition reruns replace exactly
their partitions."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import polars as pl
import pytest
from dagster import DagsterInstance, DagsterRunStatus, materialize

from quant_assets.warehouse import Warehouse, content_hash

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("golden")]

REPO = Path(__file__).resolve().parents[1]
TABLES = [
    "universe", "market_bars", "corporate_actions", "fundamentals", "pit_features", "labels",
    "lgbm_model", "oos_predictions", "backtest", "validation_report",
]
# identifiers of the run that wrote them, not content
RUN_SPECIFIC = ("mlflow_run_id", "model_uri")


def run_demo(home: Path, parallel: str = "auto") -> subprocess.CompletedProcess:
    # a clean machine: nothing of this test process's Dagster or MLflow state
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME" and not k.startswith("MLFLOW_")}
    env["QUANT_HOME"] = str(home)
    env["QUANT_DEMO_PARALLEL"] = parallel
    # warnings as a user gets them: the demo itself keeps them off the console
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run(
        [sys.executable, "-m", "quant_assets", "demo"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    homes = [tmp_path_factory.mktemp("demo-a"), tmp_path_factory.mktemp("demo-b")]
    # the first with the model and trial stages side by side (processes of their own), the
    # second one after the other (what "auto" does on the test's 4 months): the same tables
    results = [run_demo(homes[0], "1"), run_demo(homes[1], "0")]
    for r in results:
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return homes, results


def test_demo_prints_progress_summary_and_time(demo_runs):
    _, (first, _) = demo_runs
    out = first.stdout
    for marker in ("[1/8] reference data", "[7/8] validation reports", "[8/8] promotion gate", "Headline statistics",
                   "Sharpe", "DSR", "Demo wall time"):
        assert marker in out, out


# what third-party libraries print unless the demo routes it away (demo.quiet_third_party)
THIRD_PARTY_NOISE = (
    "Created version", "Registered model", "Successfully registered", "BetaWarning",
    "PreviewWarning", "Warning:", "WARNING", "INFO mlflow", "alembic", "[LightGBM]",
    "dagster - ", "Traceback",
)


def test_demo_output_off_a_terminal_is_plain_lines_without_third_party_noise(demo_runs):
    (home, _), (first, _) = demo_runs
    out, err = first.stdout, first.stderr
    # plain lines: no progress bar's carriage returns or escape codes
    assert "\r" not in out and "\x1b[" not in out, out
    for noise in THIRD_PARTY_NOISE:
        assert noise not in out and noise not in err, (noise, out, err)
    assert not err.strip(), err
    # each stage says its steps as they finish, driven by the run's events
    lines = out.splitlines()
    stage_4 = lines.index(next(line for line in lines if line.startswith("[4/8]")))
    assert lines[stage_4 + 1].startswith("    step 1/3 lgbm_model done in "), out
    assert lines[stage_4 + 3].startswith("    step 3/3 backtest done in "), out
    # the stages run beside it (each in a process of its own): their lines after its own
    stage_5 = lines.index(next(line for line in lines if line.startswith("[5/8] walk-forward GRU")))
    assert stage_5 > stage_4 + 4 and lines[stage_5 + 1].startswith("    step 1/3 seq_model done in "), out
    assert "    step 1/1 labels done in " in out
    # what was kept off the console is in QUANT_HOME
    assert "Created version" in (home / "demo-third-party.log").read_text()


def test_every_stage_wrote_real_tables(demo_runs):
    (home, _), _ = demo_runs
    wh = Warehouse(str(home / "warehouse"))
    features = wh.read(["pit_features"]).frame
    assert features.width > 60 and features.height > 5000
    models = wh.read(["lgbm_model"]).frame
    assert models.height == 4  # 2023-01 .. 2023-04
    assert models["best_iteration"].min() >= 1
    preds = wh.read(["oos_predictions"]).frame
    # each month scored only by its own model
    joined = preds.join(models.select("date", "sha256"), left_on="model_month", right_on="date")
    assert (joined["model_sha256"] == joined["sha256"]).all()
    assert (preds["date"].dt.truncate("1mo") == preds["model_month"]).all()
    bt = wh.read(["backtest"]).frame.sort("date")
    assert bt["date"].min().isoformat() >= "2023-01-01" and bt["turnover"].sum() > 0
    report = dict(wh.read(["validation_report"]).frame.iter_rows())
    for key in ("sharpe", "max_drawdown", "psr", "dsr", "mean_turnover", "rank_ic_mean"):
        assert key in report and report[key] == report[key], key


def test_second_clean_run_gives_identical_tables(demo_runs):
    (a, b), _ = demo_runs
    wa, wb = Warehouse(str(a / "warehouse")), Warehouse(str(b / "warehouse"))
    for table in TABLES:
        fa, fb = wa.read([table]).frame, wb.read([table]).frame
        if content_hash(fa, RUN_SPECIFIC) != content_hash(fb, RUN_SPECIFIC):
            keep = [c for c in fa.columns if c not in RUN_SPECIFIC]
            only_a = fa.select(keep).join(fb.select(keep), on=keep, how="anti", nulls_equal=True)
            pytest.fail(f"{table} differs between two clean runs; rows of the first run not in "
                        f"the second:\n{only_a}")


def test_runs_are_in_the_dagster_instance(demo_runs):
    (home, _), (first, _) = demo_runs
    from dagster._core.storage.tags import REPOSITORY_LABEL_TAG

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = instance.get_runs()
        assert len(runs) == 8  # the monthly job once per model family
        assert sorted(sorted(k.to_user_string() for k in r.asset_selection)
                      for r in runs if r.job_name == "monthly_models_job") == [
            ["backtest", "lgbm_model", "oos_predictions"], ["seq_backtest", "seq_model", "seq_predictions"]]
        assert {r.job_name for r in runs} == {
            "reference_data_job", "daily_features_job", "labels_job",
            "monthly_models_job", "strategy_grid_job", "validation_job", "promotion_gate_job",
        }
        # created against the code location's jobs: the UI lists them under their jobs
        for run in runs:
            assert run.remote_job_origin is not None, run.job_name
            assert run.remote_job_origin.location_name == "quant_assets"
            assert run.tags_for_storage()[REPOSITORY_LABEL_TAG] == "__repository__@quant_assets"
        gate = next(r for r in runs if r.job_name == "promotion_gate_job")
        others = [r for r in runs if r is not gate]
        assert all(r.status == DagsterRunStatus.SUCCESS for r in others)
        # the gate's verdict is a check result; a failed gate fails its (blocking) run
        passed = "Promotion gate (lgbm):   PASSED" in first.stdout
        assert gate.status == (DagsterRunStatus.SUCCESS if passed else DagsterRunStatus.FAILURE)
        from dagster import AssetCheckKey, AssetKey

        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [AssetCheckKey(AssetKey("model_comparison"), "validation_gate")])
        record = next(iter(check.values()))
        assert record.run_id == gate.run_id


def test_mlflow_runs_carry_lineage(demo_runs):
    (home, _), _ = demo_runs
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("quant-assets")
    everything = client.search_runs([exp.experiment_id])
    # one parent run per Dagster run (issue 18); every other run is a child of one
    flows = {r.info.run_id for r in everything if "quant.flow_run" in r.data.tags}
    runs = [r for r in everything if r.info.run_id not in flows]
    assert flows and all(r.data.tags.get("mlflow.parentRunId") in flows for r in runs)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    names = sorted(r.info.run_name for r in runs)
    assert sum(n.startswith("lgbm_model") for n in names) == 4
    assert "validation_report" in names and any(n.startswith("backtest") for n in names)
    for run in runs:
        tags = run.data.tags
        for key in ("quant.git_commit", "quant.config_hash", "quant.dagster_run_id", "quant.asset_key"):
            assert key in tags, (run.info.run_name, key)
    model_run = next(r for r in runs if r.info.run_name.startswith("lgbm_model"))
    assert "quant.input_version.pit_features" in model_run.data.tags
    assert "quant.seed.model" in model_run.data.tags
    # feature and package versions are in lineage.json, summarised by a hash each
    assert not any(k.startswith(("quant.feature_version.", "quant.pkg.")) for k in model_run.data.tags)
    assert {"quant.feature_set", "quant.packages", "quant.n_features"} <= set(model_run.data.tags)
    artifacts = {a.path for a in client.list_artifacts(model_run.info.run_id)}
    assert {"lineage.json", "learning_curve.png", "feature_importance.csv", "feature_importance.png"} <= artifacts
    assert client.get_metric_history(model_run.info.run_id, "curve_valid_l2")
    month = model_run.info.run_name.split()[-1]
    version = client.search_model_versions(f"run_id = '{model_run.info.run_id}'")[0]
    assert version.tags["quant.month"] == month
    backtest_run = next(r for r in runs if r.info.run_name.startswith("backtest"))
    assert {"returns.csv", "equity.png"} <= {a.path for a in client.list_artifacts(backtest_run.info.run_id)}
    report_run = next(r for r in runs if r.info.run_name == "validation_report")
    assert {"min_dsr", "max_pbo", "strategy.commission_bps"} <= set(report_run.data.params)
    assert client.get_registered_model("quant-assets-lgbm").latest_versions is not None


def test_rerun_of_one_day_replaces_exactly_that_day(demo_runs):
    (home, _), _ = demo_runs
    from quant_assets.data.assets import market_bars, universe
    from quant_assets.features.assets import pit_features
    from quant_assets.settings import Settings
    from resources import build_resources

    os.environ["QUANT_HOME"], old_home = str(home), os.environ["QUANT_HOME"]
    try:
        settings = Settings.from_env()
    finally:
        os.environ["QUANT_HOME"] = old_home
    wh = Warehouse(settings.warehouse_uri)
    day = "2022-06-01"
    before = wh.read(["pit_features"])
    others_before = before.frame.filter(pl.col("date").cast(pl.String) != day)
    with DagsterInstance.ephemeral() as instance:
        from quant_assets.data.assets import corporate_actions, fundamentals

        result = materialize(
            [universe, corporate_actions, fundamentals, market_bars, pit_features],
            selection=[market_bars, pit_features],
            partition_key=day,
            resources=build_resources(settings),
            instance=instance,
        )
    assert result.success
    after = wh.read(["pit_features"])
    assert after.version > before.version
    others_after = after.frame.filter(pl.col("date").cast(pl.String) != day)
    assert content_hash(others_after) == content_hash(others_before)
    assert content_hash(after.frame) == content_hash(before.frame)  # same inputs, same rows
    history = wh.table(["pit_features"]).history(1)[0]
    assert history["operationParameters"]["predicate"].startswith("date >= '2022-06-01'")
    assert "date < '2022-06-02'" in history["operationParameters"]["predicate"]
