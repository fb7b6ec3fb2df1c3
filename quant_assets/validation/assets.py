"""``validation_report``: statistics over every backtest month, with an MLflow run."""


import itertools

import polars as pl
from dagster import AssetExecutionContext, MetadataValue, Output, asset

from quant_assets.backtest.assets import BacktestConfig
from quant_assets.backtest.strategy import StrategySpec, run_long_short
from quant_assets.features import total_return_index
from quant_assets.recording import lineage_metadata, lineage_of
from quant_assets.validation.report import summarise
from resources.tracking import MlflowTracking
from resources.warehouse import VersionedFrame

GROUP = "validation"
VARIANT_QUANTILES = (0.1, 0.2, 0.3)
VARIANT_SCHEMES = ("equal", "score")


@asset(group_name=GROUP, code_version="report-v1")
def validation_report(
    context: AssetExecutionContext,
    tracking: MlflowTracking,
    backtest: VersionedFrame,
    oos_predictions: VersionedFrame,
    labels: VersionedFrame,
    market_bars: VersionedFrame,
    corporate_actions: VersionedFrame,
):
    """Headline statistics of the backtest (Sharpe, drawdown, PSR, DSR over the strategy
    variants evaluated, turnover, IC) as a long table plus a Markdown summary."""
    bt = backtest.frame.sort("date")
    preds = oos_predictions.frame
    # Every variant evaluated on these predictions counts as a trial for the DSR.
    prices = total_return_index(market_bars.frame, corporate_actions.frame).filter(
        pl.col("date").is_between(bt["date"].min(), bt["date"].max())
    )
    base = BacktestConfig().spec()
    trials = {}
    for q, scheme in itertools.product(VARIANT_QUANTILES, VARIANT_SCHEMES):
        spec = StrategySpec(**{**base.__dict__, "quantile": q, "scheme": scheme})
        daily, _ = run_long_short(preds, prices, spec)
        trials[f"q{q:.1f}-{scheme}"] = daily["net_return"].to_numpy()
    scored = preds.join(labels.frame.select("date", "instrument_id", "fwd_return"), on=["date", "instrument_id"], how="inner").sort("date", "instrument_id")
    summary = summarise(
        bt["net_return"].to_numpy(),
        bt["turnover"].to_numpy(),
        trials,
        scored["date"].to_physical().to_numpy(),
        scored["score"].to_numpy(),
        scored["fwd_return"].to_numpy(),
    )
    lineage = lineage_of(
        context,
        inputs={"backtest": backtest, "oos_predictions": oos_predictions, "labels": labels},
        config={"variants": list(trials), "bootstrap_seed": 0},
        seeds={"bootstrap": 0},
        partition_keys=[],
    )
    with tracking.run("validation_report", lineage) as run:
        tracking.log_metrics(summary.metrics)
        tracking.log_text(summary.markdown, "report.md")
    frame = pl.DataFrame(
        {"metric": list(summary.metrics), "value": [float(v) for v in summary.metrics.values()]}
    )
    return Output(
        frame,
        metadata={
            "summary": MetadataValue.md(summary.markdown),
            **{k: float(summary.metrics[k]) for k in ("sharpe", "max_drawdown", "psr", "dsr")},
            **lineage_metadata(lineage, [run.info.run_id]),
        },
    )
