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
7. the promotion gate (the blocking check on the comparison; nothing is promoted)

Each run is created against the code location's job (location ``quant_assets``, as
``workspace.yaml`` names it), so ``make ui`` lists it under its job, and is executed here,
in this process (no run worker or step processes to start).

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

    from quant_assets.definitions import defs
    from quant_assets.jobs import promotion_gate_job
    from quant_assets.partitions import label_partitions, monthly_partitions, trading_day_partitions

    # pool limits of deploy/pools.yaml on the local instance, before opening it
    configure_local_instance(settings.dagster_home, load_policy())
    instance = DagsterInstance.get()
    days = trading_day_partitions.get_partition_keys()
    # every label partition (the days whose horizon has bars): labels end 100% materialised
    label_days = label_partitions.get_partition_keys()
    months = monthly_partitions.get_partition_keys()
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    stages = [
        ("reference data", "reference_data_job", None),
        ("market bars + point-in-time features", "daily_features_job", (days[0], days[-1])),
        ("labels", "labels_job", (label_days[0], label_days[-1])),
        ("walk-forward LightGBM and GRU, predictions, backtests", "monthly_models_job", (months[0], months[-1])),
        ("the months' trials: strategy grid, model sweep", "strategy_grid_job", (months[0], months[-1])),
        ("validation reports, family comparison", "validation_job", None),
        ("promotion gate (the check only: nothing is promoted)", promotion_gate_job.name, None),
    ]
    for i, (title, job_name, key_range) in enumerate(stages, 1):
        span = f" [{key_range[0]} .. {key_range[1]}]" if key_range else ""
        print(f"[{i}/{len(stages)}] {title}{span}", flush=True)
        t0 = time.perf_counter()
        tags = {}
        if key_range:
            tags = {ASSET_PARTITION_RANGE_START_TAG: key_range[0], ASSET_PARTITION_RANGE_END_TAG: key_range[1]}
        # a gate that says no fails its run: its verdict is printed below, not Dagster's error
        config = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}} if job_name == promotion_gate_job.name else quiet
        result = run_in_code_location(instance, defs, job_name, tags=tags, run_config=config)
        failures = [
            (e.event_specific_data.error.cls_name, f"{e.step_key}: {e.event_specific_data.error.message.strip()}")
            for e in result.all_events
            if e.is_step_failure and e.event_specific_data and e.event_specific_data.error
        ]
        if job_name == promotion_gate_job.name and failures and all(c == GATE_FAILED for c, _ in failures):
            # the verdict, not a broken demo: the check's result (and why) is in the UI
            print(f"    gate failed (run {result.run_id[:8]}: the check result says why)", flush=True)
            continue
        if not result.success:
            print(f"    FAILED (run {result.run_id}):\n      " + "\n      ".join(f for _, f in failures))
            return 1
        print(f"    done in {time.perf_counter() - t0:.1f}s (run {result.run_id[:8]})", flush=True)

    print_summary(settings, time.perf_counter() - t_start)
    return 0


# a blocking check that failed fails its step with this error: the gate's "no"
GATE_FAILED = "DagsterAssetCheckFailedError"
LOCATION_NAME = "quant_assets"  # workspace.yaml's code location


def run_in_code_location(instance, defs, job_name: str, tags: dict[str, str], run_config: dict):
    """Create a run of the code location's ``job_name`` in ``instance`` and execute it in this
    process; returns its JobExecutionResult.

    The run records the job's origin in the code location (``dagster dev -w workspace.yaml``
    loads the same module under the same location name), so the UI lists it under its job
    and can re-execute it. Dagster has no public API for this: ``execute_in_process`` records
    no origin, and ``dagster job launch`` / ``instance.submit_run`` go through the run queue
    and a run worker per run, and the local executor spawns a process per step, each one
    importing the code location again (about 40 s more per stage here). So the pieces of
    ``dagster job launch`` are used directly (internal APIs, Dagster 1.13), with the job's
    executor swapped for the in-process one, as ``execute_in_process`` does.
    """
    import os

    from dagster import in_process_executor
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from dagster._core.definitions.repository_definition.valid_definitions import (
        SINGLETON_REPOSITORY_NAME,
    )
    from dagster._core.execution.api import create_execution_plan, execute_run
    from dagster._core.remote_origin import RemoteRepositoryOrigin
    from dagster._core.workspace.load_target import ModuleTarget

    module = "quant_assets.definitions"
    job_def = defs.resolve_job_def(job_name)
    here = InMemoryJob(job_def.with_executor_def(in_process_executor))
    plan = create_execution_plan(here, run_config=run_config, instance_ref=instance.get_ref(), tags=tags)
    location = ModuleTarget(module_name=module, attribute=None, working_directory=os.getcwd(),
                            location_name=LOCATION_NAME).create_origins()[0]
    recon = ReconstructableRepository.for_module(module, "defs", os.getcwd()).get_reconstructable_job(job_name)
    run = instance.create_run_for_job(
        job_def, execution_plan=plan, run_config=run_config, tags=tags,
        remote_job_origin=RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME).get_job_origin(job_name),
        job_code_origin=recon.get_python_origin(),
    )
    return execute_run(here, run, instance)


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
