"""Backtests: numba kernels (``nb``), the portfolio API (``portfolio``), weight builders.

Pure computation: imports neither Dagster nor MLflow; conventions are documented in
:mod:`quant_assets.backtest.portfolio` and :mod:`quant_assets.backtest.weights`.
"""

from quant_assets.backtest.portfolio import (
    BacktestResult,
    CostModel,
    PortfolioState,
    backtest_frame,
    run_backtest,
    to_matrix,
)
from quant_assets.backtest.weights import long_short_quantile

__all__ = [
    "BacktestResult",
    "CostModel",
    "PortfolioState",
    "backtest_frame",
    "long_short_quantile",
    "run_backtest",
    "to_matrix",
]
from quant_assets.backtest.grid import (  # noqa: E402
    GridResult,
    ScenarioResult,
    breakout_grid,
    param_product,
    returns_matrix,
    scenario_backtest,
    zmr_grid,
)

__all__ += [
    "GridResult",
    "ScenarioResult",
    "breakout_grid",
    "param_product",
    "returns_matrix",
    "scenario_backtest",
    "zmr_grid",
]
