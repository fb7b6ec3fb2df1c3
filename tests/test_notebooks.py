"""The example notebooks (notebooks/*.ipynb) run top to bottom, so that they cannot rot.

They are written for the state `make demo` leaves in .quant/; here a small warehouse of
the same tables (models/synthetic.py write_panel: raw tables, pit_features and labels,
plus out-of-sample predictions in the model's schema) stands in for it, named by
QUANT_HOME / QUANT_WAREHOUSE_URI as a researcher would. nbclient executes each notebook on
a fresh ipykernel of this interpreter, with the notebook's folder as working directory."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import nbformat
import polars as pl
import pytest
from nbclient import NotebookClient

from quant_assets.models.synthetic import simulated_panel, write_panel
from quant_assets.warehouse import PartitionWindow, Warehouse

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# a line each notebook prints, proving the cell that checks it ran as intended
EXPECTED = {
    "research_api.ipynb": ["identical to the stored partitions: True", "MLflow run "],
    "feature_plugin.ipynb": ["0 differences", "look-ahead leak: 1 feature(s)", "reads more than its window=20"],
}


@pytest.fixture(scope="module")
def demo_like_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("notebooks-home")
    warehouse = Warehouse(str(home / "warehouse"))
    panel = simulated_panel(n_instruments=20, start=dt.date(2022, 1, 3), end=dt.date(2023, 3, 31))
    write_panel(warehouse, panel)
    # predictions in oos_predictions' schema (a stand-in for the walk-forward model's)
    predictions = panel.pit_features.filter(pl.col("date") >= dt.date(2022, 9, 1)).select(
        "date", "instrument_id", pl.col("return_60d").alias("score"),
        pl.col("date").dt.truncate("1mo").alias("model_month"), pl.lit("stand-in").alias("model_sha256"),
    )
    window = PartitionWindow("date", predictions["date"].min(), predictions["date"].max() + dt.timedelta(days=1))
    warehouse.write(["oos_predictions"], predictions, window)
    return home


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.extend(str(v) for k, v in output.get("data", {}).items() if k == "text/plain")
    return "".join(parts)


def test_every_notebook_is_tested():
    assert {p.name for p in NOTEBOOKS} == set(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, demo_like_home, monkeypatch):
    monkeypatch.setenv("QUANT_HOME", str(demo_like_home))
    monkeypatch.setenv("QUANT_WAREHOUSE_URI", str(demo_like_home / "warehouse"))
    monkeypatch.setenv("QUANT_MLFLOW_URI", f"sqlite:///{demo_like_home / 'mlflow.db'}")
    monkeypatch.setenv("QUANT_MLFLOW_ARTIFACTS", str(demo_like_home / "mlartifacts"))
    monkeypatch.delenv("QUANT_FEATURE_MODULES", raising=False)
    notebook = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        f"{path.name} is committed with outputs: clear them"
    # the kernel inherits this environment; a failing cell raises CellExecutionError here
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    printed = "\n".join(_text(cell) for cell in notebook.cells if cell.cell_type == "code")
    for line in EXPECTED[path.name]:
        assert line in printed, f"{path.name} did not print {line!r}"
