"""The serving and validation jobs resolve against every stage's assets (one partitioning
each); what launches serving by itself is the automation (tests/test_automation.py)."""

from __future__ import annotations

from dagster import Definitions, load_assets_from_modules

from quant_assets import jobs
from quant_assets.serving import assets as serving_assets
from sensors import monitoring


def test_jobs_resolve_with_the_whole_code_location():
    from quant_assets.definitions import STAGES
    from quant_assets.settings import get_settings
    from resources import build_resources

    defs = Definitions(
        assets=load_assets_from_modules([*STAGES, serving_assets]),
        jobs=[jobs.serving_job, jobs.validation_job, jobs.monthly_models_job],
        schedules=monitoring.SCHEDULES, sensors=monitoring.SENSORS,
        resources=build_resources(get_settings()),
    )
    serving = defs.resolve_job_def("serving_job")
    assert {k.to_user_string() for k in serving.asset_layer.executable_asset_keys} == {
        "daily_scores", "drift_report", "signal_health", "target_weights"}
    assert "Daily" in str(serving.partitions_def) or "0 0 * * 1-5" in str(serving.partitions_def)
    monthly = defs.resolve_job_def("monthly_models_job")
    assert "Monthly" in str(monthly.partitions_def)
    assert defs.resolve_job_def("validation_job").partitions_def is None  # whole history
    defs.get_repository_def()  # the sensor's resources (tracking, io_manager) are bound
