"""The audit trail of every run: run-status sensors that append ``audit_log`` rows
(``quant_assets.audit``), running by default so that runs launched from the UI, schedules,
sensors and backfills are all recorded."""

from __future__ import annotations

from dagster import (
    DagsterEventType,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunStatusSensorContext,
    run_status_sensor,
)

from quant_assets.audit import AuditEvent, record


def run_materializations(instance, run_id: str) -> list[tuple[str, tuple[str, ...]]]:
    """(asset key, partitions) per asset materialised by the run, partitions sorted."""
    parts: dict[str, set[str]] = {}
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        mat = entry.asset_materialization
        if mat is None:
            continue
        key = mat.asset_key.to_user_string()
        parts.setdefault(key, set())
        if mat.partition:
            parts[key].add(mat.partition)
    return [(k, tuple(sorted(v))) for k, v in sorted(parts.items())]


def record_run(instance, run, success: bool = True, root: str | None = None) -> int:
    """Audit rows for one finished Dagster run (a run object with run_id and tags)."""
    tags = dict(run.tags or {})
    reason = tags.get("quant/reason") or tags.get("dagster/backfill") or tags.get(
        "dagster/schedule_name") or tags.get("dagster/sensor_name") or ""
    if not success:
        return record(AuditEvent(
            action="materialize_failed", object_type="asset", object=run.job_name,
            reason=reason, dagster_run_id=run.run_id, tags=tags,
        ), root)
    events = [
        AuditEvent(action="materialize", object_type="asset", object=key, partitions=parts,
                   reason=reason, dagster_run_id=run.run_id, tags=tags)
        for key, parts in run_materializations(instance, run.run_id)
    ]
    return record(events, root)




@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    monitor_all_code_locations=False,
    default_status=DefaultSensorStatus.RUNNING,
    description="Append one audit_log row per asset materialised by each successful run.",
    minimum_interval_seconds=30,
)
def audit_run_success_sensor(context: RunStatusSensorContext):
    record_run(context.instance, context.dagster_run, success=True)


@run_status_sensor(
    run_status=DagsterRunStatus.FAILURE,
    default_status=DefaultSensorStatus.RUNNING,
    description="Append an audit_log row for each failed run.",
    minimum_interval_seconds=30,
)
def audit_run_failure_sensor(context: RunStatusSensorContext):
    record_run(context.instance, context.dagster_run, success=False)
