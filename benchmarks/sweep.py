"""Sweep throughput: LightGBM trials on a simulated panel, with and without the pipeline.

    .venv/bin/python benchmarks/sweep.py            # 200 trials, 50 instruments, 3 months
    .venv/bin/python benchmarks/sweep.py --quick    # 20 trials, 30 instruments, 2 months

Two measurements over one Sobol search space (LightGBM hyper-parameters + strategy quantile):

1. core: `quant_assets.trials.trial.run_trial` (walk-forward training, out-of-sample scores,
   backtest) for every trial, spread over --workers processes: wall time and trials per
   minute; the LightGBM training time is also timed on its own.
2. pipeline: the first --pipeline-trials trials through Dagster as `run_sweep` runs them (a
   dynamic partition per trial, a run per trial, Delta reads of the inputs, registry and
   returns writes, an MLflow child run with the model strings), one after another in this
   process; the overhead per trial is its wall time minus the core time of the same trial
   run alone in the same process just before. Warm-up runs (numba compilation, imports) are
   not timed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_STATE: dict = {}


def _space(n_trials: int, months: list[str]):
    from quant_assets.trials.search import DEFAULT_SEARCH_SPACE, SearchSpace

    return SearchSpace.from_dict(
        {**DEFAULT_SEARCH_SPACE, "name": "bench", "n_trials": n_trials, "months": months,
         "base": {"lgbm": {"num_boost_round": 100, "early_stopping_rounds": 20}}}
    )


def _init(panel_args: dict) -> None:
    from quant_assets.features import total_return_index
    from quant_assets.models.synthetic import simulated_panel
    from quant_assets.models.walkforward import feature_columns, join_features_labels

    panel = simulated_panel(**panel_args)
    _STATE["panel"] = panel
    _STATE["features"] = panel.pit_features
    _STATE["joined"] = join_features_labels(panel.pit_features, panel.labels)
    _STATE["cols"] = feature_columns(panel.pit_features)
    _STATE["prices"] = total_return_index(panel.market_bars, panel.corporate_actions)


def _ready(spec_json: str) -> bool:
    """Warm a worker up: one trial compiles the numba backtest kernels (not timed)."""
    _core(spec_json)
    time.sleep(0.5)  # long enough for the pool to hand the calls to different workers
    return "joined" in _STATE


def _core(spec_json: str) -> tuple[str, float, float]:
    """(trial id, core seconds, LightGBM training seconds) of one trial."""
    from quant_assets.trials.search import TrialSpec
    from quant_assets.trials.trial import run_trial

    spec = TrialSpec.from_json(spec_json)
    t0 = time.perf_counter()
    result = run_trial(
        _STATE["joined"], _STATE["cols"], _STATE["features"], _STATE["prices"], spec
    )
    return spec.trial_id, time.perf_counter() - t0, result.train_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 trials, small panel")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pipeline-trials", type=int, default=None)
    args = parser.parse_args(argv)
    quick = args.quick
    n_trials = args.trials or (20 if quick else 200)
    n_pipeline = args.pipeline_trials if args.pipeline_trials is not None else (4 if quick else 10)
    if quick:
        panel_args = {"n_instruments": 30, "start": dt.date(2022, 1, 3), "end": dt.date(2023, 4, 28)}
        months = ["2023-01", "2023-02"]
    else:
        panel_args = {"n_instruments": 50, "start": dt.date(2022, 1, 3), "end": dt.date(2023, 6, 30)}
        months = ["2023-04", "2023-05", "2023-06"]

    home = Path(tempfile.mkdtemp(prefix="quant-bench-sweep-"))
    os.environ.update(
        QUANT_HOME=str(home), QUANT_START_DATE=panel_args["start"].isoformat(),
        QUANT_END_DATE=panel_args["end"].isoformat(), QUANT_FIRST_MODEL_MONTH=months[0],
        QUANT_N_INSTRUMENTS=str(panel_args["n_instruments"]), QUANT_ENV="local",
        MLFLOW_DISABLE_TELEMETRY="true", DAGSTER_DISABLE_TELEMETRY="true",
    )
    os.environ.pop("DAGSTER_HOME", None)
    import warnings

    warnings.filterwarnings("ignore")
    from quant_assets.trials.search import plan_trials

    t0 = time.perf_counter()
    _init(panel_args)
    t_panel = time.perf_counter() - t0
    trials = plan_trials(_space(n_trials, months), months)
    print(f"sweep benchmark: {len(trials)} trials x {len(months)} months, "
          f"{panel_args['n_instruments']} instruments, {_STATE['joined'].height} labelled rows, "
          f"{len(_STATE['cols'])} features; panel built in {t_panel:.1f}s; "
          f"{args.workers} workers on {os.cpu_count()} cores")

    t0 = time.perf_counter()
    # spawn, not fork: forking a process whose polars/LightGBM thread pools are running
    # deadlocks the children
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        args.workers, mp_context=ctx, initializer=_init, initargs=(panel_args,)
    ) as pool:
        # start every worker (each builds the panel once) before the clock of the trials
        list(pool.map(_ready, [trials[0].to_json()] * args.workers))
        warm = time.perf_counter()
        core = list(pool.map(_core, [t.to_json() for t in trials]))
    t_core_wall = time.perf_counter() - t0
    t_core_compute = time.perf_counter() - warm

    # pipeline: the same trials through Dagster + Delta + MLflow, one run per trial
    from dagster import DagsterInstance

    from quant_assets.cli.sweep import run_sweep
    from quant_assets.models.synthetic import write_panel
    from quant_assets.settings import Settings
    from resources import build_resources

    settings = Settings.from_env()
    resources = build_resources(settings)
    write_panel(resources["io_manager"].warehouse, _STATE["panel"])
    pipe_space = _space(n_trials, months)
    pipeline_rows = []
    with DagsterInstance.ephemeral() as instance:
        run_sweep(pipe_space, resources, instance, limit=0)  # register: plan, partitions, parent
        from dagster import materialize

        from quant_assets.data.assets import corporate_actions, fundamentals, market_bars, universe
        from quant_assets.features.assets import labels, pit_features
        from quant_assets.trials.assets import sweep_trial

        upstream = [universe, corporate_actions, fundamentals, market_bars, pit_features, labels]

        def pipeline(trial_id: str) -> float:
            t0 = time.perf_counter()
            materialize([*upstream, sweep_trial], selection=[sweep_trial],
                        partition_key=trial_id, resources=resources, instance=instance)
            return time.perf_counter() - t0

        pipeline(trials[-1].trial_id)  # warm-up: imports, numba, MLflow store (not timed)
        for spec in trials[:n_pipeline]:
            # the same trial's core alone, in this process, right before its pipeline run
            _, core_alone, _ = _core(spec.to_json())
            pipeline_rows.append((spec.trial_id, pipeline(spec.trial_id), core_alone))

    core_s = [c for _, c, _ in core]
    train_s = [t for _, _, t in core]
    pipe_s = [p for _, p, _ in pipeline_rows]
    overhead = [p - c for _, p, c in pipeline_rows]
    rows = [
        ("trials (core, parallel)", f"{len(core)}", ""),
        ("core wall time incl. worker start", f"{t_core_wall:.1f} s", ""),
        ("core trials per minute", f"{60 * len(core) / t_core_compute:.1f}",
         f"{args.workers} workers"),
        ("core time per trial (median)", f"{statistics.median(core_s):.2f} s",
         "train + predict + backtest"),
        ("LightGBM training per trial (median)", f"{statistics.median(train_s):.2f} s",
         f"{len(months)} models"),
    ]
    if pipeline_rows:
        rows += [
            ("pipeline trials (sequential)", f"{len(pipeline_rows)}", "Dagster+Delta+MLflow"),
            ("pipeline time per trial (median)", f"{statistics.median(pipe_s):.2f} s", ""),
            ("core alone, same trials (median)",
             f"{statistics.median(c for _, _, c in pipeline_rows):.2f} s", "1 process"),
            ("pipeline overhead per trial (median)", f"{statistics.median(overhead):.2f} s",
             "pipeline - core alone of the same trial"),
            ("pipeline trials per minute (1 process)", f"{60 / statistics.median(pipe_s):.1f}", ""),
        ]
    width = max(len(r[0]) for r in rows)
    print()
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>10}  {note}")
    print(f"\n(load average at the end: {os.getloadavg()[0]:.1f}; state under {home})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
