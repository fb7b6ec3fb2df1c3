"""pit_features in a real Dagster instance over Delta tables (small test range, 30 instruments).

- the blocking leak check passes for the registry and fails, naming feature, day and
  instruments, for a feature that reads the next day's close; then nothing is written and a
  downstream asset of the same run does not materialise;
- features_for_scoring on the live inputs equals the stored partitions exactly;
- a range run reads only its lookback window of market_bars, not the whole table;
- a changed feature definition makes the materialised partitions stale (new code version);
- plug-in features (QUANT_FEATURE_MODULES, a module outside the package) are columns of the
  stored partitions, equal to the engine's values; a leaky plug-in fails the blocking check;
  editing a plug-in's helper marks the partitions it built stale.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
from dagster import (
    AssetIn,
    AssetKey,
    AssetRecordsFilter,
    BackfillPolicy,
    DagsterInstance,
    PartitionKeyRange,
    asset,
    materialize,
)
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from dagster._core.definitions.data_version import (
    CachingStaleStatusResolver,
    StaleCauseCategory,
    StaleStatus,
)
from dagster._core.loader import LoadingContextForTest
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from quant_assets import calendar
from quant_assets.data.assets import corporate_actions, fundamentals, market_bars, universe
from quant_assets.data.market import simulated_for
from quant_assets.features import (
    FeatureConfig,
    catalog,
    compute_features,
    feature_versions,
    features_code_version,
    features_for_scoring,
    required_lookback_days,
)
from quant_assets.features.assets import LEAK_CHECK, build_pit_features, pit_features
from quant_assets.features.definition import Feature, build_catalog
from quant_assets.features.library import LIBRARY, period_return
from quant_assets.instance import local_instance_yaml, relax_local_sqlite
from quant_assets.partitions import trading_day_partitions
from quant_assets.settings import load_settings
from quant_assets.warehouse import Warehouse
from resources import build_resources
from resources.io_manager import DeltaIOManager

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("features_dagster")]

RAW = [universe, corporate_actions, fundamentals, market_bars]
# market_bars from the first day (2022-01-03) to well past every feature range below; the
# ranges start after a full lookback (required_lookback_days() trading days) of bars
BARS_UNTIL = "2022-05-13"
GOOD_RANGE = ("2022-04-19", "2022-04-21")
LEAKY_RANGE = ("2022-04-25", "2022-04-27")
READS: list[tuple[str, int, dt.date | None, dt.date | None]] = []
# the plug-in run's days (after the ranges above: it adds columns to the stored table)
PLUGIN_RANGE = ("2022-05-09", "2022-05-11")
PLUGIN_MODULE = "my_desk_features"  # a copy of plugin_fixtures/desk_features.py the tests edit
DESK_FEATURES = ("gap_up_share_20d", "value_momentum_rank")


class RecordingDeltaIOManager(DeltaIOManager):
    """The warehouse IO manager, recording what each input read (in-process runs)."""

    def load_input(self, context):
        frame = super().load_input(context)
        has_dates = isinstance(frame, pl.DataFrame) and "date" in frame.columns and frame.height
        READS.append((
            context.asset_key.to_user_string(),
            frame.height,
            frame["date"].min() if has_dates else None,
            frame["date"].max() if has_dates else None,
        ))
        return frame


def _range_tags(start: str, end: str) -> dict[str, str]:
    return {ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("features-dagster")
    relax_local_sqlite(root)  # as local runs do: no fsync per Dagster event
    (root / "dagster").mkdir()
    (root / "dagster" / "dagster.yaml").write_text(local_instance_yaml(root / "dagster"))
    resources = {**build_resources(load_settings()), "io_manager": RecordingDeltaIOManager(root=str(root / "warehouse"))}
    with DagsterInstance.from_config(str(root / "dagster")) as instance:
        assert materialize(RAW, selection=RAW[:3], instance=instance, resources=resources).success
        assert materialize(
            RAW, selection=[market_bars], instance=instance, resources=resources,
            tags=_range_tags(load_settings().start_date.isoformat(), BARS_UNTIL),
        ).success
        yield instance, resources, Warehouse(str(root / "warehouse"))


def _run_features(env, assets_def, day_range, extra=(), raise_on_error=True):
    instance, resources, _ = env
    return materialize(
        [*RAW, assets_def, *extra], selection=[assets_def, *extra], instance=instance,
        resources=resources, tags=_range_tags(*day_range), raise_on_error=raise_on_error,
    )


def _days(day_range) -> list[dt.date]:
    return calendar.trading_days(dt.date.fromisoformat(day_range[0]), dt.date.fromisoformat(day_range[1]))


@pytest.fixture(scope="module")
def good_run(env):
    READS.clear()
    result = _run_features(env, pit_features, GOOD_RANGE)
    return result, list(READS)


def test_registry_passes_the_leak_check(good_run):
    result, _ = good_run
    assert result.success
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == LEAK_CHECK]
    assert evaluation.passed
    sampled = evaluation.metadata["sampled_days"].value
    assert len(sampled) == 3 and set(sampled) == {d.isoformat() for d in _days(GOOD_RANGE)}


def test_scoring_from_live_inputs_equals_the_stored_partitions(env, good_run):
    _, resources, warehouse = env
    live = simulated_for(resources["market_source"])  # every row known now: later bars, restatements
    config = FeatureConfig(cutoff_time=load_settings().cutoff_time)
    stored = warehouse.read(["pit_features"]).frame
    for day in _days(GOOD_RANGE):
        # the live inputs do hold rows this day could not see
        assert live.market_bars.filter(pl.col("date") > day).height > 0
        online = features_for_scoring(
            day, live.universe, live.market_bars, live.corporate_actions, live.fundamentals, config
        )
        offline = stored.filter(pl.col("date") == day).sort("date", "instrument_id")
        assert online.height == offline.height > 20
        assert online.schema == offline.schema
        assert online.equals(offline)


def test_a_range_run_reads_only_its_lookback_window_of_market_bars(env, good_run):
    _, reads = good_run
    _, _, warehouse = env
    (bars_read,) = [r for r in reads if r[0] == "market_bars"]
    _, rows, first, last = bars_read
    start, end = (dt.date.fromisoformat(d) for d in GOOD_RANGE)
    # the lookback (a context year plus a window) reaches before the first partition here
    lookback_start = calendar.shift_trading_days(start, -required_lookback_days())
    first_partition = dt.date.fromisoformat(trading_day_partitions.get_first_partition_key())
    assert first == max(lookback_start, first_partition)
    assert last == end
    whole = warehouse.read(["market_bars"]).frame
    window = whole.filter(pl.col("date").is_between(first, last))
    assert rows == window.height < whole.height
    # and the mapping Dagster resolves for the range agrees
    mapping = pit_features.get_partition_mapping(AssetKey("market_bars"))
    upstream = mapping.get_upstream_mapped_partitions_result_for_partitions(
        trading_day_partitions.subset_with_partition_keys(
            trading_day_partitions.get_partition_keys_in_range(
                PartitionKeyRange(*GOOD_RANGE)
            )
        ),
        trading_day_partitions,
        trading_day_partitions,
    ).partitions_subset
    keys = sorted(upstream.get_partition_keys())
    assert (keys[0], keys[-1]) == (first.isoformat(), last.isoformat())
    assert len(keys) == len(trading_day_partitions.get_partition_keys_in_range(PartitionKeyRange(keys[0], keys[-1])))


def test_leaky_feature_fails_the_check_and_blocks_downstream(env, plugins):
    instance, _, warehouse = env
    # a plug-in module outside the package (tests/features/plugin_fixtures/leaky_snapshot.py):
    # within a multi-day batch the cross-section of D holds later days too, and its
    # shift(-1) over the instrument reads the next day's close
    plugins("leaky_snapshot")

    @asset(partitions_def=trading_day_partitions, metadata={"partition_expr": "date"},
           ins={"pit_features": AssetIn()}, backfill_policy=BackfillPolicy.multi_run(400))
    def feature_consumer(pit_features: pl.DataFrame) -> pl.DataFrame:
        return pit_features.select("date", "instrument_id")

    result = _run_features(env, pit_features, LEAKY_RANGE, extra=[feature_consumer], raise_on_error=False)
    assert not result.success
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == LEAK_CHECK]
    assert not evaluation.passed
    message = evaluation.description
    first, second, last = _days(LEAKY_RANGE)
    assert "peek_next_close" in message and first.isoformat() in message and second.isoformat() in message
    # only the leaky feature is named; the last day of the batch has no next day to peek at
    assert evaluation.metadata["leaky_features"].value == ["peek_next_close"]
    assert last.isoformat() not in message.splitlines()[0]
    assert re.search(r"peek_next_close on \d{4}-\d\d-\d\d: instruments [A-Z]+\d+", message), message
    # nothing written, nothing downstream
    assert result.get_asset_materialization_events() == []
    for key in ("pit_features", "feature_consumer"):
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(key), asset_partitions=[d.isoformat() for d in _days(LEAKY_RANGE)]),
            limit=10,
        ).records
        assert records == [], key
    stored = warehouse.read(["pit_features"]).frame
    assert stored.filter(pl.col("date").is_between(first, last)).is_empty()
    assert "peek_next_close" not in stored.columns
    assert not warehouse.exists(["feature_consumer"])


def test_changed_definition_marks_materialised_partitions_stale(env, good_run, monkeypatch):
    instance, _, _ = env
    day = GOOD_RANGE[0]
    key = AssetKey("pit_features")

    def resolver(assets):
        # Dagster's own stale-status resolver (what the UI shows as "Code version changed")
        return CachingStaleStatusResolver(instance, AssetGraph.from_assets(assets), LoadingContextForTest(instance))

    before = resolver([*RAW, pit_features])
    assert before.get_status(key, day) == StaleStatus.FRESH

    # a changed definition: return_5d becomes a 6-day return
    changed = [
        Feature(f.name, f.family, f.description, f.window + 1, f.expr_builder, (("days", 6),))
        if f.name == "return_5d" else f
        for f in LIBRARY
    ]
    assert changed[1].expr_builder is period_return
    old_version = features_code_version()
    monkeypatch.setattr(catalog, "_ACTIVE", build_catalog(changed))
    new_version = features_code_version()
    assert new_version != old_version
    rebuilt = build_pit_features(new_version)

    after = resolver([*RAW, rebuilt])
    for partition in (d.isoformat() for d in _days(GOOD_RANGE)):
        assert after.get_status(key, partition) == StaleStatus.STALE
        causes = after.get_stale_causes(key, partition)
        assert [c.category for c in causes] == [StaleCauseCategory.CODE]
        assert "code version" in causes[0].reason
    # the recorded code version of the materialisation is the old definition's
    (record,) = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[day]), limit=1
    ).records
    assert record.asset_materialization.tags["dagster/code_version"] == old_version
    assert rebuilt.code_versions_by_key[key] == new_version
    # partitions never materialised are missing, not stale
    assert after.get_status(key, "2022-05-02") == StaleStatus.MISSING


def _resolver(instance, assets):
    return CachingStaleStatusResolver(instance, AssetGraph.from_assets(assets), LoadingContextForTest(instance))


@pytest.fixture(scope="module")
def plugin_run(env, tmp_path_factory):
    """pit_features over PLUGIN_RANGE with the plug-in module named by QUANT_FEATURE_MODULES,
    the asset built (with its code version) from that catalogue as the code location does."""
    folder = tmp_path_factory.mktemp("plugins")
    shutil.copy(Path(__file__).parent / "plugin_fixtures" / "desk_features.py", folder / f"{PLUGIN_MODULE}.py")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        patch.setenv("QUANT_FEATURE_MODULES", PLUGIN_MODULE)
        with catalog.feature_modules():  # reads QUANT_FEATURE_MODULES
            code_version = features_code_version()
            versions = feature_versions()
            result = _run_features(env, build_pit_features(code_version), PLUGIN_RANGE)
    return result, code_version, versions, folder


def test_plugin_features_are_columns_of_the_stored_partitions(env, plugin_run):
    instance, resources, warehouse = env
    result, code_version, versions, _ = plugin_run
    assert result.success
    assert code_version != features_code_version()  # the library alone hashes differently
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == LEAK_CHECK]
    assert evaluation.passed  # the blocking check recomputed the plug-in columns too
    first, last = (dt.date.fromisoformat(d) for d in PLUGIN_RANGE)
    stored = warehouse.read(["pit_features"]).frame.filter(pl.col("date").is_between(first, last))
    assert set(DESK_FEATURES) <= set(stored.columns)
    assert stored.height > 20 and stored.select(DESK_FEATURES).null_count().row(0) < (stored.height,) * 2
    # the engine on the stored raw tables, with the same catalogue, gives the same values
    raw = {name: warehouse.read([name]).frame for name in ("universe", "market_bars", "corporate_actions", "fundamentals")}
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(plugin_run[3]))
        with catalog.feature_modules(PLUGIN_MODULE):
            expected = compute_features(
                raw["universe"], raw["market_bars"], raw["corporate_actions"], raw["fundamentals"], _days(PLUGIN_RANGE),
                FeatureConfig(cutoff_time=load_settings().cutoff_time),
            )
    assert stored.select(expected.columns).sort("date", "instrument_id").equals(expected)
    (record,) = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("pit_features"), asset_partitions=[PLUGIN_RANGE[0]]), limit=1
    ).records
    assert record.asset_materialization.tags["dagster/code_version"] == code_version
    assert set(DESK_FEATURES) <= set(versions)


def test_editing_a_plugin_helper_marks_its_partitions_stale(env, plugin_run, monkeypatch):
    instance, _, _ = env
    _, old_version, old_versions, folder = plugin_run
    key = AssetKey("pit_features")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("QUANT_FEATURE_MODULES", PLUGIN_MODULE)
    with catalog.feature_modules(reload=True):  # re-imported unchanged: same versions
        assert features_code_version() == old_version
    fresh = _resolver(instance, [*RAW, build_pit_features(old_version)])
    assert all(fresh.get_status(key, p) == StaleStatus.FRESH for p in (d.isoformat() for d in _days(PLUGIN_RANGE)))

    # the researcher edits a helper the builder calls (not the builder): a gap now counts
    # opens at the previous close too
    path = folder / f"{PLUGIN_MODULE}.py"
    text = path.read_text()
    edited = text.replace('pl.col("open") > pl.col("close").shift(1)', 'pl.col("open") >= pl.col("close").shift(1)')
    assert edited != text
    path.write_text(edited)
    with catalog.feature_modules(reload=True):
        new_version, new_versions = features_code_version(), feature_versions()
    assert new_version != old_version
    assert [n for n in new_versions if new_versions[n] != old_versions[n]] == ["gap_up_share_20d"]
    after = _resolver(instance, [*RAW, build_pit_features(new_version)])
    for partition in (d.isoformat() for d in _days(PLUGIN_RANGE)):
        assert after.get_status(key, partition) == StaleStatus.STALE
        assert [c.category for c in after.get_stale_causes(key, partition)] == [StaleCauseCategory.CODE]
