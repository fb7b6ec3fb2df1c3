"""Return metrics and information coefficients shared by every stage of the flow.

Pure core (numpy in, floats and small dataclasses out; no Dagster, MLflow, pandas or polars):
the backtest summarises its returns with ``performance_summary``, the models report the rank
IC of their scores with ``rank_information_coefficient``, the serving monitor compares
realised ``sharpe`` ratios, and the validation report builds its inference (PSR, DSR, PBO in
``validation/stats.py``) on the same functions. They live below the stages so that every
stage imports them downwards.

Conventions
-----------
* Performance metrics follow empyrical-reloaded: per-period simple returns, annualisation by
  ``periods_per_year`` (252 by default), std with ddof=1, drawdown measured from a starting value
  of 1 (so a loss in the first period counts), ``max_drawdown`` is a negative number.
* NaN handling: NaNs are dropped before any metric is computed (empyrical's nan-aware reductions
  do the same for Sharpe, Sortino, volatility, tail ratio and omega). For ``cagr`` and
  ``max_drawdown`` empyrical instead treats a NaN as a zero-return period that still counts in
  the number of years; we drop it, so that every metric sees the same sample.
* Degenerate inputs (empty, all-NaN, too short, zero dispersion, zero downside) give NaN rather
  than an exception or +-inf; invalid arguments raise ``ValueError`` naming the argument.
* Information coefficients are cross-sectional: one correlation per date, then their mean;
  the rank IC is Pearson on within-date average ranks, as ``scipy.stats.spearmanr``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

__all__ = [
    "ICResult",
    "annual_volatility",
    "cagr",
    "calmar",
    "hit_rate",
    "information_coefficient",
    "max_drawdown",
    "omega",
    "pearson_kurtosis",
    "performance_summary",
    "rank_correlation",
    "rank_information_coefficient",
    "sample_skew",
    "sharpe",
    "sharpe_per_period",
    "sortino",
    "tail_ratio",
]

# A standard deviation this small relative to the mean is rounding residue of a constant series,
# not dispersion; dividing by it would report an arbitrary Sharpe ratio near 1e15.
_REL_ZERO_STD = 1e-12


# --------------------------------------------------------------------------------------------
# Performance metrics (empyrical-reloaded conventions)
# --------------------------------------------------------------------------------------------


def _clean(returns) -> np.ndarray:
    """1-D float array with NaNs dropped (see module docstring)."""
    r = np.asarray(returns, dtype=float)
    if r.ndim != 1:
        raise ValueError(f"returns must be 1-D, got shape {r.shape}")
    return r[~np.isnan(r)]


def _check_ppy(periods_per_year: float) -> None:
    if not periods_per_year > 0:
        raise ValueError(f"periods_per_year must be > 0, got {periods_per_year}")


def _ratio_mean_std(r: np.ndarray) -> float:
    """mean / std(ddof=1); NaN for fewer than 2 points or zero dispersion."""
    if r.size < 2 or r.max() == r.min():
        return math.nan
    sd = float(np.std(r, ddof=1))
    mean = float(np.mean(r))
    if sd <= _REL_ZERO_STD * abs(mean):
        return math.nan
    return mean / sd


def sharpe_per_period(returns) -> float:
    """Per-period (not annualised) Sharpe ratio, mean / std(ddof=1): the input of PSR/DSR."""
    return _ratio_mean_std(_clean(returns))


def sharpe(returns, risk_free: float = 0.0, periods_per_year: float = 252) -> float:
    """Annualised Sharpe ratio of returns in excess of a constant per-period ``risk_free``, as
    ``empyrical.sharpe_ratio`` (NaN, not +-inf, for zero dispersion)."""
    _check_ppy(periods_per_year)
    return _ratio_mean_std(_clean(returns) - risk_free) * math.sqrt(periods_per_year)


def sortino(returns, required_return: float = 0.0, periods_per_year: float = 252) -> float:
    """Annualised Sortino ratio as ``empyrical.sortino_ratio``: annualised mean excess over the
    per-period ``required_return`` divided by the annualised downside deviation
    sqrt(mean(min(r - required, 0)^2)) taken over all periods. NaN when nothing is below the
    required return (empyrical gives inf)."""
    _check_ppy(periods_per_year)
    r = _clean(returns)
    if r.size < 2:
        return math.nan
    adj = r - required_return
    downside = math.sqrt(float(np.mean(np.minimum(adj, 0.0) ** 2))) * math.sqrt(periods_per_year)
    if downside == 0.0:
        return math.nan
    return float(np.mean(adj)) * periods_per_year / downside


def annual_volatility(returns, periods_per_year: float = 252) -> float:
    """std(ddof=1) * sqrt(periods_per_year), as ``empyrical.annual_volatility``."""
    _check_ppy(periods_per_year)
    r = _clean(returns)
    if r.size < 2:
        return math.nan
    return float(np.std(r, ddof=1)) * math.sqrt(periods_per_year)


def cagr(returns, periods_per_year: float = 252) -> float:
    """Compound annual growth rate, as ``empyrical.annual_return``:
    prod(1 + r) ** (periods_per_year / n) - 1. NaN if wealth ends below zero."""
    _check_ppy(periods_per_year)
    r = _clean(returns)
    if r.size < 1:
        return math.nan
    ending = float(np.prod(1.0 + r))
    if ending < 0.0:
        return math.nan
    return ending ** (periods_per_year / r.size) - 1.0


def _max_drawdown_rows(r: np.ndarray) -> np.ndarray:
    """Max drawdown of each row of a 2-D array of returns, wealth starting at 1 (the anchor makes
    a loss in the first period a drawdown, as in empyrical)."""
    wealth = np.cumprod(1.0 + r, axis=-1)
    peak = np.maximum(np.maximum.accumulate(wealth, axis=-1), 1.0)
    return (wealth / peak - 1.0).min(axis=-1)


def max_drawdown(returns) -> float:
    """Largest peak-to-trough fall of compounded wealth starting at 1, as a negative fraction
    (e.g. -0.25), as ``empyrical.max_drawdown``; 0.0 if wealth never falls."""
    r = _clean(returns)
    if r.size < 1:
        return math.nan
    return float(_max_drawdown_rows(r[None, :])[0])


def calmar(returns, periods_per_year: float = 252) -> float:
    """CAGR / |max drawdown|, as ``empyrical.calmar_ratio``; NaN without a drawdown."""
    mdd = max_drawdown(returns)
    if not mdd < 0.0:
        return math.nan
    out = cagr(returns, periods_per_year) / abs(mdd)
    return math.nan if math.isinf(out) else out


def tail_ratio(returns) -> float:
    """|95th percentile| / |5th percentile| (linear interpolation), as ``empyrical.tail_ratio``;
    NaN when the 5th percentile is 0."""
    r = _clean(returns)
    if r.size < 1:
        return math.nan
    lo = float(np.percentile(r, 5))
    if lo == 0.0:
        return math.nan
    return abs(float(np.percentile(r, 95))) / abs(lo)


def omega(
    returns,
    risk_free: float = 0.0,
    required_return: float = 0.0,
    periods_per_year: float = 252,
) -> float:
    """Omega ratio as ``empyrical.omega_ratio``: sum of gains over sum of losses of
    r - risk_free - threshold, where the annual ``required_return`` is de-annualised to
    (1 + required_return) ** (1 / periods_per_year) - 1 (used as is when periods_per_year == 1).
    NaN with fewer than 2 returns or no loss."""
    _check_ppy(periods_per_year)
    if not required_return > -1.0:
        raise ValueError(f"required_return must be > -1, got {required_return}")
    r = _clean(returns)
    if r.size < 2:
        return math.nan
    if periods_per_year == 1:
        threshold = required_return
    else:
        threshold = (1.0 + required_return) ** (1.0 / periods_per_year) - 1.0
    excess = r - risk_free - threshold
    numer = float(excess[excess > 0.0].sum())
    denom = -float(excess[excess < 0.0].sum())
    return numer / denom if denom > 0.0 else math.nan


def hit_rate(returns) -> float:
    """Share of strictly positive returns among the non-zero ones. Zero-return periods (flat, no
    position) are excluded so a strategy that is mostly out of the market is judged on the
    periods it traded. NaN if no period has a non-zero return."""
    r = _clean(returns)
    nz = r[r != 0.0]
    if nz.size == 0:
        return math.nan
    return float(np.mean(nz > 0.0))


def sample_skew(returns) -> float:
    """Sample skewness m3 / m2^1.5 with population moments (``scipy.stats.skew(bias=True)``), the
    estimator in Bailey & Lopez de Prado's reference code. NaN for < 3 points or a constant
    series. (pandas/quantstats report the bias-corrected G1 instead.)"""
    from scipy import stats as sps
    r = _clean(returns)
    if r.size < 3 or r.max() == r.min():
        return math.nan
    return float(sps.skew(r, bias=True))


def pearson_kurtosis(returns) -> float:
    """Pearson kurtosis m4 / m2^2 (3 for a normal) with population moments
    (``scipy.stats.kurtosis(fisher=False, bias=True)``), the input PSR/DSR expect. NaN for < 3
    points or a constant series. (pandas/quantstats report bias-corrected *excess* kurtosis.)"""
    from scipy import stats as sps
    r = _clean(returns)
    if r.size < 3 or r.max() == r.min():
        return math.nan
    return float(sps.kurtosis(r, fisher=False, bias=True))


def performance_summary(returns, periods_per_year: float = 252, turnover=None) -> dict[str, float]:
    """The report's metric bundle (NaNs dropped as everywhere here). Keys: sharpe,
    sharpe_per_period, sortino, annual_volatility, cagr, calmar, max_drawdown, tail_ratio, omega,
    hit_rate, skew, kurtosis (Pearson), n_obs (non-NaN count), and mean_turnover (NaN-ignoring
    mean) when ``turnover`` is given."""
    _check_ppy(periods_per_year)
    r = _clean(returns)
    out = {
        "sharpe": sharpe(r, periods_per_year=periods_per_year),
        "sharpe_per_period": sharpe_per_period(r),
        "sortino": sortino(r, periods_per_year=periods_per_year),
        "annual_volatility": annual_volatility(r, periods_per_year),
        "cagr": cagr(r, periods_per_year),
        "calmar": calmar(r, periods_per_year),
        "max_drawdown": max_drawdown(r),
        "tail_ratio": tail_ratio(r),
        "omega": omega(r, periods_per_year=periods_per_year),
        "hit_rate": hit_rate(r),
        "skew": sample_skew(r),
        "kurtosis": pearson_kurtosis(r),
        "n_obs": float(r.size),
    }
    if turnover is not None:
        t = _clean(turnover)
        out["mean_turnover"] = float(np.mean(t)) if t.size else math.nan
    return out


# --------------------------------------------------------------------------------------------
# Information coefficients
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ICResult:
    """Per-date correlations between scores and labels, in ascending date order. Dates where the
    correlation is undefined (fewer than 3 valid pairs, constant scores or labels) are left out.
    """

    dates: np.ndarray
    values: np.ndarray
    counts: np.ndarray  # valid (score, label) pairs per date
    mean: float  # mean of ``values``; NaN if there are none


def _group_inputs(dates, scores, labels):
    d = np.asarray(dates)
    x = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=float)
    if not (d.ndim == x.ndim == y.ndim == 1):
        raise ValueError("dates, scores and labels must be 1-D")
    if not (d.shape == x.shape == y.shape):
        raise ValueError(
            f"dates, scores and labels must have the same length, got "
            f"{d.shape[0]}, {x.shape[0]}, {y.shape[0]}"
        )
    ok = np.isfinite(x) & np.isfinite(y)
    d, x, y = d[ok], x[ok], y[ok]
    uniq, g = np.unique(d, return_inverse=True)
    order = np.argsort(g, kind="stable")
    return uniq, g[order], x[order], y[order]


def _average_ranks(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """1-based ranks of ``v`` within each group ``g`` (g sorted), ties averaged as in
    ``scipy.stats.rankdata``; vectorised over groups."""
    order = np.lexsort((v, g))
    gs, vs = g[order], v[order]
    pos = np.arange(gs.size) - np.searchsorted(gs, gs, side="left")
    new_run = np.ones(gs.size, dtype=bool)
    new_run[1:] = (gs[1:] != gs[:-1]) | (vs[1:] != vs[:-1])
    run = np.cumsum(new_run) - 1
    mean_pos = np.bincount(run, weights=pos) / np.bincount(run)
    ranks = np.empty(gs.size)
    ranks[order] = mean_pos[run] + 1.0
    return ranks


def _grouped_corr(uniq, g, x, y) -> ICResult:
    if g.size == 0:
        empty = np.array([], dtype=float)
        return ICResult(uniq[:0], empty, np.array([], dtype=np.int64), math.nan)
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    gid = g[starts]
    cnt = np.diff(np.r_[starts, g.size])
    mx = np.add.reduceat(x, starts) / cnt
    my = np.add.reduceat(y, starts) / cnt
    dx = x - np.repeat(mx, cnt)  # two-pass (centred) sums avoid cancellation
    dy = y - np.repeat(my, cnt)
    sxx = np.add.reduceat(dx * dx, starts)
    syy = np.add.reduceat(dy * dy, starts)
    sxy = np.add.reduceat(dx * dy, starts)
    const = (np.maximum.reduceat(x, starts) == np.minimum.reduceat(x, starts)) | (
        np.maximum.reduceat(y, starts) == np.minimum.reduceat(y, starts)
    )
    keep = (cnt >= 3) & ~const
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.clip(sxy / np.sqrt(sxx * syy), -1.0, 1.0)
    values = r[keep]
    mean = float(values.mean()) if values.size else math.nan
    return ICResult(uniq[gid[keep]], values, cnt[keep].astype(np.int64), mean)


def information_coefficient(dates, scores, labels) -> ICResult:
    """Pearson correlation between ``scores`` and ``labels`` on each date (cross-sectional IC)
    and its mean over dates. Pairs with a non-finite score or label are dropped; dates must not
    be missing."""
    return _grouped_corr(*_group_inputs(dates, scores, labels))


def rank_information_coefficient(dates, scores, labels) -> ICResult:
    """Spearman correlation (Pearson on within-date average ranks, as
    ``scipy.stats.spearmanr``) between ``scores`` and ``labels`` on each date, and its mean."""
    uniq, g, x, y = _group_inputs(dates, scores, labels)
    if g.size == 0:
        return _grouped_corr(uniq, g, x, y)
    return _grouped_corr(uniq, g, _average_ranks(g, x), _average_ranks(g, y))


def rank_correlation(x, y) -> float:
    """Spearman correlation of two samples pooled into one cross-section (NaN when fewer than 3
    finite pairs or one side is constant): the same estimator as the rank IC, on one group."""
    x = np.asarray(x, dtype=float)
    return rank_information_coefficient(np.zeros(x.shape[0], dtype=np.int64), x, y).mean


@njit(cache=True)
def _mean_rank_corr(starts: np.ndarray, x: np.ndarray, y_centred: np.ndarray, syy: np.ndarray) -> float:
    """Mean over groups of Pearson(average ranks of x, y_centred); groups of fewer than 3 rows
    or with constant x or y are left out, as in ``_grouped_corr``."""
    total, k = 0.0, 0
    for gi in range(starts.size - 1):
        a, b = starts[gi], starts[gi + 1]
        n = b - a
        if n < 3 or syy[gi] == 0.0:
            continue
        seg = x[a:b]
        order = np.argsort(seg, kind="mergesort")
        ranks = np.empty(n)
        i = 0
        while i < n:
            j = i
            while j + 1 < n and seg[order[j + 1]] == seg[order[i]]:
                j += 1
            for q in range(i, j + 1):
                ranks[order[q]] = (i + j) / 2.0 + 1.0
            i = j + 1
        centre = (n + 1) / 2.0  # the mean of average ranks 1..n
        sxx, sxy = 0.0, 0.0
        for q in range(n):
            d = ranks[q] - centre
            sxx += d * d
            sxy += d * y_centred[a + q]
        if sxx == 0.0:
            continue
        total += min(1.0, max(-1.0, sxy / math.sqrt(sxx * syy[gi])))
        k += 1
    return total / k if k else math.nan


class RankICScorer:
    """The mean daily rank IC of many score vectors against one set of labels (a model's
    score after every boosting round): the labels' grouping and ranks are computed once, each
    call ranks only the scores (numba, per date). Equal to
    ``rank_information_coefficient(dates, scores, labels).mean`` for finite scores."""

    def __init__(self, dates, labels) -> None:
        d = np.asarray(dates)
        y = np.asarray(labels, dtype=float)
        self._keep = np.isfinite(y)
        uniq, g, _, ys = _group_inputs(d[self._keep], np.zeros(int(self._keep.sum())), y[self._keep])
        self._order = np.argsort(np.unique(d[self._keep], return_inverse=True)[1], kind="stable")
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if g.size else np.zeros(0, dtype=np.int64)
        ranks = _average_ranks(g, ys)
        cnt = np.diff(np.r_[starts, g.size])
        centred = ranks - np.repeat((cnt + 1) / 2.0, cnt)
        self._starts = np.r_[starts, g.size].astype(np.int64)
        self._y = centred
        self._syy = np.add.reduceat(centred * centred, starts) if g.size else np.zeros(0)

    def __call__(self, scores) -> float:
        x = np.asarray(scores, dtype=float)[self._keep][self._order]
        return float(_mean_rank_corr(self._starts, np.ascontiguousarray(x), self._y, self._syy))
