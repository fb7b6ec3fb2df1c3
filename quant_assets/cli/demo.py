"""``make demo``: the golden flow end to end on the embedded default (the simulator), or on a
data directory with ``QUANT_SOURCE=files QUANT_DATA_DIR=<dir>`` (``make demo-real``: the
real S&P 500 prices of skfolio's wheel written into that layout).

Runs the flow through a real Dagster instance under DAGSTER_HOME (so the runs show up in
``dagster dev`` afterwards), stage by stage, one run per partitioning:

1. reference data (universe, corporate actions, fundamentals)
2. market bars + point-in-time features over the whole trading-day range
3. labels over the days whose horizon is complete
4. both model families (walk-forward LightGBM and the GRU), their out-of-sample
   predictions and backtests, every month
5. the months' trials (strategy grid, model sweep) that the reports' DSR and PBO count
6. both validation reports and the family comparison

With the file source the date range comes from the data unless QUANT_START_DATE,
QUANT_END_DATE and QUANT_FIRST_MODEL_MONTH are set: the first and last day of the bars, and
models from the twelfth month after the first (a year of history to train on), and the
range ends with the last complete month of the bars (a model month reads its whole month).
"""

from __future__ import annotations

import datetime as dt
import os
import time


def _range_from_data() -> None:
    """With QUANT_SOURCE=files, set the unset range variables from the data directory (the
    partitions are built from them when the code location is imported, just after)."""
    if os.environ.get("QUANT_SOURCE") != "files" or not os.environ.get("QUANT_DATA_DIR"):
        return
    from quant_assets import calendar
    from quant_assets.data.market import file_source

    bars = file_source(os.environ["QUANT_DATA_DIR"]).tables.market_bars
    first, last = bars["date"].min(), bars["date"].max()
    # a model month covers its whole month of features: end at the last complete month
    month_start = last.replace(day=1)
    if last != calendar.trading_days(month_start, calendar.next_month(month_start) - dt.timedelta(days=1))[-1]:
        last = calendar.trading_days(first, month_start - dt.timedelta(days=1))[-1]
    month = first.year * 12 + first.month - 1 + 12
    os.environ.setdefault("QUANT_START_DATE", first.isoformat())
    os.environ.setdefault("QUANT_END_DATE", last.isoformat())
    os.environ.setdefault("QUANT_FIRST_MODEL_MONTH", f"{month // 12:04d}-{month % 12 + 1:02d}")


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(prog="quant-assets demo", description=__doc__.splitlines()[0]).parse_args(argv)
    t_start = time.perf_counter()
    from quant_assets.data.sources import SourceFileError, SourceRejected
    from quant_assets.instance import prepare_local_instance
    from quant_assets.placement.apply import configure_local_instance
    from quant_assets.placement.policy import load_policy
    from quant_assets.settings import Settings

    try:
        _range_from_data()
    except (SourceFileError, SourceRejected) as exc:  # nothing was loaded: say why and stop
        print(f"quant-assets demo: the data directory was rejected\n{exc}")
        return 1
    settings = Settings.from_env()
    prepare_local_instance(settings.dagster_home)
    os.environ.setdefault("QUANT_HOME", str(settings.quant_home))

    if settings.source == "files":
        print(f"quant-assets demo: files in {settings.data_dir}, "
              f"{settings.start_date} .. {settings.end_date}, models from {settings.first_model_month:%Y-%m}")
    else:
        print(f"quant-assets demo: {settings.n_instruments} instruments, "
              f"{settings.start_date} .. {settings.end_date}, seed {settings.seed}")
    print(f"  QUANT_HOME={settings.quant_home}")

    from dagster import DagsterInstance
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    from quant_assets import calendar
    from quant_assets.definitions import defs
    from quant_assets.partitions import monthly_partitions, trading_day_partitions

    # pool limits of deploy/pools.yaml on the local instance, before opening it
    configure_local_instance(settings.dagster_home, load_policy())
    instance = DagsterInstance.get()
    days = trading_day_partitions.get_partition_keys()
    last_label_day = calendar.shift_trading_days(
        calendar.trading_days(settings.start_date, settings.end_date)[-1], -settings.label_horizon
    ).isoformat()
    label_days = [d for d in days if d <= last_label_day]
    months = monthly_partitions.get_partition_keys()
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    stages = [
        ("reference data", "reference_data_job", None),
        ("market bars + point-in-time features", "daily_features_job", (days[0], days[-1])),
        ("labels", "labels_job", (label_days[0], label_days[-1])),
        ("walk-forward LightGBM and GRU, predictions, backtests", "monthly_models_job", (months[0], months[-1])),
        ("the months' trials: strategy grid, model sweep", "strategy_grid_job", (months[0], months[-1])),
        ("validation reports, family comparison", "validation_job", None),
    ]
    for i, (title, job_name, key_range) in enumerate(stages, 1):
        span = f" [{key_range[0]} .. {key_range[1]}]" if key_range else ""
        print(f"[{i}/{len(stages)}] {title}{span}", flush=True)
        t0 = time.perf_counter()
        tags = {}
        if key_range:
            tags = {ASSET_PARTITION_RANGE_START_TAG: key_range[0], ASSET_PARTITION_RANGE_END_TAG: key_range[1]}
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, tags=tags, run_config=quiet, raise_on_error=False
        )
        if not result.success:
            failures = [
                f"{e.step_key}: {e.event_specific_data.error.message.strip()}"
                for e in result.all_events
                if e.is_step_failure and e.event_specific_data and e.event_specific_data.error
            ]
            print(f"    FAILED (run {result.run_id}):\n      " + "\n      ".join(failures))
            return 1
        print(f"    done in {time.perf_counter() - t0:.1f}s (run {result.run_id[:8]})", flush=True)

    print_summary(settings, time.perf_counter() - t_start)
    return 0


def print_summary(settings, elapsed: float) -> None:
    import polars as pl

    from quant_assets.validation.report import format_metric
    from quant_assets.warehouse import Warehouse

    wh = Warehouse(settings.warehouse_uri)
    report = dict(wh.read(["validation_report"]).frame.iter_rows())
    models = wh.read(["lgbm_model"]).frame
    comparison = wh.read(["model_comparison"]).frame
    families = sorted(comparison["model_family"].unique().to_list())
    by_family = {f: dict(comparison.filter(pl.col("model_family") == f).select("metric", "value").iter_rows())
                 for f in families}
    print("\nBuilt: universe, market_bars, corporate_actions, fundamentals, benchmark, data_source,")
    print("       pit_features, labels, strategy_grid (+ returns),")
    print(f"       LightGBM: lgbm_model ({models.height} monthly models), oos_predictions, backtest, validation_report")
    print("       GRU: seq_model, seq_predictions, seq_backtest, seq_validation_report; model_comparison")
    print("Headline statistics (out of sample, net of costs):")
    print(f"  {'':<22} " + " ".join(f"{f:>10}" for f in families))
    for label, key in (
        ("Sharpe", "sharpe"), ("CAGR", "cagr"), ("Max drawdown", "max_drawdown"),
        ("PSR", "psr"), ("DSR", "dsr"), ("PBO", "pbo"), ("Trials", "n_trials"),
        ("Mean daily turnover", "mean_turnover"), ("Mean rank IC", "rank_ic_mean"),
    ):
        cells = [format_metric(key, by_family[f].get(key, float("nan"))) for f in families]
        print(f"  {label:<22} " + " ".join(f"{c:>10}" for c in cells))
    if wh.exists(["data_source"]):  # what the numbers rest on (survivors only, close-only, ...)
        about = wh.read(["data_source"]).frame
        named = dict(about.filter(pl.col("item") != "caveat").iter_rows())
        if named.get("benchmark"):
            print(f"  {'Benchmark':<22} {named['benchmark']}")
        print(f"Data ({named.get('source', '?')}):")
        for caveat in about.filter(pl.col("item") == "caveat")["value"]:
            print(f"  - {caveat}")
    gate = {k[len("gate_"):-len("_passed")]: v for k, v in report.items()
            if k.startswith("gate_") and k.endswith("_passed") and k != "gate_passed"}
    verdict = "PASSED" if report.get("gate_passed") == 1.0 else "FAILED (no promotion)"
    shown = ", ".join(f"{k} {'ok' if v == 1.0 else ('n/a' if v != v else 'fail')}" for k, v in gate.items())
    print(f"Promotion gate (lgbm):   {verdict}" + (f"  [{shown}]" if shown else ""))
    passed = [f for f in families if by_family[f].get("gate_passed") == 1.0]
    recommended = [f for f in families if by_family[f].get("recommended") == 1.0]
    print(f"Families passing:        {', '.join(passed) or 'none'}; recommended: "
          f"{recommended[0] if recommended else 'none (nothing to promote)'}")
    print(f"\nDelta warehouse: {settings.warehouse_uri}")
    print(f"MLflow:          {settings.mlflow_uri}  (experiment 'quant-assets')")
    print(f"Dagster:         DAGSTER_HOME={settings.dagster_home}")
    print("Report:          validation_report asset (Markdown in its metadata); report.html tear")
    print("                 sheet and report.md in the MLflow run 'validation_report'")
    print(f"Demo wall time:  {elapsed:.1f}s")
