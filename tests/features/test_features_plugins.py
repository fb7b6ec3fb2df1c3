"""Feature plug-ins (QUANT_FEATURE_MODULES): modules outside the package join the catalogue
with the library's API, are computed point in time like the library, and a bad module or
definition is rejected at load naming the module and the feature (the Dagster side, real
runs and staleness, is in test_features_dagster.py)."""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from quant_assets.calendar import cutoff, trading_days
from quant_assets.data.simulator import SimulatorConfig, simulate_market
from quant_assets.features import (
    Feature,
    FeatureConfig,
    FeatureModuleError,
    active_features,
    catalog,
    compute_features,
    feature_versions,
    features_code_version,
    guard,
)
from quant_assets.features.definition import check_feature
from quant_assets.features.library import LIBRARY
from quant_assets.settings import get_settings, parse_feature_modules

PLUGIN_FIXTURES = Path(__file__).parent / "plugin_fixtures"

DESK = ("gap_up_share_20d", "value_momentum_rank")
DAYS = trading_days(dt.date(2023, 5, 1), dt.date(2023, 5, 5))


@functools.cache
def market():
    return simulate_market(SimulatorConfig(n_instruments=25, start=dt.date(2022, 1, 3), end=dt.date(2023, 6, 30), seed=3))


def _run(days, config=None):
    m = market()
    return compute_features(m.universe, m.market_bars, m.corporate_actions, m.fundamentals, days, config)


# --------------------------------------------------------------------------- joining


def test_a_module_named_in_the_environment_joins_the_catalogue(plugins):
    library_version = features_code_version()
    catalogue = plugins("desk_features")
    assert list(catalogue) == [*(f.name for f in LIBRARY), *DESK]
    assert active_features() is catalogue
    assert catalog.active_modules() == ("desk_features",)
    assert catalog.feature_module("gap_up_share_20d") == "desk_features"
    assert catalog.feature_module("return_5d") == catalog.BUILT_IN
    assert features_code_version() != library_version
    assert {n: v for n, v in feature_versions().items() if n not in DESK} == {f.name: f.version for f in LIBRARY}


def test_the_previous_catalogue_is_back_after_the_block(plugins):
    before = active_features()
    with catalog.feature_modules("desk_features") as catalogue:
        assert "gap_up_share_20d" in catalogue
    assert active_features() is before and "gap_up_share_20d" not in active_features()


def test_plugin_columns_are_computed_point_in_time(plugins):
    plugins("desk_features")
    frame = _run(DAYS)
    assert frame.columns[-2:] == list(DESK)
    # a day in the batch equals the day computed alone, and nothing leaks on any day
    assert _run([DAYS[2]]).equals(frame.filter(pl.col("date") == DAYS[2]))
    m = market()
    config = FeatureConfig(features=DESK)
    subset = _run(DAYS, config)
    assert subset.equals(frame.select("date", "instrument_id", *DESK))
    assert guard.find_leaks(subset, m.universe, m.market_bars, m.corporate_actions, m.fundamentals, DAYS, config) == []


def _gap_share_reference(day: dt.date, instrument: str) -> float | None:
    """Slow reference for gap_up_share_20d from the raw bars known at cutoff(day): share of
    the 20 sessions up to D whose open is above the previous session's close (no corporate
    action in the window, so raw prices are the adjusted ones)."""
    bars = (
        market().market_bars.filter(
            (pl.col("instrument_id") == instrument) & (pl.col("date") <= day) & (pl.col("knowledge_time") <= cutoff(day))
        )
        .sort("knowledge_time").group_by("date").last().sort("date").tail(21)
    )
    if bars.height < 21:
        return None
    opens, closes = bars["open"].to_numpy(), bars["close"].to_numpy()
    return float(np.mean(opens[1:] > closes[:-1]))


def test_plugin_values_equal_slow_references(plugins):
    plugins("desk_features")
    day = DAYS[-1]
    frame = _run([day])
    actions = market().corporate_actions
    quiet = set(frame["instrument_id"]) - set(
        actions.filter(pl.col("ex_date").is_between(day - dt.timedelta(days=45), day))["instrument_id"]
    )
    assert len(quiet) >= 5
    checked = 0
    for row in frame.filter(pl.col("instrument_id").is_in(sorted(quiet))).iter_rows(named=True):
        want = _gap_share_reference(day, row["instrument_id"])
        if want is not None:
            assert row["gap_up_share_20d"] == pytest.approx(want, abs=1e-12), row["instrument_id"]
            checked += 1
    assert checked >= 5
    # snapshot: mean of the day's two percentile ranks (scipy-free: ranks by sorting)
    both = frame.drop_nulls(["book_to_price", "return_60d"])
    for column in ("book_to_price", "return_60d"):
        values = both[column].to_numpy()
        order = values.argsort().argsort()  # no ties in simulated floats
        both = both.with_columns(pl.Series(f"_{column}", order / (len(values) - 1)))
    want = ((both["_book_to_price"] + both["_return_60d"]) / 2).to_list()
    assert both["value_momentum_rank"].to_list() == pytest.approx(want, abs=1e-12)


def test_a_leaky_plugin_is_caught_by_the_leak_check(plugins):
    plugins("desk_features, leaky_snapshot")
    m = market()
    stored = _run(DAYS)
    leaks = guard.find_leaks(stored, m.universe, m.market_bars, m.corporate_actions, m.fundamentals, DAYS)
    assert {leak.feature for leak in leaks} == {"peek_next_close"}


# --------------------------------------------------------------------------- settings


def test_settings_parse_the_module_list(monkeypatch):
    assert parse_feature_modules(" a.b , c ,") == ("a.b", "c")
    assert parse_feature_modules("") == ()
    with pytest.raises(ValueError, match=r"QUANT_FEATURE_MODULES=.*'a b' is not a dotted module name"):
        parse_feature_modules("x, a b")
    with pytest.raises(ValueError, match="names 'x' twice"):
        parse_feature_modules("x, y, x")
    monkeypatch.setenv("QUANT_FEATURE_MODULES", "my.features,other")
    assert get_settings().feature_modules == ("my.features", "other")


# --------------------------------------------------------------------------- rejections


def _module(tmp_path, monkeypatch, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text("import polars as pl\nfrom quant_assets.features import Feature\n"
                                         + textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


BAD_MODULES = {
    "clash_builtin": (
        'FEATURES = [Feature("return_5d", "x", "d", 6, expr=pl.col("close") / pl.col("close").shift(5))]',
        "feature module 'clash_builtin', feature 'return_5d': the name is taken by the built-in library",
    ),
    "unknown_dependency": (
        'FEATURES = [Feature("r", "x", "d", 1, kind="snapshot", depends_on=["nope"], expr=pl.col("close"))]',
        "feature module 'unknown_dependency', feature 'r': feature 'r' depends on 'nope', not registered before it",
    ),
    "undeclared_input": (
        'FEATURES = [Feature("r", "x", "d", 1, kind="snapshot", expr=pl.col("return_5d").rank().over("date"))]',
        r"feature module 'undeclared_input', feature 'r': feature 'r' reads unknown column\(s\) \['return_5d'\]",
    ),
    "series_unknown_column": (
        'FEATURES = [Feature("r", "x", "d", 1, expr=pl.col("vwap") / pl.col("close"))]',
        r"feature module 'series_unknown_column', feature 'r': .*unknown column\(s\) \['vwap'\]: a series feature",
    ),
    "text_result": (
        'FEATURES = [Feature("r", "x", "d", 1, expr=pl.col("close").cast(pl.String))]',
        "feature module 'text_result', feature 'r': feature 'r' evaluates to String, not a number",
    ),
    "short_window": (
        'FEATURES = [Feature("r20", "x", "d", 20, expr=pl.col("close") / pl.col("close").shift(20) - 1)]',
        "feature module 'short_window', feature 'r20': feature 'r20' reads more than its window=20 market days",
    ),
    "builder_fails": (
        'def b(days):\n    return 1 / 0\nFEATURES = [Feature("r", "x", "d", 1, expr_builder=b, params={"days": 3})]',
        "feature module 'builder_fails', feature 'r': feature 'r': its builder failed: ZeroDivisionError",
    ),
    "bad_kind": (
        'FEATURES = [Feature("r", "x", "d", 1, expr=pl.col("close"), kind="daily")]',
        r"feature module 'bad_kind' \(QUANT_FEATURE_MODULES\) failed to import: ValueError: feature 'r': kind must be",
    ),
    "no_list": (
        'X = 1',
        "feature module 'no_list' has no FEATURES",
    ),
    "not_a_feature": (
        'FEATURES = [pl.col("close")]',
        r"feature module 'not_a_feature': FEATURES\[0\] is .*not a quant_assets.features.Feature",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_MODULES))
def test_a_bad_module_is_rejected_naming_module_and_feature(name, tmp_path, monkeypatch):
    body, message = BAD_MODULES[name]
    before = active_features()
    _module(tmp_path, monkeypatch, name, body)
    monkeypatch.setenv("QUANT_FEATURE_MODULES", name)
    with pytest.raises(FeatureModuleError, match=message):
        catalog.use_feature_modules()
    assert active_features() is before  # a rejected module changes nothing


def test_clashes_between_modules_and_missing_modules_are_named(tmp_path, monkeypatch):
    body = 'FEATURES = [Feature("gap_up_share_20d", "x", "d", 1, expr=pl.col("close"))]'
    _module(tmp_path, monkeypatch, "second_desk", body)
    monkeypatch.syspath_prepend(str(PLUGIN_FIXTURES))
    with pytest.raises(FeatureModuleError,
                       match="feature module 'second_desk', feature 'gap_up_share_20d': the name is taken by module 'desk_features'"):
        catalog.use_feature_modules("desk_features, second_desk")
    with pytest.raises(FeatureModuleError, match="'no_such_module_xyz' .* failed to import: ModuleNotFoundError"):
        catalog.use_feature_modules("no_such_module_xyz")
    # a later module may build on an earlier one
    _module(tmp_path, monkeypatch, "on_top", '''
        FEATURES = [Feature("gap_rank", "x", "d", 21, kind="snapshot", depends_on="gap_up_share_20d",
                            expr=pl.col("gap_up_share_20d").rank().over("date"))]''')
    with catalog.feature_modules("desk_features, on_top") as catalogue:
        assert list(catalogue)[-3:] == [*DESK[:2], "gap_rank"]


def test_the_window_probe_rejects_every_library_series_feature_with_a_window_too_short():
    """The load-time window check can fail: each built-in series feature declared one market
    day shorter than it reads is rejected (the library as declared passes, tested above)."""
    registered = {f.name: f for f in LIBRARY}
    rejected = 0
    for f in LIBRARY:
        if f.kind != "series" or f.window == 1:
            continue
        short = Feature(f"{f.name}_short", f.family, f.description, f.window - 1, f.expr_builder, f.params,
                        expr=f.expr)
        with pytest.raises(ValueError, match=f"reads more than its window={f.window - 1}"):
            check_feature(short, registered)
        rejected += 1
    assert rejected > 50


# --------------------------------------------------------------------------- versions


def test_editing_a_helper_of_the_module_changes_the_version(tmp_path, monkeypatch):
    source = '''
        def threshold():
            return 0.0

        def up_share(days):
            return (pl.col("ret") > threshold()).cast(pl.Float64).rolling_mean(days, min_samples=days)

        FEATURES = [Feature("up_share", "x", "words", 11, expr_builder=up_share, params={"days": 10})]
    '''
    _module(tmp_path, monkeypatch, "helpers_desk", source)
    with catalog.feature_modules("helpers_desk"):
        first, code = feature_versions()["up_share"], features_code_version()
    _module(tmp_path, monkeypatch, "helpers_desk", source.replace("words", "other words, longer"))
    with catalog.feature_modules("helpers_desk", reload=True):
        assert feature_versions()["up_share"] == first  # words are documentation
        assert features_code_version() == code
    _module(tmp_path, monkeypatch, "helpers_desk", source.replace("return 0.0", "return 0.001"))
    with catalog.feature_modules("helpers_desk", reload=True):
        assert feature_versions()["up_share"] != first  # the helper is part of the definition
        assert features_code_version() != code


def test_the_code_location_reads_the_modules_at_load(plugins):
    """A fresh process loading the code location with QUANT_FEATURE_MODULES set builds
    pit_features with the plug-in catalogue's code version (as every run worker does)."""
    expected = dict(plugins("desk_features").items())
    script = (
        "import json; from quant_assets.features import active_features, features_code_version;"
        "from quant_assets.features.assets import pit_features;"
        "print(json.dumps([pit_features.code_versions_by_key[pit_features.key], features_code_version(),"
        " list(active_features())]))"
    )
    env = {**os.environ, "QUANT_FEATURE_MODULES": "desk_features",
           "PYTHONPATH": os.pathsep.join([str(PLUGIN_FIXTURES), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    asset_version, code_version, names = json.loads(out.stdout.strip().splitlines()[-1])
    assert asset_version == code_version == features_code_version()
    assert names == list(expected)
