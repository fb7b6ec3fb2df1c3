"""The ``backtest`` asset is restartable month by month, through a real Dagster instance and
real Delta tables (small test range of conftest: model months 2023-01 .. 2023-04); and so is
the strategy with every portfolio-construction option, on the same warehouse tables.

Upstream is built once: universe, corporate actions and market bars by Dagster over the
whole day range; out-of-sample predictions are written directly to Delta as seeded scores
(the backtest only reads date, instrument_id, score; training LightGBM here would add
minutes without testing anything about the chain). Each scenario then gets its own copy of
that warehouse and materialises ``backtest`` partitions in-process.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from dagster import AssetSpec, DagsterInstance, materialize
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from quant_assets import calendar
from quant_assets.backtest.assets import backtest, strategy_grid
from quant_assets.backtest.monthly_grid import GridSpec
from quant_assets.backtest.strategy import (
    StrategySpec,
    StrategyState,
    backtest_scores,
    run_long_short,
)
from quant_assets.data.assets import corporate_actions, fundamentals, market_bars, universe
from quant_assets.features import total_return_index
from quant_assets.partitions import monthly_partitions, trading_day_partitions
from quant_assets.settings import Settings
from quant_assets.warehouse import PartitionWindow, Warehouse, content_hash
from resources import build_resources
from resources.io_manager import DeltaIOManager

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("backtest_restart")]

MONTHS = monthly_partitions.get_partition_keys()
# predictions as an external asset: their producer (and its upstream) is not run here
OOS_PREDICTIONS = AssetSpec(
    "oos_predictions", partitions_def=monthly_partitions, metadata={"partition_expr": "date"}
)
UPSTREAM = [universe, corporate_actions, fundamentals, market_bars, OOS_PREDICTIONS]


def _settings(home: Path) -> Settings:
    old = os.environ["QUANT_HOME"]
    os.environ["QUANT_HOME"] = str(home)
    try:
        return Settings.from_env()
    finally:
        os.environ["QUANT_HOME"] = old


def _seeded_predictions(bars: pl.DataFrame) -> pl.DataFrame:
    """One score per (day, instrument) with a bar in the model months, from a fixed seed."""
    first = dt.date.fromisoformat(MONTHS[0])
    rows = bars.filter(pl.col("date") >= first).select("date", "instrument_id").sort(
        "date", "instrument_id"
    )
    rng = np.random.default_rng(11)
    return rows.with_columns(
        score=pl.Series(rng.normal(size=rows.height)),
        model_month=pl.col("date").dt.truncate("1mo"),
    )


def step_errors(result) -> str:
    """Every failed step's error with its causes (the asset's own exception is a cause)."""
    return "\n".join(
        e.event_specific_data.error.to_string()
        for e in result.all_events
        if e.is_step_failure and e.event_specific_data and e.event_specific_data.error
    )


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    home = tmp_path_factory.mktemp("restart-upstream")
    settings = _settings(home)
    days = trading_day_partitions.get_partition_keys()
    with DagsterInstance.ephemeral() as instance:
        for selection, tags in (
            ([universe, corporate_actions, fundamentals], {}),
            ([market_bars], {ASSET_PARTITION_RANGE_START_TAG: days[0],
                             ASSET_PARTITION_RANGE_END_TAG: days[-1]}),
        ):
            result = materialize(
                [universe, corporate_actions, fundamentals, market_bars],
                selection=selection, tags=tags, resources=build_resources(settings),
                instance=instance,
            )
            assert result.success
    wh = Warehouse(settings.warehouse_uri)
    preds = _seeded_predictions(wh.read(["market_bars"]).frame)
    window = PartitionWindow("date", dt.date.fromisoformat(MONTHS[0]), dt.date(2023, 5, 1))
    wh.write(["oos_predictions"], preds, window)
    return settings


class Scenario:
    """A private copy of the upstream warehouse (no backtest table yet) + an instance."""

    def __init__(self, upstream: Settings, root: Path):
        shutil.copytree(upstream.warehouse_uri, root)
        self.warehouse = Warehouse(str(root))
        # MLflow stays the upstream home's: only the Delta tables differ between scenarios
        self.resources = {**build_resources(upstream), "io_manager": DeltaIOManager(root=str(root))}

    def run(self, first: str, last: str, instance: DagsterInstance, asset=backtest):
        tags = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
        return materialize(
            [*UPSTREAM, asset], selection=[asset], tags=tags, resources=self.resources,
            instance=instance, raise_on_error=False,
        )

    def backtest(self) -> pl.DataFrame:
        return self.warehouse.read(["backtest"]).frame.sort("date")

    def version(self) -> int | None:
        return self.warehouse.version(["backtest"])


@pytest.fixture(scope="module")
def whole_range(upstream, tmp_path_factory):
    scenario = Scenario(upstream, tmp_path_factory.mktemp("whole") / "warehouse")
    with DagsterInstance.ephemeral() as instance:
        result = scenario.run(MONTHS[0], MONTHS[-1], instance)
    assert result.success
    frame = scenario.backtest()
    # one row per trading day of the model months, an end state on each month's last day
    assert frame["date"].min() >= dt.date.fromisoformat(MONTHS[0])
    states = frame.filter(pl.col("state_json").is_not_null())
    assert states["date"].dt.truncate("1mo").cast(pl.String).to_list() == MONTHS
    assert frame["turnover"].sum() > 0
    return frame


def test_month_by_month_is_bit_identical_to_one_run(upstream, whole_range, tmp_path):
    scenario = Scenario(upstream, tmp_path / "warehouse")
    versions = []
    with DagsterInstance.ephemeral() as instance:
        for month in MONTHS:
            result = scenario.run(month, month, instance)
            assert result.success, month
            versions.append(scenario.version())
    assert versions == sorted(set(versions))  # one commit per month
    monthly = scenario.backtest()
    assert content_hash(monthly) == content_hash(whole_range)
    # exact float equality too, column by column (content_hash is over JSON text)
    assert monthly.equals(whole_range)


def test_failed_month_keeps_earlier_months_and_rerun_resumes(upstream, whole_range, tmp_path):
    scenario = Scenario(upstream, tmp_path / "warehouse")
    k = 2  # the failing month (third of four)
    month_k = dt.date.fromisoformat(MONTHS[k])
    key = ["oos_predictions"]
    window = PartitionWindow("date", month_k, calendar.next_month(month_k))
    kept = scenario.warehouse.read(key, window).frame
    with DagsterInstance.ephemeral() as instance:
        assert scenario.run(MONTHS[0], MONTHS[k - 1], instance).success
        before = scenario.backtest()
        version_before = scenario.version()

        # month k loses its predictions (e.g. its model failed): the step must raise
        scenario.warehouse.write(key, kept.clear(), window)
        failed = scenario.run(MONTHS[k], MONTHS[-1], instance)
        assert not failed.success
        errors = step_errors(failed)
        assert f"backtest {MONTHS[k][:7]}: no out-of-sample predictions" in errors, errors
        # months < k: same Delta version, same content
        assert scenario.version() == version_before
        assert scenario.backtest().equals(before)

        # predictions restored: rerun from k continues from k-1's stored end state
        scenario.warehouse.write(key, kept, window)
        assert scenario.run(MONTHS[k], MONTHS[-1], instance).success
    resumed = scenario.backtest()
    assert resumed.equals(whole_range)
    assert resumed.filter(pl.col("date") < month_k).equals(before)


def test_month_without_its_predecessor_is_refused(upstream, tmp_path):
    scenario = Scenario(upstream, tmp_path / "warehouse")
    with DagsterInstance.ephemeral() as instance:
        result = scenario.run(MONTHS[1], MONTHS[1], instance)
    assert not result.success
    assert "previous month has not been backtested" in step_errors(result)
    assert scenario.version() is None  # nothing written


def test_strategy_grid_months_through_dagster(upstream, tmp_path):
    from quant_assets.backtest.assets import StrategyGridConfig

    scenario = Scenario(upstream, tmp_path / "warehouse")
    n_trials = StrategyGridConfig().to(GridSpec).n_trials
    with DagsterInstance.ephemeral() as instance:
        result = scenario.run(MONTHS[0], MONTHS[1], instance, strategy_grid)
        assert result.success
        whole = scenario.warehouse.read(["strategy_grid"]).frame
        meta = result.asset_materializations_for_node("strategy_grid")[0].metadata
        assert meta["n_trials"].value == n_trials
        # one row per (instrument with bars in the month, trial) and month
        per_month = whole.group_by("date").len().sort("date")
        assert per_month["date"].cast(pl.String).to_list() == MONTHS[:2]
        bars = scenario.warehouse.read(["market_bars"]).frame
        traded = (
            bars.filter(pl.col("date") >= dt.date.fromisoformat(MONTHS[0]),
                        pl.col("date") < dt.date.fromisoformat(MONTHS[2]))
            .group_by(pl.col("date").dt.truncate("1mo")).agg(pl.col("instrument_id").n_unique())
            .sort("date")
        )
        assert per_month["len"].to_list() == [n * n_trials for n in traded["instrument_id"]]
        assert whole.select(pl.struct("date", "instrument_id", "family", "param_id").is_unique().all()).item()
        assert whole["n_trades"].sum() > 0 and whole["sharpe"].is_finite().all()
        # a month's rerun replaces exactly that month with the same rows (months independent)
        version = scenario.warehouse.version(["strategy_grid"])
        assert scenario.run(MONTHS[1], MONTHS[1], instance, strategy_grid).success
    again = scenario.warehouse.read(["strategy_grid"])
    assert again.version == version + 1
    assert content_hash(again.frame) == content_hash(whole)


def _option_inputs(settings: Settings):
    """What the backtest asset reads, as the options need it: total-return closes with the
    day's traded value, the universe's sectors, the seeded predictions."""
    wh = Warehouse(settings.warehouse_uri)
    bars = wh.read(["market_bars"]).frame
    prices = total_return_index(bars, wh.read(["corporate_actions"]).frame).join(
        bars.select("date", "instrument_id", dollar_volume=pl.col("close") * pl.col("volume")),
        on=["date", "instrument_id"],
    )
    sectors = wh.read(["universe"]).frame.select("instrument_id", "sector")
    return prices, sectors, wh.read(["oos_predictions"]).frame


def test_every_option_month_by_month_is_bit_identical_to_one_run(upstream, tmp_path):
    prices, sectors, predictions = _option_inputs(upstream)
    names = sorted(sectors["instrument_id"].to_list())
    borrow_file = tmp_path / "borrow.csv"
    pl.DataFrame({"instrument_id": names[::3], "borrow_bps": [40.0 + 10 * k for k in range(len(names[::3]))]}).write_csv(borrow_file)
    spec = StrategySpec(
        quantile=0.3, scheme="score", sector_neutral=True, beta_neutral=True, beta_window=40,
        beta_min_obs=30, max_turnover=0.5, impact_coef=0.1, capital=1e7, borrow_bps=25.0,
        borrow_file=str(borrow_file),
    )
    first = dt.date.fromisoformat(MONTHS[0])
    end = calendar.next_month(dt.date.fromisoformat(MONTHS[-1]))
    in_range = (pl.col("date") >= first) & (pl.col("date") < end)
    whole, whole_state = run_long_short(
        predictions.filter(in_range), prices.filter(in_range), spec, sectors=sectors,
        history=prices.filter(pl.col("date") < first),
    )
    parts, state = [], None
    for key in MONTHS:
        month = dt.date.fromisoformat(key)
        in_month = (pl.col("date") >= month) & (pl.col("date") < calendar.next_month(month))
        daily, state = run_long_short(
            predictions.filter(in_month), prices.filter(in_month), spec, state,
            sectors=sectors, history=prices.filter(pl.col("date") < month),
        )
        state = StrategyState.from_json(state.to_json())  # as stored between months
        parts.append(daily)
    monthly = pl.concat(parts)
    assert monthly.equals(whole)
    assert state == whole_state
    # every option is in force on this data
    assert whole["borrow_cost"].sum() > 0 and whole["n_long"][1:].min() > 0  # day 0: from cash
    assert whole["turnover"].max() == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_array_equal(
        whole["net_return"], whole["gross_return"] - whole["cost"] - whole["borrow_cost"]
    )
    # the books decided are sector- and beta-neutral every day
    run = backtest_scores(
        predictions.filter(in_range), prices.filter(in_range), spec, sectors=sectors,
        history=prices.filter(pl.col("date") < first),
    )
    assert run.daily.equals(whole)
    sector_of = dict(sectors.iter_rows())
    codes = np.array([sector_of[name] for name in run.instruments])
    for sector in set(codes):
        np.testing.assert_allclose(run.decided[:, codes == sector].sum(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(
        (run.decided * np.where(run.decided != 0, run.betas, 0.0)).sum(axis=1), 0.0, atol=1e-12
    )
