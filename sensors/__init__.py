"""Sensors and schedules: the daily feature schedule, the landing-zone sensor, the
automation sensor (every asset's automation condition), the serving alarm (drift,
realised Sharpe and scorer latency, with rollback), sweeps, the audit trail of every run."""


from sensors.audit import audit_run_failure_sensor, audit_run_success_sensor
from sensors.automation import automation_sensor
from sensors.landing import landing_files_sensor
from sensors.monitoring import SCHEDULES as MONITORING_SCHEDULES
from sensors.monitoring import SENSORS as MONITORING_SENSORS
from sensors.schedules import daily_features_schedule
from sensors.trials import sweep_trials_sensor

SCHEDULES = [daily_features_schedule, *MONITORING_SCHEDULES]
SENSORS = [
    landing_files_sensor,
    automation_sensor,
    *MONITORING_SENSORS,
    sweep_trials_sensor,
    audit_run_success_sensor,
    audit_run_failure_sensor,
]
