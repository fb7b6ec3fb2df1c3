"""``make demo``: the golden flow end to end on the embedded default (the simulator), or on a
data directory with ``QUANT_SOURCE=files QUANT_DATA_DIR=<dir>`` (``make demo-real``: the
real S&P 500 prices of skfolio's wheel written into that layout).

Runs the flow through a real Dagster instance under DAGSTER_HOME (so the runs show up in
``dagster dev`` afterwards), stage by stage, one run per partitioning (and per model family):

1. reference data (universe, corporate actions, fundamentals)
2. market bars + point-in-time features over the whole trading-day range
3. labels over the days whose horizon is complete
4. walk-forward LightGBM models, their out-of-sample predictions and backtest, every month
5. the same for the GRU (4, 5 and 6 run at the same time, in processes of their own)
6. the months' trials (strategy grid, model sweep) that the reports' DSR and PBO count
7. both validation reports and the family comparison
8. the promotion gate (the blocking check on the comparison; nothing is promoted)

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
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

# what the demo prints is its own: third-party log records and warnings go to this file under
# QUANT_HOME instead of the console (MLflow's registry lines, Dagster's beta warnings, ...)
THIRD_PARTY_LOG = "demo-third-party.log"


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


def quiet_third_party() -> None:
    """Keep the console to the demo's own lines: Python warnings are routed to logging, and
    the loggers of the libraries (MLflow, alembic, Dagster's own, ...) keep WARNING and above,
    written to ``$QUANT_HOME/demo-third-party.log`` once QUANT_HOME exists (``log_to_file``).
    MLflow's ``eprint`` lines ("Created version '3' of model ...") bypass logging: its stream
    is sent to a logger of its own, and its log records go through the root handler."""
    logging.captureWarnings(True)
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")  # no handlers of its own
    from mlflow.utils import logging_utils

    # eprint writes to this stream (whatever its `enabled`, which autologging switches back
    # on): its lines become records of their own logger, into the file with the rest
    printed = logging.getLogger("mlflow.console")
    printed.setLevel(logging.INFO)
    stream = logging_utils.MLFLOW_LOGGING_STREAM
    stream.write = lambda text: printed.info(text.rstrip()) if text.strip() else None
    stream.flush = lambda: None
    root = logging.getLogger()
    root.handlers = [logging.NullHandler()]  # until log_to_file: nothing on the console
    root.setLevel(logging.WARNING)
    for name in ("mlflow", "alembic", "py.warnings", "lightgbm", "numba", "matplotlib"):
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = [], True
        logger.setLevel(logging.WARNING)


def log_to_file(path) -> None:
    """The third-party records of ``quiet_third_party`` from now on in ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().handlers = [handler]


class StageProgress:
    """Steps done of total for one stage's run, driven by the events the run stores
    (``instance.add_event_listener``): a progress bar on a terminal, redrawn in place, and
    plain lines otherwise (a line per finished step: what CI logs and the tests read). The
    bar's text follows the running step's own log lines (a model month, ...)."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.total, self.done, self.note = 0, 0, ""
        self.t0 = time.perf_counter()
        self.started: dict[str, float] = {}
        self.width = 0

    def start(self, step_keys: list[str]) -> None:
        self.total = len(step_keys)
        if self.tty:
            import shutil

            # a terminal that reports no width (0 columns) gets the fallback
            self.width = min(shutil.get_terminal_size((100, 24)).columns, 120)
            self._draw()

    def _draw(self) -> None:
        filled = round(20 * self.done / self.total) if self.total else 0
        line = (f"    {self.done}/{self.total} steps |{'#' * filled}{' ' * (20 - filled)}| "
                f"{time.perf_counter() - self.t0:5.1f}s {self.note}")
        sys.stdout.write("\r" + line[: self.width - 1].ljust(self.width - 1))
        sys.stdout.flush()

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.tty and self.width:  # the bar's line is cleared: "done in" follows
            sys.stdout.write("\r" + " " * (self.width - 1) + "\r")
            sys.stdout.flush()

    def __call__(self, entry: Any) -> None:
        event, step = entry.dagster_event, entry.step_key
        if event is None:  # a step's own log line: the bar shows where the step is
            if self.tty and step and entry.user_message:
                self.note = f"{step}: {entry.user_message.splitlines()[0]}"
                self._draw()
            return
        kind = event.event_type_value
        if kind == "STEP_START":
            self.started[step] = time.perf_counter()
            self.note = step
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED"):
            self.done += 1
            took = time.perf_counter() - self.started.get(step, time.perf_counter())
            status = {"STEP_SUCCESS": "done", "STEP_FAILURE": "failed", "STEP_SKIPPED": "skipped"}[kind]
            if not self.tty:
                print(f"    step {self.done}/{self.total} {step} {status} in {took:.1f}s", flush=True)
        else:
            return
        if self.tty:
            self._draw()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="quant-assets demo", description=__doc__.splitlines()[0])
    # internal: run stage N alone (the stage the demo runs alongside another, in a process
    # of its own: ALONGSIDE)
    parser.add_argument("--stage", type=int, default=None, help=argparse.SUPPRESS)
    only = parser.parse_args(argv).stage
    t_start = time.perf_counter()
    quiet_third_party()
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
    log_to_file(settings.quant_home / THIRD_PARTY_LOG)

    if only is None and settings.source == "files":
        print(f"quant-assets demo: files in {settings.data_dir}, "
              f"{settings.start_date} .. {settings.end_date}, models from {settings.first_model_month:%Y-%m}")
    elif only is None:
        print(f"quant-assets demo: {settings.n_instruments} instruments, "
              f"{settings.start_date} .. {settings.end_date}, seed {settings.seed}")
    if only is None:
        print(f"  QUANT_HOME={settings.quant_home}")

    from dagster import DagsterInstance
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    from quant_assets.definitions import defs
    from quant_assets.jobs import promotion_gate_job
    from quant_assets.models.monthly import LGBM, SEQ
    from quant_assets.partitions import label_partitions, monthly_partitions, trading_day_partitions

    # pool limits of deploy/pools.yaml on the local instance, before opening it
    configure_local_instance(settings.dagster_home, load_policy())
    instance = DagsterInstance.get()
    days = trading_day_partitions.get_partition_keys()
    # every label partition (the days whose horizon has bars): labels end 100% materialised
    label_days = label_partitions.get_partition_keys()
    months = monthly_partitions.get_partition_keys()
    # the runs' console: errors only (a failed step is also summed up below); the bar or the
    # step lines say how a run goes, and every event is in the instance (the UI)
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    month_range = (months[0], months[-1])
    # (title, job, partition range, the job's assets this stage runs: None for all of them)
    stages = [
        ("reference data", "reference_data_job", None, None),
        ("market bars + point-in-time features", "daily_features_job", (days[0], days[-1]), None),
        ("labels", "labels_job", (label_days[0], label_days[-1]), None),
        # one run per model family of the monthly job: independent chains, run side by side
        *((f"walk-forward {title}: models, predictions, backtests", "monthly_models_job", month_range,
           (family.asset, family.predictions, family.backtest)) for title, family in (("LightGBM", LGBM), ("GRU", SEQ))),
        ("the months' trials: strategy grid, model sweep", "strategy_grid_job", month_range, None),
        ("validation reports, family comparison", "validation_job", None, None),
        ("promotion gate (the check only: nothing is promoted)", promotion_gate_job.name, None, None),
    ]
    tty = sys.stdout.isatty()

    def run_stage(i: int) -> bool:
        title, job_name, key_range, assets = stages[i - 1]
        span = f" [{key_range[0]} .. {key_range[1]}]" if key_range else ""
        print(f"[{i}/{len(stages)}] {title}{span}", flush=True)
        t0 = time.perf_counter()
        tags = {}
        if key_range:
            tags = {ASSET_PARTITION_RANGE_START_TAG: key_range[0], ASSET_PARTITION_RANGE_END_TAG: key_range[1]}
        # a gate that says no fails its run: its verdict is printed below, not Dagster's error
        config = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}} if job_name == promotion_gate_job.name else quiet
        with StageProgress(tty) as progress:
            result = run_in_code_location(instance, defs, job_name, tags=tags, run_config=config,
                                          listener=progress, assets=assets)
        failures = [
            (e.event_specific_data.error.cls_name, f"{e.step_key}: {e.event_specific_data.error.message.strip()}")
            for e in result.all_events
            if e.is_step_failure and e.event_specific_data and e.event_specific_data.error
        ]
        if job_name == promotion_gate_job.name and failures and all(c == GATE_FAILED for c, _ in failures):
            # the verdict, not a broken demo: the check's result (and why) is in the UI
            print(f"    gate failed (run {result.run_id[:8]}: the check result says why)", flush=True)
            return True
        if not result.success:
            print(f"    FAILED (run {result.run_id}):\n      " + "\n      ".join(f for _, f in failures))
            return False
        print(f"    done in {time.perf_counter() - t0:.1f}s (run {result.run_id[:8]})", flush=True)
        return True

    if only is not None:
        return 0 if run_stage(only) else 1
    alongside = ALONGSIDE if side_by_side(os.environ.get("QUANT_DEMO_PARALLEL", "auto"), len(months),
                                          remote=_on_network_services(settings)) else {}
    i = 0
    while i < len(stages):
        i += 1
        if i not in alongside:
            if not run_stage(i):
                return 1
            continue
        # stage i and the stages alongside[i] read none of each other's assets: those run in
        # processes of their own meanwhile, their lines after stage i's
        children = [_start_stage_process(other) for other in alongside[i]]
        ok = run_stage(i)
        for child in children:
            out, err = child.communicate()
            if ok:
                print(out, end="", flush=True)
            if child.returncode != 0:
                if ok:
                    print(err[-4000:], end="")
                ok = False
        if not ok:
            return 1
        i = max(alongside[i])

    print_summary(settings, time.perf_counter() - t_start)
    return 0


# stage -> the stages run at the same time, each in a process of its own: the LightGBM
# months (4), the GRU months (5) and the month's trials (6) all read only features, labels and
# bars, and write different tables. Three processes on two cores: the three take about the
# same CPU time alone, so the cores stay busy until the last one ends. Each stage's own inputs,
# config and seeds are what they are either way, so are its outputs.
ALONGSIDE = {4: (5, 6)}
# QUANT_DEMO_PARALLEL=auto runs them side by side from this many model months, or whenever
# MLflow or the warehouse is a network service. A process of its own costs ~8 s of CPU to
# start (MLflow, Dagster and the code location imported again), about what 4 model months of
# a stage take on the embedded default, where side by side was slower (2 cores: 53 s against
# 45 s one after the other); at 24 months it is 179 s against ~290 s. On network services
# the stages wait on requests more than they compute, and side by side one stage's waits
# overlap the others' work (the production-stack test's 4 months: 107 s side by side, 176 s
# one after the other).
PARALLEL_FROM_MONTHS = 12


def side_by_side(setting: str, n_months: int, remote: bool = False) -> bool:
    """QUANT_DEMO_PARALLEL: "1" side by side, "0" one after the other, "auto" by the months
    and by whether the stages talk to network services (``remote``)."""
    if setting not in ("0", "1", "auto"):
        raise ValueError(f"QUANT_DEMO_PARALLEL={setting!r}: expected 0, 1 or auto")
    return setting == "1" or (setting == "auto" and (remote or n_months >= PARALLEL_FROM_MONTHS))


def _on_network_services(settings) -> bool:
    """MLflow over HTTP(S) or the warehouse in an object store (not the embedded default)."""
    from urllib.parse import urlsplit

    return (urlsplit(settings.mlflow_uri).scheme in ("http", "https")
            or urlsplit(settings.warehouse_uri).scheme not in ("", "file"))


def _start_stage_process(stage: int):
    """``python -m quant_assets demo --stage N`` in the background, its lines piped."""
    import subprocess

    return subprocess.Popen(
        [sys.executable, "-m", "quant_assets", "demo", "--stage", str(stage)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )


# a blocking check that failed fails its step with this error: the gate's "no"
GATE_FAILED = "DagsterAssetCheckFailedError"
LOCATION_NAME = "quant_assets"  # workspace.yaml's code location


def run_in_code_location(instance, defs, job_name: str, tags: dict[str, str], run_config: dict,
                         listener: Callable[[Any], None] | None = None,
                         assets: tuple[str, ...] | None = None):
    """Create a run of the code location's ``job_name`` in ``instance`` and execute it in this
    process; returns its JobExecutionResult. ``listener``, if given, is called with each event
    the run stores as it happens (``StageProgress``), after ``listener.start(step_keys)``.
    ``assets``: run only these assets of the job (the run's asset selection, as a subset
    launched from the UI records it).

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

    from dagster import AssetKey, in_process_executor
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
    selection = frozenset(AssetKey(name) for name in assets) if assets else None
    here = InMemoryJob(job_def.with_executor_def(in_process_executor))
    plan = create_execution_plan(here.get_subset(asset_selection=selection) if selection else here,
                                 run_config=run_config, instance_ref=instance.get_ref(), tags=tags)
    location = ModuleTarget(module_name=module, attribute=None, working_directory=os.getcwd(),
                            location_name=LOCATION_NAME).create_origins()[0]
    recon = ReconstructableRepository.for_module(module, "defs", os.getcwd()).get_reconstructable_job(job_name)
    run = instance.create_run_for_job(
        job_def, execution_plan=plan, run_config=run_config, tags=tags, asset_selection=selection,
        remote_job_origin=RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME).get_job_origin(job_name),
        job_code_origin=recon.get_python_origin(),
    )
    if listener is not None:
        listener.start(plan.step_keys_to_execute)
        instance.add_event_listener(run.run_id, listener)
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
