"""Blocking quality checks on the raw assets: a bad landing file fails market_bars with
a check naming the rule and rows, nothing is written, nothing downstream runs; the
landing sensor and the daily schedule request the right partitions."""

import datetime as dt

import polars as pl
from dagster import (
    AssetKey,
    DagsterInstance,
    build_sensor_context,
    materialize,
)

from quant_assets.data.assets import corporate_actions, fundamentals, market_bars, universe
from quant_assets.data.files import write_market_bars_file
from quant_assets.data.simulator import SimulatorConfig, simulate_market
from quant_assets.features.assets import pit_features
from quant_assets.warehouse import Warehouse, content_hash
from resources.io_manager import DeltaIOManager
from resources.market_source import MarketSource
from sensors.landing import evaluate_landing, landing_files_sensor

DAY = "2022-06-01"
ASSETS = [universe, corporate_actions, fundamentals, market_bars, pit_features]


def _resources(tmp_path, landing):
    return {
        "io_manager": DeltaIOManager(root=str(tmp_path / "warehouse")),
        "market_source": MarketSource(
            n_instruments=30, seed=7, start="2022-01-03", end="2023-04-28", landing_dir=str(landing)
        ),
    }


def _day_bars():
    bars = simulate_market(SimulatorConfig(n_instruments=30, end=dt.date(2023, 4, 28))).market_bars
    return bars.filter(pl.col("date") == dt.date.fromisoformat(DAY))


def test_bad_landing_file_fails_the_check_and_writes_nothing(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    good = _day_bars()
    write_market_bars_file(good, landing / "bars.parquet")
    resources = _resources(tmp_path, landing)
    run_config = {"ops": {"market_bars": {"config": {"source": "landing"}}}}
    with DagsterInstance.ephemeral() as instance:
        materialize(ASSETS[:3], instance=instance, resources=resources)
        ok = materialize(ASSETS, selection=ASSETS[3:], partition_key=DAY, instance=instance,
                         resources=resources, run_config=run_config)
        assert ok.success
        wh = Warehouse(str(tmp_path / "warehouse"))
        before = {t: (wh.version([t]), content_hash(wh.read([t]).frame)) for t in ("market_bars", "pit_features")}

        # the same day again, with high < low on two rows
        bad = good.with_columns(
            pl.when(pl.int_range(pl.len()) < 2).then(pl.col("low") * 0.5).otherwise(pl.col("high")).alias("high")
        )
        write_market_bars_file(bad, landing / "bars.parquet")
        failed = materialize(ASSETS, selection=ASSETS[3:], partition_key=DAY, instance=instance,
                             resources=resources, run_config=run_config, raise_on_error=False)
        assert not failed.success
        evals = {
            e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
            for e in failed.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
        }
        assert evals["ohlc_consistency"].passed is False
        message = evals["ohlc_consistency"].description
        assert "ohlc_consistency" in message and "2 row(s)" in message and "SIM0001" in message
        assert evals["price_positive_finite"].passed is True
        # downstream did not run, and nothing already committed changed
        assert failed.asset_materializations_for_node("pit_features") == []
        assert instance.get_latest_materialization_event(AssetKey("pit_features")).run_id == ok.run_id
        after = {t: (wh.version([t]), content_hash(wh.read([t]).frame)) for t in ("market_bars", "pit_features")}
        assert after == before


def test_landing_sensor_requests_days_and_rejects_bad_files(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    good = _day_bars()
    write_market_bars_file(good, landing / "good.parquet")
    (landing / "broken.csv").write_text("date;instrument_id;open\n2022-06-01;SIM0001;1.0\n")
    requests, logs, seen = evaluate_landing(landing, set())
    assert [r.partition_key for r in requests] == [DAY]
    assert requests[0].run_config["ops"]["market_bars"]["config"]["source"] == "landing"
    rejected = landing / "rejected" / "broken.csv"
    assert rejected.exists()
    reason = (landing / "rejected" / "broken.csv.reason.txt").read_text()
    assert "broken.csv" in reason and "delimiter" in reason
    # each file once: a second evaluation with the cursor requests nothing
    again, _, _ = evaluate_landing(landing, seen)
    assert again == []


def test_landing_sensor_through_dagster_api(tmp_path, monkeypatch):
    import sensors.landing as landing_module
    from quant_assets.settings import Settings

    landing = tmp_path / "landing"
    landing.mkdir()
    write_market_bars_file(_day_bars(), landing / "good.parquet")
    monkeypatch.setattr(landing_module, "SETTINGS", Settings.from_env().__class__(
        **{**Settings.from_env().__dict__, "landing_dir": landing}))
    with DagsterInstance.ephemeral() as instance:
        from quant_assets.definitions import defs

        ctx = build_sensor_context(instance=instance, definitions=defs)
        result = landing_files_sensor.evaluate_tick(ctx)
        assert [r.partition_key for r in result.run_requests] == [DAY]
        ctx2 = build_sensor_context(instance=instance, cursor=result.cursor, definitions=defs)
        assert landing_files_sensor.evaluate_tick(ctx2).run_requests == []


LIVE_SCHEDULE_CHECK = """
import datetime as dt
from dagster import build_schedule_context, instance_for_test
from quant_assets import calendar
from quant_assets.definitions import defs
from sensors.schedules import daily_features_schedule

# the schedule skips a day already built or building: it reads a real (temporary) instance
instance = instance_for_test().__enter__()

def keys(when):
    ctx = build_schedule_context(scheduled_execution_time=when, instance=instance,
                                 repository_def=defs.get_repository_def())
    result = daily_features_schedule.evaluate_tick(ctx)
    return [r.partition_key for r in (result.run_requests or [])], result.skip_message

today = dt.datetime.now(dt.UTC).date()
day = today
while not calendar.is_trading_day(day):
    day -= dt.timedelta(days=1)
print(day.isoformat(), keys(dt.datetime.combine(day, dt.time(21, 30), tzinfo=dt.UTC)))
print(keys(dt.datetime(2025, 12, 25, 21, 30, tzinfo=dt.UTC)))
"""


def test_daily_schedule_builds_todays_partition_after_the_cutoff():
    """Live mode (open-ended range): at 21:30 UTC on a trading day the schedule requests
    that day's partition; on a holiday it skips."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "QUANT_END_DATE": "", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", LIVE_SCHEDULE_CHECK], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    first, second = out.stdout.strip().splitlines()[-2:]
    day = first.split()[0]
    assert f"(['{day}'], None)" in first
    assert second.startswith("([], ") and "not a trading day" in second
