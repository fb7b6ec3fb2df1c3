"""Tests of quant_assets.validation.stats against the papers' worked examples, closed forms,
empyrical-reloaded, quantstats, scipy and brute-force enumeration."""

from __future__ import annotations

import math
from itertools import combinations

import empyrical
import numpy as np
import pandas as pd
import pytest
import quantstats as qs
from scipy import stats as sps

from quant_assets.validation import stats as st

GAMMA = 0.5772156649015329


def _psr_inline(sr, t, skew, kurt, sr_star):
    return sps.norm.cdf(
        (sr - sr_star) * np.sqrt(t - 1) / np.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2)
    )


def _emax_inline(n, v):
    return np.sqrt(v) * (
        (1 - GAMMA) * sps.norm.ppf(1 - 1 / n) + GAMMA * sps.norm.ppf(1 - 1 / (n * np.e))
    )


# ------------------------------------------------------------------------------------------
# PSR / DSR / MinTRL
# ------------------------------------------------------------------------------------------


def test_dsr_paper_numerical_example():
    """Bailey & Lopez de Prado (2014), "The Deflated Sharpe Ratio", section "A numerical
    example": N = 100 trials, variance of the annualised trial SRs 1/2, annualised SR 2.5 over
    T = 1250 daily observations (5 years of 250 days), skew -3, kurtosis 10. The paper prints
    SR0 ~ 0.1132 (non-annualised expected maximum) and DSR ~ 0.9004."""
    v = 0.5 / 250  # annualised variance -> per-day
    sr = 2.5 / math.sqrt(250)
    sr0 = st.expected_max_sharpe(100, v)
    dsr = st.deflated_sharpe_ratio(sr, 1250, -3.0, 10.0, 100, v)
    # independent inline computation
    sr0_ref = _emax_inline(100, v)
    assert sr0 == pytest.approx(sr0_ref, abs=1e-9)
    assert dsr == pytest.approx(_psr_inline(sr, 1250, -3.0, 10.0, sr0_ref), abs=1e-9)
    # the paper's printed digits
    assert round(sr0, 4) == 0.1132
    assert round(dsr, 4) == 0.9004
    # DSR is the PSR against SR0
    assert dsr == st.probabilistic_sharpe_ratio(sr, 1250, -3.0, 10.0, sr_benchmark=sr0)


def test_expected_max_sharpe_pseudo_mathematics_examples():
    """Bailey, Borwein, Lopez de Prado & Zhu (2014), "Pseudo-Mathematics and Financial
    Charlatanism" (Notices AMS): for N = 10 unit-variance trials E[max] ~ 1.57; with 5 years of
    data, 45 independent trials already give an expected maximum annualised SR of ~1 (the
    MinBTL example: annualised SR variance 1/y)."""
    assert round(st.expected_max_sharpe(10, 1.0), 2) == 1.57
    assert round(st.expected_max_sharpe(45, 1.0 / 5), 2) == 1.00
    for n in (2, 7.5, 1000):
        assert st.expected_max_sharpe(n, 0.3) == pytest.approx(_emax_inline(n, 0.3), abs=1e-12)


def test_psr_normal_case_matches_lo_standard_error():
    """Bailey & Lopez de Prado (2012), eq. for PSR: with skew 0 and kurtosis 3 the variance term
    reduces to 1 + SR^2/2, the iid-normal standard error of Lo (2002)."""
    sr, t = 0.08, 500
    expected = sps.norm.cdf(sr * math.sqrt(t - 1) / math.sqrt(1 + sr**2 / 2))
    assert st.probabilistic_sharpe_ratio(sr, t, 0.0, 3.0) == pytest.approx(expected, abs=1e-12)
    # at the benchmark the probability is one half
    assert st.probabilistic_sharpe_ratio(0.1, 30, -1.0, 6.0, sr_benchmark=0.1) == 0.5


def test_psr_non_normal_inline_and_direction():
    """Bailey & Lopez de Prado (2012): PSR falls with negative skew and fat tails and rises with
    track-record length; values match an inline scipy computation."""
    sr = 0.1
    base = st.probabilistic_sharpe_ratio(sr, 250, 0.0, 3.0, 0.02)
    assert base == pytest.approx(_psr_inline(sr, 250, 0.0, 3.0, 0.02), abs=1e-12)
    worse = st.probabilistic_sharpe_ratio(sr, 250, -2.0, 12.0, 0.02)
    assert worse == pytest.approx(_psr_inline(sr, 250, -2.0, 12.0, 0.02), abs=1e-12)
    assert worse < base
    assert st.probabilistic_sharpe_ratio(sr, 1000, -2.0, 12.0, 0.02) > worse


def test_min_track_record_length_closed_form():
    """Bailey & Lopez de Prado (2012), MinTRL: closed form, and PSR evaluated at n_obs = MinTRL
    equals the requested confidence exactly (MinTRL inverts PSR in T)."""
    sr, skew, kurt, sr_star, prob = 0.12, -1.5, 7.0, 0.03, 0.95
    n = st.min_track_record_length(sr, skew, kurt, sr_benchmark=sr_star, prob=prob)
    v = 1 - skew * sr + (kurt - 1) / 4 * sr**2
    assert n == pytest.approx(1 + v * (sps.norm.ppf(prob) / (sr - sr_star)) ** 2, rel=1e-12)
    psr = st.probabilistic_sharpe_ratio(sr, n, skew, kurt, sr_benchmark=sr_star)
    assert psr == pytest.approx(prob, abs=1e-12)
    # normal returns, SR 1 annualised from daily data needs about 2.7 years at 95%
    n_norm = st.min_track_record_length(1 / math.sqrt(252), 0.0, 3.0)
    assert n_norm == pytest.approx(1 + (1 + 0.5 / 252) * 252 * 1.6448536269514722**2, rel=1e-12)
    assert math.isinf(st.min_track_record_length(0.01, 0.0, 3.0, sr_benchmark=0.02))


def test_dsr_single_trial_is_psr_against_zero():
    """Bailey & Lopez de Prado (2014): with one trial there is no selection bias, so DSR = PSR(0)
    (the E[max] approximation is defined as 0 for N = 1)."""
    assert st.expected_max_sharpe(1, 0.7) == 0.0
    assert st.deflated_sharpe_ratio(0.05, 500, -0.5, 5.0, 1, 0.7) == pytest.approx(
        st.probabilistic_sharpe_ratio(0.05, 500, -0.5, 5.0), abs=1e-15
    )
    assert st.expected_max_sharpe(50, 0.0) == 0.0
    assert math.isnan(st.expected_max_sharpe(50, math.nan))
    assert math.isnan(st.probabilistic_sharpe_ratio(math.nan, 50, 0.0, 3.0))


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: st.expected_max_sharpe(0, 1.0), "n_trials"),
        (lambda: st.expected_max_sharpe(10, -0.1), "sr_variance"),
        (lambda: st.deflated_sharpe_ratio(0.1, 100, 0, 3, 0.5, 0.1), "n_trials"),
        (lambda: st.probabilistic_sharpe_ratio(0.1, 1, 0, 3), "n_obs"),
        (lambda: st.probabilistic_sharpe_ratio(0.5, 100, 10.0, 1.0), "kurtosis"),
        (lambda: st.min_track_record_length(0.1, 0, 3, prob=1.0), "prob"),
        (lambda: st.pbo_cscv(np.zeros((100, 4)), n_splits=5), "n_splits"),
        (lambda: st.pbo_cscv(np.ones((10, 4)), n_splits=16), "n_splits"),
        (lambda: st.pbo_cscv(np.ones(100), n_splits=4), "returns"),
        (lambda: st.pbo_cscv(np.ones((100, 1)), n_splits=4), "returns"),
        (lambda: st.stationary_bootstrap(np.ones(10), n_samples=0), "n_samples"),
        (lambda: st.stationary_bootstrap(np.ones(10), mean_block=0.5), "mean_block"),
        (lambda: st.omega(np.ones(10), required_return=-1.0), "required_return"),
        (lambda: st.sharpe(np.ones(10), periods_per_year=0), "periods_per_year"),
        (lambda: st.information_coefficient([1, 2], [1.0], [1.0, 2.0]), "same length"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_argument(call, name):
    """Project validation issue: invalid arguments raise ValueError naming the argument."""
    with pytest.raises(ValueError, match=name):
        call()


# ------------------------------------------------------------------------------------------
# Performance metrics vs empyrical-reloaded, quantstats, scipy
# ------------------------------------------------------------------------------------------


def _returns(seed, n=756, nan=False):
    rng = np.random.default_rng(seed)
    r = rng.standard_t(4, size=n) * 0.01 + 0.0004
    if nan:
        r[rng.choice(n, size=20, replace=False)] = np.nan
    return r


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ppy", [252, 12])
def test_metrics_match_empyrical(seed, ppy):
    """empyrical-reloaded 0.7.1 (sharpe_ratio, sortino_ratio, annual_volatility, annual_return,
    calmar_ratio, max_drawdown, tail_ratio, omega_ratio) on fixed seeded returns, to 1e-10."""
    r = _returns(seed)
    ann = {"annualization": ppy}
    pairs = [
        (st.sharpe(r, periods_per_year=ppy), empyrical.sharpe_ratio(r, **ann)),
        (
            st.sharpe(r, risk_free=0.0001, periods_per_year=ppy),
            empyrical.sharpe_ratio(r, risk_free=0.0001, **ann),
        ),
        (st.sortino(r, periods_per_year=ppy), empyrical.sortino_ratio(r, **ann)),
        (
            st.sortino(r, required_return=0.0002, periods_per_year=ppy),
            empyrical.sortino_ratio(r, required_return=0.0002, **ann),
        ),
        (st.annual_volatility(r, ppy), empyrical.annual_volatility(r, **ann)),
        (st.cagr(r, ppy), empyrical.annual_return(r, **ann)),
        (st.calmar(r, ppy), empyrical.calmar_ratio(r, **ann)),
        (st.max_drawdown(r), empyrical.max_drawdown(r)),
        (st.tail_ratio(r), empyrical.tail_ratio(r)),
        (st.omega(r, periods_per_year=ppy), empyrical.omega_ratio(r, annualization=ppy)),
        (
            st.omega(r, risk_free=0.0001, required_return=0.05, periods_per_year=ppy),
            empyrical.omega_ratio(r, risk_free=0.0001, required_return=0.05, annualization=ppy),
        ),
    ]
    for ours, ref in pairs:
        assert np.isfinite(ours)
        assert ours == pytest.approx(ref, abs=1e-10, rel=1e-10)


def test_metrics_drop_nans_like_empyrical():
    """empyrical-reloaded: NaN-aware reductions. With NaNs our metrics equal empyrical's on the
    NaN-free array and, for the nan-ignoring ones, on the raw array too."""
    r = _returns(7, nan=True)
    clean = r[~np.isnan(r)]
    assert st.sharpe(r) == pytest.approx(empyrical.sharpe_ratio(r), abs=1e-10)
    assert st.sortino(r) == pytest.approx(empyrical.sortino_ratio(r), abs=1e-10)
    assert st.annual_volatility(r) == pytest.approx(empyrical.annual_volatility(r), abs=1e-10)
    assert st.tail_ratio(r) == pytest.approx(empyrical.tail_ratio(r), abs=1e-10)
    assert st.omega(r) == pytest.approx(empyrical.omega_ratio(r), abs=1e-10)
    # cagr / drawdown: documented choice to drop NaN periods (empyrical counts them as 0 returns)
    assert st.cagr(r) == pytest.approx(empyrical.annual_return(clean), abs=1e-12)
    assert st.max_drawdown(r) == pytest.approx(empyrical.max_drawdown(clean), abs=1e-12)
    assert st.calmar(r) == pytest.approx(empyrical.calmar_ratio(clean), abs=1e-10)


def test_metrics_match_quantstats_where_conventions_agree():
    """quantstats 0.0.86 with rf = 0 on a daily-indexed Series: sharpe, sortino, volatility,
    cagr (years = count / periods), max_drawdown (baseline 1), calmar, tail_ratio, omega agree.
    Convention difference: quantstats skew/kurtosis are pandas' bias-corrected G1 and excess G2,
    ours are scipy's population-moment skew and Pearson kurtosis."""
    r = _returns(3)
    s = pd.Series(r, index=pd.bdate_range("2020-01-01", periods=r.size))
    pairs = [
        (st.sharpe(r), qs.stats.sharpe(s)),
        (st.sortino(r), qs.stats.sortino(s)),
        (st.annual_volatility(r), qs.stats.volatility(s)),
        (st.cagr(r), qs.stats.cagr(s)),
        (st.max_drawdown(r), qs.stats.max_drawdown(s)),
        (st.calmar(r), qs.stats.calmar(s)),
        (st.tail_ratio(r), qs.stats.tail_ratio(s)),
        (st.omega(r), qs.stats.omega(s)),
    ]
    for ours, ref in pairs:
        assert ours == pytest.approx(float(ref), abs=1e-10, rel=1e-10)
    assert float(qs.stats.skew(s)) == pytest.approx(sps.skew(r, bias=False), abs=1e-10)
    assert float(qs.stats.kurtosis(s)) == pytest.approx(
        sps.kurtosis(r, fisher=True, bias=False), abs=1e-10
    )


def test_skew_kurtosis_match_scipy():
    """scipy.stats.skew / kurtosis(fisher=False) with bias=True (population moments, as in
    Bailey & Lopez de Prado's reference code); Pearson kurtosis of a normal is ~3."""
    r = _returns(4, nan=True)
    clean = r[~np.isnan(r)]
    assert st.sample_skew(r) == pytest.approx(sps.skew(clean), abs=1e-12)
    assert st.pearson_kurtosis(r) == pytest.approx(sps.kurtosis(clean, fisher=False), abs=1e-12)
    normal = np.random.default_rng(0).normal(size=200_000)
    assert st.pearson_kurtosis(normal) == pytest.approx(3.0, abs=0.05)
    assert st.sharpe_per_period(r) == pytest.approx(
        np.mean(clean) / np.std(clean, ddof=1), abs=1e-14
    )


def test_hand_computed_metrics():
    """Hand computation (empyrical's drawdown convention: wealth starts at 1)."""
    assert st.max_drawdown([-0.5, 1.0, -0.5]) == pytest.approx(-0.5)
    assert st.max_drawdown([-0.25]) == pytest.approx(-0.25)  # first-period loss counts
    assert st.max_drawdown([0.1, 0.2]) == 0.0
    assert math.isnan(st.calmar([0.1, 0.2]))
    assert st.cagr([0.1, 0.1], periods_per_year=2) == pytest.approx(0.21)
    # hit rate: positives among non-zero returns, NaN and zeros excluded
    assert st.hit_rate([0.01, -0.02, 0.0, 0.03, np.nan, 0.0]) == pytest.approx(2 / 3)
    assert math.isnan(st.hit_rate([0.0, 0.0]))


@pytest.mark.parametrize("bad", [[], [np.nan, np.nan]])
def test_empty_or_all_nan_inputs_give_nan(bad):
    """Project validation issue: empty or all-NaN inputs return NaN without raising."""
    for f in (
        st.sharpe,
        st.sharpe_per_period,
        st.sortino,
        st.annual_volatility,
        st.cagr,
        st.max_drawdown,
        st.calmar,
        st.tail_ratio,
        st.omega,
        st.hit_rate,
        st.sample_skew,
        st.pearson_kurtosis,
    ):
        assert math.isnan(f(bad)), f.__name__
    summary = st.performance_summary(bad, turnover=[])
    assert summary["n_obs"] == 0.0
    assert all(math.isnan(v) for k, v in summary.items() if k != "n_obs")


def test_constant_series_ratios_are_nan():
    """A constant series has no dispersion: ratios are NaN rather than the +-inf (or ~1e15
    rounding residue) a naive division gives; its volatility is exactly 0 as in empyrical."""
    flat = [0.001] * 5
    for f in (st.sharpe, st.sharpe_per_period, st.sortino, st.sample_skew, st.pearson_kurtosis):
        assert math.isnan(f(flat)), f.__name__
    assert st.annual_volatility(flat) == 0.0
    assert math.isnan(st.sharpe([0.1] * 3))  # mean 0.1 is inexact: residual std ~1e-17


def test_performance_summary_bundles_the_metrics():
    """performance_summary: each entry equals the standalone function; turnover mean is added
    only when given (NaN-ignoring)."""
    r = _returns(5)
    out = st.performance_summary(r, periods_per_year=252, turnover=[0.2, np.nan, 0.4])
    assert out["sharpe"] == st.sharpe(r)
    assert out["sortino"] == st.sortino(r)
    assert out["annual_volatility"] == st.annual_volatility(r)
    assert out["cagr"] == st.cagr(r)
    assert out["calmar"] == st.calmar(r)
    assert out["max_drawdown"] == st.max_drawdown(r)
    assert out["tail_ratio"] == st.tail_ratio(r)
    assert out["omega"] == st.omega(r)
    assert out["hit_rate"] == st.hit_rate(r)
    assert out["skew"] == st.sample_skew(r)
    assert out["kurtosis"] == st.pearson_kurtosis(r)
    assert out["sharpe_per_period"] == st.sharpe_per_period(r)
    assert out["n_obs"] == float(r.size)
    assert out["mean_turnover"] == pytest.approx(0.3)
    assert "mean_turnover" not in st.performance_summary(r)
    assert all(isinstance(v, float) for v in out.values())


# ------------------------------------------------------------------------------------------
# PBO (CSCV)
# ------------------------------------------------------------------------------------------


def _pbo_bruteforce(x, s):
    """Direct transcription of Bailey, Borwein, Lopez de Prado & Zhu's CSCV algorithm."""
    t, n = x.shape
    x = x[t % s :]
    blocks = np.split(x, s)
    logits = []
    for is_idx in combinations(range(s), s // 2):
        oos_idx = [b for b in range(s) if b not in is_idx]
        j = np.concatenate([blocks[b] for b in is_idx])
        jb = np.concatenate([blocks[b] for b in oos_idx])
        r_is = j.mean(0) / j.std(0, ddof=1)
        r_oos = jb.mean(0) / jb.std(0, ddof=1)
        best = int(np.argmax(r_is))
        rank = sps.rankdata(r_oos)[best]
        w = rank / (n + 1)
        logits.append(np.log(w / (1 - w)))
    logits = np.array(logits)
    return float(np.mean(logits <= 0)), logits


def test_pbo_hand_checked_two_splits():
    """Bailey, Borwein, Lopez de Prado & Zhu, CSCV, enumerated by hand for S = 2, N = 3.
    Row 0 (a huge value) is the T mod S leading row and must be dropped.
    Trial A: block0 (0.02, 0.04) SR 2.12, block1 (-0.01, 0.01) SR 0;
    B: (0.00, 0.02) SR 0.71, (0.01, 0.03) SR 1.41; C: (-0.02, 0.00) SR -0.71, (0.02, 0.04) SR 2.12.
    IS block0 -> A best, OOS ranks A last (r = 1); IS block1 -> C best, OOS ranks C last (r = 1).
    Both logits ln(0.25 / 0.75) = ln(1/3) <= 0, PBO = 1."""
    x = np.array(
        [
            [100.0, -100.0, 50.0],
            [0.02, 0.00, -0.02],
            [0.04, 0.02, 0.00],
            [-0.01, 0.01, 0.02],
            [0.01, 0.03, 0.04],
        ]
    )
    res = st.pbo_cscv(x, n_splits=2)
    np.testing.assert_allclose(res.logits, [math.log(1 / 3)] * 2, atol=1e-12)
    assert res.pbo == 1.0
    np.testing.assert_allclose(res.is_sharpe, [0.03 / math.sqrt(2e-4), 0.03 / math.sqrt(2e-4)])
    np.testing.assert_allclose(res.oos_sharpe, [0.0, -0.01 / math.sqrt(2e-4)], atol=1e-12)
    # make A best in both halves: OOS rank N = 3, logit ln(3), PBO 0
    x[3:, 0] = [0.03, 0.05]
    res = st.pbo_cscv(x, n_splits=2)
    np.testing.assert_allclose(res.logits, [math.log(3)] * 2, atol=1e-12)
    assert res.pbo == 0.0


@pytest.mark.parametrize(("s", "n", "t"), [(4, 3, 41), (6, 7, 63), (8, 5, 80)])
def test_pbo_matches_bruteforce_enumeration(s, n, t):
    """Bailey, Borwein, Lopez de Prado & Zhu: the vectorised CSCV equals a loop over all
    C(S, S/2) splits (block order of itertools.combinations)."""
    x = np.random.default_rng(s * 100 + n).normal(0.0002, 0.01, size=(t, n))
    pbo, logits = _pbo_bruteforce(x, s)
    res = st.pbo_cscv(x, n_splits=s)
    np.testing.assert_allclose(res.logits, logits, atol=1e-9)
    assert res.pbo == pbo
    assert res.logits.size == math.comb(s, s // 2)


def test_pbo_noise_is_near_one_half():
    """Bailey, Borwein, Lopez de Prado & Zhu: with no skill (iid normal trials) the IS-best trial
    is a random draw out of sample, so PBO ~ 0.5 (N = 50, T = 800, S = 16, mean over seeds)."""
    pbos = [
        st.pbo_cscv(np.random.default_rng(seed).normal(0, 0.01, (800, 50)), 16).pbo
        for seed in range(6)
    ]
    assert abs(np.mean(pbos) - 0.5) < 0.15


def test_pbo_persistent_edge_is_near_zero():
    """Bailey, Borwein, Lopez de Prado & Zhu: a trial with a strong persistent edge is selected
    in-sample and stays on top out of sample, so PBO ~ 0."""
    x = np.random.default_rng(1).normal(0, 0.01, (800, 50))
    x[:, 7] += 0.003
    res = st.pbo_cscv(x, 16)
    assert res.pbo <= 0.02
    assert np.all(res.logits > 0)


def test_pbo_edge_cases():
    """Project validation issue: all-NaN or empty input gives PBO NaN; a NaN-padded trial and a
    constant trial are handled (undefined Sharpe ranks last)."""
    assert math.isnan(st.pbo_cscv(np.full((64, 4), np.nan), 4).pbo)
    assert math.isnan(st.pbo_cscv(np.empty((0, 4)), 4).pbo)
    x = np.random.default_rng(2).normal(0, 0.01, (64, 4))
    x[:, 3] = 0.0  # flat trial: never selected, ranks last
    x[:10, 2] = np.nan
    res = st.pbo_cscv(x, 4)
    assert np.isfinite(res.logits).all()
    assert 0.0 <= res.pbo <= 1.0


def test_pbo_full_size_sixteen_splits():
    """S = 16 gives C(16, 8) = 12,870 splits; N = 200 noise trials, T = 1000 (no timing here:
    speed belongs to benchmarks, not tests)."""
    x = np.random.default_rng(0).normal(0, 0.01, (1000, 200))
    res = st.pbo_cscv(x, 16)
    assert res.logits.shape == (12870,)
    assert np.all(np.isfinite(res.logits))
    assert 0.2 < res.pbo < 0.8


# ------------------------------------------------------------------------------------------
# Information coefficients
# ------------------------------------------------------------------------------------------


def _panel(seed=0, n_dates=30, n_names=25):
    rng = np.random.default_rng(seed)
    dates = np.repeat(np.arange("2024-01-01", n_dates, dtype="datetime64[D]"), n_names)
    scores = rng.normal(size=dates.size)
    labels = 0.1 * scores + rng.normal(size=dates.size)
    scores[rng.choice(dates.size, 40, replace=False)] = np.nan
    labels[rng.choice(dates.size, 40, replace=False)] = np.nan
    scores = np.round(scores, 1)  # create ties for the rank IC
    perm = rng.permutation(dates.size)  # input order must not matter
    return dates[perm], scores[perm], labels[perm]


def test_information_coefficients_match_scipy_by_date():
    """scipy.stats.pearsonr / spearmanr computed date by date on the valid pairs."""
    dates, scores, labels = _panel()
    ic = st.information_coefficient(dates, scores, labels)
    ric = st.rank_information_coefficient(dates, scores, labels)
    exp_dates, exp_p, exp_s = [], [], []
    for d in np.unique(dates):
        m = (dates == d) & np.isfinite(scores) & np.isfinite(labels)
        exp_dates.append(d)
        exp_p.append(sps.pearsonr(scores[m], labels[m])[0])
        exp_s.append(sps.spearmanr(scores[m], labels[m])[0])
    np.testing.assert_array_equal(ic.dates, exp_dates)
    np.testing.assert_allclose(ic.values, exp_p, atol=1e-12)
    np.testing.assert_allclose(ric.values, exp_s, atol=1e-12)
    assert ic.mean == pytest.approx(np.mean(exp_p), abs=1e-12)
    assert ric.mean == pytest.approx(np.mean(exp_s), abs=1e-12)


def test_information_coefficient_skips_undefined_dates():
    """Project validation issue: dates with fewer than 3 valid pairs are skipped (and dates with
    constant scores, where the correlation is undefined)."""
    dates = ["a", "a", "a", "b", "b", "b", "c", "c", "c", "c"]
    scores = [1.0, 2.0, 3.0, 1.0, 2.0, np.nan, 5.0, 5.0, 5.0, 5.0]
    labels = [1.0, 2.0, 4.0, 1.0, 3.0, 2.0, 1.0, 2.0, 3.0, 4.0]
    ic = st.information_coefficient(dates, scores, labels)
    assert list(ic.dates) == ["a"]
    assert ic.counts.tolist() == [3]
    assert ic.values[0] == pytest.approx(sps.pearsonr([1, 2, 3], [1, 2, 4])[0])
    ric = st.rank_information_coefficient(dates, scores, labels)
    assert ric.values.tolist() == [1.0]
    empty = st.information_coefficient([], [], [])
    assert empty.values.size == 0 and math.isnan(empty.mean)


# ------------------------------------------------------------------------------------------
# Stationary bootstrap
# ------------------------------------------------------------------------------------------


def test_bootstrap_is_deterministic_for_a_seed():
    """Politis & Romano (1994) stationary bootstrap with a seeded numpy Generator: same seed,
    bit-identical output; another seed, another output."""
    r = _returns(8, n=500)
    a = st.stationary_bootstrap(r, n_samples=300, mean_block=10, seed=42)
    b = st.stationary_bootstrap(r, n_samples=300, mean_block=10, seed=42)
    c = st.stationary_bootstrap(r, n_samples=300, mean_block=10, seed=43)
    np.testing.assert_array_equal(a.sharpe, b.sharpe)
    np.testing.assert_array_equal(a.max_drawdown, b.max_drawdown)
    assert not np.array_equal(a.sharpe, c.sharpe)
    # the resamples are exactly those of the public index generator
    idx = st.stationary_bootstrap_indices(r.size, n_samples=300, mean_block=10, seed=42)
    sample = r[idx]
    np.testing.assert_allclose(
        a.sharpe, sample.mean(1) / sample.std(1, ddof=1) * math.sqrt(252), rtol=1e-12
    )
    assert a.max_drawdown[5] == pytest.approx(st.max_drawdown(sample[5]), abs=1e-14)


def test_bootstrap_block_structure():
    """Politis & Romano (1994): blocks continue with probability 1 - 1/mean_block, so the mean
    block length is ~mean_block, and indices wrap circularly."""
    idx = st.stationary_bootstrap_indices(2000, n_samples=50, mean_block=20, seed=0)
    assert idx.min() >= 0 and idx.max() < 2000
    cont = (idx[:, 1:] == (idx[:, :-1] + 1) % 2000).mean()
    assert cont == pytest.approx(1 - 1 / 20, abs=0.01)
    iid = st.stationary_bootstrap_indices(2000, n_samples=20, mean_block=1, seed=0)
    assert (iid[:, 1:] == (iid[:, :-1] + 1) % 2000).mean() < 0.01


def test_bootstrap_distribution_sanity():
    """Sanity of the bootstrap distribution: Sharpe centred on the sample Sharpe with a spread
    close to the iid standard error sqrt((1 + SR^2/2)/T) * sqrt(252) (Lo 2002); drawdowns in
    [-1, 0]; percentiles ordered."""
    r = np.random.default_rng(11).normal(0.0005, 0.01, 1000)
    res = st.stationary_bootstrap(r, n_samples=1000, mean_block=5, seed=0)
    sr = st.sharpe(r)
    se = math.sqrt((1 + st.sharpe_per_period(r) ** 2 / 2) / r.size) * math.sqrt(252)
    assert np.median(res.sharpe) == pytest.approx(sr, abs=0.25 * se)
    assert np.std(res.sharpe) == pytest.approx(se, rel=0.2)
    assert np.all(res.max_drawdown <= 0) and np.all(res.max_drawdown >= -1)
    pct = res.percentiles((5, 50, 95))
    assert pct["sharpe"][5] < pct["sharpe"][50] < pct["sharpe"][95]
    assert pct["max_drawdown"][5] <= pct["max_drawdown"][95]
    # the observed drawdown lies inside the bootstrap range
    assert res.max_drawdown.min() <= st.max_drawdown(r) <= res.max_drawdown.max()


def test_bootstrap_degenerate_input_is_nan():
    """Project validation issue: empty/all-NaN input gives NaN distributions, no exception."""
    res = st.stationary_bootstrap([np.nan, np.nan], n_samples=10)
    assert res.sharpe.shape == (10,) and np.isnan(res.sharpe).all()
    assert math.isnan(res.percentiles()["max_drawdown"][50.0])


# ------------------------------------------------------------------------------------------
# Bailey & Lopez de Prado (2012), "The Sharpe Ratio Efficient Frontier", Journal of Risk 15(2)
# (SSRN 1821643, July 2012 preprint): the paper's PSR and MinTRL worked examples.
#
# Each example is checked twice: (a) against the digits the paper prints, with a tolerance of
# half a unit of the last printed digit (or the truncation interval where the paper truncates),
# and (b) to 1e-9 against an independent 50-digit mpmath evaluation of the paper's formulas
#   PSR(SR*) = Phi((SR - SR*) sqrt(T-1) / sqrt(1 - g3 SR + (g4-1)/4 SR^2))
#   MinTRL   = 1 + (1 - g3 SR + (g4-1)/4 SR^2) (Phi^-1(p) / (SR - SR*))^2
# with per-period SRs and Pearson kurtosis g4 (3 for a normal), as in the paper.
# ------------------------------------------------------------------------------------------


def _psr_mp(sr, t, skew, kurt, sr_star=0.0):
    """PSR in 50-digit arithmetic; mpmath.ncdf, no scipy. mpmath is pinned in requirements.lock
    (via sympy); imported here so that its absence fails these tests loudly instead of skipping
    the module."""
    import mpmath

    with mpmath.workdps(50):
        sr, t, skew, kurt, sr_star = (mpmath.mpf(x) for x in (sr, t, skew, kurt, sr_star))
        v = 1 - skew * sr + (kurt - 1) / 4 * sr**2
        return float(mpmath.ncdf((sr - sr_star) * mpmath.sqrt(t - 1) / mpmath.sqrt(v)))


def _mintrl_mp(sr, skew, kurt, sr_star=0.0, prob=0.95):
    """MinTRL (periods) in 50-digit arithmetic; Phi^-1(p) = sqrt(2) erfinv(2p - 1)."""
    import mpmath

    with mpmath.workdps(50):
        sr, skew, kurt, sr_star, prob = (mpmath.mpf(x) for x in (sr, skew, kurt, sr_star, prob))
        z = mpmath.sqrt(2) * mpmath.erfinv(2 * prob - 1)
        v = 1 - skew * sr + (kurt - 1) / 4 * sr**2
        return float(1 + v * (z / (sr - sr_star)) ** 2)


# Section 3 hedge-fund example: monthly (non-annualised) SR 0.458, benchmark SR* = 0.
_HF_SR, _HF_SKEW, _HF_KURT = 0.458, -2.448, 10.164


@pytest.mark.parametrize(
    ("n_obs", "skew", "kurt", "printed"),
    [
        (24, 0.0, 3.0, 0.982),  # two years of monthly returns, assuming normality
        (24, _HF_SKEW, _HF_KURT, 0.913),  # same track record, its own skew and kurtosis
    ],
)
def test_psr_paper_hedge_fund_example(n_obs, skew, kurt, printed):
    """Bailey & Lopez de Prado (2012), section 3 (PSR), hedge-fund example: an estimated
    monthly SR of 0.458 (about 1.59 annualised: 0.458 * sqrt(12) = 1.587) over T = 24 monthly
    observations gives PSR(0) = 0.982 under normality and PSR(0) = 0.913 with the track record's
    skewness -2.448 and kurtosis 10.164 (Pearson). No annualisation enters the formula: SR and
    T are both monthly. The paper prints 3 decimals; 0.458 is the input that reproduces them
    (1.59/sqrt(12) = 0.45899 would give 0.9136 -> 0.914)."""
    psr = st.probabilistic_sharpe_ratio(_HF_SR, n_obs, skew, kurt, sr_benchmark=0.0)
    assert psr == pytest.approx(printed, abs=5e-4)  # the paper's digits
    assert psr == pytest.approx(_psr_mp(_HF_SR, n_obs, skew, kurt), abs=1e-9)  # its formula


def test_psr_paper_hedge_fund_example_three_years():
    """Bailey & Lopez de Prado (2012), section 3, same example with a three-year (T = 36
    months) track record: the paper prints PSR(0) = 0.953. The formula gives 0.95351, so the
    paper truncates rather than rounds here (rounding would print 0.954): the check is the
    truncation interval [0.953, 0.954)."""
    psr = st.probabilistic_sharpe_ratio(_HF_SR, 36, _HF_SKEW, _HF_KURT, sr_benchmark=0.0)
    assert 0.953 <= psr < 0.954
    assert psr == pytest.approx(_psr_mp(_HF_SR, 36, _HF_SKEW, _HF_KURT), abs=1e-9)
    # more history, more confidence; and normality overstates it
    assert psr > st.probabilistic_sharpe_ratio(_HF_SR, 24, _HF_SKEW, _HF_KURT)
    assert psr < st.probabilistic_sharpe_ratio(_HF_SR, 36, 0.0, 3.0)


@pytest.mark.parametrize(
    ("periods_per_year", "skew", "kurt", "printed_years"),
    [
        (250, 0.0, 3.0, 2.73),  # daily, IID normal (250 or 252 days: 2.7312 / 2.7310)
        (252, 0.0, 3.0, 2.73),
        (52, 0.0, 3.0, 2.83),  # weekly
        (12, 0.0, 3.0, 3.24),  # monthly
        (12, -0.72, 5.78, 4.99),  # monthly, HFR aggregate index skew and kurtosis
    ],
)
def test_min_track_record_length_paper_examples(periods_per_year, skew, kurt, printed_years):
    """Bailey & Lopez de Prado (2012), section on the minimum track record length (discussion
    of the MinTRL figure, Figure 8 of the preprint): for an annualised SR of 2 to be above an
    annualised SR* of 1 at 95% confidence with IID normal returns, 2.73 years of daily, 2.83
    years of weekly and 3.24 years of monthly data are needed; with monthly returns carrying the
    HFR index's skewness -0.72 and kurtosis 5.78, 4.99 years. As in the paper, the annualised SRs
    are de-annualised by sqrt(periods per year) and MinTRL (in periods) is divided by the periods
    per year. The paper prints years to 2 decimals; which day count it uses for "daily" does not
    matter at that precision (250 and 252 both give 2.73)."""
    ppy = periods_per_year
    sr, sr_star = 2.0 / math.sqrt(ppy), 1.0 / math.sqrt(ppy)
    n = st.min_track_record_length(sr, skew, kurt, sr_benchmark=sr_star, prob=0.95)
    assert n / ppy == pytest.approx(printed_years, abs=5e-3)  # the paper's digits
    assert n == pytest.approx(_mintrl_mp(sr, skew, kurt, sr_star, 0.95), abs=1e-9)  # formula


def test_min_track_record_length_paper_appendix_months():
    """Bailey & Lopez de Prado (2012), appendix (Python code for PSR/MinTRL, inputs
    stats=[2, 12**0.5, -0.72, 5.78], sr_ref=1/12**0.5, prob=0.95, i.e. a monthly SR of
    2/sqrt(12) against 1/sqrt(12)): the paper prints MinTRL = 59.895 months (about 4.99 years).
    PSR evaluated at T = 59.895 is then 0.95 (MinTRL inverts PSR in T), to the 4 decimals the
    rounding of 59.895 leaves determined."""
    sr, sr_star = 2.0 / math.sqrt(12), 1.0 / math.sqrt(12)
    n = st.min_track_record_length(sr, -0.72, 5.78, sr_benchmark=sr_star, prob=0.95)
    assert n == pytest.approx(59.895, abs=5e-4)  # printed to 3 decimals
    assert n == pytest.approx(_mintrl_mp(sr, -0.72, 5.78, sr_star, 0.95), abs=1e-9)
    psr = st.probabilistic_sharpe_ratio(sr, 59.895, -0.72, 5.78, sr_benchmark=sr_star)
    assert psr == pytest.approx(0.95, abs=5e-5)
    assert psr == pytest.approx(_psr_mp(sr, 59.895, -0.72, 5.78, sr_star), abs=1e-9)


def test_paper_examples_pin_the_conventions():
    """The paper's printed digits would not be reproduced under the neighbouring conventions:
    excess kurtosis in place of Pearson kurtosis, sqrt(T) in place of sqrt(T-1), or annualised
    SRs fed into the per-period formula. Guards that the tests above can fail."""
    # excess kurtosis (10.164 - 3) in the 24-month hedge-fund example
    assert round(st.probabilistic_sharpe_ratio(_HF_SR, 24, _HF_SKEW, _HF_KURT - 3.0), 3) != 0.913
    # sqrt(T) instead of sqrt(T - 1): T -> T + 1
    assert round(st.probabilistic_sharpe_ratio(_HF_SR, 25, _HF_SKEW, _HF_KURT), 3) != 0.913
    # annualised SR 2 against 1 fed unconverted, monthly moments: not 59.895 months
    assert abs(st.min_track_record_length(2.0, -0.72, 5.78, sr_benchmark=1.0) - 59.895) > 1.0
