"""``validation_report``: statistics over every backtest month, the HTML tear sheet and the
gate verdict, with an MLflow run; ``champion_model``: the promotion when the gate passes.

The blocking gate check on ``validation_report`` lives in ``validation/checks.py``.
"""


import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetExecutionContext,
    AssetIn,
    MetadataValue,
    Output,
    asset,
)

from quant_assets.asset_lineage import lineage_metadata, lineage_of
from quant_assets.backtest.strategy import (
    backtest_scores,
    backtested_spec,
    book_inputs,
    run_long_short,
)
from quant_assets.configs import config_class
from quant_assets.data import real
from quant_assets.data.reference import current_universe
from quant_assets.features import total_return_index
from quant_assets.retries import IO_RETRY, not_retried, refuse
from quant_assets.run_costs import measured
from quant_assets.validation import regimes
from quant_assets.validation.benchmark import Benchmark, benchmark_for_book, index_benchmark
from quant_assets.validation.gate import PASS_METRIC, GateThresholds, evaluate_gate
from quant_assets.validation.report import render_data_section, render_markdown, summarise
from quant_assets.validation.tearsheet import TearSheetInputs, monthly_ic, render_tearsheet
from quant_assets.validation.trials import build_trial_set, strategy_variants
from quant_assets.warehouse import VersionedFrame, Warehouse
from resources import model_registry
from resources.model_registry import MODEL_NAME as REGISTERED_MODEL
from resources.tracking import MlflowTracking

GROUP = "validation"
# Sweep tables (trials/assets.py writes them); read when they exist, see validation/trials.py.
TRIAL_REGISTRY_TABLES = (("sweep_trials",),)
TRIAL_RETURNS_TABLE = ("trial_returns",)
# Written by the data stage when the source gives them (data/assets.py): the source's index
# as the benchmark, and the caveats of the data the report rests on.
BENCHMARK_TABLE = ("benchmark",)
DATA_SOURCE_TABLE = ("data_source",)


GateConfig = config_class(
    "GateConfig", GateThresholds, doc="Thresholds of the promotion gate (validation/gate.py)."
)
ValidationReportConfig = config_class(
    "ValidationReportConfig", GateThresholds,
    extra={"bootstrap_seed": (int, 0), "n_bootstrap": (int, 500)},
    doc="The report records the gate verdict under these thresholds (the gate rows that "
    "champion_model re-checks; keep them equal to the check's config) and its bootstrap.",
)


def _optional_table(warehouse: Warehouse, key: tuple[str, ...]) -> VersionedFrame | None:
    return warehouse.read(list(key)) if warehouse.exists(list(key)) else None


def _real_stress_series() -> tuple[dict[str, pl.DataFrame], str]:
    """Reference series on real data for the stress windows. skfolio, whose wheel carries
    the data, is a runtime dependency: without it the report fails rather than silently
    dropping its stress windows."""
    try:
        stocks = real.load_sp500_prices()
        index = real.load_sp500_index().with_columns(instrument_id=pl.lit("SP500"))
    except real.RealDataUnavailable as exc:
        raise refuse(f"validation_report: the stress windows' real prices are missing: {exc}") from exc
    spx = regimes.instrument_returns(index).select("date", pl.col("ret").alias("return"))
    return {
        "S&P 500 index": spx,
        "equal-weight 20 S&P 500 stocks": regimes.equal_weight_returns(stocks),
        "5-day reversal, 20 stocks": regimes.reversal_returns(stocks, lookback=5),
    }, real.SOURCE


@asset(
    group_name=GROUP,
    code_version="report-v2",
    retry_policy=IO_RETRY,  # MLflow artifacts, Delta (quant_assets/retries.py)
    required_resource_keys={"tracking", "io_manager"},
)
def validation_report(
    context: AssetExecutionContext,
    config: ValidationReportConfig,
    backtest: VersionedFrame,
    oos_predictions: VersionedFrame,
    labels: VersionedFrame,
    market_bars: VersionedFrame,
    corporate_actions: VersionedFrame,
    universe: pl.DataFrame,
):
    """Headline statistics of the backtest (Sharpe, drawdown, PSR, DSR and PBO over every
    trial tried, MinTRL, turnover, IC, bootstrap drawdowns) and the gate verdict as a long
    table (metric, value); the Markdown summary in metadata; the HTML tear sheet (equity,
    underwater, rolling Sharpe, monthly returns, IC, bootstrap, regimes, real-data stress
    windows, factor exposures) as ``report.html`` in MLflow."""
    with measured(context) as meter:  # run costs: wall/CPU/memory/rows/cost
        tracking: MlflowTracking = context.resources.tracking
        # sweep tables are read through the warehouse because they are optional: an asset
        # input would make the report wait for (or fail without) a sweep
        warehouse: Warehouse = context.resources.io_manager.warehouse
        bt = backtest.frame.sort("date")
        preds = oos_predictions.frame
        first, last = bt["date"].min(), bt["date"].max()
        # Every variant evaluated on these predictions counts as a trial for the DSR and PBO;
        # each is the backtest's own spec with the quantile and weighting scheme varied.
        with not_retried(ValueError):  # mixed specs stay mixed on a retry
            base = backtested_spec(bt)
        all_prices, sectors = book_inputs(
            base, total_return_index(market_bars.frame, corporate_actions.frame), universe,
            market_bars.frame,
        )
        prices = all_prices.filter(pl.col("date").is_between(first, last))
        history = all_prices.filter(pl.col("date") < first)
        trials, dates = {}, None
        for name, spec in strategy_variants(base).items():
            daily, _ = run_long_short(preds, prices, spec, sectors=sectors, history=history)
            trials[name] = daily["net_return"].to_numpy()
            dates = daily["date"] if dates is None else dates
        registry = next(
            (t for t in (_optional_table(warehouse, k) for k in TRIAL_REGISTRY_TABLES) if t is not None), None
        )
        sweep_returns = _optional_table(warehouse, TRIAL_RETURNS_TABLE)
        trial_set = build_trial_set(
            dates, trials,
            registry.frame if registry else None,
            sweep_returns.frame if sweep_returns else None,
        )
        scored = preds.join(labels.frame.select("date", "instrument_id", "fwd_return"), on=["date", "instrument_id"], how="inner").sort("date", "instrument_id")
        # the benchmark that suits the book: the market factor for the simulator's
        # dollar-neutral book (beta and alpha, not active return against a long-only market)
        market = Benchmark(
            "market factor: equal-weight universe",
            regimes.equal_weight_returns(all_prices, "tr_close"), "market",
        )
        given = _optional_table(warehouse, BENCHMARK_TABLE)
        index = index_benchmark(given.frame if given else None)  # real data: the index
        benchmark = benchmark_for_book(bt["net_exposure"], bt["gross_exposure"], market=market, index=index)
        described = _optional_table(warehouse, DATA_SOURCE_TABLE)
        about = described.frame if described else pl.DataFrame(schema={"item": pl.String, "value": pl.String})
        caveats = about.filter(pl.col("item") == "caveat")["value"].to_list()
        source_kind = next(iter(about.filter(pl.col("item") == "source")["value"].to_list()), None)
        summary = summarise(
            bt["net_return"].to_numpy(),
            bt["turnover"].to_numpy(),
            trials,
            scored["date"].to_physical().to_numpy(),
            scored["score"].to_numpy(),
            scored["fwd_return"].to_numpy(),
            bootstrap_seed=config.bootstrap_seed,
            extra_trial_sharpes=trial_set.extra_sharpes,
            pbo_returns=trial_set.pbo_returns,
            n_bootstrap=config.n_bootstrap,
            benchmark=benchmark.aligned(bt["date"]),
            benchmark_name=benchmark.name,
        )
        gate = evaluate_gate(summary.metrics, config.to(GateThresholds))
        metrics = {**summary.metrics, **gate.metrics()}
        markdown = render_markdown(
            metrics, summary.trial_sharpes, gate.message(), benchmark_name=benchmark.name
        ) + render_data_section(caveats, source_kind)

        strategy = bt.select("date", pl.col("net_return").alias("return"))
        # the held book of the backtested spec for the long and short legs: one run over the
        # whole range equals the month-by-month chain bit for bit (backtest.strategy)
        book = backtest_scores(preds, prices, base, sectors=sectors, history=history)
        state = regimes.market_state(all_prices, price_col="tr_close").filter(pl.col("date").is_between(first, last))
        regime_table = regimes.regime_performance(strategy, regimes.regime_labels(state))
        real_series, source = _real_stress_series()
        stress = regimes.stress_table({"strategy": strategy, **real_series})
        sized = all_prices.join(
            market_bars.frame.select("date", "instrument_id", (pl.col("close") * pl.col("volume")).alias("dollar_volume")),
            on=["date", "instrument_id"], how="left",
        )
        try:
            factors = regimes.factor_returns(
                sized, current_universe(universe).select("instrument_id", "sector"), size_col="dollar_volume", price_col="tr_close"
            )
            exposures = regimes.factor_exposures(strategy, factors)
        except ValueError as exc:  # too few common days for the regression
            context.log.warning(f"factor exposures skipped: {exc}")
            exposures = None
        page = render_tearsheet(
            TearSheetInputs(
                daily=strategy,
                metrics=metrics,
                benchmark=benchmark,
                backtest=bt,
                predictions=preds,
                asset_returns=regimes.instrument_returns(all_prices, "tr_close"),
                positions=book.positions_frame(),
                trial_sharpes=summary.trial_sharpes,
                execution_lag=base.execution_lag,
                monthly_ic=monthly_ic(summary.rank_ic.dates, summary.rank_ic.values),
                bootstrap_max_drawdown=summary.bootstrap.max_drawdown,
                regimes=regime_table,
                stress=stress,
                stress_source=source,
                factors=exposures,
                gate=gate,
                title=f"Validation report {first} .. {last}",
            )
        )
        inputs = {"backtest": backtest, "oos_predictions": oos_predictions, "labels": labels}
        inputs.update({"trial_registry": registry} if registry else {})
        inputs.update({"trial_returns": sweep_returns} if sweep_returns else {})
        inputs.update({"benchmark": given} if index is not None else {})
        lineage = lineage_of(
            context,
            inputs=inputs,
            config={
                "variants": list(trials),
                "sweep_trials": len(trial_set.extra_sharpes),
                "pbo_trials": list(trial_set.pbo_names),
                **config.model_dump(),
            },
            seeds={"bootstrap": config.bootstrap_seed},
            partition_keys=[],
        )
        frame = pl.DataFrame({"metric": list(metrics), "value": [float(v) for v in metrics.values()]})
        with tracking.run("validation_report", lineage, output=frame) as run:
            tracking.log_metrics(metrics)
            tracking.log_text(markdown, "report.md")
            tracking.log_text(page, "report.html")
        meter.rows(rows_in=backtest.frame.height + oos_predictions.frame.height, rows_out=frame.height)
    return Output(
        frame,
        metadata={
            "summary": MetadataValue.md(markdown),
            **{k: float(metrics[k]) for k in ("sharpe", "max_drawdown", "psr", "dsr", "pbo", "n_trials")},
            "gate_passed": bool(gate.passed),
            "benchmark": benchmark.name,
            "data_caveats": MetadataValue.json(caveats),
            **lineage_metadata(lineage, [run.info.run_id]),
        },
    )


@asset(
    group_name=GROUP,
    code_version="champion-v1",
    retry_policy=IO_RETRY,  # MLflow registry aliases (quant_assets/retries.py)
    ins={"lgbm_model": AssetIn(partition_mapping=AllPartitionMapping())},
)
def champion_model(
    context: AssetExecutionContext,
    tracking: MlflowTracking,
    validation_report: pl.DataFrame,
    lgbm_model: pl.DataFrame,
):
    """Moves the MLflow alias ``champion`` of the registered LightGBM model to the latest
    month's version (the previous champion becomes ``previous_champion``). Runs only after
    the blocking gate check on ``validation_report`` passed, and refuses by itself when the
    report's gate rows say failed (a run without the check must not promote either)."""
    with measured(context) as meter:  # run costs: wall/CPU/memory/rows/cost
        report = dict(validation_report.select("metric", "value").iter_rows())
        if report.get(PASS_METRIC) != 1.0:
            failed = sorted(k for k, v in report.items() if k.startswith("gate_") and v == 0.0)
            raise refuse(  # a failed gate fails the same on every attempt: not retried
                f"champion_model: the validation report's gate did not pass "
                f"({PASS_METRIC}={report.get(PASS_METRIC)}; failed: {failed}); nothing promoted"
            )
        if lgbm_model.is_empty():
            raise refuse("champion_model: lgbm_model has no months; nothing to promote")
        latest = lgbm_model.sort("date").tail(1).row(0, named=True)
        version = latest.get("registered_version")
        if version is None:
            raise refuse(
                f"champion_model: the lgbm_model of {latest['date']} was not registered "
                "(register_model=False); nothing to promote"
            )
        promotion = model_registry.promote(tracking.client(), int(version), REGISTERED_MODEL)
        context.log.info(
            f"{REGISTERED_MODEL} v{promotion.version} is champion"
            + (f" (previous champion v{promotion.previous_version})" if promotion.changed else " (unchanged)")
        )
        frame = pl.DataFrame(
            {
                "registered_model": [REGISTERED_MODEL],
                "version": [promotion.version],
                "previous_version": [promotion.previous_version],
                "model_month": [latest["date"]],
                "model_sha256": [latest.get("sha256")],
                "dsr": [report.get("dsr")],
                "pbo": [report.get("pbo")],
            },
            schema_overrides={"previous_version": pl.Int64, "model_sha256": pl.Utf8,
                              "dsr": pl.Float64, "pbo": pl.Float64},
        )
        meter.rows(rows_in=lgbm_model.height, rows_out=frame.height)
    return Output(
        frame,
        metadata={
            "registered_model": REGISTERED_MODEL,
            "champion_version": promotion.version,
            "previous_champion_version": promotion.previous_version if promotion.previous_version is not None else -1,
            "changed": promotion.changed,
        },
    )
