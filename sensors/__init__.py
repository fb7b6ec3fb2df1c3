"""Sensors and schedules: the daily feature schedule and the landing-zone sensor."""

from sensors.schedules import daily_features_schedule
from sensors.landing import landing_files_sensor

SCHEDULES = [daily_features_schedule]
SENSORS = [landing_files_sensor]
