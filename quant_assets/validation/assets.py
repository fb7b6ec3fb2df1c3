"""Each model family's validation report (``validation_report`` for LightGBM,
``seq_validation_report`` for the GRU): statistics over every backtest month, the HTML tear
sheet and the gate verdict, with an MLflow run; ``model_comparison``: the families side by
side and the one the gate would promote; ``champion_model``: the promotion.

The blocking promotion gate (a check on ``model_comparison``) lives in
``validation/checks.py``. Whether a passing gate promotes by itself or waits for a person
(``promotion_job``) is ``QUANT_AUTO_PROMOTE``; either way the decision is in the audit
trail (a ``gate`` row for the comparison, a ``promote`` row for the move).
"""


import dataclasses

import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    MetadataValue,
    Output,
    asset,
)
from dagster._core.storage.tags import AUTOMATION_CONDITION_TAG

from quant_assets import audit
from quant_assets.asset_catalog import owners_of
from quant_assets.asset_lineage import lineage_metadata, lineage_of
from quant_assets.automation import promotion, when_updated
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
from quant_assets.models.monthly import FAMILIES, ModelFamily
from quant_assets.retries import IO_RETRY, not_retried, refuse
from quant_assets.run_costs import measured
from quant_assets.settings import load_settings
from quant_assets.validation import regimes
from quant_assets.validation.benchmark import Benchmark, benchmark_for_book, index_benchmark
from quant_assets.validation.compare import (
    compare_families,
    comparison_markdown,
    failed_families,
    family_metrics,
    recommended_family,
)
from quant_assets.validation.gate import PASS_METRIC, GateThresholds, evaluate_gate
from quant_assets.validation.report import render_data_section, render_markdown, summarise
from quant_assets.validation.tearsheet import (
    TearSheetInputs,
    key_plots_markdown,
    monthly_ic,
    render_tearsheet,
)
from quant_assets.validation.trials import build_trial_set, strategy_variants
from quant_assets.warehouse import VersionedFrame, Warehouse
from resources import model_registry
from resources.model_registry import REGISTERED_MODELS
from resources.tracking import MlflowTracking

GROUP = "validation"
SETTINGS = load_settings()
# Sweep tables (trials/assets.py writes them); read when they exist, see validation/trials.py.
TRIAL_REGISTRY_TABLES = (("sweep_trials",),)
TRIAL_RETURNS_TABLE = ("trial_returns",)
# The monthly flow's trials (inputs of the reports: a month's report waits for them)
MONTHLY_TRIALS = {"model_sweep": "model_sweep", "strategy_grid": "strategy_grid_returns"}
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


def build_report(family: ModelFamily) -> AssetsDefinition:
    """The validation report of one model family's backtest."""

    @asset(
        name=family.report,
        group_name=GROUP,
        owners=owners_of(GROUP),
        kinds={"mlflow", "delta"},
        code_version="report-v3",
        retry_policy=IO_RETRY,  # MLflow artifacts, Delta (quant_assets/retries.py)
        required_resource_keys={"tracking", "io_manager"},
        ins={
            "backtest": AssetIn(key=family.backtest, partition_mapping=AllPartitionMapping()),
            "predictions": AssetIn(key=family.predictions, partition_mapping=AllPartitionMapping()),
            **{
                source: AssetIn(key=key, partition_mapping=AllPartitionMapping(),
                                metadata={"allow_missing": True})
                for source, key in MONTHLY_TRIALS.items()
            },
        },
        # after the backtest (and the month's trials, which it counts); it waits for the
        # backtest and predictions only: the trials are optional inputs, and a month of them
        # that was never built (history before the automation) must not hold the report back
        automation_condition=when_updated(
            [family.backtest, *MONTHLY_TRIALS.values()],
            wait_for=[family.backtest, family.predictions],
            # monthly inputs: requested on the same tick, they run apart from the report
            apart=[family.backtest, family.predictions, *MONTHLY_TRIALS.values()],
        ),
        description=f"Headline statistics of the {family.name} backtest (Sharpe, drawdown, PSR, DSR "
        "and PBO over every trial tried, MinTRL, turnover, IC, bootstrap drawdowns) and the gate "
        "verdict as a long table (metric, value); the Markdown summary in metadata; the HTML "
        "tear sheet as ``report.html`` in MLflow.",
    )
    def _report(
        context: AssetExecutionContext,
        config: ValidationReportConfig,
        backtest: VersionedFrame,
        predictions: VersionedFrame,
        labels: VersionedFrame,
        market_bars: VersionedFrame,
        corporate_actions: VersionedFrame,
        universe: pl.DataFrame,
        model_sweep: VersionedFrame,
        strategy_grid: VersionedFrame,
    ):
        return _validation_report(
            context, config, family, backtest, predictions, labels, market_bars,
            corporate_actions, universe, {"model_sweep": model_sweep, "strategy_grid": strategy_grid},
        )

    return _report


def _validation_report(
    context: AssetExecutionContext,
    config,
    family: ModelFamily,
    backtest: VersionedFrame,
    predictions: VersionedFrame,
    labels: VersionedFrame,
    market_bars: VersionedFrame,
    corporate_actions: VersionedFrame,
    universe: pl.DataFrame,
    monthly_trials: dict[str, VersionedFrame],
) -> Output:
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
        preds = predictions.frame
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
            {source: frame.frame for source, frame in monthly_trials.items()},
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
                title=f"Validation report ({family.name}) {first} .. {last}",
            )
        )
        inputs = {family.backtest: backtest, family.predictions: predictions, "labels": labels}
        inputs.update({MONTHLY_TRIALS[s]: f for s, f in monthly_trials.items() if f.frame.height})
        inputs.update({"trial_registry": registry} if registry else {})
        inputs.update({"trial_returns": sweep_returns} if sweep_returns else {})
        inputs.update({"benchmark": given} if index is not None else {})
        lineage = lineage_of(
            context,
            inputs=inputs,
            config={
                "variants": list(trials),
                "sweep_trials": len(trial_set.extra_sharpes),
                "model_family": family.name,
                "pbo_trials": list(trial_set.pbo_names),
                **config.model_dump(),
            },
            seeds={"bootstrap": config.bootstrap_seed},
            partition_keys=[],
        )
        frame = pl.DataFrame({"metric": list(metrics), "value": [float(v) for v in metrics.values()]})
        # the gate's thresholds, the report's settings and the backtested strategy's costs
        params = {**config.model_dump(), "strategy": dataclasses.asdict(base),
                  "n_variants": len(trials), "n_sweep_trials": len(trial_set.extra_sharpes)}
        with tracking.run(family.report, lineage, params=params, tags={"quant.model_family": family.name},
                          output=frame) as run:
            tracking.log_metrics(metrics)
            tracking.log_text(markdown, "report.md")
            tracking.log_text(page, "report.html")
        meter.rows(rows_in=backtest.frame.height + predictions.frame.height, rows_out=frame.height)
    return Output(
        frame,
        metadata={
            "model_family": family.name,
            "summary": MetadataValue.md(markdown),
            **{k: float(metrics[k]) for k in ("sharpe", "max_drawdown", "psr", "dsr", "pbo", "n_trials")},
            "gate_passed": bool(gate.passed),
            "benchmark": benchmark.name,
            "data_caveats": MetadataValue.json(caveats),
            # the tear sheet's key plots, the same PNGs, shown in the UI (report.html in MLflow)
            **{k: MetadataValue.md(v) for k, v in key_plots_markdown(page).items()},
            **lineage_metadata(lineage, [run.info.run_id]),
        },
    )


validation_report = build_report(FAMILIES["lgbm"])
seq_validation_report = build_report(FAMILIES["seq"])


@asset(
    group_name=GROUP,
    owners=owners_of(GROUP),
    kinds={"delta", "polars"},
    code_version="comparison-v1",
    retry_policy=IO_RETRY,  # the audit trail (quant_assets/retries.py)
    ins={family.report: AssetIn() for family in FAMILIES.values()},
    automation_condition=when_updated([f.report for f in FAMILIES.values()]),
)
def model_comparison(
    context: AssetExecutionContext, validation_report: pl.DataFrame, seq_validation_report: pl.DataFrame
):
    """Both model families' validation reports side by side (``validation.compare``): one
    row per family and statistic, and the family the gate would promote (``recommended``):
    the best DSR among the families whose gate passed, none if none did. The decision
    (promote now, wait for a person, or nothing to promote) is an audit ``gate`` row."""
    with measured(context) as meter:  # run costs: wall/CPU/memory/rows/cost
        reports = {"validation_report": validation_report, "seq_validation_report": seq_validation_report}
        by_family = {f.name: dict(reports[f.report].select("metric", "value").iter_rows())
                     for f in FAMILIES.values()}
        frame, recommended = compare_families(by_family)
        markdown = comparison_markdown(frame, recommended)
        if recommended is None:
            decision = "no family passed the gate: nothing to promote"
        elif SETTINGS.auto_promote == "promote":
            decision = f"{recommended} passed the gate: promoted by champion_model (QUANT_AUTO_PROMOTE=promote)"
        else:
            decision = (f"{recommended} passed the gate: waiting for a person to launch "
                        "promotion_job (QUANT_AUTO_PROMOTE=wait)")
        audit.record(audit.AuditEvent(
            "gate", "asset", "model_comparison",
            model_version=REGISTERED_MODELS[recommended] if recommended else None,
            reason=decision, dagster_run_id=context.run_id,
            tags={"auto_promote": SETTINGS.auto_promote, "recommended": recommended or "",
                  **{f"dsr_{k}": f"{v.get('dsr', float('nan')):.4f}" for k, v in by_family.items()}},
        ))
        context.log.info(decision)
        meter.rows(rows_in=sum(r.height for r in reports.values()), rows_out=frame.height)
    return Output(
        frame,
        metadata={"recommended": recommended or "none", "decision": decision,
                  "comparison": MetadataValue.md(markdown)},
    )


def _latest_version(rows: pl.DataFrame, table: str) -> dict:
    if rows.is_empty():
        raise refuse(f"champion_model: {table} has no months; nothing to promote")
    latest = rows.sort("date").tail(1).row(0, named=True)
    if latest.get("registered_version") is None:
        raise refuse(
            f"champion_model: the {table} of {latest['date']} was not registered "
            "(register_model=False); nothing to promote"
        )
    return latest


@asset(
    group_name=GROUP,
    owners=owners_of(GROUP),
    kinds={"mlflow", "delta"},
    code_version="champion-v2",
    retry_policy=IO_RETRY,  # MLflow registry aliases (quant_assets/retries.py)
    ins={
        **{f.asset: AssetIn(partition_mapping=AllPartitionMapping(), metadata={"allow_missing": True})
           for f in FAMILIES.values()},
    },
    automation_condition=promotion() if SETTINGS.auto_promote == "promote" else None,
)
def champion_model(
    context: AssetExecutionContext,
    tracking: MlflowTracking,
    model_comparison: pl.DataFrame,
    lgbm_model: pl.DataFrame,
    seq_model: pl.DataFrame,
):
    """Moves the MLflow alias ``champion`` to the latest month's version of the family the
    comparison recommends (the previous champion, of either family, becomes
    ``previous_champion``). Runs only after the blocking gate check on ``model_comparison``
    passed, and refuses by itself when the comparison recommends nothing or that family's
    gate rows say failed (a run without the check must not promote either)."""
    with measured(context) as meter:  # run costs: wall/CPU/memory/rows/cost
        recommended = recommended_family(model_comparison)
        if recommended is None or recommended in failed_families(model_comparison):
            raise refuse(  # a failed gate fails the same on every attempt: not retried
                f"champion_model: no family's validation report passed the gate "
                f"({PASS_METRIC} failed for {failed_families(model_comparison)}); nothing promoted"
            )
        family = FAMILIES[recommended]
        rows = {"lgbm": lgbm_model, "seq": seq_model}[family.name]
        latest = _latest_version(rows, family.asset)
        name = REGISTERED_MODELS[family.name]
        metrics = family_metrics(model_comparison, family.name)
        automatic = context.run.tags.get(AUTOMATION_CONDITION_TAG) == "true"
        how = "automatically (QUANT_AUTO_PROMOTE=promote)" if automatic else f"by {audit.current_actor()}"
        reason = (f"gate passed: {family.name} DSR {metrics.get('dsr', float('nan')):.3f}, "
                  f"PBO {metrics.get('pbo', float('nan')):.3f}; promoted {how}")
        promotion_done = model_registry.promote(
            tracking.client(), int(latest["registered_version"]), name,
            reason=reason, dagster_run_id=context.run_id,
        )
        context.log.info(
            f"{name} v{promotion_done.version} is champion"
            + (f" (previous champion {promotion_done.previous_model} v{promotion_done.previous_version})"
               if promotion_done.changed else " (unchanged)")
        )
        frame = pl.DataFrame(
            {
                "registered_model": [name],
                "model_family": [family.name],
                "version": [promotion_done.version],
                "previous_model": [promotion_done.previous_model],
                "previous_version": [promotion_done.previous_version],
                "model_month": [latest["date"]],
                "model_sha256": [latest.get("sha256")],
                "dsr": [metrics.get("dsr")],
                "pbo": [metrics.get("pbo")],
            },
            schema_overrides={"previous_version": pl.Int64, "previous_model": pl.Utf8,
                              "model_sha256": pl.Utf8, "dsr": pl.Float64, "pbo": pl.Float64},
        )
        meter.rows(rows_in=rows.height, rows_out=frame.height)
    return Output(
        frame,
        metadata={
            "registered_model": name,
            "model_family": family.name,
            "champion_version": promotion_done.version,
            "previous_champion_version": promotion_done.previous_version if promotion_done.previous_version is not None else -1,
            "changed": promotion_done.changed,
            "reason": reason,
        },
    )
