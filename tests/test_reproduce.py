"""Model months end to end on the test range, then rebuilt from their MLflow run ids.

One simulated market (the real simulator, real point-in-time features and labels) is written
to a temporary Delta warehouse; ``lgbm_model``, ``oos_predictions`` and ``seq_model`` run in a
real Dagster instance with MLflow in a temporary SQLite store. Then:

- ``python -m quant_assets reproduce <run id>`` (its ``main``) rebuilds a month with equal hashes (exit 0);
- after an input partition is overwritten (a new Delta version), reproduce still matches,
  because it reads the logged version (time travel), while ``--latest`` does not (exit 1);
- no training row's label interval reaches into its prediction month minus the embargo.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import polars as pl
import pytest
from dagster import DagsterInstance, materialize
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from quant_assets.calendar import shift_trading_days
from quant_assets.cli.reproduce import ReproduceError, reproduce_run
from quant_assets.models.assets import LgbmModelConfig, SeqModelConfig
from quant_assets.models.synthetic import simulated_panel, write_panel
from quant_assets.models.walkforward import first_trading_day, training_cutoff
from quant_assets.settings import Settings
from quant_assets.warehouse import PartitionWindow, Warehouse
from resources import build_resources

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reproduce")]

MONTHS = ("2023-01-01", "2023-04-01")


def settings_for(home: Path) -> Settings:
    old = os.environ.get("QUANT_HOME")
    os.environ["QUANT_HOME"] = str(home)
    try:
        return Settings.from_env()
    finally:
        os.environ["QUANT_HOME"] = old


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    from quant_assets.data.assets import corporate_actions, fundamentals, market_bars, universe
    from quant_assets.features.assets import labels, pit_features
    from quant_assets.models.assets import lgbm_model, oos_predictions, seq_model

    home = tmp_path_factory.mktemp("reproduce")
    settings = settings_for(home)
    warehouse = Warehouse(settings.warehouse_uri)
    write_panel(warehouse, simulated_panel(n_instruments=settings.n_instruments))
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [universe, corporate_actions, fundamentals, market_bars, pit_features, labels,
             lgbm_model, oos_predictions, seq_model],
            selection=[lgbm_model, oos_predictions, seq_model],
            tags={ASSET_PARTITION_RANGE_START_TAG: MONTHS[0],
                  ASSET_PARTITION_RANGE_END_TAG: MONTHS[1]},
            resources=build_resources(settings),
            instance=instance,
        )
    assert result.success
    return home, settings, warehouse


def test_reproduce_cli_rebuilds_equal_hashes(flow, monkeypatch, capsys):
    home, _, warehouse = flow
    models = warehouse.read(["lgbm_model"]).frame.sort("date")
    assert models.height == 4
    record = models.row(1, named=True)
    from quant_assets.cli import main  # what `python -m quant_assets` runs

    monkeypatch.setenv("QUANT_HOME", str(home))
    assert main(["reproduce", record["mlflow_run_id"]]) == 0
    out = capsys.readouterr().out
    assert "RESULT: REPRODUCED" in out
    assert f"rebuilt {record['sha256']}  EQUAL" in out
    assert f"rebuilt {record['predictions_sha256']}  EQUAL" in out
    # the logged predictions hash is the hash of what oos_predictions wrote for the month
    from quant_assets.models.monthly import month_predictions_hash

    preds = warehouse.read(["oos_predictions"]).frame
    month_preds = preds.filter(pl.col("model_month") == record["date"])
    assert month_predictions_hash(month_preds) == record["predictions_sha256"]


def test_reproduce_reads_logged_versions_after_an_input_is_overwritten(flow, monkeypatch):
    home, settings, warehouse = flow
    record = warehouse.read(["lgbm_model"]).frame.sort("date").row(2, named=True)  # 2023-03
    before = warehouse.version(["pit_features"])
    # restate one training day of features: a new Delta version of that partition only
    day = dt.date(2022, 6, 1)
    window = PartitionWindow("date", day, day + dt.timedelta(days=1))
    restated = warehouse.read(["pit_features"], window).frame.with_columns(
        pl.col(pl.Float64) * 1.5 + 0.25
    )
    assert warehouse.write(["pit_features"], restated, window).version == before + 1

    again = reproduce_run(record["mlflow_run_id"], settings)
    assert again.matches, again.render()
    assert again.read_versions == again.logged_versions
    assert again.current_versions["pit_features"] == before + 1 > again.logged_versions["pit_features"]

    latest = reproduce_run(record["mlflow_run_id"], settings, latest_inputs=True)
    assert not latest.model_matches and not latest.matches
    assert "NOT REPRODUCED" in latest.render()

    from quant_assets.cli import main

    monkeypatch.setenv("QUANT_HOME", str(home))
    assert main(["reproduce", record["mlflow_run_id"], "--latest"]) == 1
    assert main(["reproduce", record["mlflow_run_id"]]) == 0
    assert main(["reproduce", "no-such-run"]) == 2


def test_seq_model_months_reproduce_on_cpu(flow):
    _, settings, warehouse = flow
    seq = warehouse.read(["seq_model"]).frame.sort("date")
    assert seq.height == 4 and seq["n_predictions"].min() > 0
    assert seq["sha256"].n_unique() == 4
    again = reproduce_run(seq.item(0, "mlflow_run_id"), settings)
    assert again.matches, again.render()
    # the run is logged with the MLflow PyTorch flavour and registered
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
    with pytest.raises(ReproduceError, match="no MLflow run"):
        reproduce_run("0" * 32, settings)
    # placed on the gpu pool by deploy/pools.yaml (kind pytorch), CPU locally
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
