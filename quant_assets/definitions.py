"""The code location: every stage's assets and checks, resources, jobs, schedules, sensors.

``dagster dev -w workspace.yaml`` (or plain ``dagster dev``, via [tool.dagster]) loads
``defs``. Which executor runs the steps depends on QUANT_ENV: the multiprocess executor
locally, one Kubernetes Job per step (dagster-k8s) when deployed.
"""

from __future__ import annotations

from dagster import (
    Definitions,
    load_asset_checks_from_modules,
    load_assets_from_modules,
    multiprocess_executor,
)

from quant_assets import jobs
from quant_assets.backtest import assets as backtest_assets
from quant_assets.data import assets as data_assets
from quant_assets.features import assets as feature_assets
from quant_assets.models import assets as model_assets
from quant_assets.partitions import SETTINGS
from quant_assets.validation import assets as validation_assets
from resources import build_resources
from sensors import SCHEDULES, SENSORS

STAGES = [data_assets, feature_assets, model_assets, backtest_assets, validation_assets]


def _executor():
    if SETTINGS.env == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return multiprocess_executor.configured({"max_concurrent": 2})


defs = Definitions(
    assets=load_assets_from_modules(STAGES),
    asset_checks=load_asset_checks_from_modules(STAGES),
    jobs=jobs.ALL_JOBS,
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources=build_resources(SETTINGS),
    executor=_executor(),
)
