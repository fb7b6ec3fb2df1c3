"""The gate and the promotion through real Dagster runs: a temporary Delta warehouse holds
upstream tables built from the market simulator (scores with an edge, or pure noise), a
temporary MLflow SQLite store holds the registered model versions. ``validation_report``,
its blocking gate check and ``champion_model`` are materialised together: a failing gate
stops the run before ``champion_model``; a passing one moves the ``champion`` alias."""

import datetime as dt

import numpy as np
import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance, load_assets_from_modules, materialize
from mlflow.tracking import MlflowClient

from quant_assets.backtest import assets as backtest_assets
from quant_assets.backtest.strategy import SPEC_COLUMN, StrategySpec, run_long_short, spec_to_json
from quant_assets.data import assets as data_assets
from quant_assets.data.simulator import SimulatorConfig, simulate_market
from quant_assets.features import assets as feature_assets
from quant_assets.features import total_return_index
from quant_assets.models import assets as model_assets
from quant_assets.settings import load_settings
from quant_assets.trials import assets as trials_assets
from quant_assets.validation import assets as validation_assets
from quant_assets.validation.checks import CHECKS
from quant_assets.validation.gate import PASS_METRIC
from quant_assets.validation.tearsheet import FIGURES
from quant_assets.warehouse import Warehouse
from resources.io_manager import DeltaIOManager
from resources.market_source import MarketSource
from resources.model_registry import CHAMPION, PREVIOUS_CHAMPION
from resources.model_registry import MODEL_NAME as REGISTERED_MODEL
from resources.tracking import MlflowTracking

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("promotion")]

MONTHS = [dt.date(2023, m, 1) for m in (1, 2, 3, 4)]
ALL_ASSETS = load_assets_from_modules(
    [data_assets, feature_assets, model_assets, backtest_assets, trials_assets, validation_assets]
)
# both families' reports, their comparison (which carries the blocking gate), the champion
SELECTION = [AssetKey(k) for k in ("validation_report", "seq_validation_report",
                                   "model_comparison", "champion_model")]


def _upstream_tables(edge: bool) -> dict[str, pl.DataFrame]:
    """Raw tables from the simulator; predictions for the model months either leak the next
    day's total return (a strong edge) or are seeded noise; the backtest, labels and model
    table the report and the promotion read."""
    market = simulate_market(
        SimulatorConfig(n_instruments=load_settings().n_instruments, start=load_settings().start_date,
                        end=load_settings().end_date, seed=load_settings().seed)
    )
    prices = total_return_index(market.market_bars, market.corporate_actions)
    nxt = prices.sort("instrument_id", "date").with_columns(
        next_ret=pl.col("tr_close").shift(-2).over("instrument_id") / pl.col("tr_close").shift(-1).over("instrument_id") - 1.0,
        fwd_return=pl.col("tr_close").shift(-5).over("instrument_id") / pl.col("tr_close").over("instrument_id") - 1.0,
    ).filter(pl.col("date") >= MONTHS[0]).sort("date", "instrument_id")
    rng = np.random.default_rng(3)
    noise = rng.standard_normal(nxt.height)
    # execution lag 1: a score at close t trades at close t+1 and earns t+1 -> t+2
    score = nxt["next_ret"].fill_null(0.0).to_numpy() * 100 + 0.2 * noise if edge else noise
    def predictions(values):
        return nxt.select("date", "instrument_id").with_columns(
            score=pl.Series(values), model_month=pl.col("date").dt.truncate("1mo"),
            model_sha256=pl.lit("x"),
        )

    def backtest(preds):
        daily, _ = run_long_short(preds, prices.filter(pl.col("date") >= MONTHS[0]), StrategySpec())
        # the backtest asset records the spec it ran with on every row
        return daily.with_columns(pl.lit(spec_to_json(StrategySpec())).alias(SPEC_COLUMN))

    preds = predictions(score)
    seq_preds = predictions(noise)  # the GRU family: seeded noise, its gate always fails
    labels = nxt.select("date", "instrument_id", "fwd_return").drop_nulls()
    models = pl.DataFrame(
        {"date": MONTHS, "sha256": [f"sha{i}" for i in range(4)], "registered_version": [1, 2, 3, 4]},
        schema_overrides={"registered_version": pl.Int64},
    )
    return {
        "universe": market.universe,
        "market_bars": market.market_bars,
        "corporate_actions": market.corporate_actions,
        "oos_predictions": preds,
        "labels": labels,
        "backtest": backtest(preds),
        "lgbm_model": models,
        "seq_predictions": seq_preds,
        "seq_backtest": backtest(seq_preds),
        "seq_model": models,
    }


def _sweep_tables(days: pl.Series, n: int = 10) -> dict[str, pl.DataFrame]:
    """A finished sweep of ``n`` noise trials, in the sweep stage's table shapes."""
    rng = np.random.default_rng(9)
    ids = [f"trial{i:02d}" for i in range(n)]
    rets = rng.normal(0.0, 0.01, (days.len(), n))
    returns = pl.DataFrame(
        {"date": pl.concat([days] * n), "trial_id": np.repeat(ids, days.len()), "net_return": rets.T.ravel()}
    )
    per_period = rets.mean(axis=0) / rets.std(axis=0, ddof=1)
    registry = pl.DataFrame({"trial_id": ids, "sweep": "noise", "sharpe": per_period * np.sqrt(252),
                             "sharpe_per_period": per_period})
    return {"sweep_trials": registry, "trial_returns": returns}


def _setup(tmp_path, edge: bool):
    wh = Warehouse(str(tmp_path / "warehouse"))
    tables = _upstream_tables(edge)
    if not edge:
        tables.update(_sweep_tables(tables["backtest"]["date"]))
    for name, frame in tables.items():
        wh.write([name], frame)
    tracking = MlflowTracking(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=str(tmp_path / "mlartifacts"),
    )
    client = tracking.client()
    client.create_registered_model(REGISTERED_MODEL)
    src = tmp_path / "model"
    src.mkdir()
    for _ in range(4):
        client.create_model_version(REGISTERED_MODEL, source=src.as_uri())
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, "2")  # an earlier promotion
    resources = {
        "io_manager": DeltaIOManager(root=wh.root),
        "tracking": tracking,
        "market_source": MarketSource(n_instruments=30, seed=7, start="2022-01-03",
                                      end="2023-04-28", landing_dir=str(tmp_path / "landing")),
    }
    return wh, client, resources


def _run(resources, instance):
    return materialize(
        [*ALL_ASSETS, *CHECKS], selection=SELECTION, resources=resources, instance=instance,
        raise_on_error=False,
    )


def _aliases(client: MlflowClient) -> dict[str, int]:
    return {k: int(v) for k, v in client.get_registered_model(REGISTERED_MODEL).aliases.items()}


def test_failing_gate_blocks_champion_model(tmp_path):
    wh, client, resources = _setup(tmp_path, edge=False)
    with DagsterInstance.ephemeral() as instance:
        result = _run(resources, instance)
        assert not result.success
        checks = result.get_asset_check_evaluations()
        assert len(checks) == 1 and not checks[0].passed
        message = checks[0].description
        for criterion in ("dsr", "pbo", "bootstrap_max_drawdown", "track_record"):
            assert f"- {criterion}: " in message
        assert "FAIL" in message
        materialized = {e.asset_key for e in result.get_asset_materialization_events()}
        # the reports and the comparison are kept; the champion is not moved
        assert materialized == {AssetKey("validation_report"), AssetKey("seq_validation_report"),
                                AssetKey("model_comparison")}
        assert instance.get_latest_materialization_event(AssetKey("champion_model")) is None
    report = dict(wh.read(["validation_report"]).frame.iter_rows())
    assert report[PASS_METRIC] == 0.0
    # the sweep's 10 trials join the 6 variants in the DSR and in PBO
    assert report["n_trials"] == 16 and report["pbo_n_trials"] == 16
    assert not wh.exists(["champion_model"])
    assert _aliases(client) == {CHAMPION: 2}  # untouched

    # defence in depth: run without the check, champion_model refuses on the report's rows
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            ALL_ASSETS, selection=[AssetKey("champion_model")], resources=resources,
            instance=instance, raise_on_error=False,
        )
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert "nothing promoted" in failure.event_specific_data.error.message
    assert _aliases(client) == {CHAMPION: 2}


def test_passing_gate_promotes_latest_version(tmp_path):
    wh, client, resources = _setup(tmp_path, edge=True)
    with DagsterInstance.ephemeral() as instance:
        result = _run(resources, instance)
        assert result.success, [
            e.event_specific_data.error.message for e in result.all_events if e.is_step_failure
        ]
        (check,) = result.get_asset_check_evaluations()
        assert check.passed and "promotion gate PASSED" in check.description
    assert _aliases(client) == {CHAMPION: 4, PREVIOUS_CHAMPION: 2}
    champion = wh.read(["champion_model"]).frame.row(0, named=True)
    assert champion["version"] == 4 and champion["previous_version"] == 2
    assert champion["model_month"] == MONTHS[-1]
    report = dict(wh.read(["validation_report"]).frame.iter_rows())
    assert report[PASS_METRIC] == 1.0 and report["dsr"] >= 0.95
    assert report["n_trials"] == 6  # no sweep tables: the variants only
    assert report["n_obs"] >= report["min_track_record_length"]

    # the report's HTML tear sheet is an MLflow artifact of the report's run
    run_id = next(
        r.info.run_id for r in client.search_runs(
            [client.get_experiment_by_name("quant-assets").experiment_id],
            filter_string="attributes.run_name = 'validation_report'",
        )
    )
    (tmp_path / "dl").mkdir()
    page = open(client.download_artifacts(run_id, "report.html", str(tmp_path / "dl"))).read()
    assert page.count("<img") == len(FIGURES) and "promotion gate PASSED" in page
