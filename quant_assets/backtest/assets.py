"""The ``backtest`` asset: one partition per month, each starting from the previous
month's end state (a self-dependency), so a failed month k leaves months < k intact and
a rerun resumes at k."""


import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetExecutionContext,
    AssetIn,
    BackfillPolicy,
    Config,
    Output,
    TimeWindowPartitionMapping,
    asset,
)

from quant_assets import calendar
from quant_assets.backtest.strategy import StrategySpec, StrategyState, run_long_short
from quant_assets.features import total_return_index
from quant_assets.models.assets import months_in
from quant_assets.partitions import monthly_partitions
from quant_assets.recording import lineage_metadata, lineage_of
from quant_assets.validation.stats import performance_summary
from resources.tracking import MlflowTracking
from resources.warehouse import VersionedFrame

GROUP = "backtest"


class BacktestConfig(Config):
    quantile: float = 0.2
    scheme: str = "equal"
    gross: float = 1.0
    commission_bps: float = 1.0
    half_spread_bps: float = 2.0
    execution_lag: int = 1

    def spec(self) -> StrategySpec:
        return StrategySpec(**self.model_dump())


def previous_state(previous_months: pl.DataFrame, first_month, is_first_partition: bool):
    """End state of the month before ``first_month`` (None at the very first partition)."""
    if is_first_partition:
        return None
    prev = (
        previous_months.filter(pl.col("date") < first_month)
        if previous_months.height
        else previous_months
    )
    if prev.is_empty() or "state_json" not in prev.columns:
        raise ValueError(
            f"backtest {first_month:%Y-%m}: the previous month has not been backtested; "
            "materialise the months before it first (the chain starts at "
            f"{monthly_partitions.get_first_partition_key()})"
        )
    last = prev.sort("date").filter(pl.col("state_json").is_not_null()).tail(1)
    return StrategyState.from_json(last.item(0, "state_json"))


@asset(
    group_name=GROUP,
    partitions_def=monthly_partitions,
    metadata={"partition_expr": "date"},
    backfill_policy=BackfillPolicy.single_run(),
    code_version="long-short-v1",
    ins={
        "market_bars": AssetIn(partition_mapping=AllPartitionMapping()),
        "previous_months": AssetIn(
            key="backtest",
            metadata={"allow_missing": True},
            partition_mapping=TimeWindowPartitionMapping(
                start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True
            ),
        ),
    },
)
def backtest(
    context: AssetExecutionContext,
    config: BacktestConfig,
    tracking: MlflowTracking,
    oos_predictions: VersionedFrame,
    market_bars: VersionedFrame,
    corporate_actions: VersionedFrame,
    previous_months: pl.DataFrame,
):
    """Daily returns, costs, turnover and exposures of the long-short strategy on the
    month's out-of-sample predictions; the last row of each month carries its end state."""
    months = months_in(context)
    first_key = monthly_partitions.get_first_partition_key()
    state = previous_state(previous_months, months[0], months[0].isoformat() == first_key)
    prices = total_return_index(market_bars.frame, corporate_actions.frame)
    spec = config.spec()
    parts = []
    for month in months:
        end = calendar.next_month(month)
        in_month = (pl.col("date") >= month) & (pl.col("date") < end)
        daily, state = run_long_short(
            oos_predictions.frame.filter(in_month), prices.filter(in_month), spec, state
        )
        last = daily.height - 1
        parts.append(
            daily.with_columns(
                state_json=pl.when(pl.int_range(pl.len()) == last)
                .then(pl.lit(state.to_json()))
                .otherwise(None)
            )
        )
    frame = pl.concat(parts)
    summary = performance_summary(
        frame["net_return"].to_numpy(), turnover=frame["turnover"].to_numpy()
    )
    lineage = lineage_of(
        context,
        inputs={
            "oos_predictions": oos_predictions,
            "market_bars": market_bars,
            "corporate_actions": corporate_actions,
        },
        config=config.model_dump(),
        seeds={},
    )
    with tracking.run(f"backtest {context.partition_key_range.start}..{context.partition_key_range.end}", lineage, params=config.model_dump()) as run:
        tracking.log_metrics(summary)
    return Output(
        frame,
        metadata={
            "days": frame.height,
            "sharpe": float(summary.get("sharpe", float("nan"))),
            "max_drawdown": float(summary.get("max_drawdown", float("nan"))),
            "end_equity": float(frame["equity"][-1]),
            **lineage_metadata(lineage, [run.info.run_id]),
        },
    )
