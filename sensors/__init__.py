"""Sensors and schedules: the daily feature schedule and the landing-zone sensor."""

from sensors.landing import landing_files_sensor
from sensors.schedules import daily_features_schedule

SCHEDULES = [daily_features_schedule]
SENSORS = [landing_files_sensor]
