"""The golden flow on real prices, at a reduced size, as `make demo-real` runs it: skfolio's
S&P 500 closes (5 names, 2021-2022) written into the documented layout, then `quant-assets
demo` with QUANT_SOURCE=files (the range taken from the data), through Dagster: every stage
runs, the blocking look-ahead check passes on the real data, the report's benchmark is the
S&P 500 index, and the report and the demo say what the data is (survivors only,
close-only, adjusted)."""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from quant_assets.warehouse import Warehouse

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("real-data")]
pytest.importorskip("skfolio")  # the dev extra ships the real prices

REPO = Path(__file__).resolve().parents[1]
SYMBOLS = "AAPL,JPM,PG,UNH,XOM"


@pytest.fixture(scope="module")
def real_flow(tmp_path_factory):
    home = tmp_path_factory.mktemp("real-demo")
    data = home / "data"
    env = {k: v for k, v in os.environ.items()
           # the range must come from the data, as for a user's folder
           if k not in ("DAGSTER_HOME", "QUANT_START_DATE", "QUANT_END_DATE", "QUANT_FIRST_MODEL_MONTH")}
    env.update(QUANT_HOME=str(home), QUANT_SOURCE="files", QUANT_DATA_DIR=str(data), PYTHONWARNINGS="ignore")
    written = subprocess.run(
        [sys.executable, "-m", "quant_assets.data.real_layout", str(data), "--start", "2021-01-04",
         "--end", "2022-12-28", "--symbols", SYMBOLS],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert written.returncode == 0, written.stderr[-3000:]
    demo = subprocess.run([sys.executable, "-m", "quant_assets", "demo"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
    return home, demo.stdout


def test_the_demo_runs_on_the_folder_with_the_range_of_the_data(real_flow):
    home, out = real_flow
    # 2022-12-28 is not December's last session: the range ends with November
    assert "2021-01-04 .. 2022-11-30, models from 2022-01" in out
    for marker in ("[7/8] validation reports", "Headline statistics", "Sharpe", "DSR", "Demo wall time",
                   "Benchmark              S&P 500 index", "survivors only", "close-only", "adjusted"):
        assert marker in out, out
    wh = Warehouse(str(home / "warehouse"))
    assert sorted(wh.read(["universe"]).frame["instrument_id"].to_list()) == SYMBOLS.split(",")
    bars = wh.read(["market_bars"]).frame
    assert bars["date"].max() == dt.date(2022, 11, 30) and bars["open"].null_count() == bars.height
    assert wh.read(["lgbm_model"]).frame.height == 11  # 2022-01 .. 2022-11


def test_the_blocking_look_ahead_check_passed_on_every_feature_run(real_flow):
    home, _ = real_flow
    key = AssetCheckKey(AssetKey("pit_features"), "no_lookahead_leak")
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=5000)
        # a range run plans the check per partition and records one evaluation for the run
        done = [r for r in history if r.status != AssetCheckExecutionRecordStatus.PLANNED]
        assert done, "the look-ahead check never ran"
        for record in done:
            assert record.status == AssetCheckExecutionRecordStatus.SUCCEEDED, record.status
            evaluation = record.evaluation
            assert evaluation.passed, evaluation.description
            assert len(evaluation.metadata["sampled_days"].value) >= 1
        meta = instance.get_latest_materialization_event(AssetKey("pit_features")).asset_materialization.metadata
    # close-only bars, no fundamentals: those features are null, said so, never substituted
    null = meta["null_features"].value
    assert "high_low_range_1d" in null and "book_to_price" in null
    features = Warehouse(str(home / "warehouse")).read(["pit_features"]).frame
    assert all(features[name].null_count() == features.height for name in null)
    assert features.filter(pl.col("momentum_60d_skip_5d").is_not_null()).height > 0


def test_the_report_uses_the_index_and_states_the_caveats(real_flow):
    home, _ = real_flow
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        meta = instance.get_latest_materialization_event(AssetKey("validation_report")).asset_materialization.metadata
    assert meta["benchmark"].value == "S&P 500 index"
    summary = meta["summary"].value
    assert "vs benchmark: S&P 500 index" in summary and "## Data (files)" in summary
    assert any("survivors only" in c for c in meta["data_caveats"].value)
    report = dict(Warehouse(str(home / "warehouse")).read(["validation_report"]).frame.iter_rows())
    assert report["sharpe"] == report["sharpe"]  # computed on the real returns
