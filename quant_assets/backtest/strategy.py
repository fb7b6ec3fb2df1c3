"""Long-short quantile strategy on model scores, month-restartable.

Conventions
-----------
- Scores of day t (features as of t's cutoff, after the close) decide target weights at
  close t: long the top ``quantile`` of the day's tradable names, short the bottom,
  dollar-neutral (``weights.long_short_quantile``).
- ``execution_lag`` (default 1): weights decided at close t are traded at close t+lag.
  Trading on the same close that fed the signal would be look-ahead (an order at the
  close must be placed before it), so the default is one day.
- P&L uses total-return closes (split- and dividend-adjusted) through the numba kernel
  of ``portfolio.run_backtest``; costs = commission + half spread on turnover.
- ``StrategyState`` (instrument-keyed: weights, equity, last prices and the decided but
  not yet traded targets) carries the book from one month to the next; running month by
  month from each month's end state is bit-identical to one run over the whole range.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from quant_assets.backtest.portfolio import (
    CostModel,
    PortfolioState,
    backtest_frame,
    run_backtest,
    to_matrix,
)
from quant_assets.backtest.weights import long_short_quantile


@dataclass(frozen=True)
class StrategySpec:
    quantile: float = 0.2
    scheme: str = "equal"
    gross: float = 1.0
    max_weight: float | None = None
    commission_bps: float = 1.0
    half_spread_bps: float = 2.0
    execution_lag: int = 1

    def __post_init__(self) -> None:
        if self.execution_lag not in (0, 1):
            raise ValueError(f"execution_lag={self.execution_lag} must be 0 or 1")

    def costs(self) -> CostModel:
        return CostModel(commission_bps=self.commission_bps, half_spread_bps=self.half_spread_bps)


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


def run_long_short(
    predictions: pl.DataFrame,
    prices: pl.DataFrame,
    spec: StrategySpec,
    state: StrategyState | None = None,
) -> tuple[pl.DataFrame, StrategyState]:
    """Backtest the days of ``prices`` (date, instrument_id, tr_close) with
    ``predictions`` (date, instrument_id, score); returns the daily frame and end state."""
    for name, frame, cols in (
        ("predictions", predictions, ("date", "instrument_id", "score")),
        ("prices", prices, ("date", "instrument_id", "tr_close")),
    ):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"run_long_short: {name} lacks columns {missing}")
    dates = prices.get_column("date").unique().sort()
    if dates.is_empty():
        raise ValueError("run_long_short: no prices in the requested days")
    state = state or StrategyState()
    names = set(prices.get_column("instrument_id").unique().to_list())
    names |= set(state.weights) | set(state.pending)
    instruments = sorted(names)
    index = {name: i for i, name in enumerate(instruments)}

    price = to_matrix(prices, "tr_close", dates, instruments)
    tradable = np.isfinite(price)
    scores = to_matrix(predictions.filter(pl.col("date").is_in(dates.implode())), "score", dates, instruments)
    decided = long_short_quantile(
        scores, tradable, quantile=spec.quantile, scheme=spec.scheme,
        gross=spec.gross, max_weight=spec.max_weight,
    )
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
    result = run_backtest(price, targets, tradable, spec.costs(), initial_state=initial)

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
    return daily, new_state


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
