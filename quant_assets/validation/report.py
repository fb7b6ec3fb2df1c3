"""Assemble the validation report from arrays: headline statistics, PSR, DSR over the
strategy variants tried, IC, bootstrap drawdowns, and a Markdown summary. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from quant_assets.validation import stats


@dataclass(frozen=True)
class ValidationSummary:
    metrics: dict[str, float]
    trial_sharpes: dict[str, float]  # per-period Sharpe of every variant tried
    markdown: str


def summarise(
    returns: np.ndarray,
    turnover: np.ndarray,
    trial_returns: dict[str, np.ndarray],
    ic_dates: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    bootstrap_seed: int = 0,
    periods_per_year: int = 252,
) -> ValidationSummary:
    """``trial_returns`` holds the daily returns of every variant evaluated on the same
    predictions (the selected strategy included): their count and the variance of their
    per-period Sharpe ratios deflate the Sharpe ratio (Bailey & Lopez de Prado 2014)."""
    returns = np.asarray(returns, dtype=np.float64)
    m = stats.performance_summary(returns, periods_per_year=periods_per_year, turnover=turnover)
    sr = m["sharpe_per_period"]
    n = int(m["n_obs"])
    trial_sr = {k: stats.sharpe_per_period(v) for k, v in trial_returns.items()}
    srs = np.array([v for v in trial_sr.values() if math.isfinite(v)])
    n_trials = max(1, srs.size)
    sr_var = float(np.var(srs, ddof=1)) if srs.size > 1 else 0.0
    m["psr"] = stats.probabilistic_sharpe_ratio(sr, n, m["skew"], m["kurtosis"])
    m["n_trials"] = float(n_trials)
    m["trial_sharpe_variance"] = sr_var
    m["expected_max_sharpe"] = stats.expected_max_sharpe(n_trials, sr_var)
    m["dsr"] = stats.deflated_sharpe_ratio(sr, n, m["skew"], m["kurtosis"], n_trials, sr_var)
    try:
        m["min_track_record_length"] = stats.min_track_record_length(sr, m["skew"], m["kurtosis"])
    except ValueError:
        m["min_track_record_length"] = math.nan
    ic = stats.information_coefficient(ic_dates, scores, labels)
    ric = stats.rank_information_coefficient(ic_dates, scores, labels)
    m["ic_mean"] = ic.mean
    m["rank_ic_mean"] = ric.mean
    m["rank_ic_ir"] = (
        float(np.mean(ric.values) / np.std(ric.values, ddof=1) * math.sqrt(periods_per_year))
        if ric.values.size > 1 and np.std(ric.values, ddof=1) > 0
        else math.nan
    )
    boot = stats.stationary_bootstrap(returns, n_samples=500, seed=bootstrap_seed)
    pct = boot.percentiles((5.0, 50.0, 95.0))
    # max_drawdown is negative: the 5th percentile is the bad tail
    m["bootstrap_max_drawdown_p05"] = pct["max_drawdown"][5.0]
    m["bootstrap_max_drawdown_p50"] = pct["max_drawdown"][50.0]
    m["bootstrap_sharpe_p05"] = pct["sharpe"][5.0]
    return ValidationSummary(m, trial_sr, render_markdown(m, trial_sr))


_ROWS = (
    ("Sharpe (annualised)", "sharpe", "{:.2f}"),
    ("Sortino", "sortino", "{:.2f}"),
    ("CAGR", "cagr", "{:.2%}"),
    ("Annual volatility", "annual_volatility", "{:.2%}"),
    ("Max drawdown", "max_drawdown", "{:.2%}"),
    ("Calmar", "calmar", "{:.2f}"),
    ("Hit rate", "hit_rate", "{:.1%}"),
    ("Mean daily turnover", "mean_turnover", "{:.3f}"),
    ("PSR (vs 0)", "psr", "{:.3f}"),
    ("DSR", "dsr", "{:.3f}"),
    ("Trials (variants)", "n_trials", "{:.0f}"),
    ("Min track record (days)", "min_track_record_length", "{:.0f}"),
    ("Mean IC", "ic_mean", "{:.4f}"),
    ("Mean rank IC", "rank_ic_mean", "{:.4f}"),
    ("Bootstrap max DD, 5th pct", "bootstrap_max_drawdown_p05", "{:.2%}"),
    ("Days", "n_obs", "{:.0f}"),
)


def format_metric(key: str, value: float) -> str:
    fmt = next((f for _, k, f in _ROWS if k == key), "{:.4g}")
    return "n/a" if value is None or not math.isfinite(value) else fmt.format(value)


def render_markdown(metrics: dict[str, float], trial_sharpes: dict[str, float]) -> str:
    lines = ["| statistic | value |", "|---|---|"]
    lines += [f"| {label} | {format_metric(key, metrics.get(key, math.nan))} |" for label, key, _ in _ROWS]
    lines += ["", "| variant | Sharpe per day |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted(trial_sharpes.items())]
    return "\n".join(lines)
