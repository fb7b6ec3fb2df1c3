"""The feature library: polars expressions in the families of Qlib's Alpha158, plus PIT
fundamentals and sector-relative scores. Evaluation rules are in `definition.py`.

Series builders read one instrument's PIT-adjusted context as of D (date, open, high, low,
close, volume, traded_close, traded_volume, ret, market_ret; the value at D's row is the
feature, so every builder is causal: rolling windows and positive shifts only). Every rolling statistic uses
min_samples = window: a missing bar in the window gives null, never a shorter-window value.
Snapshot builders read the cross-section of D (as-traded close, PIT fundamentals, earlier
features). Market cap = as-traded close of D * shares_outstanding restated to D's share
basis, so a split moves neither.
"""

from __future__ import annotations

import polars as pl

from quant_assets.features.definition import Feature

# --------------------------------------------------------------------------- series builders


def period_return(days: int) -> pl.Expr:
    """Return of the adjusted close over the last `days` market days."""
    return pl.col("close") / pl.col("close").shift(days) - 1.0


def skip_momentum(days: int, skip: int) -> pl.Expr:
    """Return from `days` ago to `skip` days ago (momentum without the reversal month)."""
    return pl.col("close").shift(skip) / pl.col("close").shift(days) - 1.0


def excess_return(days: int) -> pl.Expr:
    """Sum of daily returns in excess of the equal-weighted market."""
    return (pl.col("ret") - pl.col("market_ret")).rolling_sum(days, min_samples=days)


def ma_ratio(days: int) -> pl.Expr:
    return pl.col("close").rolling_mean(days, min_samples=days) / pl.col("close")


def ma_cross(fast: int, slow: int) -> pl.Expr:
    fast_ma = pl.col("close").rolling_mean(fast, min_samples=fast)
    return fast_ma / pl.col("close").rolling_mean(slow, min_samples=slow) - 1.0


def vwap_ratio(days: int) -> pl.Expr:
    """Volume-weighted average close over the window, relative to today's close."""
    traded = (pl.col("close") * pl.col("volume")).rolling_sum(days, min_samples=days)
    return traded / pl.col("volume").rolling_sum(days, min_samples=days) / pl.col("close")


def volatility(days: int) -> pl.Expr:
    return pl.col("ret").rolling_std(days, min_samples=days)


def downside_volatility(days: int) -> pl.Expr:
    """Root mean square of the negative daily returns (positive days count as zero)."""
    mean_square = pl.col("ret").clip(upper_bound=0.0).pow(2).rolling_mean(days, min_samples=days)
    # a sliding-window mean of zeros can come out a hair below zero
    return mean_square.clip(lower_bound=0.0).sqrt()


def return_skewness(days: int) -> pl.Expr:
    return pl.col("ret").rolling_skew(days, min_samples=days)


def max_daily_return(days: int) -> pl.Expr:
    """Largest daily return in the window (lottery-like names)."""
    return pl.col("ret").rolling_max(days, min_samples=days)


def high_low_range(days: int) -> pl.Expr:
    """Mean of (high - low) / close over the window."""
    return ((pl.col("high") - pl.col("low")) / pl.col("close")).rolling_mean(days, min_samples=days)


def close_location(days: int) -> pl.Expr:
    """Mean position of the close within the day's range: 0 at the low, 1 at the high."""
    spread = pl.col("high") - pl.col("low")
    location = pl.when(spread > 0.0).then((pl.col("close") - pl.col("low")) / spread)
    return location.rolling_mean(days, min_samples=days)


def candle_body() -> pl.Expr:
    return (pl.col("close") - pl.col("open")) / pl.col("open")


def upper_shadow() -> pl.Expr:
    return (pl.col("high") - pl.max_horizontal("open", "close")) / pl.col("open")


def lower_shadow() -> pl.Expr:
    return (pl.min_horizontal("open", "close") - pl.col("low")) / pl.col("open")


def overnight_return() -> pl.Expr:
    return pl.col("open") / pl.col("close").shift(1) - 1.0


def intraday_return(days: int) -> pl.Expr:
    """Mean open-to-close return over the window."""
    return (pl.col("close") / pl.col("open") - 1.0).rolling_mean(days, min_samples=days)


def volume_ratio(days: int) -> pl.Expr:
    """Today's volume relative to its average over the window."""
    return pl.col("volume") / pl.col("volume").rolling_mean(days, min_samples=days)


def volume_trend(fast: int, slow: int) -> pl.Expr:
    fast_mean = pl.col("volume").rolling_mean(fast, min_samples=fast)
    return fast_mean / pl.col("volume").rolling_mean(slow, min_samples=slow)


def volume_variability(days: int) -> pl.Expr:
    """Coefficient of variation of volume."""
    volume = pl.col("volume")
    return volume.rolling_std(days, min_samples=days) / volume.rolling_mean(days, min_samples=days)


def traded_value() -> pl.Expr:
    """Dollars traded on the day: as-traded close * as-traded volume (no adjustment)."""
    return pl.col("traded_close") * pl.col("traded_volume")


def log_dollar_volume(days: int) -> pl.Expr:
    return traded_value().rolling_mean(days, min_samples=days).log()


def amihud_illiquidity(days: int) -> pl.Expr:
    """Mean absolute return per million of dollar volume (Amihud 2002)."""
    dollar_volume_mm = traded_value() / 1e6
    return (pl.col("ret").abs() / dollar_volume_mm).rolling_mean(days, min_samples=days)


def price_volume_correlation(days: int) -> pl.Expr:
    return pl.rolling_corr(pl.col("close"), pl.col("volume").log1p(), window_size=days, min_samples=days)


def return_volume_change_correlation(days: int) -> pl.Expr:
    volume_change = (pl.col("volume") / pl.col("volume").shift(1)).log()
    return pl.rolling_corr(pl.col("ret"), volume_change, window_size=days, min_samples=days)


def _paired(days: int) -> tuple[pl.Expr, pl.Expr]:
    # instrument and market returns on the days where both exist
    both = pl.col("ret").is_not_null() & pl.col("market_ret").is_not_null()
    return pl.when(both).then(pl.col("ret")), pl.when(both).then(pl.col("market_ret"))


def market_beta(days: int) -> pl.Expr:
    """OLS slope of daily returns on the equal-weighted market return."""
    stock, market = _paired(days)
    covariance = pl.rolling_cov(stock, market, window_size=days, min_samples=days)
    return covariance / market.rolling_var(days, min_samples=days)


def residual_volatility(days: int) -> pl.Expr:
    """Standard deviation of the residuals of the market-beta regression (n - 2 dof)."""
    stock, market = _paired(days)
    covariance = pl.rolling_cov(stock, market, window_size=days, min_samples=days)
    market_var = market.rolling_var(days, min_samples=days)
    residual_var = stock.rolling_var(days, min_samples=days) - covariance.pow(2) / market_var
    return (residual_var.clip(lower_bound=0.0) * (days - 1) / (days - 2)).sqrt()


def market_correlation(days: int) -> pl.Expr:
    stock, market = _paired(days)
    return pl.rolling_corr(stock, market, window_size=days, min_samples=days)


def high_ratio(days: int) -> pl.Expr:
    """Highest high of the window relative to today's close."""
    return pl.col("high").rolling_max(days, min_samples=days) / pl.col("close")


def low_ratio(days: int) -> pl.Expr:
    return pl.col("low").rolling_min(days, min_samples=days) / pl.col("close")


def _days_since(column: str, days: int, *, lowest: bool) -> pl.Expr:
    """Market days since the window's extreme (0 = today; a tie counts its most recent day);
    null when a bar of the window is missing.

    One integer rolling max instead of `days` shifted comparisons: key = rank of the value
    in the context (so the extreme has the largest rank) * 2^20 + row position, exact in
    Int64, so the window's largest key is the most recent extreme. The ranks see the whole
    context, but only their order within the window matters, so a day's value depends on
    its window alone.
    """
    rank = pl.col(column).rank("dense", descending=lowest).cast(pl.Int64)
    position = pl.int_range(pl.len(), dtype=pl.Int64)
    latest = (rank * _POSITIONS + position).rolling_max(days, min_samples=days)
    return (position - latest % _POSITIONS).cast(pl.Float64)


# Row positions a context may have (2^20), for `_days_since`'s keys.
_POSITIONS = 1 << 20


def days_since_high(days: int) -> pl.Expr:
    """Market days since the highest high of the window (0 = today)."""
    return _days_since("high", days, lowest=False)


def days_since_low(days: int) -> pl.Expr:
    return _days_since("low", days, lowest=True)


def price_position(days: int) -> pl.Expr:
    """Where the close sits between the window's lowest low (0) and highest high (1)."""
    lowest = pl.col("low").rolling_min(days, min_samples=days)
    highest = pl.col("high").rolling_max(days, min_samples=days)
    return (pl.col("close") - lowest) / (highest - lowest)


def up_day_fraction(days: int) -> pl.Expr:
    return (pl.col("ret") > 0.0).cast(pl.Float64).rolling_mean(days, min_samples=days)


def up_minus_down_days(days: int) -> pl.Expr:
    """(up days - down days) / days."""
    return pl.col("ret").sign().rolling_mean(days, min_samples=days)


def relative_strength(days: int) -> pl.Expr:
    """RSI in [0, 1]: gains over the sum of absolute close-to-close moves."""
    move = pl.col("close") - pl.col("close").shift(1)
    gains = move.clip(lower_bound=0.0).rolling_sum(days, min_samples=days)
    return gains / move.abs().rolling_sum(days, min_samples=days)


# --------------------------------------------------------------------------- snapshot builders


def market_cap() -> pl.Expr:
    return pl.col("close") * pl.col("shares_outstanding")


def log_market_cap() -> pl.Expr:
    return market_cap().log()


def to_market_cap(column: str) -> pl.Expr:
    """A fundamental over the market cap of D (earnings yield, book-to-price, ...)."""
    return pl.col(column) / market_cap()


def fundamental_ratio(numerator: str, denominator: str) -> pl.Expr:
    return pl.col(numerator) / pl.col(denominator)


def accruals() -> pl.Expr:
    """Trailing-4-quarter (net income - operating cash flow) / total assets."""
    return (pl.col("net_income_ttm") - pl.col("operating_cash_flow_ttm")) / pl.col("total_assets")


def growth_yoy(field: str) -> pl.Expr:
    """Latest quarter versus the same quarter a year earlier, over |year-ago value|."""
    year_ago = pl.col(f"{field}_year_ago")
    return (pl.col(field) - year_ago) / year_ago.abs()


def sector_rank(of: str) -> pl.Expr:
    """Percentile rank of a feature within the day's sector: (rank - 1) / (n - 1), 0.5 alone."""
    x = pl.col(of)
    n = x.count().over("date", "sector")
    rank = x.rank("average").over("date", "sector")
    return pl.when(x.is_null()).then(None).when(n == 1).then(0.5).otherwise((rank - 1.0) / (n - 1.0))


def sector_zscore(of: str) -> pl.Expr:
    """(x - sector mean) / sector standard deviation on the day; null with < 2 names."""
    x = pl.col(of)
    count = x.count().over("date", "sector")
    # sums left to right in row order (pit.py: polars' mean/std may pair terms by layout)
    mean = x.fill_null(0.0).cum_sum().last().over("date", "sector") / count
    squares = (x - mean).pow(2).fill_null(0.0).cum_sum().last().over("date", "sector")
    return (x - mean) / (squares / (count - 1)).sqrt()


# --------------------------------------------------------------------------- the catalogue


def _series(name: str, family: str, description: str, window: int, builder, **params) -> Feature:
    return Feature(name, family, description, window, builder, tuple(params.items()))


def _snapshot(name: str, family: str, description: str, builder, window: int = 1, depends_on=(), **params) -> Feature:
    return Feature(
        name, family, description, window, builder, tuple(params.items()), kind="snapshot", depends_on=tuple(depends_on)
    )


def _catalogue() -> list[Feature]:
    out: list[Feature] = []
    add = out.append
    for n in (1, 5, 10, 20, 60):
        add(_series(f"return_{n}d", "momentum", f"{n}-day return of the adjusted close", n + 1, period_return, days=n))
    add(_series("momentum_60d_skip_5d", "momentum", "return from 60 to 5 days ago", 61, skip_momentum, days=60, skip=5))
    add(_series("excess_return_20d", "momentum", "20-day sum of returns over the market", 21, excess_return, days=20))
    for n in (5, 10, 20, 60):
        add(_series(f"ma_ratio_{n}d", "trend", f"{n}-day moving average / close", n, ma_ratio, days=n))
    add(_series("ma_cross_5d_20d", "trend", "5-day over 20-day moving average - 1", 20, ma_cross, fast=5, slow=20))
    for n in (5, 20):
        add(_series(f"vwap_ratio_{n}d", "trend", f"{n}-day volume-weighted close / close", n, vwap_ratio, days=n))
    for n in (5, 20, 60):
        add(_series(f"volatility_{n}d", "volatility", f"{n}-day std of daily returns", n + 1, volatility, days=n))
    for n in (5, 20, 60):
        add(
            _series(
                f"downside_volatility_{n}d", "volatility", f"{n}-day RMS of negative returns", n + 1, downside_volatility, days=n
            )
        )
    add(_series("skewness_20d", "volatility", "20-day skewness of daily returns", 21, return_skewness, days=20))
    add(_series("max_return_20d", "volatility", "largest daily return of 20 days", 21, max_daily_return, days=20))
    for n in (1, 5, 20):
        add(_series(f"high_low_range_{n}d", "range", f"{n}-day mean (high - low) / close", n, high_low_range, days=n))
    for n in (1, 5):
        add(_series(f"close_location_{n}d", "range", f"{n}-day mean close position in the day's range", n, close_location, days=n))
    add(_series("candle_body_1d", "range", "(close - open) / open", 1, candle_body))
    add(_series("upper_shadow_1d", "range", "(high - max(open, close)) / open", 1, upper_shadow))
    add(_series("lower_shadow_1d", "range", "(min(open, close) - low) / open", 1, lower_shadow))
    add(_series("overnight_return_1d", "range", "open / previous close - 1", 2, overnight_return))
    add(_series("intraday_return_20d", "range", "20-day mean open-to-close return", 20, intraday_return, days=20))
    for n in (5, 20, 60):
        add(_series(f"volume_ratio_{n}d", "volume", f"volume / its {n}-day mean", n, volume_ratio, days=n))
    add(_series("volume_trend_5d_20d", "volume", "5-day over 20-day mean volume", 20, volume_trend, fast=5, slow=20))
    add(_series("volume_variability_20d", "volume", "20-day coefficient of variation of volume", 20, volume_variability, days=20))
    add(_series("log_dollar_volume_20d", "volume", "log of 20-day mean close * volume", 20, log_dollar_volume, days=20))
    add(_series("amihud_illiquidity_20d", "volume", "20-day mean |return| per $1m traded", 21, amihud_illiquidity, days=20))
    for n in (10, 20, 60):
        add(
            _series(
                f"price_volume_corr_{n}d", "volume", f"{n}-day corr(close, log volume)", n, price_volume_correlation, days=n
            )
        )
    add(
        _series(
            "return_volume_change_corr_20d",
            "volume",
            "20-day corr(return, log volume change)",
            21,
            return_volume_change_correlation,
            days=20,
        )
    )
    for n in (20, 60):
        add(_series(f"beta_{n}d", "market", f"{n}-day beta to the equal-weighted market", n + 1, market_beta, days=n))
    add(_series("residual_volatility_60d", "market", "60-day residual std after market beta", 61, residual_volatility, days=60))
    add(_series("market_correlation_60d", "market", "60-day corr with the market return", 61, market_correlation, days=60))
    for n in (20, 60):
        add(_series(f"high_ratio_{n}d", "extremes", f"{n}-day highest high / close", n, high_ratio, days=n))
        add(_series(f"low_ratio_{n}d", "extremes", f"{n}-day lowest low / close", n, low_ratio, days=n))
        add(_series(f"days_since_high_{n}d", "extremes", f"market days since the {n}-day high", n, days_since_high, days=n))
        add(_series(f"days_since_low_{n}d", "extremes", f"market days since the {n}-day low", n, days_since_low, days=n))
    add(_series("price_position_20d", "extremes", "close within the 20-day low-high range", 20, price_position, days=20))
    for n in (10, 20):
        add(_series(f"up_day_fraction_{n}d", "up_down", f"share of up days in {n} days", n + 1, up_day_fraction, days=n))
    add(_series("up_minus_down_days_20d", "up_down", "(up - down days) / 20", 21, up_minus_down_days, days=20))
    add(_series("rsi_14d", "up_down", "14-day RSI in [0, 1]", 15, relative_strength, days=14))
    # PIT fundamentals (snapshot of D)
    add(_snapshot("log_market_cap", "size", "log(as-traded close * shares outstanding)", log_market_cap))
    add(_snapshot("earnings_yield", "value", "trailing-4q net income / market cap", to_market_cap, column="net_income_ttm"))
    add(_snapshot("book_to_price", "value", "book equity / market cap", to_market_cap, column="book_equity"))
    add(_snapshot("sales_yield", "value", "trailing-4q revenue / market cap", to_market_cap, column="revenue_ttm"))
    add(
        _snapshot(
            "cash_flow_yield", "value", "trailing-4q operating cash flow / market cap", to_market_cap, column="operating_cash_flow_ttm"
        )
    )
    add(
        _snapshot(
            "return_on_equity", "quality", "trailing-4q net income / book equity", fundamental_ratio,
            numerator="net_income_ttm", denominator="book_equity",
        )
    )
    add(
        _snapshot(
            "return_on_assets", "quality", "trailing-4q net income / total assets", fundamental_ratio,
            numerator="net_income_ttm", denominator="total_assets",
        )
    )
    add(_snapshot("accruals", "quality", "trailing-4q (net income - operating cash flow) / total assets", accruals))
    add(_snapshot("net_income_growth_yoy", "growth", "quarterly net income vs a year earlier", growth_yoy, field="net_income"))
    add(_snapshot("revenue_growth_yoy", "growth", "quarterly revenue vs a year earlier", growth_yoy, field="revenue"))
    add(_snapshot("asset_growth_yoy", "growth", "total assets vs a year earlier", growth_yoy, field="total_assets"))
    add(
        _snapshot(
            "share_issuance_yoy", "growth", "split-adjusted shares outstanding vs a year earlier", growth_yoy,
            field="shares_outstanding",
        )
    )
    # sector-relative versions of a few key features
    windows = {f.name: f.window for f in out}
    for base in ("return_5d", "return_60d", "volatility_20d", "book_to_price", "earnings_yield"):
        add(
            _snapshot(
                f"{base}_sector_rank", "sector_relative", f"percentile rank of {base} within the sector",
                sector_rank, window=windows[base], depends_on=(base,), of=base,
            )
        )
        add(
            _snapshot(
                f"{base}_sector_zscore", "sector_relative", f"z-score of {base} within the sector",
                sector_zscore, window=windows[base], depends_on=(base,), of=base,
            )
        )
    return out


LIBRARY: tuple[Feature, ...] = tuple(_catalogue())
