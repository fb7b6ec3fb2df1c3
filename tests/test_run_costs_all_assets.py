"""Run economics on every asset of the code location (issue 7, item 6): one small flow
materialises every asset key of ``defs`` (placed by deploy/pools.yaml, so with pools and
prices) on the test range, and each materialisation must carry the ``econ.*`` metadata.
The set of keys is the Definitions' own, not a hand list: an asset added without
``measured(...)`` (or left out of this flow) fails here.

The flow: reference data and market_bars/pit_features/labels over the whole test range,
lgbm/seq models, predictions, backtest and strategy grid for 2023-01..2023-02, the
validation report, the champion (after marking the report's gate passed: the test range is
too short for the real gate), serving for January..February and its monitors for the last
February day, and one sweep trial."""

import json
import os
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance, materialize
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from quant_assets.cli.platform_report import platform_report

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("economics-all")]

FIRST_MONTH, LAST_MONTH = "2023-01-01", "2023-02-01"
SERVE = ("2023-01-03", "2023-02-28")
# what every materialisation records (cost and pool: every asset is placed by pools.yaml)
REQUIRED = ("econ.wall_s", "econ.cpu_s", "econ.peak_rss_mib", "econ.queue_s", "econ.pool",
            "econ.cost", "econ.rows_out", "econ.rows_per_s")


def _settings(home: Path):
    from quant_assets.settings import Settings

    old = os.environ["QUANT_HOME"]
    os.environ["QUANT_HOME"] = str(home)
    try:
        return Settings.from_env()
    finally:
        os.environ["QUANT_HOME"] = old


def _all_keys(defs) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """(defs, {asset key: [materialisation metadata, ...]}, the platform report of the
    flow's instance as JSON) of the flow."""
    from quant_assets.cli.sweep import register_sweep
    from quant_assets.definitions import defs
    from quant_assets.partitions import trading_day_partitions
    from quant_assets.settings import load_settings
    from quant_assets.trials.search import SearchSpace
    from quant_assets.validation.gate import PASS_METRIC
    from resources import build_resources

    home = tmp_path_factory.mktemp("econ-all")
    settings = _settings(home)
    resources = build_resources(settings)
    warehouse = resources["io_manager"].warehouse
    assets = list(defs.assets)  # placed: pools and prices from deploy/pools.yaml
    seen: dict[str, list[dict]] = {}

    def run(selection, *, key=None, start=None, end=None, run_config=None):
        tags = {}
        if start is not None:
            tags = {ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end}
        result = materialize(
            assets, selection=[AssetKey(s) for s in selection], partition_key=key, tags=tags,
            resources=resources, instance=instance, run_config=run_config,
        )
        assert result.success, selection
        for event in result.get_asset_materialization_events():
            mat = event.event_specific_data.materialization
            seen.setdefault(mat.asset_key.to_user_string(), []).append(
                {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
            )
        return result

    days = trading_day_partitions.get_partition_keys()
    small = {"ops": {report: {"config": {"n_bootstrap": 50}}
                     for report in ("validation_report", "seq_validation_report")}}
    # in memory: a SQLite instance doubles the flow's time; the CLI over a SQLite instance
    # is tests/test_economics.py::test_report_cli
    with DagsterInstance.ephemeral() as instance:
        run(["universe", "corporate_actions", "fundamentals", "benchmark", "data_source"])
        run(["market_bars", "pit_features"], start=days[0], end=days[-1])
        # labels of D need bars up to D + horizon
        run(["labels"], start=days[0], end=days[-load_settings().label_horizon - 1])
        run(["lgbm_model", "seq_model", "oos_predictions", "seq_predictions", "backtest",
             "seq_backtest", "strategy_grid", "strategy_grid_returns", "model_sweep"],
            start=FIRST_MONTH, end=LAST_MONTH)
        run(["validation_report", "seq_validation_report"], run_config=small)
        # the test range is too short for the real gate: mark the stored LightGBM report
        # passed so that the comparison recommends it and champion_model promotes (it
        # re-checks the comparison's gate rows itself)
        report = warehouse.read(["validation_report"]).frame
        warehouse.write(["validation_report"], report.with_columns(
            pl.when(pl.col("metric") == PASS_METRIC).then(1.0).otherwise(pl.col("value"))
            .alias("value")
        ))
        run(["model_comparison"])
        run(["champion_model"])
        run(["daily_scores"], start=SERVE[0], end=SERVE[1])
        run(["drift_report", "signal_health", "target_weights"], key=SERVE[1])
        space = SearchSpace.from_dict({
            "name": "econ-all", "method": "grid", "months": ["2023-01"],
            "base": {"lgbm": {"num_boost_round": 10, "early_stopping_rounds": 5}},
            "params": {"lgbm.num_leaves": [7]},
        })
        sweep = register_sweep(instance, warehouse, resources["tracking"], space)
        assert len(sweep.pending) == 1
        run(["sweep_trials", "trial_returns"], key=sweep.pending[0])
        report = json.loads(platform_report(instance).to_json())
    return defs, seen, report


def test_every_asset_of_the_definitions_materialised_with_econ_metadata(flow):
    defs, seen, _ = flow
    keys = _all_keys(defs)
    assert set(seen) == keys, {"not materialised": keys - set(seen)}
    missing = {
        key: sorted(set(REQUIRED) - set(meta))
        for key, metas in seen.items() for meta in metas
        if not set(REQUIRED) <= set(meta)
    }
    assert missing == {}, missing
    for key, metas in seen.items():
        for meta in metas:
            assert meta["econ.wall_s"] >= 0 and meta["econ.cpu_s"] >= 0, key
            assert meta["econ.peak_rss_mib"] > 0 and meta["econ.cost"] >= 0, key
            assert meta["econ.rows_out"] >= 0, key


def test_rows_in_where_there_is_a_tabular_input(flow):
    _, seen, _ = flow
    # the reference tables come from the source (no tabular input); the rest read tables
    sources = {"universe", "corporate_actions", "fundamentals", "market_bars", "benchmark", "data_source"}
    for key, metas in seen.items():
        if key not in sources:
            assert all("econ.rows_in" in m for m in metas), key


def test_multi_asset_step_splits_its_cost(flow):
    _, seen, _ = flow
    trials, returns = seen["sweep_trials"][0], seen["trial_returns"][0]
    assert trials["econ.cost_share"] == returns["econ.cost_share"] == 0.5
    assert trials["econ.wall_s"] == returns["econ.wall_s"]  # one step, measured once
    assert trials["econ.rows_out"] == 1 and returns["econ.rows_out"] > 1


def test_platform_report_costs_every_asset(flow):
    """The platform report (``platform-report --format json``) over the flow's instance: a
    row per asset with its cost; the sweep step's cost counted once over its two assets."""
    defs, seen, report = flow
    rows = report["by_asset"]
    by_asset = {r["asset"]: r for r in rows}
    assert set(by_asset) == _all_keys(defs)
    assert all(r["cost_total"] is not None and r["cost_total"] >= 0 for r in rows), rows
    step_cost = sum(m["econ.cost"] for k in ("sweep_trials", "trial_returns") for m in seen[k])
    assert by_asset["sweep_trials"]["cost_total"] + by_asset["trial_returns"]["cost_total"] == (
        pytest.approx(step_cost, rel=1e-3, abs=1e-9)
    )
