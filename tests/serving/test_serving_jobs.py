"""The serving and nightly jobs resolve against every stage's assets (one partitioning
each), and their schedules ask for the right partitions."""

from __future__ import annotations

import datetime as dt

from dagster import (
    Definitions,
    RunRequest,
    SkipReason,
    build_schedule_context,
    load_assets_from_modules,
)

from quant_assets import jobs
from quant_assets.serving import assets as serving_assets
from sensors import monitoring


def _at(y, m, d, hh=0, mm=0):
    return build_schedule_context(scheduled_execution_time=dt.datetime(y, m, d, hh, mm, tzinfo=dt.UTC))


def test_jobs_resolve_with_the_whole_code_location():
    from quant_assets.definitions import STAGES
    from quant_assets.settings import get_settings
    from resources import build_resources

    defs = Definitions(
        assets=load_assets_from_modules([*STAGES, serving_assets]),
        jobs=[jobs.serving_job, jobs.nightly_revalidation_job],
        schedules=monitoring.SCHEDULES, sensors=monitoring.SENSORS,
        resources=build_resources(get_settings()),
    )
    serving = defs.resolve_job_def("serving_job")
    assert {k.to_user_string() for k in serving.asset_layer.executable_asset_keys} == {
        "daily_scores", "drift_report", "signal_health"}
    nightly = defs.resolve_job_def("nightly_revalidation_job")
    assert "Monthly" in str(nightly.partitions_def)
    defs.get_repository_def()  # the sensor's resources (tracking, io_manager) are bound


def test_schedules_pick_the_day_and_the_latest_complete_month():
    request = monitoring.nightly_revalidation_schedule(_at(2023, 4, 12, 3))
    assert isinstance(request, RunRequest) and request.partition_key == "2023-03-01"
    assert isinstance(monitoring.nightly_revalidation_schedule(_at(2023, 1, 15, 3)), SkipReason)
    request = monitoring.daily_serving_schedule(_at(2023, 4, 12, 22, 30))
    assert isinstance(request, RunRequest) and request.partition_key == "2023-04-12"
    assert isinstance(monitoring.daily_serving_schedule(_at(2023, 1, 2, 22, 30)), SkipReason)  # holiday
