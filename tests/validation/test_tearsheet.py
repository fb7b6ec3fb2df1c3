"""The HTML tear sheet: every embedded image is a readable PNG, the numbers are the stats
functions' outputs, two renders are byte-identical, every section renders (also from short or
missing data) and the page is well-formed HTML. Also the sweep trial set."""

import datetime as dt
import io
import math
import re
from html.parser import HTMLParser

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from quant_assets.backtest.portfolio import CostModel, backtest_frame, run_backtest
from quant_assets.validation import analysis, regimes, stats
from quant_assets.validation.benchmark import Benchmark
from quant_assets.validation.gate import evaluate_gate
from quant_assets.validation.report import format_metric, summarise
from quant_assets.validation.tearsheet import (
    FIGURES,
    TearSheetInputs,
    _regime_bars,
    drawdown,
    embedded_images,
    monthly_ic,
    monthly_returns,
    render_tearsheet,
    rolling_sharpe,
)
from quant_assets.validation.trials import build_trial_set

N = 300
N_NAMES = 20
BENCHMARK_NAME = "market factor (equal-weight universe)"


def _business_days(start: dt.date, n: int) -> pl.Series:
    days = pl.date_range(start, start + dt.timedelta(days=2 * n + 10), "1d", eager=True)
    return days.filter(days.dt.weekday() <= 5)[:n]


def _inputs():
    """A full synthetic input: a kernel backtest over simulated prices driven by scores with a
    planted edge, the market factor as benchmark, every optional input given."""
    rng = np.random.default_rng(2)
    dates = _business_days(dt.date(2023, 1, 2), N)
    ids = [f"I{i:02d}" for i in range(N_NAMES)]
    market = rng.normal(0.0003, 0.008, N)
    scores = rng.normal(size=(N, N_NAMES))
    ret = 0.8 * market[:, None] + rng.normal(0, 0.01, (N, N_NAMES))
    ret[2:] += 0.0006 * scores[:-2]  # score of day t earns on day t+2 (execution lag 1)
    prices = 100 * np.cumprod(1 + ret, axis=0)
    ranks = scores.argsort(axis=1).argsort(axis=1)
    decided = np.where(ranks >= N_NAMES - 4, 0.125, np.where(ranks < 4, -0.125, 0.0))
    targets = np.vstack([np.zeros((1, N_NAMES)), decided[:-1]])  # traded one day later
    res = run_backtest(prices, targets, np.ones_like(prices, dtype=bool), CostModel(1.0, 2.0))
    long_ = lambda m, name: pl.DataFrame(  # noqa: E731
        {"date": np.repeat(dates.to_numpy(), N_NAMES), "instrument_id": ids * N, name: m.ravel()}
    ).with_columns(pl.col("date").cast(pl.Date))
    positions = long_(targets, "weight")
    asset_returns = regimes.instrument_returns(long_(prices, "close"), "close")
    bt = backtest_frame(res, dates).with_columns(
        n_long=pl.Series((targets > 0).sum(axis=1)), n_short=pl.Series((targets < 0).sum(axis=1))
    )
    legs = analysis.leg_returns(positions, asset_returns)
    bt = bt.join(legs, on="date", how="left").with_columns(
        pl.col("long_return").fill_null(0.0), pl.col("short_return").fill_null(0.0)
    )
    predictions = long_(scores, "score")
    r = bt["net_return"].to_numpy()
    bench = Benchmark(BENCHMARK_NAME, pl.DataFrame({"date": dates, "return": market}), "market", "test")
    b = bench.aligned(dates)

    trials = {"main": r, **{f"v{i}": rng.normal(0.0002, 0.01, N) for i in range(3)}}
    ic_dates = np.repeat(dates.cast(pl.Int32).to_numpy(), 20)
    ic_scores = rng.normal(size=N * 20)
    labels = 0.05 * ic_scores + rng.normal(size=N * 20)
    s = summarise(r, bt["turnover"].to_numpy(), trials, ic_dates, ic_scores, labels, n_bootstrap=200,
                  benchmark=b, benchmark_name=bench.name)
    gate = evaluate_gate(s.metrics)
    metrics = {**s.metrics, **gate.metrics()}
    daily = bt.select("date", pl.col("net_return").alias("return"))
    labels_frame = pl.DataFrame(
        {"date": dates, "volatility": (["low", "mid", "high"] * N)[:N],
         "direction": (["up", "down"] * N)[:N], "dispersion": (["high", "mid", "low"] * N)[:N]}
    )
    stress = regimes.stress_table({"strategy": daily})
    factors = pl.DataFrame({"date": dates, "market": market, "momentum": rng.normal(0, 0.005, N)})
    inputs = TearSheetInputs(
        daily=daily,
        metrics=metrics,
        monthly_ic=monthly_ic(s.rank_ic.dates, s.rank_ic.values),
        bootstrap_max_drawdown=s.bootstrap.max_drawdown,
        regimes=regimes.regime_performance(daily, labels_frame),
        stress=stress,
        stress_source="test",
        factors=regimes.factor_exposures(daily, factors),
        gate=gate,
        benchmark=bench,
        backtest=bt,
        predictions=predictions,
        asset_returns=asset_returns,
        trial_sharpes=s.trial_sharpes,
    )
    return inputs, r


@pytest.fixture(scope="module")
def rendered():
    inputs, r = _inputs()
    return inputs, r, render_tearsheet(inputs)


def test_every_image_decodes(rendered):
    _, _, page = rendered
    images = embedded_images(page)
    assert tuple(images) == FIGURES
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
    assert cells["n_trials"] == "4 (4 strategy variants; the research sweep has not run)"
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


# ------------------------------------------------------------------------------------------
# Every section, well-formed HTML, short and missing data
# ------------------------------------------------------------------------------------------

SECTIONS = {
    "headline": "Headline statistics",
    "relative": f"Benchmark-relative statistics (vs {BENCHMARK_NAME})",
    "performance": "Performance",
    "drawdowns": "Worst drawdowns (top 5)",
    "periods": "Monthly and yearly returns",
    "distribution": "Return distribution",
    "signal": "Signal",
    "trading": "Trading",
    "trials": "Trials",
    "robustness": "Robustness",
    "regimes": "Market regimes",
    "stress": "Stress windows (real data)",
    "factors": "Factor exposures",
}
_VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Checker(HTMLParser):
    """Tag balance (every non-void element closed in order), headings by id, table cells."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.headings, self._h2 = [], [], {}, None
        self.tables: dict[str, list[list[str]]] = {}
        self._table, self._cell = None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in _VOID:
            self.stack.append(tag)
        if tag == "h2":
            self._h2 = [a.get("id"), ""]
        if tag == "table":
            self._table = a.get("id")
            self.tables[self._table] = []
        if tag == "tr" and self._table:
            self.tables[self._table].append([])
        if tag in ("td", "th") and self._table:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()
        if tag == "h2" and self._h2:
            self.headings[self._h2[0]] = self._h2[1]
            self._h2 = None
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append(self._cell)
            self._cell = None
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._h2 is not None:
            self._h2[1] += data
        if self._cell is not None:
            self._cell += data


def _parse(page: str) -> _Checker:
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert not checker.errors, checker.errors[:5]
    assert checker.stack == [], checker.stack
    assert page.startswith("<!DOCTYPE html>")
    return checker


def _column(table: list[list[str]], name: str) -> list[str]:
    i = table[0].index(name)
    return [row[i] for row in table[1:]]


def test_every_section_with_its_key_number(rendered):
    inputs, r, page = rendered
    doc = _parse(page)
    for section_id, heading in SECTIONS.items():
        assert doc.headings.get(section_id) == heading, section_id
    t = doc.tables
    bt, b = inputs.backtest, inputs.benchmark.aligned(inputs.daily["date"])
    # benchmark-relative: the reference-checked functions on the aligned series
    rel = dict((row[0], row[1]) for row in t["relative"][1:])
    assert rel["Information ratio (annualised)"] == format_metric("information_ratio", stats.information_ratio(r, b))
    assert rel["Beta"] == format_metric("beta", stats.beta(r, b)) != "n/a"
    assert rel["Tracking error (annualised)"] == format_metric("tracking_error", stats.tracking_error(r, b))
    assert f"Benchmark: {BENCHMARK_NAME}. Why: test." in page
    # worst drawdowns: the first row is the max drawdown
    assert _column(t["drawdowns"], "depth")[0] == f"{stats.max_drawdown(r):.2%}"
    assert len(t["drawdowns"]) - 1 == 5
    # yearly: compounded 2023 return
    y2023 = float(np.prod(1 + inputs.daily.filter(pl.col("date").dt.year() == 2023)["return"].to_numpy()) - 1)
    assert _column(t["yearly"], "strategy")[0] == f"{y2023:.2%}"
    # distribution: the historical 5% VaR
    assert dict(t["distribution"][1:])["5% VaR (historical)"] == f"{stats.value_at_risk(r):.2%}"
    # signal: IC decay peaks at lag 2 (the planted edge) and the top quantile beats the bottom
    decay = analysis.ic_decay(inputs.predictions, inputs.asset_returns, 10)
    assert _column(t["ic_decay"], "rank_ic")[1] == f"{decay['rank_ic'][1]:.4g}"
    q_returns = [float(v.rstrip("%")) for v in _column(t["quantiles"], "annual_return")]
    assert q_returns[-1] > q_returns[0]
    assert "Mean score autocorrelation (lag 1):" in page
    # trading: net CAGR, legs add up to the book
    costs = dict(t["costs"][1:])
    assert costs["CAGR net"] == f"{stats.cagr(bt['net_return'].to_numpy()):.2%}"
    legs = {row[0]: row for row in t["legs"][1:]}
    assert legs["long + short"][3] == f"{stats.sharpe(bt['gross_return'].to_numpy()):.2f}"
    # trials: annualised Sharpe, with the source, and the count by source
    trials = {row[0]: row for row in t["trials"][1:]}
    assert trials["main"][1] == "variant"
    assert trials["main"][2] == f"{stats.sharpe(r):.2f}"
    assert "4 (4 strategy variants; the research sweep has not run)" in page
    assert "Sharpe per day" not in page
    # stress windows the backtest does not cover say so, with its span
    assert "not covered by the backtest (2023-01..2024-02)" in page
    assert "<td>n/a</td><td>n/a</td>" not in "".join(page.split('id="stress"')[1:2])
    # factors
    assert _column(t["factors"], "factor")[0] == "alpha"


def test_regime_chart_has_a_legend():
    inputs, _ = _inputs()
    fig = _regime_bars(inputs.regimes)
    legend = fig.axes[0].get_legend()
    assert legend is not None
    texts = [x.get_text() for x in legend.get_texts()]
    assert len(texts) == 3 and all(any(k in x for x in texts) for k in ("volatility", "direction", "dispersion"))


def _minimal(n_days: int, **extra) -> TearSheetInputs:
    rng = np.random.default_rng(n_days)
    dates = _business_days(dt.date(2024, 1, 2), n_days)
    r = rng.normal(0.0, 0.01, n_days)
    daily = pl.DataFrame({"date": dates, "return": r}, schema={"date": pl.Date, "return": pl.Float64})
    labels_frame = pl.DataFrame({"date": dates, "volatility": ["low"] * n_days, "direction": ["up"] * n_days,
                                 "dispersion": ["mid"] * n_days},
                                schema={"date": pl.Date, "volatility": pl.Utf8, "direction": pl.Utf8, "dispersion": pl.Utf8})
    s = summarise(r, np.zeros(n_days), {"only": r}, np.zeros(0), np.zeros(0), np.zeros(0), n_bootstrap=20)
    return TearSheetInputs(
        daily=daily,
        metrics={**s.metrics, **evaluate_gate(s.metrics).metrics()},
        monthly_ic=pl.DataFrame(schema={"month": pl.Date, "rank_ic": pl.Float64}),
        bootstrap_max_drawdown=s.bootstrap.max_drawdown,
        regimes=regimes.regime_performance(daily, labels_frame),
        stress=regimes.stress_table({"strategy": daily}),
        stress_source="none",
        gate=evaluate_gate(s.metrics),
        **extra,
    )


@pytest.mark.parametrize("n_days", [0, 1, 2, 5, 70])
def test_short_or_missing_data_render_every_section(n_days):
    """No benchmark (cash), no backtest frame, no predictions, no factors: every section is
    there and says what it lacks instead of failing."""
    page = render_tearsheet(_minimal(n_days))
    doc = _parse(page)
    expected = {**SECTIONS, "relative": "Benchmark-relative statistics (vs cash (zero return))"}
    for section_id, heading in expected.items():
        assert doc.headings.get(section_id) == heading, (n_days, section_id)
    assert set(embedded_images(page)) == set(FIGURES)
    assert "Long and short legs not available: no backtest frame given." in page
    assert "Turnover and cost attribution need the backtest frame; not given." in page
    assert "IC decay and quantile returns need the predictions" in page
    assert "Against cash, beta and alpha are undefined" in page
    if n_days < 63:
        assert f"Rolling statistics need 63 days; the backtest has {n_days}." in page
    if n_days < 2:
        assert "Not computable: fewer than 2 days with both a strategy and a benchmark return." in page
    if n_days == 0:
        assert "No backtest days." in page
    # MinTRL: undefined, and the gate line says why
    if n_days >= 3:
        m = _minimal(n_days).metrics
        if m["sharpe_per_period"] <= 0:
            assert "undefined: observed Sharpe" in page
            assert "the minimum track record is infinite because the observed Sharpe ratio" in page


def test_empty_regime_and_stress_tables_and_no_gate():
    inputs = _minimal(30)
    page = render_tearsheet(TearSheetInputs(**{
        **inputs.__dict__, "gate": None, "regimes": inputs.regimes.head(0), "stress": inputs.stress.head(0),
    }))
    _parse(page)
    assert "No stress windows." in page and "promotion gate" not in page


def test_legs_from_positions_when_the_backtest_has_no_leg_columns(rendered):
    """Without long_return/short_return in the backtest frame the legs come from the
    post-trade weights (analysis.leg_returns) and give the same table; without either the
    section says what is missing."""
    inputs, _, full = rendered
    bt = inputs.backtest.drop("long_return", "short_return")
    positions = _positions_of(inputs)
    assert analysis.legs(bt, positions, inputs.asset_returns).equals(
        inputs.backtest.select("date", "long_return", "short_return")
    )
    from_positions = render_tearsheet(TearSheetInputs(**{**inputs.__dict__, "backtest": bt, "positions": positions}))
    assert _parse(full).tables["legs"] == _parse(from_positions).tables["legs"]
    no_legs = render_tearsheet(TearSheetInputs(**{**inputs.__dict__, "backtest": bt}))
    assert "the backtest frame has no long_return/short_return columns and no positions" in no_legs


def _positions_of(inputs):
    """The post-trade weights the synthetic backtest held (as in _inputs)."""
    rng = np.random.default_rng(2)
    dates = inputs.daily["date"]
    rng.normal(0.0003, 0.008, N)
    scores = rng.normal(size=(N, N_NAMES))
    ranks = scores.argsort(axis=1).argsort(axis=1)
    decided = np.where(ranks >= N_NAMES - 4, 0.125, np.where(ranks < 4, -0.125, 0.0))
    targets = np.vstack([np.zeros((1, N_NAMES)), decided[:-1]])
    ids = [f"I{i:02d}" for i in range(N_NAMES)]
    return pl.DataFrame(
        {"date": np.repeat(dates.to_numpy(), N_NAMES), "instrument_id": ids * N, "weight": targets.ravel()}
    ).with_columns(pl.col("date").cast(pl.Date))


def test_unnamed_benchmark_column_still_renders():
    """The old input shape (daily with a benchmark column, no Benchmark) is read as an
    unnamed market benchmark, and the page asks for a name."""
    inputs = _minimal(80)
    daily = inputs.daily.with_columns(benchmark=pl.Series(np.linspace(-0.01, 0.01, 80)))
    page = render_tearsheet(TearSheetInputs(**{**inputs.__dict__, "daily": daily}))
    assert "vs benchmark (unnamed)" in page and "pass a named Benchmark" in page
    assert math.isfinite(stats.beta(inputs.daily["return"].to_numpy(), daily["benchmark"].to_numpy()))


def test_key_plots_are_markdown_images_of_the_tear_sheets_pngs(rendered):
    """What the report asset puts in its Dagster metadata (issue 18: the key plots appear in
    the asset's metadata as well as in the tear sheet): Markdown images with a base64 data
    URI, byte for byte the tear sheet's PNGs, small enough for the event log."""
    import base64

    from quant_assets.validation.tearsheet import KEY_PLOTS, key_plots_markdown

    _, _, page = rendered
    images = embedded_images(page)
    plots = key_plots_markdown(page)
    assert list(plots) == [f"plot_{n}" for n in KEY_PLOTS]
    for name in KEY_PLOTS:
        match = re.fullmatch(r"!\[(\w+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", plots[f"plot_{name}"])
        assert match and match[1] == name
        assert base64.b64decode(match[2]) == images[name]
        assert len(images[name]) < 80_000, (name, len(images[name]))
    with pytest.raises(ValueError, match="key plots"):
        key_plots_markdown("<html></html>")


def test_markdown_image_refuses_what_is_not_a_png():
    from quant_assets.plots import markdown_image

    assert markdown_image(b"\x89PNG\r\n\x1a\n", "x") == "![x](data:image/png;base64,iVBORw0KGgo=)"
    with pytest.raises(ValueError, match="not a PNG"):
        markdown_image(b"GIF89a", "x")


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_a_trial_sets_sharpes_do_not_depend_on_the_order_rows_arrive_in(seed):
    """The monthly trials' rows in any order (a Delta read's file order varies between clean
    runs) give bit-identical Sharpes and returns matrix: the golden flow's rerun check found
    trial_sharpe_variance differing when they were summed in arrival order."""
    dates = pl.date_range(dt.date(2023, 1, 2), dt.date(2023, 3, 31), eager=True)
    n = dates.len()
    rng = np.random.default_rng(1)
    variants = {"a": rng.normal(size=n)}
    rows = pl.DataFrame({"date": pl.concat([dates] * 3), "trial_id": [f"g{i}" for i in range(3) for _ in range(n)],
                         "net_return": rng.normal(scale=0.01, size=3 * n) * 1.1})
    shuffled = rows.sample(fraction=1.0, shuffle=True, seed=seed)
    a = build_trial_set(dates, variants, monthly_returns={"strategy_grid": rows})
    b = build_trial_set(dates, variants, monthly_returns={"strategy_grid": shuffled})
    assert list(a.extra_sharpes.items()) == list(b.extra_sharpes.items())
    assert a.pbo_names == b.pbo_names and np.array_equal(a.pbo_returns, b.pbo_returns)
