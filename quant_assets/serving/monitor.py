"""Realised versus backtest: is the live signal's recent Sharpe ratio plausible under its
backtest?

Pure: numpy and polars, plus the strategy and statistics cores (no Dagster, no MLflow).

* Live returns: the long-short strategy of the backtest (``backtest.strategy``) run on the
  scored days (``daily_scores``) with realised total-return closes. The book starts flat
  ``WARMUP_DAYS`` before the window (execution lag 1: the first day only decides weights),
  so the window's returns are those of an established book.
* Realised Sharpe: annualised Sharpe (``performance.sharpe``) of the last ``window``
  (default 21) daily net returns.
* Reference: every rolling ``window``-day annualised Sharpe of the backtest's
  ``net_return`` (same scale), up to the monitored day; its mean and std (ddof=1).
* Breach: |realised - mean| > ``n_sigma`` (default 2) * std; the signal's capital
  multiplier is then ``reduced_multiplier`` (default 0.5), otherwise 1.0. With too little
  history (fewer than ``window`` live returns, or fewer than 2 backtest windows) there is
  no verdict: multiplier 1.0 and the status says why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from quant_assets.backtest.strategy import StrategySpec, run_long_short
from quant_assets.performance import sharpe

WINDOW = 21
WARMUP_DAYS = 2


def rolling_sharpe(returns, window: int = WINDOW) -> np.ndarray:
    """Annualised Sharpe of each full ``window``-long run of consecutive returns."""
    r = np.asarray(returns, dtype=np.float64)
    if window < 2:
        raise ValueError(f"window={window} must be >= 2")
    return np.array([sharpe(r[i - window : i]) for i in range(window, r.size + 1)], dtype=np.float64)


def live_returns(
    scores: pl.DataFrame, prices: pl.DataFrame, spec: StrategySpec | None = None
) -> pl.DataFrame:
    """Daily (date, net_return) of the strategy on ``scores`` (date, instrument_id, score)
    with ``prices`` (date, instrument_id, tr_close), flat book at the first day."""
    days = scores.get_column("date").unique()
    prices = prices.filter(pl.col("date").is_in(days.implode()))
    daily, _ = run_long_short(scores, prices, spec or StrategySpec())
    return daily.select("date", "net_return").sort("date")


@dataclass(frozen=True)
class CapitalRule:
    """When the live signal's capital is cut: beyond ``n_sigma`` standard deviations of the
    backtest's rolling ``WINDOW``-day Sharpe ratios, the multiplier is ``reduced_multiplier``."""

    n_sigma: float = 2.0
    reduced_multiplier: float = 0.5


@dataclass(frozen=True)
class SignalHealth:
    realised_sharpe: float
    backtest_mean: float
    backtest_std: float
    z_score: float
    n_live_days: int
    n_backtest_windows: int
    breach: bool
    capital_multiplier: float
    status: str

    def as_row(self) -> dict:
        return asdict(self)


def signal_health(
    live: np.ndarray,
    backtest: np.ndarray,
    window: int = WINDOW,
    n_sigma: float = 2.0,
    reduced_multiplier: float = 0.5,
) -> SignalHealth:
    """Verdict on the last ``window`` live daily returns against the backtest's rolling
    ``window``-day Sharpe ratios (see the module docstring)."""
    if not 0.0 <= reduced_multiplier <= 1.0:
        raise ValueError(f"reduced_multiplier={reduced_multiplier} must be in [0, 1]")
    if n_sigma <= 0:
        raise ValueError(f"n_sigma={n_sigma} must be > 0")
    live = np.asarray(live, dtype=np.float64)
    live = live[~np.isnan(live)]
    ref = rolling_sharpe(np.asarray(backtest, dtype=np.float64), window)
    ref = ref[np.isfinite(ref)]
    mean = float(np.mean(ref)) if ref.size else math.nan
    std = float(np.std(ref, ddof=1)) if ref.size >= 2 else math.nan
    realised = sharpe(live[-window:]) if live.size >= window else math.nan

    def no_verdict(status: str) -> SignalHealth:
        return SignalHealth(realised, mean, std, math.nan, int(live.size), int(ref.size),
                            False, 1.0, status)

    if live.size < window:
        return no_verdict(f"insufficient live history: {live.size} < {window} days")
    if ref.size < 2 or not std > 0:
        return no_verdict(f"insufficient backtest history: {ref.size} rolling windows")
    if not math.isfinite(realised):
        return no_verdict("realised Sharpe undefined (zero dispersion)")
    z = (realised - mean) / std
    breach = abs(z) > n_sigma
    status = (
        f"realised {window}d Sharpe {realised:.2f} is {z:+.2f} sd from the backtest mean "
        f"{mean:.2f}" + (f" (beyond {n_sigma} sd)" if breach else "")
    )
    return SignalHealth(realised, mean, std, float(z), int(live.size), int(ref.size), breach,
                        reduced_multiplier if breach else 1.0, status)
