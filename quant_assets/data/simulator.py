"""Synthetic market: a point-in-time universe, as-traded daily bars, corporate actions and
bitemporal quarterly fundamentals, drawn from a documented data-generating process.

Conventions
-----------
- Output frames follow the raw-table contract of ARCHITECTURE.md exactly (column names,
  order, polars dtypes; times are ``Datetime("us", "UTC")``).
- Trading days are ``quant_assets.calendar.trading_days(start, end)``.
- Prices are AS TRADED: on the ex-date of a split with ratio r (new shares per old share)
  the traded price is divided by r; on the ex-date of a cash dividend d the price drops by
  d. Hence the split- and dividend-adjusted close-to-close return of day t is exactly
  ``(close_t * r_t + d_t) / close_{t-1} - 1 = exp(x_t) - 1`` where x_t is the simulated
  log total return below.
- A bar of session D becomes known at D's actual close (``calendar.session_close``: 16:00
  New York for XNYS, earlier on half days), the default cutoff, so a day's features see its bar.
- The universe is bitemporal: an instrument's listing is known from ``listed_from`` 00:00 UTC;
  a delisting is a second version (``listed_until`` set) known at the close of its last day
  (``quant_assets.data.reference.universe_versions``).
- Same config (seed included) -> bit-identical frames. All randomness comes from one
  ``numpy.random.Generator(PCG64(seed))``.

Data-generating process (knobs are fields of ``SimulatorConfig``)
-----------------------------------------------------------------
Regime. A two-state Markov chain, calm/stressed, switches daily with probabilities
``p_calm_to_stressed`` and ``p_stressed_to_calm``. In the stressed state the market factor's
volatility is multiplied by ``stress_market_vol_mult``, sector factors by
``stress_sector_vol_mult``, idiosyncratic volatility by ``stress_idio_vol_mult`` and the
market drift is ``market_drift_stressed`` instead of ``market_drift_calm``.

Factors. The market factor m_t and one factor per sector s_{k,t} are GARCH(1,1) processes
(``garch_alpha``, ``garch_beta``) with Student-t(``t_dof``) shocks scaled to unit variance and
long-run daily volatilities ``market_vol`` and ``sector_vol``.

Log total return of instrument i (sector k) on day t::

    x_{i,t} = mu_i + beta_i * m_t + gamma_i * s_{k,t} + e_{i,t}
    e_{i,t} = a_{i,t} + sigma_{i,t} * z_{i,t}            (idiosyncratic return)
    a_{i,t} = -reversal_strength * sum_{j=1..5} e_{i,t-j}      (short-term reversal)
              + value_strength * sigmabar_i * v_{i,t}          (value tilt)

with beta_i ~ U(0.6, 1.4), gamma_i ~ U(0.5, 1.5), sigma_{i,t} a GARCH(1,1) volatility with
long-run level sigmabar_i (log-normal around ``idio_vol``), z Student-t. v_{i,t} is a
standardised value score, an AR(1) with half-life ``value_half_life_days``; it sets the
reported book-to-price: book_equity = market_cap(period_end) * exp(log(``mean_book_to_price``)
+ ``book_to_price_dispersion`` * v + noise). So cheap names (high book-to-price) earn more, and
last week's idiosyncratic losers bounce back: together a weak signal with a daily
cross-sectional rank IC of roughly 0.02-0.05 over a 5-day horizon at the defaults.

Bars. close_t = (close_{t-1} * exp(x_t) - d_t) / r_t. The open sits between the previous
close and the close (a random share of the day's move is overnight, plus noise); high and low
extend max/min(open, close) by half-normal excursions scaled by the day's volatility. Volume =
base turnover * shares outstanding * (volatility / long-run volatility) * a log-normal
shock, so it rises with volatility; it scales with splits (share count).

Universe. Ids ``SIM0001``...; sectors ``S01``...; about ``late_listing_fraction`` of names list
inside the range and ``delisting_fraction`` delist before its end (they stay in the universe
with ``listed_until`` set). Other names carry an IPO date before the range. Bars exist only
on listed days.

Corporate actions. A split is announced when the close exceeds a per-name trigger
(``split_trigger_multiple`` x the price at the start or at the previous split's announcement);
ratio 2 (3 after a larger run-up); a 1-for-5
reverse split (ratio 0.2) below ``reverse_split_below``. About ``dividend_payer_fraction`` of
names pay quarterly cash dividends of yield/4 of the price at announcement. Each action is
announced 5-30 calendar days before its ex-date at a random time of day (UTC), so some
announcements land after the daily cutoff. A split never shares an ex-date with a dividend,
and dividends announced before a pending split's ex-date are quoted per post-split share when
they go ex after it.

Fundamentals. Calendar quarters; fields net_income, book_equity, revenue,
shares_outstanding, total_assets, operating_cash_flow; published 25-60 calendar days after
period end (rolled to a weekday, random time of day); about ``restatement_rate`` of rows
other than shares_outstanding are restated 20-150 days later as a new row with a changed
value. shares_outstanding = base shares * cumulative split ratio at period end * a slow
issuance/buyback drift. Rows become known only while listed and not after ``end``.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import polars as pl

from quant_assets.calendar import session_close, trading_days
from quant_assets.data.reference import universe_versions

# The raw-table contracts live in schemas.py; re-exported here for existing importers.
from quant_assets.data.schemas import (
    CORPORATE_ACTIONS_SCHEMA,
    FUNDAMENTALS_SCHEMA,
    MARKET_BARS_SCHEMA,
    UNIVERSE_SCHEMA,
    UTC_TIME,
)

__all__ = ["CORPORATE_ACTIONS_SCHEMA", "FUNDAMENTALS_SCHEMA", "MARKET_BARS_SCHEMA", "UNIVERSE_SCHEMA",
           "UTC_TIME", "MarketData", "SimulatorConfig", "simulate_market", "instrument_ids"]


FUNDAMENTAL_FIELDS: tuple[str, ...] = (
    "book_equity",
    "net_income",
    "operating_cash_flow",
    "revenue",
    "shares_outstanding",
    "total_assets",
)

_REVERSAL_WINDOW = 5
_US_PER_DAY = 86_400_000_000
_EPOCH = dt.date(1970, 1, 1)


@dataclass(frozen=True)
class SimulatorConfig:
    """Knobs of the data-generating process (module docstring); daily units for rates/vols."""

    n_instruments: int = 100
    start: dt.date = dt.date(2022, 1, 3)
    end: dt.date = dt.date(2024, 12, 31)
    seed: int = 7
    n_sectors: int = 8
    # predictable component
    reversal_strength: float = 0.02
    value_strength: float = 0.015
    value_half_life_days: float = 252.0
    mean_book_to_price: float = 0.5
    book_to_price_dispersion: float = 0.5
    # volatility (daily, long-run) and clustering
    market_vol: float = 0.009
    sector_vol: float = 0.006
    idio_vol: float = 0.016
    garch_alpha: float = 0.08
    garch_beta: float = 0.90
    t_dof: float = 5.0
    # regimes
    p_calm_to_stressed: float = 0.01
    p_stressed_to_calm: float = 0.05
    stress_market_vol_mult: float = 2.0
    stress_sector_vol_mult: float = 1.5
    stress_idio_vol_mult: float = 1.3
    market_drift_calm: float = 0.0003
    market_drift_stressed: float = -0.0010
    # universe
    late_listing_fraction: float = 0.10
    delisting_fraction: float = 0.10
    # corporate actions and fundamentals
    dividend_payer_fraction: float = 0.4
    split_trigger_multiple: float = 2.5
    reverse_split_below: float = 2.0
    restatement_rate: float = 0.08

    def __post_init__(self) -> None:
        if self.n_instruments < 2:
            raise ValueError(f"n_instruments={self.n_instruments} must be >= 2")
        if self.n_sectors < 1:
            raise ValueError(f"n_sectors={self.n_sectors} must be >= 1")
        if self.end < self.start:
            raise ValueError(f"end={self.end} is before start={self.start}")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")
        if (
            self.garch_alpha < 0.0
            or self.garch_beta < 0.0
            or self.garch_alpha + self.garch_beta >= 1.0
        ):
            raise ValueError(
                f"GARCH needs alpha, beta >= 0 and alpha + beta < 1 "
                f"(got {self.garch_alpha}, {self.garch_beta})"
            )
        if self.t_dof <= 2.0:
            raise ValueError(f"t_dof={self.t_dof} must be > 2 (finite variance)")
        for name in (
            "late_listing_fraction",
            "delisting_fraction",
            "dividend_payer_fraction",
            "restatement_rate",
            "p_calm_to_stressed",
            "p_stressed_to_calm",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must be in [0, 1]")
        if self.split_trigger_multiple <= 1.0:
            raise ValueError(f"split_trigger_multiple={self.split_trigger_multiple} must be > 1")
        if not 0.0 <= self.reversal_strength < 0.2:
            raise ValueError(f"reversal_strength={self.reversal_strength} must be in [0, 0.2)")


class MarketData(NamedTuple):
    """The four raw tables, in the contract schemas."""

    universe: pl.DataFrame
    market_bars: pl.DataFrame
    corporate_actions: pl.DataFrame
    fundamentals: pl.DataFrame


def instrument_ids(n: int) -> list[str]:
    width = max(4, len(str(n)))
    return [f"SIM{i + 1:0{width}d}" for i in range(n)]


def _days_since_epoch(days: list[dt.date]) -> np.ndarray:
    return np.array([(d - _EPOCH).days for d in days], dtype=np.int64)


def _date_series(name: str, days: np.ndarray) -> pl.Series:
    return pl.Series(name, days.astype(np.int32)).cast(pl.Date)


def _utc_series(name: str, micros: np.ndarray) -> pl.Series:
    return (
        pl.Series(name, micros.astype(np.int64)).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    )


def _roll_to_weekday(days: np.ndarray) -> np.ndarray:
    # 1970-01-01 was a Thursday: weekday (Mon=0) = (days + 3) % 7
    weekday = (days + 3) % 7
    return days + np.where(weekday == 5, 2, np.where(weekday == 6, 1, 0))


def _random_time_of_day_us(
    rng: np.random.Generator, n: int, lo_h: float, hi_h: float
) -> np.ndarray:
    # whole seconds keep the timestamps readable in CSV exports
    secs = rng.integers(int(lo_h * 3600), int(hi_h * 3600), size=n)
    return secs.astype(np.int64) * 1_000_000


class _Universe(NamedTuple):
    sector_idx: np.ndarray  # (n,) int
    first_idx: np.ndarray  # first listed trading-day index within the range
    last_idx: np.ndarray  # last listed trading-day index within the range
    listed_from: np.ndarray  # days since epoch
    listed_until: np.ndarray  # days since epoch, -1 while listed


def _draw_universe(
    rng: np.random.Generator, cfg: SimulatorConfig, day_num: np.ndarray
) -> _Universe:
    n, n_days = cfg.n_instruments, len(day_num)
    sector_idx = rng.integers(0, cfg.n_sectors, size=n)
    # IPO dates before the range for names listed from the start (1 to 20 years earlier)
    ipo = day_num[0] - rng.integers(365, 20 * 365, size=n)
    ipo = _roll_to_weekday(ipo)
    first_idx = np.zeros(n, dtype=np.int64)
    last_idx = np.full(n, n_days - 1, dtype=np.int64)
    # a listing or delisting needs room: at least ~60 trading days of life inside the range
    min_life = min(60, max(1, n_days // 4))
    late = rng.random(n) < cfg.late_listing_fraction
    delist = rng.random(n) < cfg.delisting_fraction
    lo_late, hi_late = 1, max(1, n_days - 2 * min_life)
    late_at = rng.integers(lo_late, hi_late + 1, size=n)
    delist_draw = rng.random(n)
    if n_days > 2 * min_life:
        first_idx = np.where(late, late_at, 0)
        lo = first_idx + min_life
        hi = n_days - 2
        can = delist & (hi >= lo)
        last_idx = np.where(
            can, lo + np.floor(delist_draw * (hi - lo + 1)).astype(np.int64), last_idx
        )
        late_mask = late
        delist_mask = can
    else:
        late_mask = np.zeros(n, dtype=bool)
        delist_mask = np.zeros(n, dtype=bool)
    listed_from = np.where(late_mask, day_num[first_idx], ipo)
    listed_until = np.where(delist_mask, day_num[last_idx], -1)
    return _Universe(sector_idx, first_idx, last_idx, listed_from, listed_until)


class _Dividends(NamedTuple):
    inst: np.ndarray
    ex_idx: np.ndarray
    ann_idx: np.ndarray  # index of the last trading day <= announcement date, -1 before range
    ann_us: np.ndarray  # announcement time, micros since epoch
    quarterly_yield: np.ndarray


def _schedule_dividends(
    rng: np.random.Generator, cfg: SimulatorConfig, day_num: np.ndarray, uni: _Universe
) -> _Dividends:
    n = cfg.n_instruments
    payer = rng.random(n) < cfg.dividend_payer_fraction
    annual_yield = rng.uniform(0.01, 0.045, size=n)
    phase = rng.integers(0, 91, size=n)
    n_q = int((day_num[-1] - day_num[0]) // 91) + 2
    jitter = rng.integers(-5, 6, size=(n, n_q))
    lag = rng.integers(5, 31, size=(n, n_q))
    tod = _random_time_of_day_us(rng, n * n_q, 11.0, 23.0).reshape(n, n_q)
    target = day_num[0] + phase[:, None] + 91 * np.arange(n_q)[None, :] + jitter
    ex_idx = np.searchsorted(day_num, target, side="left")  # first trading day >= target
    ex_ok = ex_idx < len(day_num)
    ex_idx_c = np.minimum(ex_idx, len(day_num) - 1)
    ann_day = day_num[ex_idx_c] - lag
    ann_idx = np.searchsorted(day_num, ann_day, side="right") - 1
    listed_from = uni.listed_from[:, None]
    ok = (
        payer[:, None]
        & ex_ok
        & (ex_idx_c > uni.first_idx[:, None])  # a drop needs a previous listed close
        & (ex_idx_c <= uni.last_idx[:, None])
        & (ann_day >= listed_from)
    )
    inst, q = np.nonzero(ok)
    return _Dividends(
        inst=inst,
        ex_idx=ex_idx_c[inst, q],
        ann_idx=ann_idx[inst, q],
        ann_us=ann_day[inst, q] * _US_PER_DAY + tod[inst, q],
        quarterly_yield=annual_yield[inst] / 4.0,
    )


class _Paths(NamedTuple):
    close: np.ndarray  # (T, n) as traded
    log_ret: np.ndarray  # (T, n) log total return
    idio_sigma: np.ndarray  # (T, n) conditional idiosyncratic vol incl. regime
    shock: np.ndarray  # (T, n) idiosyncratic shocks z
    cum_split: np.ndarray  # (T, n) product of split ratios with ex-date <= day
    value: np.ndarray  # (T, n) value score v
    price0: np.ndarray  # (n,) close before the first day
    sigma_bar: np.ndarray  # (n,) long-run idiosyncratic vol
    dividend_amount: np.ndarray  # per scheduled dividend
    split_inst: list[int]
    split_ex_idx: list[int]
    split_ann_us: list[int]
    split_ratio: list[float]


def _simulate_paths(
    rng: np.random.Generator,
    cfg: SimulatorConfig,
    day_num: np.ndarray,
    uni: _Universe,
    divs: _Dividends,
) -> _Paths:
    n, n_days, k = cfg.n_instruments, len(day_num), cfg.n_sectors
    # instrument parameters
    beta = rng.uniform(0.6, 1.4, size=n)
    gamma = rng.uniform(0.5, 1.5, size=n)
    mu = rng.normal(0.00005, 0.0001, size=n)
    sigma_bar = cfg.idio_vol * np.exp(rng.normal(0.0, 0.3, size=n))
    price0 = np.exp(rng.normal(math.log(50.0), 0.7, size=n))
    value = rng.standard_normal(n)
    phi = 0.5 ** (1.0 / cfg.value_half_life_days)
    value_noise_scale = math.sqrt(1.0 - phi * phi)

    # all per-day random numbers drawn up front, in a fixed order
    t_scale = math.sqrt((cfg.t_dof - 2.0) / cfg.t_dof)
    m = 1 + k + n  # stacked GARCH state: market, sectors, instruments
    shocks = rng.standard_t(cfg.t_dof, size=(n_days, m)) * t_scale
    value_shocks = rng.standard_normal((n_days, n))
    regime_u = rng.random(n_days)
    split_lags = rng.integers(5, 31, size=(n_days, n))
    split_tod = _random_time_of_day_us(rng, n_days * n, 12.0, 24.0).reshape(n_days, n)

    long_run = np.concatenate([[cfg.market_vol], np.full(k, cfg.sector_vol), sigma_bar])
    omega = long_run**2 * (1.0 - cfg.garch_alpha - cfg.garch_beta)
    h = long_run**2
    prev_eps2 = long_run**2
    mult_calm = np.ones(m)
    mult_stress = np.concatenate(
        [
            [cfg.stress_market_vol_mult],
            np.full(k, cfg.stress_sector_vol_mult),
            np.full(n, cfg.stress_idio_vol_mult),
        ]
    )

    close = np.empty((n_days, n))
    log_ret = np.empty((n_days, n))
    idio_sigma = np.empty((n_days, n))
    cum_split_path = np.empty((n_days, n))
    value_path = np.empty((n_days, n))
    past_idio = np.zeros((_REVERSAL_WINDOW, n))  # ring buffer of e_{t-1..t-5}
    past_sum = np.zeros(n)
    prev_close = price0.copy()
    cum_split = np.ones(n)
    stressed = False

    # dividend bookkeeping: amounts fixed at announcement
    div_amount = np.zeros(len(divs.inst))
    div_by_ex: dict[int, list[int]] = {}
    div_by_ann: dict[int, list[int]] = {}
    for j in range(len(divs.inst)):
        div_by_ex.setdefault(int(divs.ex_idx[j]), []).append(j)
        if divs.ann_idx[j] < 0:
            div_amount[j] = round(float(divs.quarterly_yield[j] * price0[divs.inst[j]]), 2)
        else:
            div_by_ann.setdefault(int(divs.ann_idx[j]), []).append(j)
    div_ex_by_inst: dict[int, np.ndarray] = {}
    for i in np.unique(divs.inst):
        sel = np.flatnonzero(divs.inst == i)
        div_ex_by_inst[int(i)] = sel

    split_trigger = price0 * cfg.split_trigger_multiple
    pending_split_ex = np.full(n, -1, dtype=np.int64)
    pending_split_ratio = np.ones(n)
    split_by_ex: dict[int, list[int]] = {}
    split_inst: list[int] = []
    split_ex_idx: list[int] = []
    split_ann_us: list[int] = []
    split_ratio: list[float] = []
    first_listed = uni.first_idx
    last_listed = uni.last_idx

    for t in range(n_days):
        # regime switch, then volatility update (GARCH on yesterday's shock)
        if stressed:
            stressed = regime_u[t] >= cfg.p_stressed_to_calm
        else:
            stressed = regime_u[t] < cfg.p_calm_to_stressed
        h = omega + cfg.garch_alpha * prev_eps2 + cfg.garch_beta * h
        sd = np.sqrt(h)
        eps = sd * shocks[t]
        prev_eps2 = eps * eps
        scaled = eps * (mult_stress if stressed else mult_calm)
        drift = cfg.market_drift_stressed if stressed else cfg.market_drift_calm

        mkt = drift + scaled[0]
        sec = scaled[1 : 1 + k]
        alpha = -cfg.reversal_strength * past_sum + cfg.value_strength * sigma_bar * value
        idio = alpha + scaled[1 + k :]
        x = mu + beta * mkt + gamma * sec[uni.sector_idx] + idio

        slot = t % _REVERSAL_WINDOW
        past_sum += idio - past_idio[slot]
        past_idio[slot] = idio

        pre = prev_close * np.exp(x)
        today = pre
        for j in div_by_ex.get(t, ()):
            i = divs.inst[j]
            # a price cannot fall below zero on a dividend; only bites after a >50% crash
            today[i] = max(today[i] - div_amount[j], 0.5 * today[i])
        for s in split_by_ex.get(t, ()):
            i = split_inst[s]
            today[i] = today[i] / split_ratio[s]
            cum_split[i] *= split_ratio[s]
            split_trigger[i] = split_trigger[i] / split_ratio[s]
            pending_split_ex[i] = -1
            pending_split_ratio[i] = 1.0

        close[t] = today
        log_ret[t] = x
        idio_sigma[t] = sd[1 + k :] * (mult_stress[1 + k :] if stressed else 1.0)
        cum_split_path[t] = cum_split
        value_path[t] = value

        # dividends announced today: yield on today's close, per post-split share if a
        # pending split goes ex first
        for j in div_by_ann.get(t, ()):
            i = divs.inst[j]
            per_share = divs.quarterly_yield[j] * today[i]
            if pending_split_ex[i] >= 0 and pending_split_ex[i] <= divs.ex_idx[j]:
                per_share /= pending_split_ratio[i]
            div_amount[j] = round(float(per_share), 2)

        # splits triggered by today's close
        listed = (first_listed <= t) & (t <= last_listed)
        want_up = today > split_trigger
        want_rev = today < cfg.reverse_split_below
        cand = np.flatnonzero(listed & (pending_split_ex < 0) & (want_up | want_rev))
        for i in cand:
            i = int(i)
            ex_day = day_num[t] + split_lags[t, i]
            e = int(np.searchsorted(day_num, ex_day, side="left"))
            if i in div_ex_by_inst:
                sel = div_ex_by_inst[i]
                announced = divs.ex_idx[sel][(divs.ann_idx[sel] <= t) & (divs.ex_idx[sel] > t)]
                if announced.size:
                    e = max(e, int(announced.max()) + 1)
                taken = set(divs.ex_idx[sel].tolist())
                while e in taken:
                    e += 1
            if e >= n_days or e > last_listed[i] or day_num[e] - day_num[t] > 30:
                continue  # no room for the ex-date now; the trigger is tested again tomorrow
            if want_rev[i]:
                ratio = 0.2
            else:
                ratio = 3.0 if today[i] > 1.5 * split_trigger[i] else 2.0
            s = len(split_inst)
            split_inst.append(i)
            split_ex_idx.append(e)
            split_ann_us.append(int(day_num[t] * _US_PER_DAY + split_tod[t, i]))
            split_ratio.append(ratio)
            split_by_ex.setdefault(e, []).append(s)
            pending_split_ex[i] = e
            pending_split_ratio[i] = ratio
            # next trigger relative to the post-split level: about 2x again
            if not want_rev[i]:
                split_trigger[i] = cfg.split_trigger_multiple * today[i]

        value = phi * value + value_noise_scale * value_shocks[t]
        prev_close = today

    return _Paths(
        close=close,
        log_ret=log_ret,
        idio_sigma=idio_sigma,
        shock=shocks[:, 1 + k :],
        cum_split=cum_split_path,
        value=value_path,
        price0=price0,
        sigma_bar=sigma_bar,
        dividend_amount=div_amount,
        split_inst=split_inst,
        split_ex_idx=split_ex_idx,
        split_ann_us=split_ann_us,
        split_ratio=split_ratio,
    )


def _bars_frame(
    rng: np.random.Generator,
    cfg: SimulatorConfig,
    day_num: np.ndarray,
    ids: list[str],
    uni: _Universe,
    paths: _Paths,
) -> pl.DataFrame:
    n_days, n = paths.close.shape
    # per-bar draws (full panel, fixed order) then masked to listed days
    overnight_share = rng.uniform(0.2, 0.6, size=(n_days, n))
    open_noise = rng.standard_normal((n_days, n))
    up_excursion = np.abs(rng.standard_normal((n_days, n)))
    down_excursion = np.abs(rng.standard_normal((n_days, n)))
    volume_noise = rng.standard_normal((n_days, n))
    shares0 = np.exp(rng.normal(math.log(2e8), 0.8, size=n))
    turnover = np.exp(rng.normal(math.log(0.006), 0.4, size=n))

    close = paths.close
    day_sigma = 1.3 * paths.idio_sigma
    intraday = (1.0 - overnight_share) * paths.log_ret + 0.2 * day_sigma * open_noise
    open_ = close * np.exp(-intraday)
    high = np.maximum(open_, close) * np.exp(0.5 * day_sigma * up_excursion)
    low = np.minimum(open_, close) * np.exp(-0.5 * day_sigma * down_excursion)
    activity = (paths.idio_sigma / paths.sigma_bar) * np.exp(
        0.3 * np.abs(paths.shock) + 0.25 * volume_noise
    )
    volume = np.round(shares0 * turnover * paths.cum_split * activity)

    t_idx = np.arange(n_days)[:, None]
    listed = (t_idx >= uni.first_idx[None, :]) & (t_idx <= uni.last_idx[None, :])
    rows_t, rows_i = np.nonzero(listed)  # row-major: sorted by date, then instrument
    bar_day = day_num[rows_t]
    close_us = np.array(
        [int(session_close(_EPOCH + dt.timedelta(days=int(d))).timestamp()) * 1_000_000 for d in day_num],
        dtype=np.int64,
    )
    know = close_us[rows_t]
    id_series = pl.Series("instrument_id", ids, dtype=pl.String)
    return pl.DataFrame(
        [
            _date_series("date", bar_day),
            id_series.gather(rows_i),
            pl.Series("open", open_[rows_t, rows_i]),
            pl.Series("high", high[rows_t, rows_i]),
            pl.Series("low", low[rows_t, rows_i]),
            pl.Series("close", close[rows_t, rows_i]),
            pl.Series("volume", volume[rows_t, rows_i]),
            _utc_series("knowledge_time", know),
        ]
    ), shares0


def _corporate_actions_frame(
    ids: list[str], day_num: np.ndarray, divs: _Dividends, paths: _Paths
) -> pl.DataFrame:
    n_div, n_split = len(divs.inst), len(paths.split_inst)
    inst = np.concatenate([divs.inst, np.asarray(paths.split_inst, dtype=np.int64)])
    ex = np.concatenate(
        [day_num[divs.ex_idx], day_num[np.asarray(paths.split_ex_idx, dtype=np.int64)]]
    )
    ratio = np.concatenate([np.ones(n_div), np.asarray(paths.split_ratio, dtype=np.float64)])
    cash = np.concatenate([paths.dividend_amount, np.zeros(n_split)])
    know = np.concatenate([divs.ann_us, np.asarray(paths.split_ann_us, dtype=np.int64)])
    frame = pl.DataFrame(
        [
            pl.Series("instrument_id", ids, dtype=pl.String).gather(inst),
            _date_series("ex_date", ex),
            pl.Series("split_ratio", ratio, dtype=pl.Float64),
            pl.Series("cash_dividend", cash, dtype=pl.Float64),
            _utc_series("knowledge_time", know),
        ]
    )
    return frame.sort(["instrument_id", "ex_date", "knowledge_time"], maintain_order=True)


def _quarter_ends(first: dt.date, last: dt.date) -> list[dt.date]:
    """Calendar quarter ends from the second quarter end before `first` up to `last`."""
    out: list[dt.date] = []
    year, q = first.year, (first.month - 1) // 3  # q: index of the current quarter
    # step back two quarters
    idx = year * 4 + q - 2
    while True:
        y, qq = divmod(idx, 4)
        month = 3 * (qq + 1)
        pe = dt.date(y, month, 31 if month in (3, 12) else 30)
        if pe > last:
            return out
        out.append(pe)
        idx += 1


def _fundamentals_frame(
    rng: np.random.Generator,
    cfg: SimulatorConfig,
    day_num: np.ndarray,
    ids: list[str],
    uni: _Universe,
    paths: _Paths,
    shares0: np.ndarray,
) -> pl.DataFrame:
    n = cfg.n_instruments
    period_ends = _quarter_ends(cfg.start, cfg.end)
    pe_num = _days_since_epoch(period_ends)
    n_q = len(pe_num)
    # state at each period end: last trading day <= period end, the start state before the range
    pe_idx = np.searchsorted(day_num, pe_num, side="right") - 1
    before = pe_idx < 0
    safe = np.maximum(pe_idx, 0)
    close_pe = np.where(before[:, None], paths.price0[None, :], paths.close[safe])
    split_pe = np.where(before[:, None], 1.0, paths.cum_split[safe])
    value_pe = paths.value[safe]

    roe = rng.normal(0.025, 0.012, size=n)
    leverage = rng.uniform(1.5, 4.0, size=n)
    asset_turnover = rng.uniform(0.08, 0.4, size=n)
    share_drift = np.exp(np.cumsum(rng.normal(0.0, 0.01, size=(n_q, n)), axis=0))
    bp_noise = rng.normal(0.0, 0.1, size=(n_q, n))
    roe_noise = rng.normal(0.0, 0.01, size=(n_q, n))
    lev_noise = rng.normal(0.0, 0.03, size=(n_q, n))
    rev_noise = rng.normal(0.0, 0.05, size=(n_q, n))
    ocf_margin = rng.normal(0.03, 0.02, size=(n_q, n))
    pub_lag = rng.integers(25, 61, size=(n_q, n))
    pub_tod = _random_time_of_day_us(rng, n_q * n, 11.0, 23.0).reshape(n_q, n)

    shares = shares0[None, :] * split_pe * share_drift
    market_cap = close_pe * shares
    book = market_cap * np.exp(
        math.log(cfg.mean_book_to_price) + cfg.book_to_price_dispersion * value_pe + bp_noise
    )
    net_income = book * (roe[None, :] + roe_noise)
    total_assets = book * leverage[None, :] * np.exp(lev_noise)
    revenue = total_assets * asset_turnover[None, :] * np.exp(rev_noise)
    ocf = net_income + revenue * ocf_margin
    values = {
        "book_equity": book,
        "net_income": net_income,
        "operating_cash_flow": ocf,
        "revenue": revenue,
        "shares_outstanding": np.round(shares),
        "total_assets": total_assets,
    }

    pub_day = _roll_to_weekday(pe_num[:, None] + pub_lag)
    pub_us = pub_day * _US_PER_DAY + pub_tod
    until = np.where(uni.listed_until < 0, day_num[-1], uni.listed_until)
    last_day = np.minimum(until, day_num[-1])
    keep = (pub_day >= uni.listed_from[None, :]) & (pub_day <= last_day[None, :])
    q_idx, i_idx = np.nonzero(keep)
    n_keep = len(q_idx)

    inst_parts, field_parts, pe_parts, value_parts, know_parts = [], [], [], [], []
    for name in FUNDAMENTAL_FIELDS:
        inst_parts.append(i_idx)
        field_parts.append(np.full(n_keep, FUNDAMENTAL_FIELDS.index(name)))
        pe_parts.append(pe_num[q_idx])
        value_parts.append(values[name][q_idx, i_idx])
        know_parts.append(pub_us[q_idx, i_idx])
    inst = np.concatenate(inst_parts)
    field = np.concatenate(field_parts)
    pe = np.concatenate(pe_parts)
    value = np.concatenate(value_parts)
    know = np.concatenate(know_parts)

    # restatements: a later row with a changed value; shares_outstanding stays split-exact
    restate_u = rng.random(len(inst))
    restate_lag = rng.integers(20, 151, size=len(inst))
    restate_tod = _random_time_of_day_us(rng, len(inst), 11.0, 23.0)
    restate_change = rng.uniform(0.02, 0.15, size=len(inst)) * rng.choice(
        [-1.0, 1.0], size=len(inst)
    )
    know_day = know // _US_PER_DAY
    new_day = _roll_to_weekday(know_day + restate_lag)
    restated = (
        (restate_u < cfg.restatement_rate)
        & (field != FUNDAMENTAL_FIELDS.index("shares_outstanding"))
        & (new_day <= last_day[inst])
    )
    r = np.flatnonzero(restated)
    inst = np.concatenate([inst, inst[r]])
    field = np.concatenate([field, field[r]])
    pe = np.concatenate([pe, pe[r]])
    value = np.concatenate([value, value[r] * (1.0 + restate_change[r])])
    know = np.concatenate([know, new_day[r] * _US_PER_DAY + restate_tod[r]])

    order = np.lexsort((know, field, pe, inst))  # by instrument, period, field, knowledge
    return pl.DataFrame(
        [
            pl.Series("instrument_id", ids, dtype=pl.String).gather(inst[order]),
            pl.Series("field", list(FUNDAMENTAL_FIELDS), dtype=pl.String).gather(field[order]),
            _date_series("period_end", pe[order]),
            pl.Series("value", value[order], dtype=pl.Float64),
            _utc_series("knowledge_time", know[order]),
        ]
    )


def _universe_frame(cfg: SimulatorConfig, ids: list[str], uni: _Universe) -> pl.DataFrame:
    width = max(2, len(str(cfg.n_sectors)))
    sector_names = [f"S{k + 1:0{width}d}" for k in range(cfg.n_sectors)]
    until = pl.Series("listed_until", uni.listed_until.astype(np.int32)).cast(pl.Date)
    until = pl.select(pl.when(until.to_physical() < 0).then(None).otherwise(until)).to_series()
    listings = pl.DataFrame(
        [
            pl.Series("instrument_id", ids, dtype=pl.String),
            pl.Series("sector", sector_names, dtype=pl.String).gather(uni.sector_idx),
            _date_series("listed_from", uni.listed_from),
            until.alias("listed_until"),
        ]
    )
    return universe_versions(listings)


def simulate_market(config: SimulatorConfig | None = None) -> MarketData:
    """Simulate the four raw tables for `config` (see the module docstring)."""
    cfg = config if config is not None else SimulatorConfig()
    days = trading_days(cfg.start, cfg.end)
    if len(days) < 2:
        raise ValueError(f"[{cfg.start}, {cfg.end}] holds fewer than 2 trading days")
    day_num = _days_since_epoch(days)
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    ids = instrument_ids(cfg.n_instruments)

    uni = _draw_universe(rng, cfg, day_num)
    divs = _schedule_dividends(rng, cfg, day_num, uni)
    paths = _simulate_paths(rng, cfg, day_num, uni, divs)
    bars, shares0 = _bars_frame(rng, cfg, day_num, ids, uni, paths)
    actions = _corporate_actions_frame(ids, day_num, divs, paths)
    fundamentals = _fundamentals_frame(rng, cfg, day_num, ids, uni, paths, shares0)
    return MarketData(
        universe=_universe_frame(cfg, ids, uni),
        market_bars=bars,
        corporate_actions=actions,
        fundamentals=fundamentals,
    )


def planted_signal(config: SimulatorConfig | None = None, horizon: int = 5) -> pl.DataFrame:
    """The edge the simulator plants, as a score: (date, instrument_id, expected_idio_return),
    the expected idiosyncratic log return over the next ``horizon`` trading days given
    everything up to the day's close (the reversal of the last five idiosyncratic returns and
    the value tilt, rolled forward with zero shocks). Its rank IC against the labels is the
    best a model of the features can hope for (the "known IC" a trained model is measured
    against); instrument drifts ``mu`` are not included (a few basis points a week). Replays
    ``simulate_market``'s draws, so it matches that market exactly."""
    cfg = config if config is not None else SimulatorConfig()
    days = trading_days(cfg.start, cfg.end)
    day_num = _days_since_epoch(days)
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    uni = _draw_universe(rng, cfg, day_num)
    divs = _schedule_dividends(rng, cfg, day_num, uni)
    paths = _simulate_paths(rng, cfg, day_num, uni, divs)
    n_days, n = paths.value.shape
    tilt = cfg.value_strength * paths.sigma_bar * paths.value  # (T, n), the value part of a_t
    idio = np.empty((n_days, n))
    window = np.zeros((_REVERSAL_WINDOW, n))  # e_{t-1..t-5}
    for t in range(n_days):  # e_t = a_t + sigma_t z_t, a_t from the five e before it
        idio[t] = -cfg.reversal_strength * window.sum(axis=0) + tilt[t] + paths.idio_sigma[t] * paths.shock[t]
        window = np.roll(window, 1, axis=0)
        window[0] = idio[t]
    lags = [np.vstack([np.zeros((j, n)), idio[: n_days - j]]) for j in range(_REVERSAL_WINDOW)]
    phi = 0.5 ** (1.0 / cfg.value_half_life_days)
    expected = np.zeros((n_days, n))
    for k in range(1, horizon + 1):
        step = -cfg.reversal_strength * sum(lags) + tilt * phi**k
        expected += step
        lags = [step, *lags[:-1]]
    ids = instrument_ids(n)
    return pl.DataFrame({
        "date": _date_series("date", np.repeat(day_num, n)),
        "instrument_id": np.tile(np.array(ids, dtype=object), n_days).tolist(),
        "expected_idio_return": expected.ravel(),
    })
