"""The ``backtest`` asset: one partition per month, each starting from the previous
month's end state (a self-dependency), so a failed month k leaves months < k intact and
a rerun resumes at k. The ``strategy_grid`` asset: a parameter grid of single-instrument
strategies per month (``monthly_grid``), the trials of the sweep statistics."""


import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetExecutionContext,
    AssetIn,
    BackfillPolicy,
    MetadataValue,
    Output,
    TimeWindowPartitionMapping,
    asset,
)

from quant_assets import calendar
from quant_assets.asset_lineage import lineage_metadata, lineage_of
from quant_assets.backtest.monthly_grid import GridSpec, evaluate_month
from quant_assets.backtest.strategy import (
    SPEC_COLUMN,
    StrategySpec,
    StrategyState,
    book_inputs,
    run_long_short,
    spec_to_json,
)
from quant_assets.configs import config_class
from quant_assets.data.reference import current_universe
from quant_assets.features import total_return_index
from quant_assets.lineage import file_sha256
from quant_assets.partitions import monthly_partitions, months_of
from quant_assets.performance import performance_summary
from quant_assets.retries import IO_RETRY, not_retried, refuse
from quant_assets.run_costs import measured
from quant_assets.warehouse import VersionedFrame
from resources.tracking import MlflowTracking

GROUP = "backtest"


BacktestConfig = config_class(
    "BacktestConfig", StrategySpec,
    doc="Portfolio construction and costs of the long-short strategy (StrategySpec).",
)


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
    retry_policy=IO_RETRY,  # MLflow run, Delta (quant_assets/retries.py)
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
    universe: pl.DataFrame,
    previous_months: pl.DataFrame,
):
    """Daily returns, costs, turnover and exposures of the long-short strategy on the
    month's out-of-sample predictions; the last row of each month carries its end state."""
    with measured(context) as meter:  # run costs: wall/CPU/memory/rows/cost
        months = months_of(context)
        first_key = monthly_partitions.get_first_partition_key()
        with not_retried(ValueError):  # a missing previous month stays missing on retry
            state = previous_state(previous_months, months[0], months[0].isoformat() == first_key)
        spec = config.to(StrategySpec)
        prices, sectors = book_inputs(
            spec, total_return_index(market_bars.frame, corporate_actions.frame), universe,
            market_bars.frame,
        )
        parts = []
        for month in months:
            end = calendar.next_month(month)
            in_month = (pl.col("date") >= month) & (pl.col("date") < end)
            scores = oos_predictions.frame.filter(in_month)
            if scores.is_empty():
                # a month without scores would silently hold the previous book: refuse instead,
                # before anything is written, so the months before it stay as committed
                raise refuse(
                    f"backtest {month:%Y-%m}: no out-of-sample predictions for the month; "
                    "materialise oos_predictions for it first"
                )
            # history: the betas of a beta-neutral book read the trailing window before the month
            daily, state = run_long_short(
                scores, prices.filter(in_month), spec, state,
                sectors=sectors, history=prices.filter(pl.col("date") < month),
            )
            last = daily.height - 1
            parts.append(
                daily.with_columns(
                    state_json=pl.when(pl.int_range(pl.len()) == last)
                    .then(pl.lit(state.to_json()))
                    .otherwise(None),
                    **{SPEC_COLUMN: pl.lit(spec_to_json(spec))},
                )
            )
        frame = pl.concat(parts)
        meter.rows(rows_in=oos_predictions.frame.height, rows_out=frame.height)
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
        extra={"borrow_file_sha256": file_sha256(spec.borrow_file)} if spec.borrow_file else None,
    )
    with tracking.run(f"backtest {context.partition_key_range.start}..{context.partition_key_range.end}", lineage, params=config.model_dump(), output=frame) as run:
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


StrategyGridConfig = config_class(
    "StrategyGridConfig", GridSpec,
    doc="Parameter axes per family; their products are the trials (monthly_grid.GridSpec).",
)


def listed_in(universe: pl.DataFrame, month, end) -> list[str]:
    """Instruments listed at some point of [month, end) (point in time: delisted ones count
    for the months they traded). The universe is bitemporal: the listing as finally known."""
    listed = current_universe(universe).filter(
        (pl.col("listed_from") < end)
        & (pl.col("listed_until").is_null() | (pl.col("listed_until") >= month))
    )
    return sorted(listed["instrument_id"].to_list())


@asset(
    group_name=GROUP,
    partitions_def=monthly_partitions,
    metadata={"partition_expr": "date"},
    backfill_policy=BackfillPolicy.single_run(),
    code_version="strategy-grid-v1",
    # all bars: a month needs the max-lookback bars before it as warm-up (monthly_grid)
    ins={"market_bars": AssetIn(partition_mapping=AllPartitionMapping())},
)
def strategy_grid(
    context: AssetExecutionContext,
    config: StrategyGridConfig,
    tracking: MlflowTracking,
    universe: pl.DataFrame,
    market_bars: VersionedFrame,
    corporate_actions: VersionedFrame,
):
    """Every (instrument, parameter set) of the configured families over each month's
    total-return closes: total return, Sharpe, max drawdown and trade count."""
    with measured(context) as meter:  # run costs: wall/CPU/memory/rows/cost
        spec = config.to(GridSpec)
        prices = total_return_index(market_bars.frame, corporate_actions.frame)
        parts = []
        for month in months_of(context):
            end = calendar.next_month(month)
            parts.append(evaluate_month(prices, month, end, spec, listed_in(universe, month, end)))
        frame = pl.concat(parts)
        meter.rows(rows_in=market_bars.frame.height, rows_out=frame.height)
    sharpe = frame["sharpe"].to_numpy()
    lineage = lineage_of(context, inputs={"market_bars": market_bars, "corporate_actions": corporate_actions},
                         config=config.model_dump(), seeds={})
    with tracking.run(f"strategy_grid {context.partition_key_range.start}..{context.partition_key_range.end}",
                      lineage, output=frame) as run:
        tracking.log_metrics({"n_trials": spec.n_trials, "rows": frame.height})
    return Output(
        frame,
        metadata={
            **lineage_metadata(lineage, [run.info.run_id]),
            # per instrument and month; the validation statistics count trials from here
            "n_trials": spec.n_trials,
            "families": ", ".join(spec.families),
            "warmup_bars": spec.warmup,
            "instruments": frame["instrument_id"].n_unique(),
            "trial_sharpe_var": float(sharpe.var()) if sharpe.size else float("nan"),
            "input_versions": MetadataValue.json(
                {"market_bars": market_bars.version, "corporate_actions": corporate_actions.version}
            ),
        },
    )
