"""The HTML tear sheet: every embedded image is a readable PNG, the numbers are the stats
functions' outputs, and two renders are byte-identical. Also the sweep trial set."""

import datetime as dt
import io
import re

import numpy as np
import polars as pl
import pytest
from PIL import Image

from quant_assets.validation import regimes, stats
from quant_assets.validation.gate import evaluate_gate
from quant_assets.validation.report import format_metric, summarise
from quant_assets.validation.tearsheet import (
    TearSheetInputs,
    drawdown,
    embedded_images,
    monthly_ic,
    monthly_returns,
    render_tearsheet,
    rolling_sharpe,
)
from quant_assets.validation.trials import build_trial_set

N = 300


def _inputs():
    rng = np.random.default_rng(2)
    dates = pl.date_range(dt.date(2023, 1, 2), dt.date(2024, 12, 31), "1d", eager=True).filter(
        pl.date_range(dt.date(2023, 1, 2), dt.date(2024, 12, 31), "1d", eager=True).dt.weekday() <= 5
    )[:N]
    r = rng.normal(0.0006, 0.01, N)
    trials = {"main": r, **{f"v{i}": rng.normal(0.0002, 0.01, N) for i in range(3)}}
    ic_dates = np.repeat(dates.cast(pl.Int32).to_numpy(), 20)
    scores = rng.normal(size=N * 20)
    labels = 0.05 * scores + rng.normal(size=N * 20)
    s = summarise(r, np.full(N, 0.1), trials, ic_dates, scores, labels, n_bootstrap=200)
    gate = evaluate_gate(s.metrics)
    metrics = {**s.metrics, **gate.metrics()}
    daily = pl.DataFrame({"date": dates, "return": r, "benchmark": rng.normal(0.0003, 0.008, N)})
    labels_frame = pl.DataFrame(
        {"date": dates, "volatility": (["low", "mid", "high"] * N)[:N],
         "direction": (["up", "down"] * N)[:N], "dispersion": (["high", "mid", "low"] * N)[:N]}
    )
    strategy = daily.select("date", "return")
    stress = regimes.stress_table({"strategy": strategy})
    factors = pl.DataFrame({"date": dates, "market": daily["benchmark"], "momentum": rng.normal(0, 0.005, N)})
    inputs = TearSheetInputs(
        daily=daily,
        metrics=metrics,
        monthly_ic=monthly_ic(s.rank_ic.dates, s.rank_ic.values),
        bootstrap_max_drawdown=s.bootstrap.max_drawdown,
        regimes=regimes.regime_performance(strategy, labels_frame),
        stress=stress,
        stress_source="test",
        factors=regimes.factor_exposures(strategy, factors),
        gate=gate,
    )
    return inputs, r


@pytest.fixture(scope="module")
def rendered():
    inputs, r = _inputs()
    return inputs, r, render_tearsheet(inputs)


def test_every_image_decodes(rendered):
    _, _, page = rendered
    images = embedded_images(page)
    assert set(images) == {"equity", "underwater", "rolling_sharpe", "monthly_returns", "ic_by_month",
                           "bootstrap_max_drawdown", "regimes", "stress"}
    for name, png in images.items():
        with Image.open(io.BytesIO(png)) as img:
            img.verify()  # a truncated or corrupt PNG raises
        with Image.open(io.BytesIO(png)) as img:
            assert img.format == "PNG" and img.width > 200 and img.height > 100, name
            assert "Software" not in img.info  # no version/timestamp text chunks


def test_two_renders_are_byte_identical(rendered):
    inputs, _, page = rendered
    assert render_tearsheet(inputs) == page


def test_numbers_are_the_stats_functions_outputs(rendered):
    inputs, r, page = rendered
    cells = dict(re.findall(r'<td data-metric="([a-z0-9_]+)">([^<]*)</td>', page))
    expected = {
        "sharpe": stats.sharpe(r),
        "sortino": stats.sortino(r),
        "cagr": stats.cagr(r),
        "max_drawdown": stats.max_drawdown(r),
        "psr": stats.probabilistic_sharpe_ratio(
            stats.sharpe_per_period(r), N, stats.sample_skew(r), stats.pearson_kurtosis(r)
        ),
        "n_obs": N,
    }
    for key, value in expected.items():
        assert cells[key] == format_metric(key, value), key
    assert cells["pbo"] == format_metric("pbo", inputs.metrics["pbo"]) and cells["pbo"] != "n/a"
    assert f"{inputs.metrics['n_trials']:.0f}" == cells["n_trials"] == "4"
    assert ("promotion gate PASSED" in page) == bool(inputs.metrics["gate_passed"])


def test_series_helpers():
    r = np.array([0.1, -0.2, 0.05, 0.3])
    assert drawdown(r)[1] == pytest.approx(1.1 * 0.8 / 1.1 - 1)
    assert drawdown(r).min() == pytest.approx(stats.max_drawdown(r))
    assert np.isnan(rolling_sharpe(r, window=5)).all()
    rs = rolling_sharpe(r, window=3)
    assert rs[2] == pytest.approx(stats.sharpe(r[:3])) and np.isnan(rs[:2]).all()
    daily = pl.DataFrame({"date": [dt.date(2023, 1, 2), dt.date(2023, 1, 3), dt.date(2023, 2, 1)],
                          "return": [0.1, 0.1, -0.5]})
    assert monthly_returns(daily)["return"].to_list() == pytest.approx([0.21, -0.5])


def test_sweep_tables_join_the_trial_set():
    dates = pl.date_range(dt.date(2023, 1, 1), dt.date(2023, 4, 30), eager=True)
    n = dates.len()
    rng = np.random.default_rng(0)
    variants = {"a": rng.normal(size=n), "b": rng.normal(size=n)}
    registry = pl.DataFrame({"trial_id": ["t2", "t1"], "sharpe": [0.05, -0.01]})
    sweep = pl.DataFrame(
        {"date": pl.concat([dates, dates]), "trial_id": ["t1"] * n + ["t2"] * n,
         "net_return": rng.normal(size=2 * n)}
    )
    ts = build_trial_set(dates, variants, registry, sweep)
    assert ts.extra_sharpes == {"sweep:t1": -0.01, "sweep:t2": 0.05}
    assert ts.pbo_names == ("a", "b", "sweep:t1", "sweep:t2")
    assert ts.pbo_returns.shape == (n, 4)
    np.testing.assert_array_equal(ts.pbo_returns[:, 2], sweep.filter(pl.col("trial_id") == "t1")["net_return"].to_numpy())
    s = summarise(variants["a"], np.zeros(n), variants, np.zeros(0), np.zeros(0), np.zeros(0),
                  extra_trial_sharpes=ts.extra_sharpes, pbo_returns=ts.pbo_returns, n_bootstrap=50)
    srs = [stats.sharpe_per_period(variants["a"]), stats.sharpe_per_period(variants["b"]), -0.01, 0.05]
    assert s.metrics["n_trials"] == 4 and s.metrics["pbo_n_trials"] == 4
    assert s.metrics["trial_sharpe_variance"] == pytest.approx(float(np.var(srs, ddof=1)), rel=1e-12)
    assert s.metrics["pbo"] == stats.pbo_cscv(ts.pbo_returns, 16).pbo
    # too few common days for CSCV: PBO over the variants alone, the count keeps the sweep
    short = build_trial_set(dates, variants, registry, sweep.filter(pl.col("date") < dt.date(2023, 1, 20)))
    assert short.pbo_names == ("a", "b") and len(short.extra_sharpes) == 2
    # no sweep at all
    none = build_trial_set(dates, variants)
    assert none.extra_sharpes == {} and none.pbo_names == ("a", "b")
    # the sweep stage's registry (sweep_trials) has an annualised `sharpe` and the per-period
    # one: the per-period Sharpe is what DSR needs
    both = registry.with_columns(sharpe_per_period=pl.Series([0.5, 0.7]), sharpe=pl.Series([8.0, 11.0]))
    assert build_trial_set(dates, variants, both).extra_sharpes == {"sweep:t1": 0.7, "sweep:t2": 0.5}
    with pytest.raises(ValueError, match="Sharpe columns"):
        build_trial_set(dates, variants, registry.rename({"sharpe": "sr"}))
    with pytest.raises(ValueError, match="missing columns"):
        build_trial_set(dates, variants, registry.rename({"trial_id": "id"}))
    with pytest.raises(ValueError, match="duplicated"):
        build_trial_set(dates, variants, pl.concat([registry, registry]))
