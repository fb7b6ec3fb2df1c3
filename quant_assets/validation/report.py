"""Assemble the validation report from arrays: headline statistics, PSR, DSR over every trial
tried, PBO (CSCV) over the trials' return matrix, IC, bootstrap drawdowns, and a Markdown
summary. Pure.

The trial set is the strategy variants evaluated on the same predictions plus every other
trial tried on the same data: a sweep's trials, the monthly model sweep's and the strategy
grid's parameter sets (``extra_trial_sharpes`` for the count and Sharpe variance of the DSR;
their returns as extra columns of ``pbo_returns``). The report says how many came from each
source (``TRIAL_SOURCES``, by the prefix of the trial's name).

With a benchmark (its daily returns aligned with the strategy's by date, see
``validation.benchmark``), the report adds the benchmark-relative statistics of
``stats.benchmark_summary``: active return, tracking error, information ratio, beta, alpha.

Every Sharpe ratio shown is annualised (per-day Sharpe times sqrt(periods_per_year)); the
per-day values stay in the metrics (``sharpe_per_period``, ``trial_sharpes``) because PSR,
DSR and MinTRL are defined on them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from quant_assets.validation import stats

PBO_SPLITS = 16  # CSCV blocks: C(16, 8) = 12870 splits, the paper's choice
PBO_MIN_ROWS_PER_BLOCK = 4  # fewer rows per block: block Sharpe ratios are noise, PBO n/a
SWEEP_PREFIX = "sweep:"  # names a sweep's trial in the trial set ("sweep:<trial_id>")
# source of a trial -> the prefix of its name; a name with none of them is a variant
TRIAL_SOURCES = {
    "sweep": SWEEP_PREFIX,
    "model_sweep": "msweep:",  # trials.monthly.TRIAL_PREFIX
    "strategy_grid": "grid:",  # backtest.monthly_grid.TRIAL_PREFIX
}


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
    benchmark: np.ndarray | None = None,
    benchmark_name: str | None = None,
) -> ValidationSummary:
    """``trial_returns`` holds the daily returns of every variant evaluated on the same
    predictions (the selected strategy included); ``extra_trial_sharpes`` the per-period
    Sharpe ratios of further trials (a sweep's). Their count and the variance of their
    Sharpe ratios deflate the Sharpe ratio (Bailey & Lopez de Prado 2014).

    ``pbo_returns`` is the (T x N) return matrix of the trials on common days for PBO; by
    default the columns of ``trial_returns`` (when they have equal lengths).

    ``benchmark``: the benchmark's daily returns aligned with ``returns`` (same days, NaN
    where it has none; ``Benchmark.aligned``), named ``benchmark_name`` in the Markdown."""
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
    # by name: the variance's float sum must not depend on the order the sources arrived in
    srs = np.array([trial_sr[k] for k in sorted(trial_sr) if math.isfinite(trial_sr[k])])
    n_trials = max(1, srs.size)
    sr_var = float(np.var(srs, ddof=1)) if srs.size > 1 else 0.0
    # PSR and DSR need 2 returns: fewer is a report that says n/a, not one that fails
    enough = n >= 2
    m["psr"] = stats.probabilistic_sharpe_ratio(sr, n, m["skew"], m["kurtosis"]) if enough else math.nan
    m["n_trials"] = float(n_trials)
    m["n_trials_variants"] = float(len(trial_returns))
    for source in TRIAL_SOURCES:
        m[f"n_trials_{source}"] = float(sum(trial_source(k) == source for k in extra_trial_sharpes or {}))
    m["trial_sharpe_variance"] = sr_var
    m["expected_max_sharpe"] = stats.expected_max_sharpe(n_trials, sr_var)
    m["dsr"] = (
        stats.deflated_sharpe_ratio(sr, n, m["skew"], m["kurtosis"], n_trials, sr_var) if enough else math.nan
    )
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
    if benchmark is not None:
        m.update(stats.benchmark_summary(returns, benchmark, periods_per_year))
    markdown = render_markdown(m, trial_sr, benchmark_name=benchmark_name, periods_per_year=periods_per_year)
    return ValidationSummary(m, trial_sr, markdown, boot, ric, pbo)


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
    ("Trials (deflating the DSR)", "n_trials", "{:.0f}"),
    ("PBO (CSCV)", "pbo", "{:.3f}"),
    ("Min track record (days)", "min_track_record_length", "{:.0f}"),
    ("Mean IC", "ic_mean", "{:.4f}"),
    ("Mean rank IC", "rank_ic_mean", "{:.4f}"),
    ("Bootstrap max DD, 5th pct", "bootstrap_max_drawdown_p05", "{:.2%}"),
    ("Days", "n_obs", "{:.0f}"),
)

# Benchmark-relative rows (stats.benchmark_summary); annualised as the headline.
RELATIVE_ROWS = (
    ("Active return (annualised, arithmetic)", "active_return", "{:.2%}"),
    ("Tracking error (annualised)", "tracking_error", "{:.2%}"),
    ("Information ratio (annualised)", "information_ratio", "{:.2f}"),
    ("Beta", "beta", "{:.3f}"),
    ("Alpha (annualised, compounded)", "alpha", "{:.2%}"),
    ("Correlation", "benchmark_correlation", "{:.3f}"),
    ("Benchmark CAGR", "benchmark_cagr", "{:.2%}"),
    ("Benchmark Sharpe (annualised)", "benchmark_sharpe", "{:.2f}"),
    ("Benchmark max drawdown", "benchmark_max_drawdown", "{:.2%}"),
    ("Days with a benchmark return", "n_obs_benchmark", "{:.0f}"),
)
RELATIVE_KEYS = tuple(k for _, k, _ in RELATIVE_ROWS)


def _is_num(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_SOURCE_WORDS = {"sweep": "research-sweep trials", "model_sweep": "model-sweep trials",
                 "strategy_grid": "strategy-grid trials"}


def format_metric(key: str, value: float, metrics: dict[str, float] | None = None) -> str:
    """``value`` formatted for the report. With ``metrics`` (the whole bundle), rows that need
    context say more: the trial count by source, and why a minimum track record is undefined."""
    fmt = next((f for _, k, f in _ROWS + RELATIVE_ROWS if k == key), "{:.4g}")
    if key == "min_track_record_length" and _is_num(value) and math.isinf(value):
        sr = (metrics or {}).get("sharpe_per_period", math.nan)
        # on the headline's annual scale, as every Sharpe ratio of the report
        shown = f" ({annualised_sharpe(sr):.2f} annualised)" if _is_num(sr) and math.isfinite(sr) else ""
        return f"undefined: observed Sharpe{shown} <= 0, the PSR benchmark"
    if value is None or not _is_num(value) or not math.isfinite(value):
        return "n/a"
    text = fmt.format(value)
    if key == "n_trials" and metrics and "n_trials_variants" in metrics:
        variants = int(metrics["n_trials_variants"])
        counts = {s: int(metrics.get(f"n_trials_{s}", 0) or 0) for s in TRIAL_SOURCES}
        # only the sources that gave trials; an empty research sweep is said in words, not
        # as "+ 0 sweep trials" beside the trials of the other sources
        text += f" ({variants} strategy variants"
        text += "".join(f" + {n} {_SOURCE_WORDS[s]}" for s, n in counts.items() if n)
        if counts["sweep"] == 0:
            text += "; the research sweep has not run"
        left_out = variants + sum(counts.values()) - int(value)
        if left_out > 0:
            text += f"; {left_out} with an undefined Sharpe left out"
        text += ")"
    return text


def annualised_sharpe(per_period: float, periods_per_year: float = 252) -> float:
    """Per-period Sharpe ratio on the headline's annual scale."""
    return per_period * math.sqrt(periods_per_year)


def trial_source(name: str) -> str:
    """The source of a trial by its name's prefix (``TRIAL_SOURCES``), else "variant"."""
    return next((s for s, prefix in TRIAL_SOURCES.items() if name.startswith(prefix)), "variant")


def render_markdown(
    metrics: dict[str, float],
    trial_sharpes: dict[str, float],
    gate_message: str | None = None,
    benchmark_name: str | None = None,
    periods_per_year: float = 252,
) -> str:
    lines = ["| statistic | value |", "|---|---|"]
    lines += [
        f"| {label} | {format_metric(key, metrics.get(key, math.nan), metrics)} |"
        for label, key, _ in _ROWS
    ]
    if any(k in metrics for k in RELATIVE_KEYS):
        lines += ["", f"| vs benchmark: {benchmark_name or 'benchmark'} | value |", "|---|---|"]
        lines += [
            f"| {label} | {format_metric(key, metrics.get(key, math.nan), metrics)} |"
            for label, key, _ in RELATIVE_ROWS
        ]
    lines += ["", "| trial | source | Sharpe (annualised) |", "|---|---|---|"]
    lines += [
        f"| {k} | {trial_source(k)} | "
        f"{format_metric('sharpe', annualised_sharpe(v, periods_per_year))} |"
        for k, v in sorted(trial_sharpes.items())
    ]
    if gate_message:
        lines += ["", "**" + gate_message.splitlines()[0] + "**", ""] + gate_message.splitlines()[1:]
    return "\n".join(lines)


def render_data_section(caveats: list[str], source: str | None = None) -> str:
    """What the report's numbers rest on (the ``data_source`` table's caveats: survivors
    only, close-only, adjusted, synthetic...), as a Markdown section."""
    if not caveats and not source:
        return ""
    head = f"## Data ({source})" if source else "## Data"
    return "\n".join(["", "", head, "", *(f"- {c}" for c in caveats)])
