"""Test session settings: a small, fast range, and all local state in a temporary
QUANT_HOME. Set before anything imports quant_assets.partitions (partitions are built
from these at import)."""

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="quant-test-")
TEST_ENV = {
    "QUANT_HOME": _HOME,
    "QUANT_START_DATE": "2022-01-03",
    "QUANT_END_DATE": "2023-04-28",
    "QUANT_FIRST_MODEL_MONTH": "2023-01",
    "QUANT_N_INSTRUMENTS": "30",
    "QUANT_SEED": "7",
    "QUANT_ENV": "local",
    # the built calendars' cache (quant_assets.calendar) inside the session's home, not ~/.cache
    "QUANT_CALENDAR_CACHE": os.path.join(_HOME, "calendars"),
}
for _k, _v in TEST_ENV.items():
    os.environ[_k] = _v
for _k in ("QUANT_WAREHOUSE_URI", "QUANT_MLFLOW_URI", "QUANT_MLFLOW_ARTIFACTS", "DAGSTER_HOME",
           "QUANT_LANDING_DIR", "QUANT_FEATURE_MODULES"):
    os.environ.pop(_k, None)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")


def pytest_collection_modifyitems(session, config, items):
    """The modules with end-to-end (``slow``) tests first, each module's tests together and
    in their own order. ``make test`` deals whole modules to two workers in collection order
    (``--dist loadfile``): a minutes-long module dealt last ran alone while the other worker
    sat idle; dealt first, the many quick modules fill in around the long ones. A stable
    sort on the module's rank only: the same order on every worker, as xdist requires.
    xdist keeps this order only with ``--no-loadscope-reorder`` (the Makefile passes it): by
    default it deals the modules with the most tests first, whatever the collection order."""
    slow_modules = {item.module.__name__ for item in items
                    if getattr(item, "module", None) is not None and item.get_closest_marker("slow")}
    items.sort(key=lambda item: getattr(item, "module", None) is None
               or item.module.__name__ not in slow_modules)
