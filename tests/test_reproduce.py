"""Every run kind the platform logs, rebuilt from its MLflow run id; two runs explained.

One simulated market (the real simulator, real point-in-time features and labels) is written
to a temporary Delta warehouse; the flow then runs in a real (ephemeral) Dagster instance
with MLflow in a temporary SQLite store: lgbm_model, oos_predictions, seq_model and a
range backtest over the test range's four months, a one-month backtest, the validation
report, a strategy grid month, one sweep trial and a day of champion scores. Then:

- ``reproduce`` of each kind rebuilds it with equal hashes (model file, predictions, output
  rows), equal metrics and equal committed rows (exit 0);
- after an input partition is overwritten it still matches (time travel), ``--latest`` not;
- a vacuumed input version, an orphan, an unknown run: exit 2, saying why;
- a code difference is reported; ``--at-commit`` rebuilds with the logged commit's code;
- reading registered models is audited (``download`` rows, ``--reason``), registrations too;
- restating one bar and rerunning its month: ``explain`` names market_bars, the day and the
  row, the dependent tables and versions and the changed statistics;
- no training row's label interval reaches into its prediction month minus the embargo.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path

import mlflow
import polars as pl
import pytest
from dagster import DagsterInstance, materialize
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from quant_assets import audit
from quant_assets.calendar import shift_trading_days
from quant_assets.cli.reproduce import ReproduceError, reproduce_run
from quant_assets.models.assets import LgbmModelConfig, SeqModelConfig
from quant_assets.models.synthetic import simulated_panel, write_panel
from quant_assets.models.walkforward import first_trading_day, training_cutoff
from quant_assets.settings import Settings
from quant_assets.warehouse import PartitionWindow, Warehouse
from resources import build_resources, model_registry

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reproduce")]

MONTHS = ("2023-01-01", "2023-04-01")
SCORE_DAY = "2023-04-03"
REPO = Path(__file__).resolve().parents[1]
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def settings_for(home: Path) -> Settings:
    old = os.environ.get("QUANT_HOME")
    os.environ["QUANT_HOME"] = str(home)
    try:
        return Settings.from_env()
    finally:
        os.environ["QUANT_HOME"] = old


def assets_by_key():
    from quant_assets.definitions import defs

    assets = list(defs.assets)
    return assets, {k.to_user_string(): a for a in assets for k in a.keys}


def run_assets(settings: Settings, names: list[str], **kwargs):
    assets, by_key = assets_by_key()
    with DagsterInstance.ephemeral() as instance:
        result = materialize(assets, selection=[by_key[n] for n in names], instance=instance,
                             resources=build_resources(settings), run_config=QUIET, **kwargs)
    assert result.success
    return result


def runs_of(settings: Settings, asset: str) -> list:
    client = mlflow.MlflowClient(settings.mlflow_uri)
    exp = client.get_experiment_by_name("quant-assets")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`quant.asset_key` = '{asset}'",
                              order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    from quant_assets.cli.sweep import run_sweep
    from quant_assets.trials.search import SearchSpace

    home = tmp_path_factory.mktemp("reproduce")
    settings = settings_for(home)
    warehouse = Warehouse(settings.warehouse_uri)
    write_panel(warehouse, simulated_panel(n_instruments=settings.n_instruments))
    whole = {ASSET_PARTITION_RANGE_START_TAG: MONTHS[0], ASSET_PARTITION_RANGE_END_TAG: MONTHS[1]}
    run_assets(settings, ["lgbm_model", "oos_predictions", "seq_model", "backtest",
                          "seq_predictions", "seq_backtest"], tags=whole)
    run_assets(settings, ["backtest"], partition_key="2023-03-01")
    run_assets(settings, ["strategy_grid", "strategy_grid_returns"], partition_key="2023-02-01")
    space = SearchSpace.from_dict({
        "name": "reproduce-test", "method": "grid", "months": ["2023-02", "2023-03"],
        "base": {"lgbm": {"num_boost_round": 20, "early_stopping_rounds": 5}},
        "params": {"strategy.quantile": [0.2]},
    })
    with DagsterInstance.ephemeral() as instance:
        run_sweep(space, build_resources(settings), instance)
    run_assets(settings, ["validation_report"])
    client = build_resources(settings)["tracking"].client()
    latest = warehouse.read(["lgbm_model"]).frame.sort("date").row(-1, named=True)
    model_registry.promote(client, latest["registered_version"], reason="test champion")
    run_assets(settings, ["daily_scores"], partition_key=SCORE_DAY)
    return home, settings, warehouse


def one_run(settings: Settings, asset: str, partitions: str | None = None) -> str:
    found = [r for r in runs_of(settings, asset)
             if partitions is None or r.data.tags.get("quant.partitions") == partitions]
    assert found, (asset, partitions)
    return found[-1].info.run_id


KINDS = [
    ("lgbm_model", "2023-02-01", {"quant.model_sha256", "quant.predictions_sha256"}),
    ("seq_model", "2023-01-01", {"quant.model_sha256", "quant.predictions_sha256"}),
    ("backtest", "2023-01-01,2023-02-01,2023-03-01,2023-04-01", {"quant.output_sha256"}),
    ("backtest", "2023-03-01", {"quant.output_sha256"}),
    ("seq_backtest", "2023-01-01,2023-02-01,2023-03-01,2023-04-01", {"quant.output_sha256"}),
    ("strategy_grid", "2023-02-01", {"quant.output_sha256"}),
    ("validation_report", "", {"quant.output_sha256"}),
    ("sweep_trials", None, {"quant.output_sha256", "quant.predictions_sha256"}),
    ("daily_scores", SCORE_DAY, {"quant.output_sha256"}),
]


@pytest.mark.parametrize(("asset", "partitions", "hashes"), KINDS,
                         ids=[f"{a}-{p or 'all'}" for a, p, _ in KINDS])
def test_every_run_kind_reproduces_bit_identically(flow, asset, partitions, hashes):
    _, settings, _ = flow
    result = reproduce_run(one_run(settings, asset, partitions), settings)
    assert result.matches, result.render()
    assert {c.what for c in result.hashes} >= hashes  # the kind's hashes were compared
    assert all(c.logged and c.logged == c.rebuilt for c in result.hashes)
    # the rows its Dagster run committed, read back at that version, equal the rebuild's
    assert result.outputs and all(c.equal for c in result.outputs), result.render()
    assert result.metrics and result.code["logged_hash"] == result.code["hash"]
    # every table the step read was pinned to its logged version
    assert {t: v for t, (v, how) in result.reads.items() if how == "logged"} == {
        t: result.logged_tables[t] for t in result.reads if t in result.logged_tables}


def test_reproduce_cli_exit_codes_and_time_travel(flow, monkeypatch, capsys):
    home, settings, warehouse = flow
    from quant_assets.cli import main  # what `python -m quant_assets` runs (through cli.run)

    record = warehouse.read(["lgbm_model"]).frame.sort("date").row(2, named=True)  # 2023-03
    monkeypatch.setenv("QUANT_HOME", str(home))
    assert main(["reproduce", record["mlflow_run_id"]]) == 0
    out = capsys.readouterr().out
    assert "RESULT: REPRODUCED" in out
    assert f"rebuilt {record['sha256']}  EQUAL" in out
    assert f"rebuilt {record['predictions_sha256']}  EQUAL" in out
    # the logged predictions hash is the hash of what oos_predictions wrote for the month
    from quant_assets.models.monthly import month_predictions_hash

    preds = warehouse.read(["oos_predictions"]).frame
    assert month_predictions_hash(preds.filter(pl.col("model_month") == record["date"])) == \
        record["predictions_sha256"]

    # restate one training day of features: a new Delta version of that partition only
    before = warehouse.version(["pit_features"])
    day = dt.date(2022, 6, 1)
    window = PartitionWindow("date", day, day + dt.timedelta(days=1))
    restated = warehouse.read(["pit_features"], window).frame.with_columns(pl.col(pl.Float64) * 1.5 + 0.25)
    assert warehouse.write(["pit_features"], restated, window).version == before + 1

    again = reproduce_run(record["mlflow_run_id"], settings)
    assert again.matches, again.render()
    assert again.reads["pit_features"] == [again.logged_tables["pit_features"], "logged"]
    assert again.current_tables["pit_features"] == before + 1 > again.logged_tables["pit_features"]
    latest = reproduce_run(record["mlflow_run_id"], settings, latest_inputs=True)
    assert not latest.matches and "quant.model_sha256" in latest.differences()
    assert "NOT REPRODUCED: quant.model_sha256" in latest.render()
    assert main(["reproduce", record["mlflow_run_id"], "--latest"]) == 1
    assert main(["reproduce", "no-such-run"]) == 2
    assert "cannot reproduce: no MLflow run 'no-such-run'" in capsys.readouterr().out


def test_runs_that_are_not_results_are_refused(flow):
    _, settings, _ = flow
    client = build_resources(settings)["tracking"].client()
    exp = client.get_experiment_by_name("quant-assets").experiment_id
    orphan = client.create_run(exp, tags={"quant.asset_key": "backtest",
                                          "quant.orphaned": "its step process ended (killed)"})
    client.set_terminated(orphan.info.run_id, "FAILED")
    with pytest.raises(ReproduceError, match=r"FAILED, not a result: its step process ended \(killed\)"):
        reproduce_run(orphan.info.run_id, settings)
    other = client.create_run(exp, tags={"quant.asset_key": "champion_model"})
    client.set_terminated(other.info.run_id, "FINISHED")
    client.log_text(other.info.run_id, "{}", "lineage.json")
    with pytest.raises(ReproduceError, match="reproduce rebuilds .*backtest.*daily_scores"):
        reproduce_run(other.info.run_id, settings)


def test_reads_of_registered_models_and_registrations_are_audited(flow, monkeypatch, tmp_path, capsys):
    home, settings, warehouse = flow
    from quant_assets.cli import main

    monkeypatch.setenv("QUANT_HOME", str(home))
    monkeypatch.setenv("QUANT_AUDIT_ACTOR", "carol@research")
    root = settings.warehouse_uri
    registered = audit.read(root, action="register")
    # one registration per model month and family, with the run that registered it
    assert sorted(registered["object"].to_list()).count("quant-assets-lgbm") == 4
    assert sorted(registered["object"].to_list()).count("quant-assets-seq") == 4
    assert all(json.loads(t)["mlflow_run_id"] for t in registered["tags"])

    monkeypatch.setenv("QUANT_REQUIRE_REASON", "1")
    lgbm_run = one_run(settings, "lgbm_model", "2023-01-01")
    assert main(["reproduce", lgbm_run]) == 2
    assert "--reason is required (QUANT_REQUIRE_REASON=1)" in capsys.readouterr().out
    assert main(["reproduce", lgbm_run, "--reason", "quarterly model review"]) == 0
    scores_run = one_run(settings, "daily_scores", SCORE_DAY)
    assert main(["reproduce", scores_run, "--reason", "client query"]) == 0
    dest = tmp_path / "champion"
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    assert main(["download-model", "--alias", "champion", "--dest", str(dest)]) == 2
    assert main(["download-model", "--alias", "champion", "--dest", str(dest),
                 "--reason", "risk review"]) == 0
    assert (dest / "model_str.txt").exists() and (dest / "model" / "MLmodel").exists()
    # a download leaves no registry behind: it once sent every later registration of the
    # process, and of its subprocesses, to the downloaded-from store
    assert "MLFLOW_REGISTRY_URI" not in os.environ

    reads = audit.read(root, action="download")
    rows = [(r["actor"], r["object"], r["reason"], json.loads(r["tags"])["via"]) for r in reads.iter_rows(named=True)]
    champion = str(model_registry.alias_version(build_resources(settings)["tracking"].client()))
    assert ("carol@research", "quant-assets-lgbm", "quarterly model review", "reproduce") in rows
    assert ("carol@research", "quant-assets-lgbm", "client query", "reproduce") in rows
    assert ("carol@research", "quant-assets-lgbm", "risk review", "download-model") in rows
    served = reads.filter(pl.col("reason") == "client query")["model_version"].to_list()
    assert served == [champion]  # the version the scores were served by, read to rebuild them
    capsys.readouterr()
    from quant_assets.cli.audit import cli as audit_cli

    assert audit_cli(["--action", "download"]) == 0
    listed = capsys.readouterr().out
    assert "carol@research download quant-assets-lgbm" in listed and "(risk review)" in listed


def test_code_difference_is_reported_and_at_commit_rebuilds_with_the_logged_code(flow, monkeypatch):
    """A run logged at the checkout's commit; today's code then changes a statistic of the
    backtest. reproduce reports the code difference and the changed hash (exit 1);
    --at-commit rebuilds with the commit's code in a git worktree and matches."""
    _, settings, _ = flow
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    commit = head.stdout.strip()
    logged = clone_run(settings, one_run(settings, "backtest", "2023-03-01"),
                       git_commit=commit, git_dirty=False, code_sha256="0" * 64)
    import quant_assets.backtest.assets as backtest_assets
    from quant_assets.performance import performance_summary

    def edited(returns, **kw):  # "today's code": a different cost model
        return performance_summary(returns * 0.5, **kw)

    monkeypatch.setattr(backtest_assets, "performance_summary", edited)
    today = reproduce_run(logged, settings)
    assert not today.matches and "metric sharpe" not in today.differences()  # a ratio: same
    assert "metric cagr" in today.differences()
    assert "code differs from the run's" in today.render()
    at_commit = reproduce_run(logged, settings, at_commit=True)
    assert at_commit.rebuilt_at_commit == commit
    assert at_commit.matches, at_commit.render()
    assert "rebuilt with the code of commit" in at_commit.render()
    dirty = clone_run(settings, logged, git_dirty=True)
    with pytest.raises(ReproduceError, match="uncommitted changes"):
        reproduce_run(dirty, settings, at_commit=True)


def clone_run(settings: Settings, run_id: str, **lineage_changes) -> str:
    """A copy of a FINISHED run (tags, metrics, params) whose lineage.json is changed."""
    client = build_resources(settings)["tracking"].client()
    tracking = build_resources(settings)["tracking"]
    run = client.get_run(run_id)
    lineage = {**tracking.load_lineage(run_id), **lineage_changes}
    clone = client.create_run(run.info.experiment_id, run_name=run.info.run_name,
                              tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")})
    for name, value in run.data.metrics.items():
        client.log_metric(clone.info.run_id, name, value)
    client.log_text(clone.info.run_id, json.dumps(lineage), "lineage.json")
    client.set_terminated(clone.info.run_id, "FINISHED")
    return clone.info.run_id


@pytest.fixture(scope="module")
def restated(flow, tmp_path_factory):
    """A copy of the flow's home where one bar of one day was restated and its month rerun:
    (settings, run A: the month's backtest before, run B: after, the day, the instrument,
    the rerun's result)."""
    home, _, _ = flow
    copy = tmp_path_factory.mktemp("restated") / "home"
    shutil.copytree(home, copy)
    settings = settings_for(copy)
    warehouse = Warehouse(settings.warehouse_uri)
    month, day = "2023-03-01", dt.date(2023, 3, 15)
    run_assets(settings, ["backtest"], partition_key=month)
    run_a = one_run(settings, "backtest", month)
    # a bar the book holds on that day: the top score of the day before
    preds = warehouse.read(["oos_predictions"]).frame.filter(pl.col("date") == dt.date(2023, 3, 14))
    instrument = preds.sort("score", descending=True)["instrument_id"][0]
    window = PartitionWindow("date", day, day + dt.timedelta(days=1))
    bars = warehouse.read(["market_bars"], window).frame
    fixed = bars.with_columns(close=pl.when(pl.col("instrument_id") == instrument)
                              .then((pl.col("close") + pl.col("high")) / 2).otherwise(pl.col("close")))
    warehouse.write(["market_bars"], fixed, window, {"quant.reason": "vendor restated one bar"})
    run_assets(settings, ["pit_features"], tags={ASSET_PARTITION_RANGE_START_TAG: str(day),
                                                  ASSET_PARTITION_RANGE_END_TAG: "2023-03-31"})
    run_assets(settings, ["labels"], tags={ASSET_PARTITION_RANGE_START_TAG: "2023-03-07",
                                            ASSET_PARTITION_RANGE_END_TAG: str(day)})
    rerun = run_assets(settings, ["lgbm_model", "oos_predictions", "backtest"], partition_key=month)
    return settings, run_a, one_run(settings, "backtest", month), day, instrument, rerun


def test_explain_names_the_restated_bar_its_dependents_and_the_effect(restated, capsys, monkeypatch):
    from quant_assets.cli import main
    from quant_assets.cli.explain import explain_runs

    settings, run_a, run_b, day, instrument, rerun = restated
    why = explain_runs(run_a, run_b, settings)
    tables = [t.table for t in why.tables]
    assert tables[0] == "market_bars"  # the root cause leads
    bars = why.tables[0]
    assert (bars.added, bars.removed, bars.changed) == (0, 0, 1)
    assert bars.by_partition == {str(day): {"added": 0, "removed": 0, "changed": 1}}
    assert bars.examples[0].startswith(f"({day}, {instrument}): close ")
    assert [c.partitions for c in bars.commits] == [f"date in [{day}, {day + dt.timedelta(days=1)})"]
    # the tables that depend on it, with the versions each run saw
    assert {"pit_features", "labels", "oos_predictions"} <= set(tables)
    assert tables.index("pit_features") < tables.index("oos_predictions")
    features = why.tables[tables.index("pit_features")]
    assert features.version_b == features.version_a + 1 and features.changed > 0
    assert min(features.by_partition) == str(day)
    # the effect: the statistics side by side, changed
    effect = dict((name, (a, b)) for name, a, b in why.metrics)
    assert effect["sharpe"][0] != effect["sharpe"][1]
    assert not why.identical and not why.config and not why.seeds
    monkeypatch.setenv("QUANT_HOME", str(settings.quant_home))
    assert main(["explain", run_a, run_b]) == 1
    out = capsys.readouterr().out
    assert "1. Input tables whose versions differ" in out and "market_bars  v" in out
    assert f"{day}: 1 changed" in out and "<- changed" in out
    # the same month backtested twice on the same inputs: identical
    same = [r.info.run_id for r in runs_of(settings, "backtest")
            if r.data.tags.get("quant.partitions") == "2023-03-01"]
    assert main(["explain", same[0], run_a]) == 0
    assert main(["explain", run_a, one_run(settings, "lgbm_model", "2023-03-01")]) == 2
    # the rerun's materialisation links to this comparison (Dagster metadata)
    meta = rerun.asset_materializations_for_node("backtest")[0].metadata
    assert f"explain {run_a} {run_b}" in meta["explain_previous"].value
    # and to its MLflow run's page, a link in the UI (MLflow's /#/runs/<id> route)
    assert meta["mlflow_run"].value == f"http://127.0.0.1:5000/#/runs/{run_b}"


def test_a_vacuumed_input_version_cannot_be_reproduced(restated):
    """In the restated copy, market_bars v0 (what the first backtest read) is vacuumed."""
    from deltalake import DeltaTable

    settings, run_a, *_ = restated
    table = DeltaTable(Warehouse(settings.warehouse_uri).uri(["market_bars"]))
    assert table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    with pytest.raises(ReproduceError, match=r"market_bars v0 cannot be read any more \(vacuumed"):
        reproduce_run(run_a, settings)


def test_seq_model_is_logged_with_the_pytorch_flavour_on_the_gpu_pool(flow):
    _, settings, warehouse = flow
    seq = warehouse.read(["seq_model"]).frame.sort("date")
    assert seq.height == 4 and seq["n_predictions"].min() > 0
    assert seq["sha256"].n_unique() == 4
    client = build_resources(settings)["tracking"].client()
    run = client.get_run(seq.item(0, "mlflow_run_id"))
    assert run.data.tags["quant.device"] in ("cpu", "cuda")
    assert client.get_registered_model("quant-assets-seq") is not None
    assert {"state.pt", "scaler.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    import mlflow.pytorch
    import torch

    from quant_assets.models.seq import TrainedSeqModel

    mlflow.set_tracking_uri(settings.mlflow_uri)
    loaded = mlflow.pytorch.load_model(seq.item(0, "model_uri"))
    stored = TrainedSeqModel.from_record(seq.row(0, named=True)).module().state_dict()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in stored.items())
    from quant_assets.models.assets import seq_model
    from quant_assets.placement.apply import apply_placement
    from quant_assets.placement.policy import load_policy

    (placed,) = apply_placement([seq_model], load_policy())
    assert placed.op.pool == "gpu" and "pytorch" in placed.specs_by_key[placed.key].kinds


@pytest.mark.parametrize("table", ["lgbm_model", "seq_model"])
def test_no_training_label_reaches_into_its_prediction_month(flow, table):
    """Over the asset's actual output: the training rows implied by each month's record
    (labelled rows up to train_end, with the config logged in its MLflow lineage) all have
    t1 < first trading day of the month minus the embargo, and they are exactly the rows the
    model counted (fit + purged + validation)."""
    _, settings, warehouse = flow
    tracking = build_resources(settings)["tracking"]
    labels = warehouse.read(["labels"]).frame
    features = warehouse.read(["pit_features"]).frame.select("date", "instrument_id")
    labelled = features.join(labels, on=["date", "instrument_id"]).filter(
        pl.col("fwd_return_rank").is_finite()
    )
    config_class = LgbmModelConfig if table == "lgbm_model" else SeqModelConfig
    for record in warehouse.read([table]).frame.sort("date").iter_rows(named=True):
        month = record["date"]
        config = config_class(**tracking.load_lineage(record["mlflow_run_id"])["config"])
        assert config.embargo_days == settings.embargo_days > 0
        cutoff = training_cutoff(month, config.embargo_days)
        assert cutoff == shift_trading_days(first_trading_day(month), -config.embargo_days)
        used = labelled.filter(pl.col("date") <= record["train_end"])
        assert used["t1"].max() < cutoff, (table, month)
        # the next labelled day would reach the cutoff: the window is as long as allowed
        nxt = labelled.filter(pl.col("date") > record["train_end"])["t1"].min()
        assert nxt >= cutoff
        metrics = json.loads(record["metrics"])
        counted = metrics["n_purged"] + metrics["n_valid"] + metrics.get(
            "n_train_available", metrics["n_train"]
        )
        assert counted == used.height, (table, month)
