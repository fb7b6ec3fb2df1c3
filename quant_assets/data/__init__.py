"""Market data sources (pure code, no Dagster): the synthetic simulator, the landing-file
source and the data-quality rules used by the blocking asset checks."""

from quant_assets.data.files import (
    LandingFileError,
    list_landing_files,
    read_market_bars_file,
    write_market_bars_file,
)
from quant_assets.data.quality import (
    Violation,
    check_corporate_actions,
    check_fundamentals,
    check_market_bars,
    check_universe,
    format_violations,
)
from quant_assets.data.simulator import (
    CORPORATE_ACTIONS_SCHEMA,
    FUNDAMENTAL_FIELDS,
    FUNDAMENTALS_SCHEMA,
    MARKET_BARS_SCHEMA,
    UNIVERSE_SCHEMA,
    MarketData,
    SimulatorConfig,
    simulate_market,
)

__all__ = [
    "CORPORATE_ACTIONS_SCHEMA",
    "FUNDAMENTALS_SCHEMA",
    "FUNDAMENTAL_FIELDS",
    "MARKET_BARS_SCHEMA",
    "UNIVERSE_SCHEMA",
    "LandingFileError",
    "MarketData",
    "SimulatorConfig",
    "Violation",
    "check_corporate_actions",
    "check_fundamentals",
    "check_market_bars",
    "check_universe",
    "format_violations",
    "list_landing_files",
    "read_market_bars_file",
    "simulate_market",
    "write_market_bars_file",
]
