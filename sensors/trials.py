"""``sweep_trials_sensor``: a run per batch of registered sweep trials that are not
materialised yet."""

from __future__ import annotations

from dagster import AssetKey, RunRequest, SensorEvaluationContext, SkipReason, sensor

from quant_assets.jobs import sweep_trials_job
from quant_assets.partitions import run_partitions, sweep_trial_partitions
from quant_assets.settings import load_settings
from quant_assets.trials.trial_registry import pending_batches


def trial_run_requests(registered: list[str], done: set[str], per_run: int) -> list[RunRequest]:
    """A run request per batch of pending trials: a partition range (Dagster's range tags,
    as a backfill of sweep_trials' BackfillPolicy writes them) whose run key names the
    batch, so each batch is requested once."""
    requests = []
    for batch in pending_batches(registered, done, per_run):
        key = batch[0] if len(batch) == 1 else f"{batch[0]}..{batch[-1]}"
        partition_key, tags = run_partitions(batch)
        requests.append(RunRequest(run_key=key, partition_key=partition_key, tags=tags))
    return requests


@sensor(
    job=sweep_trials_job,
    minimum_interval_seconds=30,
    description="Runs the registered sweep trials (sweep_trials dynamic partitions) that are "
    "not materialised yet, in batches of QUANT_SWEEP_TRIALS_PER_RUN consecutive trials per "
    "run; the run key names the batch, so each trial is requested once.",
)
def sweep_trials_sensor(context: SensorEvaluationContext):
    """A run per batch of registered trials that are not materialised yet (a failed batch is
    rerun by launching its range)."""
    registered = context.instance.get_dynamic_partitions(sweep_trial_partitions.name)
    done = context.instance.get_materialized_partitions(AssetKey("sweep_trials"))
    requests = trial_run_requests(registered, done, load_settings().sweep_trials_per_run)
    if not requests:
        return SkipReason("every registered sweep trial is materialised")
    return requests
