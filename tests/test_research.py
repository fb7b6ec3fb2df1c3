"""The research API (quant_assets/research.py) on a small warehouse written the way the
assets write it (models/synthetic.py write_panel): reads by date range and Delta version or
time, point-in-time raw rows, ad-hoc features equal to the stored partitions, a
researcher's scores backtested through the platform's core, the validation report's
statistics (benchmark-relative ones checked against empyrical), an MLflow run with lineage,
and the same reads from an S3 warehouse."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from quant_assets import calendar, research
from quant_assets.backtest.strategy import StrategySpec, backtest_scores, book_inputs
from quant_assets.features import catalog, total_return_index
from quant_assets.models.synthetic import simulated_panel, write_panel
from quant_assets.settings import get_settings
from quant_assets.validation import regimes, stats
from quant_assets.warehouse import PartitionWindow, Warehouse, WarehouseError

START, END = dt.date(2022, 1, 3), dt.date(2023, 3, 31)
BT_START, BT_END = dt.date(2022, 9, 1), dt.date(2023, 3, 24)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(warehouse root, panel, versions, time between the first writes and a restatement)."""
    root = str(tmp_path_factory.mktemp("research") / "warehouse")
    panel = simulated_panel(n_instruments=20, start=START, end=END)
    versions = write_panel(Warehouse(root), panel)
    time.sleep(0.05)
    between = dt.datetime.now(dt.UTC)
    time.sleep(0.05)
    # a late correction: a new version of one bar, published two days after its date
    bars = panel.market_bars
    day = dt.date(2022, 6, 1)
    row = bars.filter(pl.col("date") == day).head(1)
    corrected = row.with_columns(pl.col("close") * 1.01,
                                 knowledge_time=pl.col("knowledge_time") + pl.duration(days=2))
    restated = pl.concat([bars.filter(pl.col("date") == day), corrected])
    Warehouse(root).write(["market_bars"], restated, PartitionWindow("date", day, day + dt.timedelta(days=1)))
    return root, panel, versions, between, corrected


def _scores(panel) -> pl.DataFrame:
    # a researcher's own idea: short-term reversal scaled by volatility
    return panel.pit_features.filter(pl.col("date").is_between(BT_START, BT_END)).select(
        "date", "instrument_id", (-pl.col("return_5d") / pl.col("volatility_20d")).alias("score")
    )


def test_importing_the_api_loads_neither_dagster_nor_mlflow():
    code = "import sys, quant_assets.research; print(sorted(m for m in ('dagster', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tables_and_history(built):
    root, _, versions, _, _ = built
    lab = research.open(root)
    tables = lab.tables()
    assert set(tables["table"]) == set(versions)
    assert dict(tables.select("table", "version").iter_rows())["market_bars"] == versions["market_bars"] + 1
    history = lab.history("market_bars")
    assert history["version"].to_list() == [versions["market_bars"] + 1, versions["market_bars"]]
    with pytest.raises(FileNotFoundError, match="make demo"):
        research.open(str(Path(root).parent / "nowhere"))


def test_read_a_date_range_inclusive_as_polars_or_pandas(built):
    root, panel, _, _, _ = built
    lab = research.open(root)
    first, last = dt.date(2023, 1, 3), dt.date(2023, 1, 10)
    frame = lab.read("pit_features", first, last)
    want = panel.pit_features.filter(pl.col("date").is_between(first, last))
    assert frame.sort("date", "instrument_id").equals(want.sort("date", "instrument_id"))
    some = lab.read("pit_features", "2023-01-03", "2023-01-10", columns=["date", "instrument_id", "return_5d"],
                    instruments=want["instrument_id"].unique().sort()[:3])
    assert some.columns == ["date", "instrument_id", "return_5d"] and some["instrument_id"].n_unique() == 3
    as_pandas = lab.read("pit_features", first, last, pandas=True)
    assert isinstance(as_pandas, pd.DataFrame) and len(as_pandas) == frame.height
    np.testing.assert_array_equal(as_pandas["return_5d"].to_numpy(dtype=float),
                                  frame["return_5d"].fill_null(np.nan).to_numpy())
    actions = lab.read("corporate_actions", "2022-01-01", "2022-12-31")
    assert actions["ex_date"].max() <= dt.date(2022, 12, 31)
    with pytest.raises(ValueError, match="no 'date' column"):
        lab.read("universe", "2022-01-01", "2022-12-31")
    with pytest.raises(ValueError, match="before start"):
        lab.read("pit_features", last, first)


def test_time_travel_by_version_by_time_and_a_pinned_session(built):
    root, panel, versions, between, corrected = built
    day = dt.date(2022, 6, 1)
    lab = research.open(root)
    latest = lab.read("market_bars", day, day)
    assert latest.height == panel.market_bars.filter(pl.col("date") == day).height + 1
    old = lab.read("market_bars", day, day, version=versions["market_bars"])
    assert old.sort("instrument_id").equals(panel.market_bars.filter(pl.col("date") == day).sort("instrument_id"))
    assert lab.read("market_bars", day, day, at=between).equals(old)
    pinned = research.open(root, at=between)
    assert pinned.read("market_bars", day, day).equals(old)
    assert pinned.versions_read == {"market_bars": versions["market_bars"]}
    with pytest.raises(WarehouseError, match="no version committed at or before"):
        lab.read("market_bars", at="2001-01-01T00:00Z")
    # a session reads each table at the version it first read, whatever is written meanwhile
    session = research.open(root)
    session.read("labels", "2022-03-01", "2022-03-01")
    Warehouse(root).write(["labels"], panel.labels.filter(pl.col("date") == dt.date(2022, 3, 1)),
                          PartitionWindow("date", dt.date(2022, 3, 1), dt.date(2022, 3, 2)))
    assert session.versions_read["labels"] == versions["labels"]
    session.refresh()
    session.read("labels", "2022-03-01", "2022-03-01")
    assert session.versions_read["labels"] == versions["labels"] + 1


def test_raw_rows_as_known_at_a_day(built):
    root, panel, _, _, corrected = built
    lab = research.open(root)
    day = dt.date(2022, 6, 1)
    instrument = corrected["instrument_id"][0]
    for known_at, close in ((day, None), (calendar.shift_trading_days(day, 3), corrected["close"][0])):
        rows = lab.read("market_bars", day, day, known_at=known_at, instruments=[instrument])
        assert rows.height == 1  # one version per key
        cut = calendar.cutoff(known_at, get_settings().cutoff_time)
        assert rows["knowledge_time"].max() <= cut
        if close is not None:
            assert rows["close"][0] == close  # the correction, known by then
        else:
            assert rows["close"][0] != corrected["close"][0]
    universe = lab.read("universe", known_at="2022-06-01")
    assert universe["instrument_id"].is_unique().all()
    with pytest.raises(ValueError, match="not bitemporal"):
        lab.read("pit_features", known_at="2022-06-01")


def test_features_of_ad_hoc_days_equal_the_stored_partitions(built):
    root, panel, _, _, _ = built
    lab = research.open(root, at=built[3])  # the raw tables the stored features were built from
    days = [dt.date(2022, 11, 1), dt.date(2023, 2, 15)]
    stored = lab.read("pit_features").filter(pl.col("date").is_in(days)).sort("date", "instrument_id")
    assert lab.features(days).equals(stored)
    ranged = lab.features(start="2023-02-13", end="2023-02-15", features=["return_5d"])
    assert ranged["date"].unique().sort().to_list() == calendar.trading_days(dt.date(2023, 2, 13), dt.date(2023, 2, 15))
    assert ranged.columns == ["date", "instrument_id", "return_5d"]


def test_plugin_features_in_ad_hoc_computations(built, monkeypatch):
    root, _, _, _, _ = built
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "features" / "plugin_fixtures"))
    lab = research.open(root)
    with research.feature_modules("desk_features"):
        frame = lab.features(["2023-02-15"], features=["gap_up_share_20d", "value_momentum_rank"])
    assert frame.columns == ["date", "instrument_id", "gap_up_share_20d", "value_momentum_rank"]
    assert frame["gap_up_share_20d"].is_between(0, 1).all()
    assert "gap_up_share_20d" not in catalog.active_features()


def test_backtest_of_own_scores_is_the_platform_core(built):
    root, panel, _, _, _ = built
    lab = research.open(root)
    scores = _scores(panel)
    spec = StrategySpec(quantile=0.3, sector_neutral=True, borrow_bps=80.0, max_turnover=0.6)
    bt = lab.backtest(scores, spec)
    # the same call the backtest asset makes, on the same tables
    bars = lab.read("market_bars")
    prices, sectors = book_inputs(spec, total_return_index(bars, lab.read("corporate_actions")), lab.read("universe"), bars)
    direct = backtest_scores(scores, prices.filter(pl.col("date").is_between(BT_START, BT_END)), spec,
                             sectors=sectors, history=prices.filter(pl.col("date") < BT_START))
    assert bt.daily.equals(direct.daily)
    assert bt.daily["date"].min() >= BT_START and bt.daily["date"].max() == BT_END
    assert (bt.daily["borrow_cost"] > 0).any()
    # pandas in, another column name: the same backtest
    renamed = scores.rename({"score": "reversal"}).to_pandas()
    assert lab.backtest(renamed, spec, score="reversal").daily.equals(bt.daily)
    with pytest.raises(ValueError, match="more than one row"):
        lab.backtest(pl.concat([scores, scores.head(1)]), spec)
    with pytest.raises(ValueError, match=r"lack columns \['score'\]"):
        lab.backtest(scores.rename({"score": "x"}), spec)


def test_report_statistics_match_the_references_and_are_deterministic(built):
    import empyrical

    root, panel, _, _, _ = built
    lab = research.open(root)
    scores = _scores(panel)
    spec = StrategySpec()
    bt = lab.backtest(scores, spec)
    report = lab.report(bt, scores, spec, n_bootstrap=100)
    m = report.metrics
    returns = bt.daily["net_return"].to_numpy()
    assert m["n_obs"] == len(returns)
    # benchmark: the equal-weight market of the universe (dollar-neutral book)
    prices = lab.prices()
    market = regimes.equal_weight_returns(prices, "tr_close")
    bench = research.Benchmark("m", market, "market").aligned(bt.daily["date"])
    assert report.benchmark.kind == "market"
    # benchmark-relative statistics equal empyrical-reloaded 0.7.1's
    assert m["beta"] == pytest.approx(empyrical.beta(returns, bench), rel=1e-9)
    assert m["alpha"] == pytest.approx(empyrical.alpha(returns, bench), rel=1e-9)
    assert m["information_ratio"] == pytest.approx(stats.information_ratio(returns, bench), rel=1e-12)
    assert m["sharpe"] == pytest.approx(empyrical.sharpe_ratio(returns), rel=1e-9)
    # the trials: the report's six strategy variants (the default spec is one of them)
    assert list(report.trial_sharpes) == ["q0.1-equal", "q0.1-score", "q0.2-equal", "q0.2-score",
                                          "q0.3-equal", "q0.3-score"]
    q = dataclasses.replace(spec, quantile=0.3, scheme="score")
    variant = lab.backtest(scores, q).daily["net_return"].to_numpy()
    assert report.trial_sharpes["q0.3-score"] == pytest.approx(stats.sharpe_per_period(variant), rel=1e-12)
    assert 0.0 <= m["dsr"] <= m["psr"] <= 1.0  # deflating by the variants never raises it
    assert np.isfinite(m["rank_ic_mean"])
    assert "Information ratio" in report.markdown and report.benchmark.name in report.markdown
    assert report.html.startswith("<!DOCTYPE html>") and "data:image/png;base64," in report.html
    again = lab.report(bt, scores, spec, n_bootstrap=100)
    assert again.html == report.html and again.metrics == report.metrics
    # an idea tried alongside counts as a trial
    more = lab.report(bt, scores, spec, n_bootstrap=100, extra_trial_sharpes={"my other idea": 0.05})
    assert more.metrics["n_trials"] == report.metrics["n_trials"] + 1 and more.metrics["dsr"] < report.metrics["dsr"]


def test_report_logged_to_mlflow_with_lineage(built, tmp_path):
    from mlflow.tracking import MlflowClient

    root, panel, versions, _, _ = built
    lab = research.open(root)
    scores = _scores(panel)
    bt = lab.backtest(scores)
    report = lab.report(bt, scores, n_bootstrap=50, variants=False)
    assert list(report.trial_sharpes) == ["selected"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = lab.log(report, "reversal", tracking_uri=uri)
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["quant.asset_key"] == "research/reversal"
    for table, version in lab.versions_read.items():
        assert run.data.tags[f"quant.input_version.{table}"] == str(version)
    assert run.data.metrics["sharpe"] == pytest.approx(report.metrics["sharpe"])
    assert run.data.params["quantile"] == "0.2"
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(run_id)}
    assert {"lineage.json", "report.md", "report.html"} <= artifacts
    lineage = json.loads(Path(MlflowClient(uri).download_artifacts(run_id, "lineage.json", str(tmp_path))).read_text())
    assert lineage["config"]["scores_sha256"] == report.config["scores_sha256"]
    assert lineage["extra"]["warehouse"] == root and "return_5d" in lineage["feature_versions"]


@pytest.mark.slow
def test_an_s3_warehouse_reads_the_same(built, tmp_path, monkeypatch):
    from test_production_stack import ACCESS_KEY, BUCKET, SECRET_KEY, seaweedfs_s3

    root, panel, _, _, _ = built
    with seaweedfs_s3(tmp_path) as (_, endpoint, wait):
        wait()
        for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                            "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1",
                            "AWS_CONDITIONAL_PUT": "etag"}.items():
            monkeypatch.setenv(name, value)
        uri = f"s3://{BUCKET}/research"
        write_panel(Warehouse(uri), panel)
        lab, local = research.open(uri), research.open(root)
        assert set(lab.tables()["table"]) >= {"pit_features", "market_bars", "labels", "universe"}
        first, last = dt.date(2023, 1, 3), dt.date(2023, 1, 31)
        assert lab.read("pit_features", first, last).sort("date", "instrument_id").equals(
            local.read("pit_features", first, last).sort("date", "instrument_id"))
        assert lab.features([last], features=["return_5d", "book_to_price_sector_rank"]).equals(
            local.read("pit_features", last, last, columns=["date", "instrument_id", "return_5d",
                                                             "book_to_price_sector_rank"]).sort("date", "instrument_id"))

