"""``sweep_trials_sensor``: a run per registered sweep trial that is not materialised yet."""

from __future__ import annotations

from dagster import AssetKey, RunRequest, SensorEvaluationContext, SkipReason, sensor

from quant_assets.jobs import sweep_trials_job
from quant_assets.partitions import sweep_trial_partitions


@sensor(
    job=sweep_trials_job,
    minimum_interval_seconds=30,
    description="Requests one run per registered sweep trial (sweep_trials dynamic partition) "
    "that is not materialised yet; the run key is the trial id, so each trial runs once.",
)
def sweep_trials_sensor(context: SensorEvaluationContext):
    """A run per registered trial that is not materialised yet; the run key is the trial id,
    so a trial is requested once (a failed trial is rerun by launching its partition)."""
    registered = context.instance.get_dynamic_partitions(sweep_trial_partitions.name)
    done = context.instance.get_materialized_partitions(AssetKey("sweep_trials"))
    pending = [key for key in registered if key not in done]
    if not pending:
        return SkipReason("every registered sweep trial is materialised")
    return [RunRequest(run_key=key, partition_key=key) for key in pending]


