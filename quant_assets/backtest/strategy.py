"""Long-short quantile strategy on model scores, month-restartable.

Conventions
-----------
- Scores of day t (features as of t's cutoff, after the close) decide target weights at
  close t: long the top ``quantile`` of the day's tradable names, short the bottom,
  dollar-neutral by default (``weights.long_short_quantile``).
- ``execution_lag`` (default 1): weights decided at close t are traded at close t+lag.
  Trading on the same close that fed the signal would be look-ahead (an order at the
  close must be placed before it), so the default is one day.
- P&L uses total-return closes (split- and dividend-adjusted) through the numba kernel
  of ``portfolio.run_backtest``; costs = commission + half spread on turnover, plus the
  optional square-root impact term and borrow on shorts.
- ``StrategyState`` (instrument-keyed: weights, equity, last prices and the decided but
  not yet traded targets) carries the book from one month to the next; running month by
  month from each month's end state is bit-identical to one run over the whole range
  (with ``beta_neutral``, when each month gets the prices before it as ``history``).

Portfolio construction (``StrategySpec``; every default reproduces the plain book above)
---------------------------------------------------------------------------------------
- ``net_exposure``: the book's net (sum of weights) as a fraction of equity; the long side
  has gross ``(gross + net) / 2``, the short side ``(gross - net) / 2``.
- ``sector_neutral``: the quantile rule within each sector, every sector net zero each day
  (``weights.sector_neutral_quantile``); sectors with fewer than ``sector_min_names``
  eligible names that day hold nothing; names without a sector are never held.
- ``beta_neutral``: betas are trailing OLS slopes of daily returns on the market's over the
  ``beta_window`` trading days strictly before the decision day (at least ``beta_min_obs``
  paired days, else the name is not eligible; ``weights.trailing_betas``); the book is
  then adjusted, on its own names, to zero beta while staying dollar- (or sector-) neutral
  (``weights.beta_neutral``).
- ``max_turnover``: the most one-way turnover a day trades; a larger rebalance moves every
  tradable name the same fraction of the way to its target (``portfolio`` module doc).
- ``impact_coef`` and ``capital``: the square-root impact term of ``portfolio.CostModel``,
  with equity 1.0 worth ``capital`` in the currency of ``dollar_volume``.
- ``borrow_bps`` / ``borrow_file``: annual borrow cost of shorts in basis points, charged
  per trading day (1/252) on the short notional, reported as ``borrow_cost``.

A sector-neutral (or beta-neutral) target is exactly neutral. The book held after the
trade equals it except where the trade could not follow: under ``max_turnover`` (part of
the way), and, with ``execution_lag=1``, on a day a name of the book loses its price (it is
closed, its sector's other names trade as decided the day before).
"""

from __future__ import annotations

import json
import numbers
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from quant_assets.backtest.portfolio import (
    BacktestResult,
    CostModel,
    PortfolioState,
    backtest_frame,
    run_backtest,
    to_matrix,
)
from quant_assets.backtest.weights import (
    beta_neutral,
    equal_weight_market,
    long_short_quantile,
    sector_neutral_quantile,
    trailing_betas,
)


def _number(owner: str, name: str, value: object, *, low: float, strict: bool) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    if not ok or (value <= low if strict else value < low):
        rule = ">" if strict else ">="
        raise ValueError(f"{owner}.{name}={value!r} must be a finite number {rule} {low}")


@dataclass(frozen=True)
class StrategySpec:
    """Construction and costs of the long-short strategy (module docstring).

    Units: ``gross``, ``net_exposure``, ``max_weight`` and ``max_turnover`` are fractions of
    equity (one-way turnover per day); ``commission_bps`` and ``half_spread_bps`` are basis
    points of traded value; ``borrow_bps`` annual basis points of the short notional;
    ``beta_window`` and ``beta_min_obs`` trading days; ``capital`` currency;
    ``impact_coef`` is dimensionless (portfolio.CostModel).
    """

    quantile: float = 0.2
    scheme: str = "equal"
    gross: float = 1.0
    max_weight: float | None = None
    commission_bps: float = 1.0
    half_spread_bps: float = 2.0
    execution_lag: int = 1
    net_exposure: float = 0.0
    sector_neutral: bool = False
    sector_min_names: int = 2
    beta_neutral: bool = False
    beta_window: int = 60
    beta_min_obs: int = 40
    max_turnover: float | None = None
    impact_coef: float = 0.0
    capital: float = 1e6
    borrow_bps: float = 0.0
    borrow_file: str | None = None

    def __post_init__(self) -> None:
        if self.execution_lag not in (0, 1):
            raise ValueError(f"execution_lag={self.execution_lag} must be 0 or 1")
        owner = "StrategySpec"
        _number(owner, "gross", self.gross, low=0.0, strict=True)
        net = self.net_exposure
        if not (isinstance(net, numbers.Real) and np.isfinite(net) and abs(net) <= self.gross):
            raise ValueError(
                f"{owner}.net_exposure={net!r} must be a finite number with |net| <= gross="
                f"{self.gross}"
            )
        for flag in ("sector_neutral", "beta_neutral"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{owner}.{flag}={getattr(self, flag)!r} must be true or false")
            if getattr(self, flag) and net != 0:
                raise ValueError(
                    f"{owner}.{flag} needs net_exposure=0 (a {flag.split('_')[0]}-neutral book "
                    f"is dollar-neutral), got {net!r}"
                )
        for name, low in (("sector_min_names", 2), ("beta_window", 2)):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Integral) and value >= low):
                raise ValueError(f"{owner}.{name}={value!r} must be an integer >= {low}")
        if not (isinstance(self.beta_min_obs, numbers.Integral)
                and 2 <= self.beta_min_obs <= self.beta_window):
            raise ValueError(
                f"{owner}.beta_min_obs={self.beta_min_obs!r} must be an integer in "
                f"[2, beta_window={self.beta_window}]"
            )
        if self.max_turnover is not None:
            _number(owner, "max_turnover", self.max_turnover, low=0.0, strict=True)
        _number(owner, "impact_coef", self.impact_coef, low=0.0, strict=False)
        _number(owner, "capital", self.capital, low=0.0, strict=True)
        _number(owner, "borrow_bps", self.borrow_bps, low=0.0, strict=False)
        if self.borrow_file is not None and not (
            isinstance(self.borrow_file, str) and self.borrow_file.strip()
        ):
            raise ValueError(f"{owner}.borrow_file={self.borrow_file!r} must be a path or None")

    def costs(self) -> CostModel:
        return CostModel(
            commission_bps=self.commission_bps,
            half_spread_bps=self.half_spread_bps,
            impact_coef=self.impact_coef,
        )


@dataclass(frozen=True)
class StrategyState:
    weights: dict[str, float] = field(default_factory=dict)
    equity: float = 1.0
    last_prices: dict[str, float] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        # json writes floats with repr, which round-trips exactly
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StrategyState:
        return cls(**json.loads(text))


@dataclass(frozen=True, eq=False)
class ScoreBacktest:
    """What ``backtest_scores`` returns.

    ``daily``: one row per day of ``prices``: date, gross_return, cost (commission, spread
    and impact), borrow_cost, net_return (= gross_return - cost - borrow_cost), turnover,
    gross_exposure, net_exposure, equity, n_long, n_short (all fractions of the previous
    close's equity; ``portfolio`` module doc). ``state``: the end state for the next run.
    Matrices are (days, instruments) over ``dates`` x ``instruments``: ``decided`` the
    weights decided at each close, ``targets`` those traded at it (``decided`` shifted by
    the execution lag), ``positions`` the book held after the trade, ``betas`` the betas
    used at each close (``beta_neutral`` only, else None).
    """

    daily: pl.DataFrame
    state: StrategyState
    dates: pl.Series
    instruments: tuple[str, ...]
    decided: np.ndarray
    targets: np.ndarray
    positions: np.ndarray
    betas: np.ndarray | None

    def positions_frame(self) -> pl.DataFrame:
        """(date, instrument_id, weight): the held book after each close, nonzero rows only."""
        rows, cols = np.nonzero(self.positions)
        return pl.DataFrame(
            {
                "date": self.dates.gather(rows),
                "instrument_id": pl.Series(np.array(self.instruments, dtype=object)[cols],
                                           dtype=pl.String),
                "weight": self.positions[rows, cols],
            }
        )


def _require(caller: str, name: str, frame: pl.DataFrame, cols: tuple[str, ...]) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"{caller}: {name} lacks columns {missing}")


def backtest_scores(
    scores: pl.DataFrame,
    prices: pl.DataFrame,
    spec: StrategySpec | None = None,
    state: StrategyState | None = None,
    *,
    sectors: pl.DataFrame | None = None,
    borrow: pl.DataFrame | None = None,
    market: pl.DataFrame | None = None,
    history: pl.DataFrame | None = None,
) -> ScoreBacktest:
    """Backtest a score frame with the platform's portfolio construction and costs.

    Inputs (polars frames; ``date`` columns of type Date, ``instrument_id`` strings):

    - ``scores``: (date, instrument_id, score). Higher is better; a score of day t (known
      after close t) decides the book traded at close t + ``spec.execution_lag``. Missing or
      non-finite scores make a name ineligible that day.
    - ``prices``: (date, instrument_id, tr_close[, dollar_volume]). The backtest runs over
      the distinct dates of this frame. ``tr_close``: total-return (split- and
      dividend-adjusted) closes; a name is tradable on a day when it has one.
      ``dollar_volume`` (traded value of the day, in the currency of ``spec.capital``) is
      needed only when ``spec.impact_coef > 0``.
    - ``spec``: ``StrategySpec`` (default: the plain dollar-neutral quintile book).
    - ``state``: the end state of the previous run, to continue from it (default: cash).
    - ``sectors``: (instrument_id, sector), e.g. the universe's; needed by
      ``spec.sector_neutral``. A name missing from it, or with a null sector, is never
      held by a sector-neutral book.
    - ``borrow``: (instrument_id, borrow_bps), annual borrow cost of shorting each name in
      basis points; names not in it pay ``spec.borrow_bps``. Default: the table in
      ``spec.borrow_file`` if set (``load_borrow_table``), else ``spec.borrow_bps`` for all.
    - ``market``: (date, market_return), the market's simple daily return, for the betas of
      ``spec.beta_neutral``. Default: the equal-weight mean return of every name in
      ``history`` and ``prices`` that day (the validation report's benchmark).
    - ``history``: (date, instrument_id, tr_close) before the first day of ``prices``, for
      the betas only (a month needs the ``beta_window`` + 1 trading days before it to get
      the same betas as a longer run; the backtest asset passes every earlier price).

    Returns a ``ScoreBacktest`` (daily frame, end state, decided/traded/held weights).
    """
    return _backtest(
        "backtest_scores", scores, prices, spec or StrategySpec(), state, sectors=sectors,
        borrow=borrow, market=market, history=history,
    )


def _backtest(caller, scores, prices, spec, state, *, sectors, borrow, market, history):
    if not isinstance(spec, StrategySpec):
        raise TypeError(f"{caller}: spec must be a StrategySpec, got {type(spec).__name__}")
    _require(caller, "predictions", scores, ("date", "instrument_id", "score"))
    _require(caller, "prices", prices, ("date", "instrument_id", "tr_close"))
    dates = prices.get_column("date").unique().sort()
    if dates.is_empty():
        raise ValueError(f"{caller}: no prices in the requested days")
    state = state or StrategyState()
    names = set(prices.get_column("instrument_id").unique().to_list())
    names |= set(state.weights) | set(state.pending)
    instruments = sorted(names)
    index = {name: i for i, name in enumerate(instruments)}

    price = to_matrix(prices, "tr_close", dates, instruments)
    tradable = np.isfinite(price)
    score = to_matrix(scores.filter(pl.col("date").is_in(dates.implode())), "score", dates, instruments)

    betas = None
    if spec.beta_neutral:
        betas = _betas(caller, prices, history, market, dates, instruments, spec)
        score = np.where(np.isfinite(betas), score, np.nan)  # no beta: not eligible
    codes = None
    if spec.sector_neutral:
        if sectors is None:
            raise ValueError(
                f"{caller}: sector_neutral needs sectors (instrument_id, sector), e.g. the "
                "universe's"
            )
        codes = _sector_codes(caller, sectors, instruments)
        decided = sector_neutral_quantile(
            score, tradable, codes, quantile=spec.quantile, scheme=spec.scheme,
            gross=spec.gross, max_weight=spec.max_weight, min_names=spec.sector_min_names,
        )
    else:
        decided = long_short_quantile(
            score, tradable, quantile=spec.quantile, scheme=spec.scheme,
            gross=spec.gross, max_weight=spec.max_weight, net=spec.net_exposure,
        )
    if spec.beta_neutral:
        decided = beta_neutral(decided, betas, codes)
    if spec.execution_lag == 0:
        targets = decided
    else:
        targets = np.empty_like(decided)
        targets[1:] = decided[:-1]
        targets[0] = _vector(state.pending, index, len(instruments), 0.0)

    if state.weights or state.pending or state.last_prices:
        initial = PortfolioState(
            weights=_vector(state.weights, index, len(instruments), 0.0),
            equity=state.equity,
            last_prices=_vector(state.last_prices, index, len(instruments), np.nan),
        )
    else:
        initial = PortfolioState.cash(len(instruments), equity=state.equity)
    result: BacktestResult = run_backtest(
        price,
        targets,
        tradable,
        spec.costs(),
        _impact_volume(caller, prices, price, dates, instruments, spec),
        initial_state=initial,
        borrow_bps=_borrow_bps(caller, borrow, spec, index),
        max_turnover=spec.max_turnover,
        positions=True,
    )

    end = result.end_state
    held = {instruments[i]: float(end.weights[i]) for i in np.flatnonzero(end.weights != 0.0)}
    pending = decided[-1] if spec.execution_lag == 1 else np.zeros(len(instruments))
    new_state = StrategyState(
        weights=held,
        equity=float(end.equity),
        last_prices={k: float(end.last_prices[index[k]]) for k in held},
        pending={instruments[i]: float(pending[i]) for i in np.flatnonzero(pending != 0.0)},
    )
    daily = backtest_frame(result, dates).with_columns(
        n_long=pl.Series((targets > 0).sum(axis=1), dtype=pl.Int64),
        n_short=pl.Series((targets < 0).sum(axis=1), dtype=pl.Int64),
    )
    return ScoreBacktest(
        daily=daily,
        state=new_state,
        dates=dates,
        instruments=tuple(instruments),
        decided=decided,
        targets=targets,
        positions=result.positions,
        betas=betas,
    )


def run_long_short(
    predictions: pl.DataFrame,
    prices: pl.DataFrame,
    spec: StrategySpec,
    state: StrategyState | None = None,
    *,
    sectors: pl.DataFrame | None = None,
    borrow: pl.DataFrame | None = None,
    market: pl.DataFrame | None = None,
    history: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, StrategyState]:
    """Backtest the days of ``prices`` (date, instrument_id, tr_close) with
    ``predictions`` (date, instrument_id, score); returns the daily frame and end state.
    Inputs as in ``backtest_scores``."""
    run = _backtest(
        "run_long_short", predictions, prices, spec, state, sectors=sectors, borrow=borrow,
        market=market, history=history,
    )
    return run.daily, run.state


def load_borrow_table(path: str | Path) -> pl.DataFrame:
    """(instrument_id, borrow_bps) from a CSV (with a header) or Parquet file; a bad row is
    an error naming the file, the row and the rule."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"borrow file {path}: not found")
    if path.suffix.lower() == ".csv":
        try:
            frame = pl.read_csv(path, infer_schema=False)  # all strings: checked below
        except pl.exceptions.PolarsError as error:
            raise ValueError(f"borrow file {path}: not a readable CSV ({error})") from error
        line = 2  # data row 1 is line 2, after the header
    elif path.suffix.lower() == ".parquet":
        frame = pl.read_parquet(path)
        line = 1
    else:
        raise ValueError(f"borrow file {path}: expected a .csv or .parquet file")
    return check_borrow_table(frame, f"borrow file {path}", first_row=line,
                              row_word="line" if line == 2 else "row")


def check_borrow_table(
    frame: pl.DataFrame, source: str = "borrow", first_row: int = 1, row_word: str = "row"
) -> pl.DataFrame:
    """The table as (instrument_id: String, borrow_bps: Float64), or a ValueError naming
    ``source``, the row and the rule (id present, bps a finite number >= 0, ids unique)."""
    _require(source, "the table", frame, ("instrument_id", "borrow_bps"))
    ids = frame.get_column("instrument_id").cast(pl.String).to_list()
    column = frame.get_column("borrow_bps")
    # numbers as they are (no text round trip); text (a CSV read as strings) parsed here
    values = column.to_list() if column.dtype.is_numeric() else column.cast(pl.String).to_list()
    seen: dict[str, int] = {}
    bps = np.empty(len(ids))
    for k, (name, text) in enumerate(zip(ids, values, strict=True)):
        where = f"{source}, {row_word} {k + first_row}"
        if name is None or not name.strip():
            raise ValueError(f"{where}: instrument_id is empty")
        try:
            value = float(text) if text is not None else float("nan")
        except (TypeError, ValueError):
            value = float("nan")
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{where} ({name}): borrow_bps={text!r} must be a finite number >= 0")
        if name in seen:
            raise ValueError(
                f"{where}: instrument {name} already on {row_word} {seen[name] + first_row}"
            )
        seen[name] = k
        bps[k] = value
    return pl.DataFrame({"instrument_id": pl.Series(ids, dtype=pl.String), "borrow_bps": bps})


def _borrow_bps(caller, borrow, spec, index) -> np.ndarray | None:
    table = borrow
    if table is None and spec.borrow_file is not None:
        table = load_borrow_table(spec.borrow_file)
    elif table is not None:
        table = check_borrow_table(table, f"{caller}: borrow")
    if table is None and spec.borrow_bps == 0:
        return None
    rates = np.full(len(index), float(spec.borrow_bps))
    if table is not None:
        for name, value in table.iter_rows():
            if name in index:
                rates[index[name]] = value
    return rates if (rates > 0).any() else None


def _impact_volume(caller, prices, price, dates, instruments, spec) -> np.ndarray | None:
    """Shares on the tr_close basis per unit of equity: dollar_volume / tr_close / capital,
    so that the kernel's ``E * trade / (p * v)`` is the trade's share of the day's value."""
    if spec.impact_coef == 0:
        return None
    if "dollar_volume" not in prices.columns:
        raise ValueError(
            f"{caller}: impact_coef > 0 needs a dollar_volume column in prices (the day's "
            "traded value, in the currency of capital)"
        )
    dollar_volume = to_matrix(prices, "dollar_volume", dates, instruments)
    bad = np.isfinite(price) & ~(np.isfinite(dollar_volume) & (dollar_volume > 0))
    if bad.any():
        t, i = np.argwhere(bad)[0]
        raise ValueError(
            f"{caller}: dollar_volume must be finite and > 0 where there is a price; not so "
            f"for {instruments[i]} on {dates[int(t)]}"
        )
    return dollar_volume / price / float(spec.capital)


def _sector_codes(caller, sectors: pl.DataFrame, instruments) -> np.ndarray:
    """Integer codes of the instruments' sectors in sorted sector order (-1: none)."""
    _require(caller, "sectors", sectors, ("instrument_id", "sector"))
    table = sectors.select(pl.col("instrument_id").cast(pl.String), pl.col("sector").cast(pl.String)).unique()
    clash = table.filter(pl.col("instrument_id").is_duplicated())
    if not clash.is_empty():
        name = clash.item(0, "instrument_id")
        raise ValueError(f"{caller}: sectors gives {name} more than one sector")
    mapping = dict(table.iter_rows())
    names = sorted({s for s in mapping.values() if s is not None})
    code = {s: k for k, s in enumerate(names)}
    return np.array([code.get(mapping.get(name), -1) for name in instruments], dtype=np.int64)


def _betas(caller, prices, history, market, dates, instruments, spec) -> np.ndarray:
    """(days, instruments) betas decided at each close (``weights.trailing_betas``) over the
    panel of ``history`` and ``prices``; a name's return is NaN on a day it or the day
    before lacks a price."""
    columns = (pl.col("date").cast(pl.Date), pl.col("instrument_id").cast(pl.String),
               pl.col("tr_close").cast(pl.Float64))
    panel = prices.select(*columns)
    if history is not None:
        _require(caller, "history", history, ("date", "instrument_id", "tr_close"))
        late = history.filter(pl.col("date") >= dates[0])
        if not late.is_empty():
            raise ValueError(
                f"{caller}: history must end before the first day of prices ({dates[0]}); "
                f"it has rows from {late.get_column('date').min()}"
            )
        panel = pl.concat([history.select(*columns), panel])
    panel_dates = panel.get_column("date").unique().sort()
    panel_names = panel.get_column("instrument_id").unique().sort()
    close = to_matrix(panel, "tr_close", panel_dates, panel_names)
    returns = np.full(close.shape, np.nan)
    returns[1:] = close[1:] / close[:-1] - 1.0
    if market is None:
        market_return = equal_weight_market(returns)
    else:
        _require(caller, "market", market, ("date", "market_return"))
        if market.get_column("date").is_duplicated().any():
            raise ValueError(f"{caller}: market has more than one row for a date")
        market_return = (
            pl.DataFrame({"date": panel_dates})
            .join(market.select(pl.col("date").cast(pl.Date),
                                pl.col("market_return").cast(pl.Float64)),
                  on="date", how="left")
            .get_column("market_return").fill_null(np.nan).to_numpy()
        )
    first_row = panel_dates.len() - dates.len()  # history dates all precede prices'
    estimated = trailing_betas(returns, market_return, spec.beta_window, spec.beta_min_obs, first_row)
    column = {name: k for k, name in enumerate(panel_names.to_list())}
    betas = np.full((dates.len(), len(instruments)), np.nan)
    for i, name in enumerate(instruments):
        if name in column:
            betas[:, i] = estimated[:, column[name]]
    return betas


def _vector(values: dict[str, float], index: dict[str, int], n: int, fill: float) -> np.ndarray:
    out = np.full(n, fill, dtype=np.float64)
    for name, value in values.items():
        out[index[name]] = value
    return out


# The backtest records the spec it ran with on every row (this column), so that the
# validation report re-runs its variants from the config that was actually backtested.
SPEC_COLUMN = "strategy_spec"


def spec_to_json(spec: StrategySpec) -> str:
    return json.dumps(asdict(spec), sort_keys=True)


def spec_from_json(text: str) -> StrategySpec:
    return StrategySpec(**json.loads(text))


def backtested_spec(backtest: pl.DataFrame) -> StrategySpec:
    """The spec the ``backtest`` rows ran with (ValueError unless one spec covers them all)."""
    specs = backtest.get_column(SPEC_COLUMN).unique().to_list() if SPEC_COLUMN in backtest.columns else []
    if len(specs) != 1:
        raise ValueError(
            f"the backtest months ran with {len(specs)} different strategy specs "
            f"({SPEC_COLUMN}): rerun the backtest months with one config first"
        )
    return spec_from_json(specs[0])


def book_inputs(
    spec: StrategySpec,
    prices: pl.DataFrame,
    universe: pl.DataFrame | None = None,
    market_bars: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """(prices, sectors) for ``run_long_short`` from the warehouse tables: the sector of each
    instrument (its latest listing row) and, when the spec charges market impact, each day's
    traded value (``dollar_volume`` = close x volume as traded)."""
    sectors = None
    if universe is not None and "sector" in universe.columns:
        latest = universe.sort("knowledge_time") if "knowledge_time" in universe.columns else universe
        sectors = latest.group_by("instrument_id", maintain_order=True).last().select(
            "instrument_id", "sector"
        )
    if spec.impact_coef > 0 and market_bars is not None and "dollar_volume" not in prices.columns:
        traded = market_bars.select(
            "date", "instrument_id", (pl.col("close") * pl.col("volume")).alias("dollar_volume")
        )
        prices = prices.join(traded, on=["date", "instrument_id"], how="left")
    return prices, sectors
