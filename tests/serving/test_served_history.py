"""A champion whose month was retrained since it was promoted (a restated bar the automation
rebuilt) keeps serving from the model table's earlier Delta version (time travel), until a
person promotes another version; the soak in execute mode found serving failing there."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from quant_assets.serving.served import ServedModelError, model_record, table_history
from quant_assets.warehouse import Warehouse

MONTH = dt.date(2023, 11, 1)


def _rows(run_id: str, sha: str) -> pl.DataFrame:
    return pl.DataFrame({"date": [MONTH], "mlflow_run_id": [run_id], "sha256": [sha]})


def test_a_retrained_month_is_found_in_the_tables_history(tmp_path):
    wh = Warehouse(str(tmp_path / "warehouse"))
    wh.write(["lgbm_model"], _rows("run-promoted", "aaa"))  # version 0: the champion's row
    wh.write(["lgbm_model"], _rows("run-retrained", "bbb"))  # version 1: the month retrained
    current = wh.read(["lgbm_model"]).frame
    assert current["mlflow_run_id"].to_list() == ["run-retrained"]
    record = model_record(current, "run-promoted", history=table_history(wh, "lgbm_model"))
    assert record["sha256"] == "aaa"
    # the current row when it is there: no history read
    assert model_record(current, "run-retrained", history=iter(()))["sha256"] == "bbb"


def test_history_is_read_lazily_newest_first():
    read = []

    def history():
        for name in ("v2", "v1", "v0"):
            read.append(name)
            yield _rows(f"run-{name}", name)

    assert model_record(_rows("now", "x"), "run-v2", history=history())["sha256"] == "v2"
    assert read == ["v2"]


def test_a_row_in_no_version_says_so():
    with pytest.raises(ServedModelError, match="no row for MLflow run gone in any version"):
        model_record(_rows("now", "x"), "gone", history=[_rows("older", "y")])
    with pytest.raises(ServedModelError, match="2 rows"):
        model_record(pl.concat([_rows("dup", "x"), _rows("dup", "x")]), "dup")
