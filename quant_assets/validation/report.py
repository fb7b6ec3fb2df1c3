"""Assemble the validation report from arrays: headline statistics, PSR, DSR over every trial
tried, PBO (CSCV) over the trials' return matrix, IC, bootstrap drawdowns, and a Markdown
summary. Pure.

The trial set is the strategy variants evaluated on the same predictions plus, when a sweep
has run, the sweep's trials (``extra_trial_sharpes`` for the count and Sharpe variance of the
DSR; their returns as extra columns of ``pbo_returns``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from quant_assets.validation import stats

PBO_SPLITS = 16  # CSCV blocks: C(16, 8) = 12870 splits, the paper's choice
PBO_MIN_ROWS_PER_BLOCK = 4  # fewer rows per block: block Sharpe ratios are noise, PBO n/a


@dataclass(frozen=True)
class ValidationSummary:
    metrics: dict[str, float]
    trial_sharpes: dict[str, float]  # per-period Sharpe of every trial tried
    markdown: str
    bootstrap: stats.BootstrapResult | None = None
    rank_ic: stats.ICResult | None = None
    pbo: stats.PBOResult | None = None


def probability_of_overfitting(pbo_returns: np.ndarray | None, n_splits: int = PBO_SPLITS) -> stats.PBOResult | None:
    """CSCV PBO of a (T x N) trial return matrix, or None when it is not computable: fewer
    than 2 trials or fewer than ``PBO_MIN_ROWS_PER_BLOCK`` rows per block."""
    if pbo_returns is None:
        return None
    x = np.asarray(pbo_returns, dtype=float)
    if x.ndim != 2 or x.shape[1] < 2 or x.shape[0] < n_splits * PBO_MIN_ROWS_PER_BLOCK:
        return None
    return stats.pbo_cscv(x, n_splits=n_splits)


def summarise(
    returns: np.ndarray,
    turnover: np.ndarray,
    trial_returns: dict[str, np.ndarray],
    ic_dates: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    bootstrap_seed: int = 0,
    periods_per_year: int = 252,
    extra_trial_sharpes: dict[str, float] | None = None,
    pbo_returns: np.ndarray | None = None,
    n_bootstrap: int = 500,
) -> ValidationSummary:
    """``trial_returns`` holds the daily returns of every variant evaluated on the same
    predictions (the selected strategy included); ``extra_trial_sharpes`` the per-period
    Sharpe ratios of further trials (a sweep's). Their count and the variance of their
    Sharpe ratios deflate the Sharpe ratio (Bailey & Lopez de Prado 2014).

    ``pbo_returns`` is the (T x N) return matrix of the trials on common days for PBO; by
    default the columns of ``trial_returns`` (when they have equal lengths)."""
    returns = np.asarray(returns, dtype=np.float64)
    m = stats.performance_summary(returns, periods_per_year=periods_per_year, turnover=turnover)
    sr = m["sharpe_per_period"]
    n = int(m["n_obs"])
    trial_sr = {k: stats.sharpe_per_period(v) for k, v in trial_returns.items()}
    overlap = set(trial_sr) & set(extra_trial_sharpes or {})
    if overlap:
        raise ValueError(f"trial names used twice (variants and sweep): {sorted(overlap)}")
    trial_sr.update({k: float(v) for k, v in (extra_trial_sharpes or {}).items()})
    if pbo_returns is None and len({len(v) for v in trial_returns.values()}) == 1:
        pbo_returns = np.column_stack([np.asarray(v, dtype=float) for v in trial_returns.values()])
    pbo = probability_of_overfitting(pbo_returns)
    m["pbo"] = pbo.pbo if pbo is not None else math.nan
    m["pbo_n_trials"] = float(pbo.n_trials) if pbo is not None else math.nan
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
    boot = stats.stationary_bootstrap(returns, n_samples=n_bootstrap, seed=bootstrap_seed)
    pct = boot.percentiles((5.0, 50.0, 95.0))
    # max_drawdown is negative: the 5th percentile is the bad tail
    m["bootstrap_max_drawdown_p05"] = pct["max_drawdown"][5.0]
    m["bootstrap_max_drawdown_p50"] = pct["max_drawdown"][50.0]
    m["bootstrap_sharpe_p05"] = pct["sharpe"][5.0]
    return ValidationSummary(m, trial_sr, render_markdown(m, trial_sr), boot, ric, pbo)


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
    ("Trials (variants + sweep)", "n_trials", "{:.0f}"),
    ("PBO (CSCV)", "pbo", "{:.3f}"),
    ("Min track record (days)", "min_track_record_length", "{:.0f}"),
    ("Mean IC", "ic_mean", "{:.4f}"),
    ("Mean rank IC", "rank_ic_mean", "{:.4f}"),
    ("Bootstrap max DD, 5th pct", "bootstrap_max_drawdown_p05", "{:.2%}"),
    ("Days", "n_obs", "{:.0f}"),
)


def format_metric(key: str, value: float) -> str:
    fmt = next((f for _, k, f in _ROWS if k == key), "{:.4g}")
    return "n/a" if value is None or not math.isfinite(value) else fmt.format(value)


def render_markdown(
    metrics: dict[str, float], trial_sharpes: dict[str, float], gate_message: str | None = None
) -> str:
    lines = ["| statistic | value |", "|---|---|"]
    lines += [f"| {label} | {format_metric(key, metrics.get(key, math.nan))} |" for label, key, _ in _ROWS]
    lines += ["", "| variant | Sharpe per day |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted(trial_sharpes.items())]
    if gate_message:
        lines += ["", "**" + gate_message.splitlines()[0] + "**", ""] + gate_message.splitlines()[1:]
    return "\n".join(lines)
