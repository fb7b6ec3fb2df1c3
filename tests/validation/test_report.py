"""The report's numbers are the stats functions' outputs (no second implementation)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_assets.validation import stats
from quant_assets.validation.report import format_metric, summarise


def test_summary_numbers_equal_stats_functions():
    rng = np.random.default_rng(5)
    r = rng.normal(0.0005, 0.01, 500)
    trials = {"main": r, **{f"t{i}": rng.normal(0.0002, 0.01, 500) for i in range(5)}}
    dates = np.repeat(np.arange(50), 20)
    scores = rng.normal(size=1000)
    labels = 0.1 * scores + rng.normal(size=1000)
    s = summarise(r, np.full(500, 0.2), trials, dates, scores, labels)
    m = s.metrics
    assert m["sharpe"] == stats.sharpe(r)
    assert m["max_drawdown"] == stats.max_drawdown(r)
    sr = stats.sharpe_per_period(r)
    skew, kurt = stats.sample_skew(r), stats.pearson_kurtosis(r)
    assert m["psr"] == stats.probabilistic_sharpe_ratio(sr, 500, skew, kurt)
    srs = np.array([stats.sharpe_per_period(v) for v in trials.values()])
    assert m["n_trials"] == 6
    assert math.isclose(m["trial_sharpe_variance"], float(np.var(srs, ddof=1)), rel_tol=0, abs_tol=0)
    assert m["dsr"] == stats.deflated_sharpe_ratio(sr, 500, skew, kurt, 6, float(np.var(srs, ddof=1)))
    assert m["dsr"] < m["psr"]  # deflation by the trials tried
    assert m["rank_ic_mean"] == stats.rank_information_coefficient(dates, scores, labels).mean
    assert m["mean_turnover"] == 0.2
    # the Markdown shows the same numbers, formatted
    assert f"| DSR | {format_metric('dsr', m['dsr'])} |" in s.markdown
    assert f"| Sharpe (annualised) | {format_metric('sharpe', m['sharpe'])} |" in s.markdown


def test_summary_is_deterministic():
    rng = np.random.default_rng(1)
    r = rng.normal(0, 0.01, 300)
    args = (r, np.zeros(300), {"a": r}, np.zeros(0), np.zeros(0), np.zeros(0))
    assert summarise(*args).metrics == summarise(*args).metrics or all(
        (a == b) or (math.isnan(a) and math.isnan(b))
        for a, b in zip(summarise(*args).metrics.values(), summarise(*args).metrics.values(), strict=True)
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-0.3, 0.3, allow_nan=False), min_size=3, max_size=40), st.randoms())
def test_trial_statistics_do_not_depend_on_the_order_trials_arrive_in(sharpes, rnd):
    """The monthly trial sources reach the report in no fixed order; the Sharpe variance (a
    float sum) and so the DSR must be bit-identical whatever it is (a clean rerun of the
    golden flow differed in the last bit before the trials were summed by name)."""
    rng = np.random.default_rng(3)
    r = rng.normal(0.0005, 0.01, 300)
    extra = {f"sweep:{i:03d}": s for i, s in enumerate(sharpes)}
    shuffled = list(extra.items())
    rnd.shuffle(shuffled)
    args = (r, np.zeros(300), {"a": r}, np.zeros(0), np.zeros(0), np.zeros(0))
    a = summarise(*args, extra_trial_sharpes=extra, n_bootstrap=20).metrics
    b = summarise(*args, extra_trial_sharpes=dict(shuffled), n_bootstrap=20).metrics
    for key in ("trial_sharpe_variance", "expected_max_sharpe", "dsr"):
        assert a[key] == b[key] or (math.isnan(a[key]) and math.isnan(b[key])), key


def test_report_fails_loudly_without_the_real_prices_of_its_stress_windows(monkeypatch):
    """A deployment without skfolio's data must not publish a report that silently lacks its
    stress windows: the report step fails (not retried) and says why."""
    import dagster

    from quant_assets.data import real
    from quant_assets.validation import assets as validation_assets

    def missing():
        raise real.RealDataUnavailable("skfolio is not installed")

    real._stock_prices.cache_clear()
    monkeypatch.setattr(real, "data_dir", missing)
    with pytest.raises(dagster.Failure, match="stress windows' real prices are missing") as exc:
        validation_assets._real_stress_series()
    assert exc.value.allow_retries is False
    real._stock_prices.cache_clear()


def test_trial_counts_by_source_and_annualised_trial_table():
    """"Trials (variants + sweep) 6" with an empty sweep confused readers: the count now says
    how many came from each source; the trial table gives annualised Sharpe ratios (the
    headline's scale), not "Sharpe per day"."""
    rng = np.random.default_rng(2)
    r = rng.normal(0.0005, 0.01, 300)
    variants = {"main": r, "alt": rng.normal(0.0, 0.01, 300)}
    s = summarise(r, np.zeros(300), variants, np.zeros(0), np.zeros(0), np.zeros(0), n_bootstrap=20)
    assert s.metrics["n_trials_variants"] == 2 and s.metrics["n_trials_sweep"] == 0
    assert "| Trials (deflating the DSR) | 2 (2 strategy variants; the research sweep has not run) |" in s.markdown
    assert f"| main | variant | {stats.sharpe(r):.2f} |" in s.markdown
    assert "Sharpe per day" not in s.markdown
    swept = summarise(r, np.zeros(300), variants, np.zeros(0), np.zeros(0), np.zeros(0), n_bootstrap=20,
                      extra_trial_sharpes={"sweep:t1": 0.05, "sweep:t2": math.nan})
    assert swept.metrics["n_trials"] == 3  # the undefined Sharpe is left out of the DSR
    assert "3 (2 strategy variants + 2 research-sweep trials; 1 with an undefined Sharpe left out)" in swept.markdown
    assert f"| sweep:t1 | sweep | {0.05 * math.sqrt(252):.2f} |" in swept.markdown
    # context-free formatting (the demo's console summary) stays the bare count
    assert format_metric("n_trials", 3.0) == "3"


def test_min_track_record_format_says_why_it_is_undefined():
    m = {"sharpe_per_period": -0.02}
    assert format_metric("min_track_record_length", math.inf, m) == (
        f"undefined: observed Sharpe ({-0.02 * math.sqrt(252):.2f} annualised) <= 0, the PSR benchmark"
    )
    assert format_metric("min_track_record_length", math.inf).startswith("undefined: observed Sharpe <= 0")
    assert format_metric("min_track_record_length", math.nan) == "n/a"
    assert format_metric("min_track_record_length", 123.4) == "123"


def test_benchmark_relative_metrics_are_the_stats_functions():
    rng = np.random.default_rng(8)
    b = rng.normal(0.0003, 0.01, 400)
    r = 0.2 * b + rng.normal(0.0004, 0.006, 400)
    b_missing = b.copy()
    b_missing[5] = np.nan
    s = summarise(r, np.zeros(400), {"a": r}, np.zeros(0), np.zeros(0), np.zeros(0), n_bootstrap=20,
                  benchmark=b_missing, benchmark_name="market factor")
    m = s.metrics
    assert m["information_ratio"] == stats.information_ratio(r, b_missing)
    assert m["beta"] == stats.beta(r, b_missing) and m["alpha"] == stats.alpha(r, b_missing)
    assert m["tracking_error"] == stats.tracking_error(r, b_missing)
    assert m["n_obs_benchmark"] == 399
    assert "| vs benchmark: market factor | value |" in s.markdown
    assert f"| Beta | {m['beta']:.3f} |" in s.markdown
    # without a benchmark nothing relative is claimed
    plain = summarise(r, np.zeros(400), {"a": r}, np.zeros(0), np.zeros(0), np.zeros(0), n_bootstrap=20)
    assert "beta" not in plain.metrics and "vs benchmark" not in plain.markdown


def test_too_short_a_backtest_reports_na_instead_of_failing():
    for n in (0, 1):
        r = np.full(n, 0.01)
        m = summarise(r, np.zeros(n), {"a": r}, np.zeros(0), np.zeros(0), np.zeros(0), n_bootstrap=10).metrics
        assert math.isnan(m["psr"]) and math.isnan(m["dsr"])
