"""Statistics of the validation report: Sharpe-ratio inference (PSR, DSR, MinTRL), the probability
of backtest overfitting (CSCV) and a stationary bootstrap.

Pure core: numpy and scipy in, floats, arrays and small frozen dataclasses out. No Dagster, no
MLflow, no pandas/polars (callers convert; any 1-D array-like is accepted).

The return metrics (Sharpe, CAGR, drawdown, ...) and information coefficients these build on
live below the stages in ``quant_assets.performance`` (the backtest, models and serving use them
too); they are re-exported here so that the report's statistics read as one namespace.

Conventions
-----------
* Sharpe ratios fed to PSR/DSR/MinTRL are *per period* (not annualised), and ``kurtosis`` is
  Pearson kurtosis (3 for a normal), as in Bailey & Lopez de Prado (2012, 2014).
* Performance metrics follow empyrical-reloaded (see ``quant_assets.performance``).
* Degenerate inputs (empty, all-NaN, too short, zero dispersion, zero downside) give NaN rather
  than an exception or +-inf; invalid arguments raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from quant_assets.performance import (
    _REL_ZERO_STD,
    ICResult,
    _check_ppy,
    _clean,
    _max_drawdown_rows,
    annual_volatility,
    cagr,
    calmar,
    hit_rate,
    information_coefficient,
    max_drawdown,
    omega,
    pearson_kurtosis,
    performance_summary,
    rank_information_coefficient,
    sample_skew,
    sharpe,
    sharpe_per_period,
    sortino,
    tail_ratio,
)

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
    from scipy import stats as sps
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
    from scipy import stats as sps
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
    from scipy import stats as sps
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
