"""When `make demo` runs its model and trial stages side by side (QUANT_DEMO_PARALLEL)."""

from types import SimpleNamespace

import pytest

from quant_assets.cli.demo import PARALLEL_FROM_MONTHS, _on_network_services, side_by_side


@pytest.mark.parametrize(("mlflow_uri", "warehouse_uri", "remote"), [
    ("sqlite:////q/mlflow.db", "/q/warehouse", False),  # the embedded default
    ("sqlite:////q/mlflow.db", "file:///q/warehouse", False),
    ("http://127.0.0.1:5000", "/q/warehouse", True),
    ("https://mlflow.desk", "/q/warehouse", True),
    ("sqlite:////q/mlflow.db", "s3://bucket/warehouse", True),
])
def test_network_services_are_mlflow_over_http_or_an_object_store(mlflow_uri, warehouse_uri, remote):
    settings = SimpleNamespace(mlflow_uri=mlflow_uri, warehouse_uri=warehouse_uri)
    assert _on_network_services(settings) is remote


def test_auto_goes_side_by_side_from_enough_months_or_on_network_services():
    assert not side_by_side("auto", PARALLEL_FROM_MONTHS - 1)
    assert side_by_side("auto", PARALLEL_FROM_MONTHS)
    assert side_by_side("auto", 1, remote=True)
    assert side_by_side("1", 1) and not side_by_side("0", 24, remote=True)
    with pytest.raises(ValueError, match="QUANT_DEMO_PARALLEL='yes'"):
        side_by_side("yes", 24)
