"""Code location for the daemon test: only the serving alarm sensor, with the resources of
the configured settings (QUANT_HOME from the test's environment)."""

from dagster import Definitions

from quant_assets.settings import get_settings
from resources import build_resources
from sensors.monitoring import serving_alarm_sensor

defs = Definitions(sensors=[serving_alarm_sensor], resources=build_resources(get_settings()))
