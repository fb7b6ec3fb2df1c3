"""Resources: the Delta warehouse (IO manager), MLflow tracking and the market source.

``build_resources(settings)`` is the one place that turns settings into resources.
"""

from __future__ import annotations

from typing import Any

from quant_assets.settings import Settings

# QUANT_SOURCE -> the market source resource's kind
_SOURCE_KINDS = {"simulated": "simulator", "files": "files"}


def build_resources(settings: Settings) -> dict[str, Any]:
    from resources.io_manager import DeltaIOManager
    from resources.market_source import MarketSource
    from resources.tracking import MlflowTracking

    # live partitions (no end date): the simulator draws up to QUANT_SIMULATOR_END, or today
    last = settings.end_date or settings.simulator_end
    end = last.isoformat() if last else ""
    return {
        "io_manager": DeltaIOManager(root=settings.warehouse_uri),
        "tracking": MlflowTracking(
            tracking_uri=settings.mlflow_uri,
            artifact_location=settings.mlflow_artifacts,
            warehouse_root=settings.warehouse_uri,
        ),
        "market_source": MarketSource(
            source=_SOURCE_KINDS[settings.source],
            n_instruments=settings.n_instruments,
            seed=settings.seed,
            start=settings.start_date.isoformat(),
            end=end or _today(),
            landing_dir=str(settings.landing_dir),
            data_dir=str(settings.data_dir) if settings.data_dir else "",
        ),
    }


def _today() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).date().isoformat()
