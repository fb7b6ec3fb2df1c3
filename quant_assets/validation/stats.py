"""Statistics of the validation report: Sharpe-ratio inference (PSR, DSR, MinTRL), the probability
of backtest overfitting (CSCV), performance metrics, information coefficients and a stationary
bootstrap.

Pure core: numpy and scipy in, floats, arrays and small frozen dataclasses out. No Dagster, no
MLflow, no pandas/polars (callers convert; any 1-D array-like is accepted).

Conventions
-----------
* Sharpe ratios fed to PSR/DSR/MinTRL are *per period* (not annualised), and ``kurtosis`` is
  Pearson kurtosis (3 for a normal), as in Bailey & Lopez de Prado (2012, 2014).
* Performance metrics follow empyrical-reloaded: per-period simple returns, annualisation by
  ``periods_per_year`` (252 by default), std with ddof=1, drawdown measured from a starting value
  of 1 (so a loss in the first period counts), ``max_drawdown`` is a negative number.
* NaN handling: NaNs are dropped before any metric is computed (empyrical's nan-aware reductions
  do the same for Sharpe, Sortino, volatility, tail ratio and omega). For ``cagr`` and
  ``max_drawdown`` empyrical instead treats a NaN as a zero-return period that still counts in
  the number of years; we drop it, so that every metric sees the same sample.
* Degenerate inputs (empty, all-NaN, too short, zero dispersion, zero downside) give NaN rather
  than an exception or +-inf; invalid arguments raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import stats as sps

__all__ = [
    "EULER_MASCHERONI",
    "active_return",
    "alpha",
    "benchmark_summary",
    "beta",
    "conditional_value_at_risk",
    "correlation",
    "information_ratio",
    "rolling_beta",
    "rolling_volatility",
    "tracking_error",
    "value_at_risk",
    "BootstrapResult",
    "ICResult",
    "PBOResult",
    "annual_volatility",
    "cagr",
    "calmar",
    "deflated_sharpe_ratio",
    "expected_max_sharpe",
    "hit_rate",
    "information_coefficient",
    "max_drawdown",
    "min_track_record_length",
    "omega",
    "pbo_cscv",
    "pearson_kurtosis",
    "performance_summary",
    "probabilistic_sharpe_ratio",
    "rank_information_coefficient",
    "sample_skew",
    "sharpe",
    "sharpe_per_period",
    "sortino",
    "stationary_bootstrap",
    "stationary_bootstrap_indices",
    "tail_ratio",
]

EULER_MASCHERONI = 0.5772156649015329  # gamma in Bailey & Lopez de Prado's E[max] approximation

# A standard deviation this small relative to the mean is rounding residue of a constant series,
# not dispersion; dividing by it would report an arbitrary Sharpe ratio near 1e15.
_REL_ZERO_STD = 1e-12


# --------------------------------------------------------------------------------------------
# Sharpe-ratio inference (Bailey & Lopez de Prado 2012, 2014)
# --------------------------------------------------------------------------------------------


def _sr_variance_term(sr: float, skew: float, kurtosis: float) -> float:
    """1 - skew*SR + (kurt-1)/4 * SR^2: T-1 times the asymptotic variance of the SR estimator
    (Mertens 2002, as used by Bailey & Lopez de Prado)."""
    v = 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr * sr
    if v <= 0.0:  # NaN compares False and propagates to a NaN result
        # Cannot happen for moments of real data (kurtosis >= 1 + skew^2 makes v a square).
        raise ValueError(
            "kurtosis: 1 - skew*sr + (kurtosis-1)/4*sr^2 must be > 0; are skew/kurtosis "
            "consistent (Pearson kurtosis, 3 for a normal)?"
        )
    return v


def _check_n_obs(n_obs: float) -> None:
    if not n_obs >= 2:
        raise ValueError(f"n_obs must be >= 2 (sqrt(n_obs - 1) scales the statistic), got {n_obs}")


def probabilistic_sharpe_ratio(
    sr: float, n_obs: float, skew: float, kurtosis: float, sr_benchmark: float = 0.0
) -> float:
    """Probabilistic Sharpe Ratio (Bailey & Lopez de Prado 2012): the probability that the true
    Sharpe ratio exceeds ``sr_benchmark`` given an observed ``sr`` over ``n_obs`` periods.

    PSR = Phi((sr - sr*) sqrt(T-1) / sqrt(1 - skew*sr + (kurtosis-1)/4 * sr^2)).
    ``sr`` and ``sr_benchmark`` are per period; ``kurtosis`` is Pearson (3 for a normal).
    """
    _check_n_obs(n_obs)
    v = _sr_variance_term(sr, skew, kurtosis)
    z = (sr - sr_benchmark) * math.sqrt(n_obs - 1.0) / math.sqrt(v)
    return float(sps.norm.cdf(z))


def expected_max_sharpe(n_trials: float, sr_variance: float) -> float:
    """Expected maximum of ``n_trials`` independent Sharpe ratios with zero mean and variance
    ``sr_variance`` (per-period units), by the Euler-Mascheroni approximation of Bailey, Borwein,
    Lopez de Prado & Zhu (2014) used in the Deflated Sharpe Ratio paper:

    sqrt(V) * ((1-gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e))).

    One trial involves no selection, so its expected maximum is the mean, 0 (the formula itself
    diverges to -inf at N = 1). ``n_trials`` may be a non-integer effective number of trials.
    """
    if not n_trials >= 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if math.isnan(sr_variance):
        return math.nan
    if sr_variance < 0:
        raise ValueError(f"sr_variance must be >= 0, got {sr_variance}")
    if n_trials == 1:
        return 0.0
    g = EULER_MASCHERONI
    z = (1.0 - g) * sps.norm.ppf(1.0 - 1.0 / n_trials) + g * sps.norm.ppf(
        1.0 - 1.0 / (n_trials * math.e)
    )
    return float(math.sqrt(sr_variance) * z)


def deflated_sharpe_ratio(
    sr: float,
    n_obs: float,
    skew: float,
    kurtosis: float,
    n_trials: float,
    sr_variance: float,
) -> float:
    """Deflated Sharpe Ratio (Bailey & Lopez de Prado 2014): the PSR of ``sr`` against the
    expected maximum Sharpe ratio of ``n_trials`` unskilled trials whose Sharpe ratios have
    variance ``sr_variance`` (per-period units, i.e. annualised variance / periods_per_year)."""
    sr0 = expected_max_sharpe(n_trials, sr_variance)
    return probabilistic_sharpe_ratio(sr, n_obs, skew, kurtosis, sr_benchmark=sr0)


def min_track_record_length(
    sr: float,
    skew: float,
    kurtosis: float,
    sr_benchmark: float = 0.0,
    prob: float = 0.95,
) -> float:
    """Minimum Track Record Length (Bailey & Lopez de Prado 2012), in periods: the number of
    observations for which PSR(sr_benchmark) reaches ``prob``.

    MinTRL = 1 + (1 - skew*sr + (kurtosis-1)/4 * sr^2) * (Phi^-1(prob) / (sr - sr*))^2.
    Returns +inf when ``sr <= sr_benchmark`` (no track record is long enough).
    """
    if not 0.0 < prob < 1.0:
        raise ValueError(f"prob must be in (0, 1), got {prob}")
    v = _sr_variance_term(sr, skew, kurtosis)
    if math.isnan(v) or math.isnan(sr_benchmark):
        return math.nan
    if sr <= sr_benchmark:
        return math.inf
    return float(1.0 + v * (sps.norm.ppf(prob) / (sr - sr_benchmark)) ** 2)


# --------------------------------------------------------------------------------------------
# Probability of backtest overfitting: CSCV (Bailey, Borwein, Lopez de Prado & Zhu 2017)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PBOResult:
    """Outcome of :func:`pbo_cscv`. Arrays have one entry per split, in the order of
    ``itertools.combinations(range(n_splits), n_splits // 2)`` (the in-sample block sets)."""

    pbo: float  # share of finite logits <= 0
    logits: np.ndarray  # ln(w / (1 - w)), w = OOS rank of the IS-best trial / (N + 1)
    is_sharpe: np.ndarray  # per-period in-sample Sharpe of the IS-best trial
    oos_sharpe: np.ndarray  # its per-period out-of-sample Sharpe (performance degradation)
    n_splits: int
    n_trials: int


def _block_sharpe(
    member: np.ndarray,
    cnt_b: np.ndarray,
    sum_b: np.ndarray,
    sq_b: np.ndarray,
    center: np.ndarray,
) -> np.ndarray:
    """Per-period Sharpe (std ddof=1) of every trial on the union of the blocks selected by each
    row of ``member``, from per-block counts, sums and centred sums of squares. Summing block
    moments with one matrix product per moment is what makes all C(S, S/2) splits cheap."""
    cnt = member @ cnt_b
    sx = member @ sum_b
    sq = member @ sq_b
    sy = sx - cnt * center  # sum of the centred values; centring avoids cancellation in var
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = sx / cnt
        var = np.maximum(sq - sy * sy / cnt, 0.0) / (cnt - 1.0)
        sd = np.sqrt(var)
        out = mean / sd
    bad = (cnt < 2) | (sd == 0.0) | (sd <= _REL_ZERO_STD * np.abs(mean))
    out[bad] = np.nan
    return out


def pbo_cscv(returns: np.ndarray, n_splits: int = 16) -> PBOResult:
    """Probability of Backtest Overfitting by combinatorially symmetric cross-validation
    (Bailey, Borwein, Lopez de Prado & Zhu, "The Probability of Backtest Overfitting").

    ``returns`` is a (T x N) matrix: T periods of N trials' returns. The first ``T mod n_splits``
    rows are dropped so the rest splits into ``n_splits`` equal contiguous blocks. For each of the
    C(S, S/2) ways to pick S/2 blocks as in-sample (the rest out-of-sample): take the trial with
    the best in-sample per-period Sharpe (mean / std ddof=1), its ascending out-of-sample rank r
    in 1..N, w = r / (N + 1), logit = ln(w / (1 - w)). PBO is the share of logits <= 0.

    Conventions: NaN returns are missing observations. A Sharpe that is undefined (fewer than 2
    observations, zero dispersion) ranks below every defined one. Ties in-sample go to the lowest
    column index; ties out-of-sample get the average rank. Splits with no defined in-sample
    Sharpe get a NaN logit and are left out of the PBO. Empty or all-NaN input: PBO NaN.
    """
    x = np.asarray(returns, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"returns must be a 2-D (T x N) array, got shape {x.shape}")
    n_splits_i = int(n_splits)
    if n_splits_i != n_splits or n_splits_i < 2 or n_splits_i % 2:
        raise ValueError(f"n_splits must be an even integer >= 2, got {n_splits}")
    t, n = x.shape
    n_comb = math.comb(n_splits_i, n_splits_i // 2)
    if x.size == 0 or np.isnan(x).all():
        nan_arr = np.full(n_comb, np.nan)
        return PBOResult(math.nan, nan_arr, nan_arr.copy(), nan_arr.copy(), n_splits_i, n)
    if n < 2:
        raise ValueError(f"returns must have at least 2 trials (columns), got {n}")
    if t < n_splits_i:
        raise ValueError(f"returns has T={t} rows, fewer than n_splits={n_splits_i}")

    x = x[t % n_splits_i :]
    blocks = x.reshape(n_splits_i, -1, n)
    valid = ~np.isnan(blocks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN trial: center NaN -> 0 below
        center = np.nanmean(x, axis=0)
    center = np.where(np.isnan(center), 0.0, center)
    cnt_b = valid.sum(axis=1).astype(float)
    sum_b = np.where(valid, blocks, 0.0).sum(axis=1)
    dev = np.where(valid, blocks - center, 0.0)
    sq_b = (dev * dev).sum(axis=1)

    member = np.zeros((n_comb, n_splits_i))
    idx = np.array(list(combinations(range(n_splits_i), n_splits_i // 2)))
    np.put_along_axis(member, idx, 1.0, axis=1)

    sr_is = _block_sharpe(member, cnt_b, sum_b, sq_b, center)
    # out-of-sample = the complementary blocks
    sr_oos = _block_sharpe(1.0 - member, cnt_b, sum_b, sq_b, center)

    is_key = np.where(np.isnan(sr_is), -np.inf, sr_is)
    oos_key = np.where(np.isnan(sr_oos), -np.inf, sr_oos)
    rows = np.arange(n_comb)
    best = np.argmax(is_key, axis=1)
    oos_best = oos_key[rows, best][:, None]
    below = (oos_key < oos_best).sum(axis=1)
    tied = (oos_key == oos_best).sum(axis=1) - 1  # other trials tied with the selected one
    rank = 1.0 + below + tied / 2.0
    w = rank / (n + 1.0)
    logits = np.log(w / (1.0 - w))
    no_is = np.isnan(sr_is).all(axis=1)
    logits[no_is] = np.nan
    finite = ~np.isnan(logits)
    pbo = float(np.mean(logits[finite] <= 0.0)) if finite.any() else math.nan
    return PBOResult(
        pbo=pbo,
        logits=logits,
        is_sharpe=sr_is[rows, best],
        oos_sharpe=sr_oos[rows, best],
        n_splits=n_splits_i,
        n_trials=n,
    )


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
    r = _clean(returns)
    if r.size < 3 or r.max() == r.min():
        return math.nan
    return float(sps.skew(r, bias=True))


def pearson_kurtosis(returns) -> float:
    """Pearson kurtosis m4 / m2^2 (3 for a normal) with population moments
    (``scipy.stats.kurtosis(fisher=False, bias=True)``), the input PSR/DSR expect. NaN for < 3
    points or a constant series. (pandas/quantstats report bias-corrected *excess* kurtosis.)"""
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


# --------------------------------------------------------------------------------------------
# Stationary bootstrap (Politis & Romano 1994)
# --------------------------------------------------------------------------------------------

_BOOTSTRAP_CHUNK = 256  # samples resampled at once; bounds memory at chunk * T per array


@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """Bootstrap distributions (one entry per resample) of annualised Sharpe and max drawdown."""

    sharpe: np.ndarray
    max_drawdown: np.ndarray
    n_samples: int
    mean_block: float
    seed: int

    def percentiles(self, q=(2.5, 50.0, 97.5)) -> dict[str, dict[float, float]]:
        """{"sharpe": {q: value}, "max_drawdown": {q: value}}, NaN-ignoring (linear
        interpolation); NaN where no resample has a defined value."""
        qs = [float(v) for v in np.atleast_1d(q)]
        out: dict[str, dict[float, float]] = {}
        for name, arr in (("sharpe", self.sharpe), ("max_drawdown", self.max_drawdown)):
            finite = arr[~np.isnan(arr)]
            if finite.size == 0:
                out[name] = {v: math.nan for v in qs}
            else:
                vals = np.percentile(finite, qs)
                out[name] = {v: float(p) for v, p in zip(qs, vals, strict=True)}
        return out


def _check_bootstrap_args(n_samples: int, mean_block: float) -> None:
    if int(n_samples) != n_samples or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples}")
    if not mean_block >= 1:
        raise ValueError(f"mean_block must be >= 1, got {mean_block}")


def _bootstrap_index_chunk(
    rng: np.random.Generator, k: int, n_obs: int, mean_block: float
) -> np.ndarray:
    """(k x n_obs) stationary-bootstrap indices: each position starts a new block with
    probability 1/mean_block (always at position 0) at a uniform index, else continues the
    current block with the next index, wrapping circularly. Block lengths are geometric with
    mean ``mean_block``."""
    new = rng.random((k, n_obs)) < 1.0 / mean_block
    new[:, 0] = True
    starts = rng.integers(0, n_obs, size=(k, n_obs))
    pos = np.arange(n_obs)
    block_pos = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
    return (np.take_along_axis(starts, block_pos, axis=1) + (pos - block_pos)) % n_obs


def stationary_bootstrap_indices(
    n_obs: int, n_samples: int = 1000, mean_block: float = 20, seed: int = 0
) -> np.ndarray:
    """The (n_samples x n_obs) index matrix :func:`stationary_bootstrap` resamples with, for the
    same arguments and seed."""
    _check_bootstrap_args(n_samples, mean_block)
    if int(n_obs) != n_obs or n_obs < 1:
        raise ValueError(f"n_obs must be an integer >= 1, got {n_obs}")
    rng = np.random.default_rng(seed)
    chunks = [
        _bootstrap_index_chunk(rng, min(_BOOTSTRAP_CHUNK, n_samples - s), int(n_obs), mean_block)
        for s in range(0, int(n_samples), _BOOTSTRAP_CHUNK)
    ]
    return np.concatenate(chunks, axis=0)


def stationary_bootstrap(
    returns,
    n_samples: int = 1000,
    mean_block: float = 20,
    seed: int = 0,
    periods_per_year: float = 252,
) -> BootstrapResult:
    """Politis-Romano stationary bootstrap of a 1-D return series (NaNs dropped): ``n_samples``
    resamples of the same length made of blocks with geometric lengths (mean ``mean_block``),
    keeping short-range dependence that an iid bootstrap would destroy. Returns the distribution
    of annualised Sharpe (std ddof=1) and max drawdown (wealth from 1). Bit-for-bit deterministic
    for a seed (numpy Generator, PCG64). Fewer than 2 returns: NaN distributions."""
    _check_bootstrap_args(n_samples, mean_block)
    _check_ppy(periods_per_year)
    n_samples = int(n_samples)
    r = _clean(returns)
    n_obs = r.size
    if n_obs < 2:
        nan_arr = np.full(n_samples, np.nan)
        return BootstrapResult(nan_arr, nan_arr.copy(), n_samples, mean_block, seed)
    rng = np.random.default_rng(seed)
    sr = np.empty(n_samples)
    mdd = np.empty(n_samples)
    for s in range(0, n_samples, _BOOTSTRAP_CHUNK):
        k = min(_BOOTSTRAP_CHUNK, n_samples - s)
        sample = r[_bootstrap_index_chunk(rng, k, n_obs, mean_block)]
        mean = sample.mean(axis=1)
        sd = sample.std(axis=1, ddof=1)
        const = sample.max(axis=1) == sample.min(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            chunk_sr = mean / sd * math.sqrt(periods_per_year)
        chunk_sr[const | (sd <= _REL_ZERO_STD * np.abs(mean))] = np.nan
        sr[s : s + k] = chunk_sr
        mdd[s : s + k] = _max_drawdown_rows(sample)
    return BootstrapResult(sr, mdd, n_samples, mean_block, seed)


# --------------------------------------------------------------------------------------------
# Benchmark-relative statistics
# --------------------------------------------------------------------------------------------
#
# Inputs are two 1-D arrays already aligned by date (the caller joins on the date; see
# ``validation.benchmark.Benchmark.aligned``). A day where either side is NaN is left out of
# every statistic (pairwise deletion, as quantstats' ``_paired_observations``), so all of them
# see the same sample. Annualisation follows the rest of this module: means scale by
# ``periods_per_year``, standard deviations (ddof=1) by its square root, and alpha is
# compounded from the mean daily alpha as ``empyrical.alpha``.


def _paired(returns, benchmark) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(returns, dtype=float)
    b = np.asarray(benchmark, dtype=float)
    if r.ndim != 1 or b.ndim != 1:
        raise ValueError(f"returns and benchmark must be 1-D, got shapes {r.shape} and {b.shape}")
    if r.shape != b.shape:
        raise ValueError(
            f"returns ({r.size}) and benchmark ({b.size}) must be aligned by date (same length); "
            "join them on the date first"
        )
    ok = ~(np.isnan(r) | np.isnan(b))
    return r[ok], b[ok]


def active_return(returns, benchmark, periods_per_year: float = 252) -> float:
    """Annualised arithmetic mean of the daily active return r - b: mean(r - b) *
    periods_per_year. Arithmetic (not a difference of CAGRs) so that information ratio =
    active return / tracking error holds exactly, as Sharpe = mean / volatility does here."""
    _check_ppy(periods_per_year)
    r, b = _paired(returns, benchmark)
    if r.size < 1:
        return math.nan
    return float(np.mean(r - b)) * periods_per_year


def tracking_error(returns, benchmark, periods_per_year: float = 252) -> float:
    """Annualised standard deviation (ddof=1) of the daily active return r - b: the
    ``annual_volatility`` of the active return, as pyfolio/empyrical annualise a daily std.
    0.0 for a series against itself; NaN for fewer than 2 paired days."""
    _check_ppy(periods_per_year)
    r, b = _paired(returns, benchmark)
    return annual_volatility(r - b, periods_per_year)


def information_ratio(returns, benchmark, periods_per_year: float = 252) -> float:
    """Annualised information ratio, mean(r - b) / std(r - b, ddof=1) * sqrt(periods_per_year):
    the Sharpe ratio of the active return, i.e. ``empyrical.excess_sharpe`` (and quantstats'
    ``information_ratio``, which are both per period) times sqrt(periods_per_year), so that it
    is on the same scale as the annualised Sharpe ratio of the headline. NaN when the active
    return has no dispersion (a series against itself) or fewer than 2 paired days."""
    _check_ppy(periods_per_year)
    r, b = _paired(returns, benchmark)
    return sharpe(r - b, periods_per_year=periods_per_year)


def beta(returns, benchmark) -> float:
    """OLS slope of r on b, cov(r, b) / var(b) (the ddof cancels), as ``empyrical.beta`` and
    quantstats' ``greeks``. NaN for fewer than 2 paired days or a benchmark without variance
    (cash: no market risk to measure against)."""
    r, b = _paired(returns, benchmark)
    if r.size < 2 or b.max() == b.min():
        return math.nan
    bc = b - b.mean()  # centring one side is enough for the covariance
    var = float(bc @ bc)
    if math.sqrt(var / (b.size - 1)) <= _REL_ZERO_STD * abs(float(b.mean())):
        return math.nan  # rounding residue of a constant benchmark, as in _ratio_mean_std
    return float(bc @ r) / var


def alpha(returns, benchmark, risk_free: float = 0.0, periods_per_year: float = 252) -> float:
    """Annualised Jensen's alpha as ``empyrical.alpha``: with the per-period constant
    ``risk_free``, the mean daily alpha a = mean((r - rf) - beta * (b - rf)) compounded over a
    year, (1 + a) ** periods_per_year - 1. (quantstats' ``greeks`` reports the arithmetic
    a * periods_per_year instead; we follow empyrical, as for every other metric here.)
    NaN where beta is."""
    _check_ppy(periods_per_year)
    r, b = _paired(returns, benchmark)
    bt = beta(r, b)
    if not math.isfinite(bt):
        return math.nan
    daily = float(np.mean((r - risk_free) - bt * (b - risk_free)))
    return (1.0 + daily) ** periods_per_year - 1.0


def correlation(returns, benchmark) -> float:
    """Pearson correlation of the paired daily returns; NaN if either side is constant."""
    r, b = _paired(returns, benchmark)
    if r.size < 2 or r.max() == r.min() or b.max() == b.min():
        return math.nan
    rc, bc = r - r.mean(), b - b.mean()
    return float(np.clip((rc @ bc) / math.sqrt(float(rc @ rc) * float(bc @ bc)), -1.0, 1.0))


def benchmark_summary(returns, benchmark, periods_per_year: float = 252) -> dict[str, float]:
    """The report's benchmark-relative bundle over the paired days. Keys: active_return,
    tracking_error, information_ratio, beta, alpha, benchmark_correlation, benchmark_cagr,
    benchmark_sharpe, benchmark_annual_volatility, benchmark_max_drawdown (the benchmark's own
    statistics over the same days, for comparison with the headline) and n_obs_benchmark (the
    number of paired days)."""
    _check_ppy(periods_per_year)
    r, b = _paired(returns, benchmark)
    ppy = periods_per_year
    return {
        "active_return": active_return(r, b, ppy),
        "tracking_error": tracking_error(r, b, ppy),
        "information_ratio": information_ratio(r, b, ppy),
        "beta": beta(r, b),
        "alpha": alpha(r, b, periods_per_year=ppy),
        "benchmark_correlation": correlation(r, b),
        "benchmark_cagr": cagr(b, ppy),
        "benchmark_sharpe": sharpe(b, periods_per_year=ppy),
        "benchmark_annual_volatility": annual_volatility(b, ppy),
        "benchmark_max_drawdown": max_drawdown(b),
        "n_obs_benchmark": float(r.size),
    }


# --------------------------------------------------------------------------------------------
# Rolling statistics and tail risk (tear sheet)
# --------------------------------------------------------------------------------------------


def _windows(x: np.ndarray, window: int) -> np.ndarray | None:
    if int(window) != window or window < 2:
        raise ValueError(f"window must be an integer >= 2, got {window}")
    if x.size < window:
        return None
    return np.lib.stride_tricks.sliding_window_view(x, int(window))


def rolling_volatility(returns, window: int = 63, periods_per_year: float = 252) -> np.ndarray:
    """Annualised volatility (std ddof=1) of each trailing ``window`` of days, aligned with the
    input (NaN before the first full window and for windows holding a NaN), as quantstats'
    ``rolling_volatility(rolling_period=window)``."""
    _check_ppy(periods_per_year)
    r = np.asarray(returns, dtype=float)
    out = np.full(r.size, np.nan)
    view = _windows(r, window)
    if view is not None:
        out[window - 1 :] = view.std(axis=1, ddof=1) * math.sqrt(periods_per_year)
    return out


def rolling_beta(returns, benchmark, window: int = 63) -> np.ndarray:
    """Beta of each trailing ``window`` of paired days, aligned with the input; NaN before the
    first full window, for windows holding a NaN on either side, and where the benchmark is
    constant over the window. As ``empyrical.roll_beta`` on NaN-free input."""
    r = np.asarray(returns, dtype=float)
    b = np.asarray(benchmark, dtype=float)
    if r.shape != b.shape or r.ndim != 1:
        raise ValueError(f"returns and benchmark must be aligned 1-D arrays, got {r.shape} and {b.shape}")
    out = np.full(r.size, np.nan)
    vr, vb = _windows(r, window), _windows(b, window)
    if vr is None:
        return out
    bc = vb - vb.mean(axis=1, keepdims=True)
    var = (bc * bc).sum(axis=1)
    cov = (bc * vr).sum(axis=1)
    flat = vb.max(axis=1) == vb.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[window - 1 :] = np.where(flat, np.nan, cov / var)
    return out


def value_at_risk(returns, cutoff: float = 0.05) -> float:
    """Historical value at risk: the ``cutoff`` percentile of the returns (linear
    interpolation, a negative number for a loss), as ``empyrical.value_at_risk``; NaN if empty."""
    if not 0.0 < cutoff < 1.0:
        raise ValueError(f"cutoff must be in (0, 1), got {cutoff}")
    r = _clean(returns)
    return float(np.percentile(r, 100.0 * cutoff)) if r.size else math.nan


def conditional_value_at_risk(returns, cutoff: float = 0.05) -> float:
    """Expected shortfall: mean of the lowest int((n - 1) * cutoff) + 1 returns, as
    ``empyrical.conditional_value_at_risk``; NaN if empty."""
    if not 0.0 < cutoff < 1.0:
        raise ValueError(f"cutoff must be in (0, 1), got {cutoff}")
    r = _clean(returns)
    if r.size == 0:
        return math.nan
    k = int((r.size - 1) * cutoff)
    return float(np.mean(np.partition(r, k)[: k + 1]))
