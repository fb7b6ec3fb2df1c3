"""The code location: every stage's assets and checks, resources, jobs, schedules, sensors.

``dagster dev -w workspace.yaml`` (or plain ``dagster dev``, via [tool.dagster]) loads
``defs``. Which executor runs the steps depends on QUANT_ENV: the multiprocess executor
locally, one Kubernetes Job per step (dagster-k8s) when deployed.
"""

from __future__ import annotations

from dagster import Definitions, load_asset_checks_from_modules, load_assets_from_modules

from quant_assets import jobs
from quant_assets.backtest import assets as backtest_assets
from quant_assets.data import assets as data_assets
from quant_assets.features import assets as feature_assets
from quant_assets.models import assets as model_assets
from quant_assets.partitions import describe_partitions
from quant_assets.placement.apply import apply_placement, executor_for
from quant_assets.placement.policy import load_policy
from quant_assets.serving import assets as serving_assets
from quant_assets.settings import load_settings
from quant_assets.trials import assets as trial_assets
from quant_assets.validation import assets as validation_assets
from quant_assets.validation import checks as validation_checks
from resources import build_resources
from sensors import SCHEDULES, SENSORS

SETTINGS = load_settings()

STAGES = [
    data_assets,
    feature_assets,
    model_assets,
    backtest_assets,
    trial_assets,
    validation_assets,
    serving_assets,
]

defs = Definitions(
    # placement (pool + dagster-k8s/config per asset) comes from deploy/pools.yaml only
    # partitioned assets say their calendar, holidays and end (the UI's partitions line does not)
    assets=describe_partitions(apply_placement(load_assets_from_modules(STAGES), load_policy())),
    asset_checks=[*load_asset_checks_from_modules(STAGES), *validation_checks.CHECKS],
    jobs=jobs.ALL_JOBS,
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources=build_resources(SETTINGS),
    executor=executor_for(SETTINGS.env, local=SETTINGS.local_executor),
)
