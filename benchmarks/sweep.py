"""Sweep at scale: 1,000 trials through Dagster against the same trials in one plain process.

    .venv/bin/python benchmarks/sweep.py                 # 1,000 trials; resume test on 200
    .venv/bin/python benchmarks/sweep.py --quick         # 60 trials; resume test on 40
    .venv/bin/python benchmarks/sweep.py --per-run 100   # batch size (QUANT_SWEEP_TRIALS_PER_RUN)

One Sobol search space of LightGBM hyper-parameters x strategy parameters, on a simulated
panel written to a local Delta warehouse. In one invocation, one after another:

1. plain: ``quant_assets.trials.trial.run_trial`` for a batch's trials in this process, on
   the tables in memory (the baseline: what the trials cost with no pipeline);
2. Dagster: then the same batch as ``quant-assets sweep --run`` runs it (``run_sweep``): a run
   of QUANT_SWEEP_TRIALS_PER_RUN trials against a SQLite Dagster instance, reading its inputs
   from Delta, writing registry and returns rows, one MLflow child run for the batch. The two
   alternate batch by batch, so that a change of the machine's load hits both alike.
   Overhead per trial of a batch: (its run's time, from the instance's run record - the plain
   time of its trials) / its trials; quoted as the median over batches, and in total;
3. kill and resume: ``python -m quant_assets sweep SPACE --run`` in a subprocess over a
   second sweep, SIGKILLed once half its trials are in the registry, then registered again
   (the time to know what is left, a process start included) and run to the end; checks that
   no finished trial was rerun and prints the subprocess's peak RSS.

Warm-up (imports, numba compilation, the MLflow store) is not timed: two trials of another
sweep run through both paths first.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


ROUNDS = 30  # LightGBM boosting rounds per monthly model (early stopping after 10)


def _space_data(name: str, n_trials: int, months: list[str]) -> dict:
    from quant_assets.trials.search import DEFAULT_SEARCH_SPACE

    return {**DEFAULT_SEARCH_SPACE, "name": name, "n_trials": n_trials, "months": months,
            "base": {"lgbm": {"num_boost_round": ROUNDS, "early_stopping_rounds": 10}}}


def _space(name: str, n_trials: int, months: list[str]):
    from quant_assets.trials.search import SearchSpace

    return SearchSpace.from_dict(_space_data(name, n_trials, months))


def _peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set so far (VmHWM: reset by exec, unlike the rusage
    of a child, which Linux carries over from the forking parent)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _registry_rows(warehouse, sweep: str) -> dict[str, str]:
    """trial id -> MLflow run id of the sweep's registry rows."""
    import polars as pl

    if not warehouse.exists(["sweep_trials"]):
        return {}
    frame = warehouse.read(["sweep_trials"], columns=["trial_id", "sweep", "mlflow_run_id"]).frame
    frame = frame.filter(pl.col("sweep") == sweep)
    return dict(zip(frame["trial_id"], frame["mlflow_run_id"], strict=True))


def _cli(space_file: Path, env: dict, run: bool) -> subprocess.Popen:
    args = [sys.executable, "-m", "quant_assets", "sweep", str(space_file)] + (["--run"] if run else [])
    return subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _wait(proc: subprocess.Popen, stop=None) -> tuple[int, float, str]:
    """(exit status, peak RSS MB, output) of a child started by _cli; `stop()` true: SIGKILL
    its process group."""
    import threading

    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    reader.start()
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _peak_rss_mb(proc.pid) or 0.0)
        if stop is not None and stop():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.5)
    reader.join()
    return proc.returncode, peak, "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="60 trials, resume test on 40, 10 trials per run")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--resume-trials", type=int, default=None)
    parser.add_argument("--per-run", type=int, default=None, help="trials per run (default 50)")
    parser.add_argument("--instruments", type=int, default=30)
    args = parser.parse_args(argv)
    n_trials = args.trials or (60 if args.quick else 1000)
    n_resume = args.resume_trials or (40 if args.quick else 200)
    args.per_run = args.per_run or (10 if args.quick else 50)
    panel_args = {"n_instruments": args.instruments, "start": dt.date(2022, 1, 3),
                  "end": dt.date(2023, 5, 31)}
    months = ["2023-04", "2023-05"]

    home = Path(tempfile.mkdtemp(prefix="quant-bench-sweep-"))
    env = dict(
        QUANT_HOME=str(home), DAGSTER_HOME=str(home / "dagster"),
        QUANT_START_DATE=panel_args["start"].isoformat(),
        QUANT_END_DATE=panel_args["end"].isoformat(), QUANT_FIRST_MODEL_MONTH=months[0],
        QUANT_N_INSTRUMENTS=str(panel_args["n_instruments"]), QUANT_ENV="local",
        QUANT_SWEEP_TRIALS_PER_RUN=str(args.per_run),
        MLFLOW_DISABLE_TELEMETRY="true", DAGSTER_DISABLE_TELEMETRY="true", PYTHONWARNINGS="ignore",
    )
    os.environ.update(env)
    import warnings

    warnings.filterwarnings("ignore")
    from dagster import DagsterInstance

    from quant_assets.cli.sweep import run_sweep
    from quant_assets.features import total_return_index
    from quant_assets.instance import prepare_local_instance
    from quant_assets.models.synthetic import simulated_panel, write_panel
    from quant_assets.models.walkforward import feature_columns, join_features_labels
    from quant_assets.settings import Settings
    from quant_assets.trials.search import plan_trials
    from quant_assets.trials.trial import run_trial
    from resources import build_resources

    settings = Settings.from_env()
    prepare_local_instance(settings.dagster_home)
    resources = build_resources(settings)
    warehouse, tracking = resources["io_manager"].warehouse, resources["tracking"]
    t0 = time.perf_counter()
    panel = simulated_panel(**panel_args)
    write_panel(warehouse, panel)
    joined = join_features_labels(panel.pit_features, panel.labels)
    cols = feature_columns(panel.pit_features)
    prices = total_return_index(panel.market_bars, panel.corporate_actions)
    space = _space("bench", n_trials, months)
    trials = plan_trials(space, months)
    print(f"sweep benchmark: {len(trials)} trials x {len(months)} months, "
          f"{panel_args['n_instruments']} instruments, {joined.height} labelled rows, "
          f"{len(cols)} features, {args.per_run} trials per run; panel built and written in "
          f"{time.perf_counter() - t0:.1f}s; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
          flush=True)

    with DagsterInstance.get() as instance:
        # warm-up, not timed: imports, numba, the MLflow store and the Dagster instance
        warm = _space("warm-up", 2, months)
        for spec in plan_trials(warm, months):
            run_trial(joined, cols, panel.pit_features, prices, spec)
        run_sweep(warm, resources, instance, per_run=2)

        # 1 and 2, paired batch by batch (so that a change of the machine's load hits both
        # alike): the batch's trials plain, then the same batch as a Dagster run
        from dagster import RunsFilter

        from quant_assets.trials.trial_registry import pending_batches

        ids = [t.trial_id for t in trials]
        by_id = {t.trial_id: t for t in trials}
        batches = pending_batches(ids, set(), args.per_run)
        plain: dict[str, float] = {}
        paired: list[tuple[list[str], float, float]] = []  # (batch, plain s, Dagster run s)
        t_dagster = 0.0
        for batch in batches:
            for trial_id in batch:
                started = time.perf_counter()
                run_trial(joined, cols, panel.pit_features, prices, by_id[trial_id])
                plain[trial_id] = time.perf_counter() - started
            started = time.perf_counter()
            run_sweep(space, resources, instance, limit=len(batch), per_run=args.per_run)
            t_dagster += time.perf_counter() - started
            record = instance.get_run_records(RunsFilter(), limit=1)[0]
            tags = record.dagster_run.tags
            assert batch[0] in (tags.get("dagster/asset_partition_range_start"), tags.get("dagster/partition"))
            paired.append((batch, sum(plain[k] for k in batch), record.end_time - record.start_time))
            print(f"  batch {len(paired)}/{len(batches)}: plain {paired[-1][1]:.1f}s, "
                  f"Dagster run {paired[-1][2]:.1f}s", flush=True)
        t_plain = sum(plain.values())
        t_runs = sum(d for _, _, d in paired)
        per_batch = [(d - p) / len(b) for b, p, d in paired]
        rel = [(d - p) / p for _, p, d in paired]
        runs = tracking.client().search_runs([tracking.experiment_id()],
                                             filter_string="tags.`quant.sweep` = 'bench'", max_results=5000)

    # 3. kill half way, register again, resume (a subprocess: the CLI a researcher runs)
    resume = _space("bench-resume", n_resume, months)
    space_file = home / "resume.json"
    space_file.write_text(json.dumps(_space_data(resume.name, n_resume, months)))
    child_env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    _, rss_killed, _ = _wait(_cli(space_file, child_env, run=True),
                             stop=lambda: len(_registry_rows(warehouse, resume.name)) >= n_resume // 2)
    t_killed = time.perf_counter() - t0
    done_before = _registry_rows(warehouse, resume.name)
    t0 = time.perf_counter()
    status, _, out = _wait(_cli(space_file, child_env, run=False))
    t_register = time.perf_counter() - t0
    assert status == 0, out
    pending_line = next(line for line in out.splitlines() if line.startswith("sweep "))
    t0 = time.perf_counter()
    status, rss_resumed, out = _wait(_cli(space_file, child_env, run=True))
    pending_line = pending_line.split(" trials, ", 1)[-1]
    t_resume = time.perf_counter() - t0
    assert status == 0, out[-4000:]
    after = _registry_rows(warehouse, resume.name)
    rerun = [k for k, run_id in done_before.items() if after.get(k) != run_id]

    n = len(trials)
    rows = [
        ("trials", f"{n}", f"{len(months)} monthly models of <= {ROUNDS} rounds each"),
        ("plain: one process, tables in memory", f"{t_plain:.1f} s", f"{60 * n / t_plain:.0f} trials/min"),
        (f"Dagster: {len(batches)} runs of {args.per_run} trials", f"{t_runs:.1f} s",
         f"{60 * n / t_runs:.0f} trials/min"),
        ("  with run_sweep's registration per call", f"{t_dagster:.1f} s",
         "(the CLI registers once; here once per batch)"),
        ("overhead per trial (median over runs)", f"{1000 * statistics.median(per_batch):.1f} ms",
         f"{100 * statistics.median(rel):.1f}% of the same trials' plain time"),
        ("overhead in total", f"{t_runs - t_plain:.1f} s", f"{100 * (t_runs / t_plain - 1):.1f}%"),
        ("MLflow runs of the sweep", f"{len(runs)}", "1 parent + 1 child per run"),
        (f"resume test ({n_resume} trials): killed after", f"{t_killed:.1f} s",
         f"{len(done_before)} trials in the registry"),
        ("  register again (what is left)", f"{t_register:.1f} s", pending_line[:70]),
        ("  resume to the end", f"{t_resume:.1f} s", f"{len(after)} trials, {len(rerun)} finished ones rerun"),
        ("  peak RSS of the sweep process", f"{max(rss_killed, rss_resumed):.0f} MB",
         f"this one (both paths): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>10}  {note}")
    print(f"\n(load average at the end: {os.getloadavg()[0]:.1f}; state under {home})")
    assert len(after) == n_resume and not rerun, (len(after), rerun)
    return 0


if __name__ == "__main__":
    sys.exit(main())
