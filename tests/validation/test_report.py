"""The report's numbers are the stats functions' outputs (no second implementation)."""

import math

import numpy as np
import pytest

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
