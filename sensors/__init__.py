"""Sensors and schedules: the daily feature schedule, the landing-zone sensor, and the
serving monitors (drift / realised-Sharpe alarm with rollback, daily scoring, nightly
revalidation), the audit trail of every run."""

from quant_assets.audit import audit_run_failure_sensor, audit_run_success_sensor
from quant_assets.models.jobs import MODEL_SENSORS
from sensors.landing import landing_files_sensor
from sensors.monitoring import SCHEDULES as MONITORING_SCHEDULES
from sensors.monitoring import SENSORS as MONITORING_SENSORS
from sensors.schedules import daily_features_schedule

SCHEDULES = [daily_features_schedule, *MONITORING_SCHEDULES]
SENSORS = [
    landing_files_sensor,
    *MONITORING_SENSORS,
    *MODEL_SENSORS,
    audit_run_success_sensor,
    audit_run_failure_sensor,
]
