"""``python -m quant_assets sweep``: register a sweep (plan rows, ``sweep_trials`` dynamic
partitions, the MLflow parent run) so that the daemon runs its pending trials
(``sensors/trials.py``), or run them in this process, and export the best trial's
reproducibility bundle.

A resumed sweep never reruns a finished trial: the pending trials are those without a row in
the trial registry (the ``sweep_trials`` table).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from dagster import DagsterInstance

from quant_assets.partitions import monthly_partitions, run_partitions, sweep_trial_partitions
from quant_assets.trials.assets import find_parent_run, sweep_parent_run
from quant_assets.trials.search import ADAPTIVE, SearchSpace, plan_trials
from quant_assets.trials.trial_registry import (
    REGISTRY_TABLE,
    add_to_plan,
    best_trial,
    completed_trials,
    pending_batches,
    planned_trials,
    sweep_results,
)
from quant_assets.warehouse import Warehouse
from resources.tracking import MlflowTracking


def default_months() -> list[str]:
    """Every monthly partition as YYYY-MM (a space without months sweeps all of them)."""
    return [key[:7] for key in monthly_partitions.get_partition_keys()]


@dataclass
class SweepRegistration:
    sweep: str
    trial_ids: list[str]
    added_partitions: list[str]
    pending: list[str]
    parent_run_id: str


def register_sweep(
    instance: DagsterInstance,
    warehouse: Warehouse,
    tracking: MlflowTracking,
    space: SearchSpace,
    round_size: int | None = None,
    optuna_storage: str | None = None,
) -> SweepRegistration:
    """Plan the trials of `space`, add only the missing ones (plan rows, dynamic partitions),
    ensure the parent run; the pending trials are those not yet in the registry. An adaptive
    space (``method: optuna``) plans its next round of `round_size` (QUANT_SWEEP_TRIALS_PER_RUN)
    trials from the registry's results, once the round before it has finished (its study in
    `optuna_storage`, default QUANT_OPTUNA_STORAGE)."""
    from quant_assets.settings import load_settings

    registered = instance.get_dynamic_partitions(sweep_trial_partitions.name)
    existing = set(registered)
    if space.method in ADAPTIVE:
        from quant_assets.trials.adaptive import next_round

        settings = load_settings()
        results = sweep_results(warehouse, space.name)
        new = next_round(space, optuna_storage or settings.optuna_storage, results,
                         round_size or settings.sweep_trials_per_run, default_months())
        add_to_plan(warehouse, new)
        planned = planned_trials(warehouse, space.name)
        # registration order, then this round's new trials (planned above)
        ids = [k for k in registered if k in planned] + [t.trial_id for t in new if t.trial_id not in existing]
        done = set(results)  # the registry rows of this sweep, already read
    else:
        trials = plan_trials(space, default_months())
        ids = [t.trial_id for t in trials]
        add_to_plan(warehouse, trials)
        done = completed_trials(warehouse, space.name)
    added = [i for i in ids if i not in existing]
    if added:
        instance.add_dynamic_partitions(sweep_trial_partitions.name, added)
    parent = sweep_parent_run(tracking, space)
    return SweepRegistration(space.name, ids, added, [i for i in ids if i not in done], parent)


def run_sweep(
    space: SearchSpace,
    resources: dict[str, Any],
    instance: DagsterInstance,
    limit: int | None = None,
    per_run: int | None = None,
    optuna_storage: str | None = None,
) -> SweepRegistration:
    """Register `space` and materialise its pending trials in this process (at most `limit`
    of them), a run per batch of `per_run` (QUANT_SWEEP_TRIALS_PER_RUN) consecutive pending
    trials, as the sensor batches them; an adaptive space round after round until its
    ``n_trials``. Returns the first registration (as it was before running)."""
    from dagster import materialize

    from quant_assets.data.assets import corporate_actions, fundamentals, market_bars, universe
    from quant_assets.features.assets import labels, pit_features
    from quant_assets.settings import load_settings
    from quant_assets.trials.assets import sweep_trial

    warehouse = resources["io_manager"].warehouse
    per_run = per_run or load_settings().sweep_trials_per_run
    upstream = [universe, corporate_actions, fundamentals, market_bars, pit_features, labels]
    first = registration = register_sweep(instance, warehouse, resources["tracking"], space, per_run,
                                 optuna_storage)
    budget = limit
    while registration.pending and (budget is None or budget > 0):
        todo = set(registration.pending if budget is None else registration.pending[:budget])
        done = set(registration.trial_ids) - todo
        for batch in pending_batches(registration.trial_ids, done, per_run):
            partition_key, tags = run_partitions(batch)
            result = materialize(
                [*upstream, sweep_trial],
                selection=[sweep_trial],
                partition_key=partition_key,
                tags=tags,
                resources=resources,
                instance=instance,
                # a line per step event is noise at a thousand trials; the run keeps its logs
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                raise_on_error=True,
            )
            assert result.success
        if budget is not None:
            budget -= len(todo)
        if space.method not in ADAPTIVE:
            break
        # the round's results are in the registry: the study proposes the next round
        registration = register_sweep(instance, warehouse, resources["tracking"], space, per_run,
                                 optuna_storage)
    return first


def export_best_trial(
    warehouse: Warehouse, tracking: MlflowTracking, sweep: str, quant_home: Path
) -> Path:
    """Write the best trial's bundle to QUANT_HOME/sweeps/<sweep>/best_trial and log it to
    the sweep's parent run as the `best_trial/` artifact folder. The bundle is enough to
    rebuild the trial: trial.json (registry row: params, resolved spec, metrics, Delta input
    versions, MLflow ids), lineage.json (the child run's), models/<YYYY-MM>.txt (from the
    batch run's trials/<trial id>/models)."""
    registry = warehouse.read(REGISTRY_TABLE).frame.filter(pl.col("sweep") == sweep)
    best = best_trial(registry)
    folder = Path(quant_home) / "sweeps" / sweep / "best_trial"
    (folder / "models").mkdir(parents=True, exist_ok=True)
    client = tracking.client()
    # a batch run holds the models of each of its trials under trials/<trial id>/models
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(best["mlflow_run_id"], f"trials/{best['trial_id']}/models", tmp)
        for path in sorted(Path(local).iterdir()):
            shutil.copyfile(path, folder / "models" / path.name)
    expected = {f"{m}.txt" for m in json.loads(best["model_sha256"])}
    found = {p.name for p in (folder / "models").iterdir()}
    if found != expected:
        raise ValueError(
            f"trial {best['trial_id']}: MLflow run {best['mlflow_run_id']} holds model files "
            f"{sorted(found)}, expected {sorted(expected)}"
        )
    lineage = tracking.load_lineage(best["mlflow_run_id"])
    (folder / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True, default=str))
    (folder / "trial.json").write_text(
        json.dumps({**best, "n_trials": registry.height}, indent=2, sort_keys=True, default=str)
    )
    client.log_artifacts(find_parent_run(tracking, sweep), str(folder), "best_trial")
    return folder


def main(argv: list[str] | None = None) -> int:
    """``quant-assets sweep SPACE.yaml [--run [--limit N]] [--export-best]``."""
    import argparse

    import yaml

    from quant_assets.instance import prepare_local_instance
    from quant_assets.settings import get_settings
    from resources import build_resources

    parser = argparse.ArgumentParser(prog="quant-assets sweep", description=__doc__.splitlines()[0])
    parser.add_argument("space", help="search space file (YAML or JSON; see trials/search.py)")
    parser.add_argument("--run", action="store_true",
                        help="run the pending trials in this process (default: leave them to "
                        "the daemon's sweep_trials_sensor)")
    parser.add_argument("--limit", type=int, default=None, help="with --run: at most N trials")
    parser.add_argument("--export-best", action="store_true",
                        help="write the best trial's reproducibility bundle under QUANT_HOME")
    args = parser.parse_args(argv)
    space = SearchSpace.from_dict(yaml.safe_load(Path(args.space).read_text()))
    settings = get_settings()
    if settings.env == "local":
        prepare_local_instance(settings.dagster_home)
    resources = build_resources(settings)
    with DagsterInstance.get() as instance:
        if args.run:
            registration = run_sweep(space, resources, instance, limit=args.limit)
        else:
            registration = register_sweep(
                instance, resources["io_manager"].warehouse, resources["tracking"], space
            )
    print(f"sweep {registration.sweep}: {len(registration.trial_ids)} trials, "
          f"{len(registration.added_partitions)} new partitions, "
          f"{len(registration.pending)} pending before this command, "
          f"MLflow parent run {registration.parent_run_id}")
    if args.export_best:
        folder = export_best_trial(
            resources["io_manager"].warehouse, resources["tracking"], space.name, settings.quant_home
        )
        print(f"best trial bundle: {folder}")
    return 0
