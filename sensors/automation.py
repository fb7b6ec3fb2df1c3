"""The automation sensor: evaluates every asset's ``AutomationCondition``
(``quant_assets.automation``) and launches what they ask for.

One explicit sensor over the whole code location (so Dagster adds no implicit
``default_automation_condition_sensor``), evaluated in the code location's server (one
condition, ``automation.MonthLabelled``, is Python; the rest are Dagster's operands). It starts running by itself when
``QUANT_AUTOMATION=on`` (a deployment); otherwise switch it on in the UI (*Automation*).
Runs are plain runs (one per partition key and partitioning), not backfills, so the run
list reads as the flow: a day's features, its labels, its serving chain; a month's models.
"""

from __future__ import annotations

from dagster import AssetSelection, AutomationConditionSensorDefinition, DefaultSensorStatus

from quant_assets.settings import load_settings

AUTOMATION_SENSOR = "automation_sensor"

automation_sensor = AutomationConditionSensorDefinition(
    AUTOMATION_SENSOR,
    target=AssetSelection.all() | AssetSelection.all_asset_checks(),
    default_status=DefaultSensorStatus.RUNNING if load_settings().automation else DefaultSensorStatus.STOPPED,
    minimum_interval_seconds=30,
    emit_backfills=False,
    # one condition (automation.MonthLabelled) is Python: evaluate in the code location
    use_user_code_server=True,
    description="Declarative automation of the golden flow: labels when their bars exist, a "
    "month's models, predictions, backtests and trials when it closes, reports, comparison "
    "and (QUANT_AUTO_PROMOTE=promote) promotion after them, scores, monitors and target "
    "weights after each day's features; restated days' dependents rebuilt.",
)
