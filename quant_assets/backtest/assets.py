"""The backtests, one per model family (``backtest`` on the LightGBM predictions,
``seq_backtest`` on the GRU's): one partition per month, each starting from the previous
month's end state (a self-dependency), so a failed month k leaves months < k intact and
a rerun resumes at k. ``strategy_grid`` / ``strategy_grid_returns``: a parameter grid of
single-instrument strategies per month (``monthly_grid``) and each parameter set's daily
returns, trials of the validation report's DSR and PBO."""


import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    AssetsDefinition,
    BackfillPolicy,
    MetadataValue,
    Output,
    TimeWindowPartitionMapping,
    asset,
    multi_asset,
)

from quant_assets import calendar
from quant_assets.asset_catalog import owners_of
from quant_assets.asset_lineage import lineage_metadata, lineage_of
from quant_assets.automation import after, new_month, restated
from quant_assets.backtest.monthly_grid import GridSpec, evaluate_month, trial_names
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
from quant_assets.models.monthly import FAMILIES, ModelFamily
from quant_assets.partitions import monthly_partitions, months_of, up_to_month_end
from quant_assets.performance import performance_summary
from quant_assets.plots import equity_png, markdown_image
from quant_assets.retries import IO_RETRY, not_retried, refuse
from quant_assets.run_costs import measured
from quant_assets.warehouse import VersionedFrame
from resources.tracking import MlflowTracking

GROUP = "backtest"
# the columns of a backtest run's returns.csv (MLflow): the day's returns, costs and book size
RETURN_COLUMNS = ("date", "gross_return", "cost", "borrow_cost", "net_return", "turnover",
                  "gross_exposure", "net_exposure", "equity")


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


def build_backtest(family: ModelFamily) -> AssetsDefinition:
    """The long-short backtest of one model family's out-of-sample predictions."""
    name, predictions = family.backtest, family.predictions

    @asset(
        name=name,
        group_name=GROUP,
        owners=owners_of(GROUP),
        kinds={"numba", "mlflow", "delta"},
        partitions_def=monthly_partitions,
        metadata={"partition_expr": "date"},
        backfill_policy=BackfillPolicy.single_run(),
        code_version="long-short-v1",
        retry_policy=IO_RETRY,  # MLflow run, Delta (quant_assets/retries.py)
        ins={
            "predictions": AssetIn(key=predictions),
            "market_bars": AssetIn(partition_mapping=AllPartitionMapping()),
            "previous_months": AssetIn(
                key=name,
                metadata={"allow_missing": True},
                partition_mapping=TimeWindowPartitionMapping(
                    start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True
                ),
            ),
        },
        # after the month's predictions, and after the month before it (the chain); the
        # whole-history price input is not a trigger: a restated day reaches it through
        # the predictions of its month
        automation_condition=after([predictions, name], recent=None),
        description=f"Daily returns, costs, turnover and exposures of the long-short strategy "
        f"on the month's {predictions} ({family.name} family); the last row of each month "
        "carries its end state.",
    )
    def _backtest(
        context: AssetExecutionContext,
        config: BacktestConfig,
        tracking: MlflowTracking,
        predictions: VersionedFrame,
        market_bars: VersionedFrame,
        corporate_actions: VersionedFrame,
        universe: pl.DataFrame,
        previous_months: pl.DataFrame,
    ):
        return _run_backtest(context, config, tracking, family, predictions, market_bars,
                             corporate_actions, universe, previous_months)

    return _backtest


def _run_backtest(context, config, tracking, family: ModelFamily, predictions: VersionedFrame,
                  market_bars: VersionedFrame, corporate_actions: VersionedFrame,
                  universe: pl.DataFrame, previous_months: pl.DataFrame) -> Output:
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
            scores = predictions.frame.filter(in_month) if predictions.frame.height else predictions.frame
            if scores.is_empty():
                # a month without scores would silently hold the previous book: refuse instead,
                # before anything is written, so the months before it stay as committed
                raise refuse(
                    f"{family.backtest} {month:%Y-%m}: no out-of-sample predictions for the "
                    f"month; materialise {family.predictions} for it first"
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
        meter.rows(rows_in=predictions.frame.height, rows_out=frame.height)
    summary = performance_summary(
        frame["net_return"].to_numpy(), turnover=frame["turnover"].to_numpy()
    )
    lineage = lineage_of(
        context,
        inputs={
            family.predictions: predictions,
            "market_bars": market_bars,
            "corporate_actions": corporate_actions,
        },
        config=config.model_dump(),
        seeds={},
        extra={"borrow_file_sha256": file_sha256(spec.borrow_file)} if spec.borrow_file else None,
    )
    key_range = context.partition_key_range
    with tracking.run(f"{family.backtest} {key_range.start}..{key_range.end}", lineage,
                      params=config.model_dump(), tags={"quant.model_family": family.name},
                      output=frame) as run:
        tracking.log_metrics(summary)
        # the daily returns (not positions: those stay in Delta) and their equity curve
        tracking.log_table(frame.select(RETURN_COLUMNS), "returns.csv")
        equity = equity_png(frame["date"].to_list(), {
            "net of costs": frame["net_return"].to_numpy(), "gross": frame["gross_return"].to_numpy(),
        }, f"{family.backtest} {key_range.start}..{key_range.end}")
        tracking.log_image(equity, "equity.png")
    return Output(
        frame,
        metadata={
            "model_family": family.name,
            "days": frame.height,
            "sharpe": float(summary.get("sharpe", float("nan"))),
            "max_drawdown": float(summary.get("max_drawdown", float("nan"))),
            "end_equity": float(frame["equity"][-1]),
            # the run's equity curve (equity.png in MLflow), shown in the UI
            "plot_equity": MetadataValue.md(markdown_image(equity, "equity")),
            **lineage_metadata(lineage, [run.info.run_id]),
        },
    )


backtest = build_backtest(FAMILIES["lgbm"])
seq_backtest = build_backtest(FAMILIES["seq"])


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


GRID_OUTPUTS = ("strategy_grid", "strategy_grid_returns")


@multi_asset(
    group_name=GROUP,
    partitions_def=monthly_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    outs={
        "strategy_grid": AssetOut(
            metadata={"partition_expr": "date"},
            code_version="strategy-grid-v1",
            owners=owners_of(GROUP),
            kinds={"numba", "polars", "delta"},
            description="Every (instrument, parameter set) of the configured families over each "
            "month's total-return closes: total return, Sharpe, max drawdown and trade count.",
            automation_condition=new_month(wait_for=["market_bars"]) | restated(["market_bars"]),
        ),
        "strategy_grid_returns": AssetOut(
            metadata={"partition_expr": "date"},
            code_version="strategy-grid-v1",
            owners=owners_of(GROUP),
            kinds={"numba", "polars", "delta"},
            description="Daily returns of each parameter set (equal weight over the instruments "
            "with a bar that day): date, trial_id, net_return; trials of the DSR and PBO.",
            automation_condition=new_month(wait_for=["market_bars"]) | restated(["market_bars"]),
        ),
    },
    # the bars up to the month's end: a month needs the max-lookback bars before it as
    # warm-up (monthly_grid), and a restated day rebuilds the months that read it, while a
    # new day of a later month does not
    ins={"market_bars": AssetIn(partition_mapping=up_to_month_end())},
    # its Delta commits and MLflow run fail transiently like any other I/O step's: a dropped
    # commit (which object_store does not resend) must not fail the run. A retry repeats the
    # grid's compute (seconds per month) and resumes the attempt's MLflow run (run key).
    retry_policy=IO_RETRY,
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
    total-return closes, and each parameter set's daily returns."""
    with measured(context, output_name=GRID_OUTPUTS) as meter:  # run costs, split over both outputs
        spec = config.to(GridSpec)
        prices = total_return_index(market_bars.frame, corporate_actions.frame)
        names = trial_names(spec)
        parts, returns = [], []
        for month in months_of(context):
            end = calendar.next_month(month)
            frame, matrix, days = evaluate_month(
                prices, month, end, spec, listed_in(universe, month, end), with_returns=True
            )
            parts.append(frame)
            returns.append(pl.DataFrame({
                "date": pl.Series([d for d in days for _ in names], dtype=pl.Date),
                "trial_id": pl.Series(names * len(days), dtype=pl.String),
                "net_return": pl.Series(matrix.ravel(), dtype=pl.Float64),
            }))
        frame = pl.concat(parts)
        daily = pl.concat(returns)
        meter.rows(rows_in=market_bars.frame.height, rows_out=frame.height, output="strategy_grid")
        meter.rows(rows_out=daily.height, output="strategy_grid_returns")
    sharpe = frame["sharpe"].to_numpy()
    lineage = lineage_of(context, inputs={"market_bars": market_bars, "corporate_actions": corporate_actions},
                         config=config.model_dump(), seeds={}, asset_key="strategy_grid")
    with tracking.run(f"strategy_grid {context.partition_key_range.start}..{context.partition_key_range.end}",
                      lineage, output=frame) as run:
        tracking.log_metrics({"n_trials": spec.n_trials, "rows": frame.height})
    yield Output(
        frame,
        "strategy_grid",
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
    yield Output(daily, "strategy_grid_returns", metadata={"trials": len(names), "days": daily["date"].n_unique()})
