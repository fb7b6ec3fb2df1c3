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
}
for _k, _v in TEST_ENV.items():
    os.environ[_k] = _v
for _k in ("QUANT_WAREHOUSE_URI", "QUANT_MLFLOW_URI", "QUANT_MLFLOW_ARTIFACTS", "DAGSTER_HOME",
           "QUANT_LANDING_DIR", "QUANT_FEATURE_MODULES"):
    os.environ.pop(_k, None)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")
