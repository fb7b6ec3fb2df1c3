"""Every kind of bad input in tests/data/bad_inputs/corpus.py is rejected, with a message
naming the file, the rule and the rows, and leaves every stored table as it was.

One good warehouse state (reference tables + market_bars and pit_features over a few
weeks, built by real materialisations) is shared by the module. Each bad file then goes
(1) through the landing sensor's evaluation, and (2) where the asset applies the rule
today, through a real market_bars + pit_features materialisation with source=landing.
After each, every table keeps its Delta version and content hash.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import polars as pl
import pytest
from dagster import DagsterInstance, materialize
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from quant_assets.data.assets import corporate_actions, fundamentals, market_bars, universe
from quant_assets.features.assets import pit_features
from quant_assets.settings import Settings
from quant_assets.warehouse import Warehouse, content_hash
from resources import build_resources
from resources.market_source import MarketSource
from sensors.landing import REJECTED, evaluate_landing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from bad_inputs.corpus import (  # noqa: E402
    GOOD_DAY,
    KINDS,
    BadKind,
    with_zero_split,
    write_kind,
)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reliability")]

RANGE = ("2022-06-21", "2022-07-08")  # 2022-06-20 (Juneteenth observed) is no session
TABLES = ["universe", "corporate_actions", "fundamentals", "market_bars", "pit_features"]
AS_OF = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)  # the sensor's "now" for these tests
LANDING_CONFIG = {"ops": {"market_bars": {"config": {"source": "landing"}}}}
ALL_ASSETS = [universe, corporate_actions, fundamentals, market_bars, pit_features]


def settings_for(home: Path) -> Settings:
    old = os.environ["QUANT_HOME"]
    os.environ["QUANT_HOME"] = str(home)
    try:
        return Settings.from_env()
    finally:
        os.environ["QUANT_HOME"] = old


def snapshot(wh: Warehouse) -> dict[str, tuple[int | None, str]]:
    out = {}
    for t in TABLES:
        loaded = wh.read([t])
        out[t] = (loaded.version, content_hash(loaded.frame))
    return out


@pytest.fixture(scope="module")
def good_state(tmp_path_factory):
    home = tmp_path_factory.mktemp("bad-inputs")
    settings = settings_for(home)
    resources = build_resources(settings)
    with DagsterInstance.ephemeral() as instance:
        ref = materialize([universe, corporate_actions, fundamentals], resources=resources,
                          instance=instance)
        assert ref.success
        daily = materialize(
            ALL_ASSETS, selection=[market_bars, pit_features], resources=resources,
            instance=instance,
            tags={ASSET_PARTITION_RANGE_START_TAG: RANGE[0], ASSET_PARTITION_RANGE_END_TAG: RANGE[1]},
        )
        assert daily.success
    wh = Warehouse(settings.warehouse_uri)
    good = wh.read(["market_bars"]).frame.filter(pl.col("date") == GOOD_DAY).sort(
        "date", "instrument_id"
    )
    assert good.height > 20  # the instruments listed that day
    return settings, wh, good, snapshot(wh)


def _message_names_file_rule_rows(text: str, path: Path, kind: BadKind) -> None:
    assert str(path) in text or path.name in text, text
    assert f"'{kind.rule}'" in text, text
    if kind.where != "file":  # row rules show how many rows and which (keys)
        assert "row(s)" in text and "instrument_id=" in text, text


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_landing_sensor_rejects_bad_file(good_state, tmp_path, kind):
    _, wh, good, before = good_state
    landing = tmp_path / "landing"
    path = write_kind(kind, good, landing)
    requests, logs, seen = evaluate_landing(landing, set(), warehouse=wh, as_of=AS_OF)
    assert requests == [] and seen == set(), logs
    moved = landing / REJECTED / path.name
    assert moved.exists() and not path.exists()
    reason = (landing / REJECTED / (path.name + ".reason.txt")).read_text()
    _message_names_file_rule_rows(reason, path, kind)
    assert any(f"rejected {path.name}" in line for line in logs), logs
    assert snapshot(wh) == before


def test_landing_sensor_accepts_good_and_newer_restatement(good_state, tmp_path):
    """The landing rules are not too strict: the stored day resent, and a restatement
    with a later knowledge_time, both launch one run for their day."""
    _, wh, good, _ = good_state
    landing = tmp_path / "landing"
    landing.mkdir()
    good.write_parquet(landing / "resend.parquet")
    good.with_columns(pl.col("knowledge_time") + pl.duration(hours=1)).write_parquet(
        landing / "restated.parquet"
    )
    requests, logs, seen = evaluate_landing(landing, set(), warehouse=wh, as_of=AS_OF)
    assert [r.partition_key for r in requests] == [GOOD_DAY.isoformat()] * 2, logs
    assert len(seen) == 2 and not (landing / REJECTED).exists()


@pytest.mark.parametrize("corrected_last", [True, False], ids=["correction-lands-last", "correction-lands-first"])
def test_a_day_delivered_twice_is_built_from_its_latest_delivery(good_state, tmp_path, corrected_last):
    """A vendor's corrected file of a day lands beside the day's first file (the landing
    folder keeps both): the day's run reads each bar from the latest delivery, by arrival,
    not a duplicate key (market.latest_deliveries). Before, both files' rows were read
    and the restated day's run failed on duplicate_key (the daemon soak found it)."""
    _, _, good, _ = good_state
    landing = tmp_path / "landing"
    landing.mkdir()
    corrected = good.with_columns(pl.col("open", "high", "low", "close") * 1.002)
    first, last = (good, corrected) if corrected_last else (corrected, good)
    # names sort against arrival in one case, so only the arrival order can decide
    first.write_parquet(landing / "z_first.parquet")
    last.write_parquet(landing / "a_last.parquet")
    now = 1_700_000_000_000_000_000
    os.utime(landing / "z_first.parquet", ns=(now, now))
    os.utime(landing / "a_last.parquet", ns=(now + 10**9, now + 10**9))
    home = tmp_path / "home"
    settings = settings_for(home)
    resources = build_resources(settings)
    resources["market_source"] = MarketSource(
        **{**resources["market_source"].model_dump(), "landing_dir": str(landing)}
    )
    with DagsterInstance.ephemeral() as instance:
        assert materialize([universe], resources=resources, instance=instance).success
        result = materialize(
            [universe, market_bars], selection=[market_bars], resources=resources, instance=instance,
            partition_key=GOOD_DAY.isoformat(), run_config=LANDING_CONFIG,
        )
    assert result.success
    stored = Warehouse(settings.warehouse_uri).read(["market_bars"]).frame.sort("date", "instrument_id")
    assert stored.equals(last.select(stored.columns))


NIGHTLY = os.environ.get("QUANT_NIGHTLY") == "1"
# A blocked run is not retried (quality failures and bad landing files are raised with
# allow_retries=False, see quant_assets/retries.py). By default a representative set (price,
# OHLC, key, universe, corrupt file, timezone, calendar); QUANT_NIGHTLY=1 runs every kind a
# run can read.
_DEFAULT_ASSET_KINDS = {
    "nan_price", "high_below_low", "duplicate_key", "unknown_instrument",
    "truncated_parquet", "timezone_naive_csv", "weekend_bars",
}
ASSET_KINDS = [
    k for k in KINDS
    if k.where in ("file", "quality") and k.asset_day is not None
    and (NIGHTLY or k.name in _DEFAULT_ASSET_KINDS)
]


@pytest.mark.parametrize("kind", ASSET_KINDS, ids=[k.name for k in ASSET_KINDS])
def test_market_bars_run_blocks_bad_file(good_state, tmp_path, kind):
    settings, wh, good, before = good_state
    landing = tmp_path / "landing"
    path = write_kind(kind, good, landing)
    resources = build_resources(settings)
    resources["market_source"] = MarketSource(
        **{**resources["market_source"].model_dump(), "landing_dir": str(landing)}
    )
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            ALL_ASSETS, selection=[market_bars, pit_features], resources=resources,
            instance=instance, partition_key=kind.asset_day.isoformat(),
            run_config=LANDING_CONFIG, raise_on_error=False,
        )
    assert not result.success
    materialized = {
        e.asset_key.to_user_string() for e in result.get_asset_materialization_events()
    }
    assert materialized == set(), materialized
    # the rule's message is on the step's failure (blocked runs are not retried)
    failures = [
        str(e.event_specific_data.error.to_string())
        for e in result.all_events
        if e.step_key == "market_bars"
        and getattr(e.event_specific_data, "error", None) is not None
    ]
    failed_checks = [
        e.event_specific_data for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.event_specific_data.passed
    ]
    text = "\n".join(failures)
    assert f"'{kind.rule}'" in text or f"[{kind.rule}]" in text, text
    if kind.where == "file":
        assert path.name in text, text
    else:
        assert kind.rule in {c.check_name for c in failed_checks}, failed_checks
    assert snapshot(wh) == before


def test_corporate_actions_run_blocks_zero_split_ratio(good_state, monkeypatch):
    """The simulator's data with one split ratio set to 0 (a bad vendor record)."""
    from quant_assets.data import market

    monkeypatch.setattr(market, "simulated_market", with_zero_split(market.simulated_market))
    settings, wh, _, before = good_state
    resources = build_resources(settings)
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [universe, corporate_actions, fundamentals], selection=[corporate_actions],
            resources=resources, instance=instance, raise_on_error=False,
        )
    assert not result.success
    checks = {
        e.event_specific_data.check_name: e.event_specific_data.passed
        for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert checks["split_ratio_positive_finite"] is False
    assert result.get_asset_materialization_events() == []
    assert snapshot(wh) == before


def test_corpus_has_at_least_twenty_kinds_with_distinct_names():
    names = [k.name for k in KINDS]
    assert len(names) == len(set(names)) >= 20


def test_landing_run_for_a_day_missing_from_the_files_keeps_the_partition(good_state, tmp_path):
    settings, wh, good, before = good_state
    landing = tmp_path / "landing"
    landing.mkdir()
    good.write_parquet(landing / "only_good_day.parquet")  # nothing for the next day
    resources = build_resources(settings)
    resources["market_source"] = MarketSource(
        **{**resources["market_source"].model_dump(), "landing_dir": str(landing)}
    )
    next_day = "2022-06-30"
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            ALL_ASSETS, selection=[market_bars], resources=resources, instance=instance,
            partition_key=next_day, run_config=LANDING_CONFIG, raise_on_error=False,
        )
    try:
        assert not result.success
        assert snapshot(wh) == before
    finally:
        # put the erased day back so the module's other tests keep their good state
        if snapshot(wh) != before:
            with DagsterInstance.ephemeral() as instance:
                assert materialize(
                    ALL_ASSETS, selection=[market_bars, pit_features], instance=instance,
                    resources=build_resources(settings), partition_key=next_day,
                ).success
            restored = snapshot(wh)
            assert {t: h for t, (_, h) in restored.items()} == {t: h for t, (_, h) in before.items()}
            before.update(restored)  # same content, new Delta versions
