"""``pit_features`` and ``labels``: one partition per trading day.

Lookback windows read the upstream days they need through a partition mapping (not the
whole table); range backfills run in chunks (BackfillPolicy), not one run per day.
The asset's code_version is the hash of every feature definition, so a changed
definition marks the partitions stale.
"""


import datetime as dt

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetIn,
    BackfillPolicy,
    Output,
    TimeWindowPartitionMapping,
    asset,
)

from quant_assets.features import (
    FeatureConfig,
    compute_features,
    compute_labels,
    features_code_version,
    required_lookback_days,
)
from quant_assets.partitions import SETTINGS, trading_day_partitions

GROUP = "features"
# A few hundred days per run keeps memory flat and the run count low.
CHUNK = BackfillPolicy.multi_run(max_partitions_per_run=400)


def _days(context: AssetExecutionContext) -> list[dt.date]:
    return [dt.date.fromisoformat(k) for k in context.partition_keys]


@asset(
    group_name=GROUP,
    partitions_def=trading_day_partitions,
    metadata={"partition_expr": "date"},
    backfill_policy=CHUNK,
    code_version=features_code_version(),
    ins={
        "market_bars": AssetIn(
            partition_mapping=TimeWindowPartitionMapping(
                start_offset=-required_lookback_days(), allow_nonexistent_upstream_partitions=True
            )
        ),
    },
)
def pit_features(
    context: AssetExecutionContext,
    universe: pl.DataFrame,
    market_bars: pl.DataFrame,
    corporate_actions: pl.DataFrame,
    fundamentals: pl.DataFrame,
):
    """Point-in-time features of each trading day: only rows with
    knowledge_time <= cutoff(day) are seen (``quant_assets.features.pit``)."""
    days = _days(context)
    frame = compute_features(
        universe, market_bars, corporate_actions, fundamentals, days,
        FeatureConfig(cutoff_time=SETTINGS.cutoff_time),
    )
    return Output(frame, metadata={"days": len(days), "rows": frame.height,
                                   "features": frame.width - 2})


@asset(
    group_name=GROUP,
    partitions_def=trading_day_partitions,
    metadata={"partition_expr": "date"},
    backfill_policy=CHUNK,
    code_version="labels-v1",
    ins={
        "market_bars": AssetIn(
            partition_mapping=TimeWindowPartitionMapping(
                start_offset=0,
                end_offset=SETTINGS.label_horizon,
                allow_nonexistent_upstream_partitions=True,
            )
        ),
    },
)
def labels(context: AssetExecutionContext, market_bars: pl.DataFrame, corporate_actions: pl.DataFrame):
    """Forward total return over (D, D+h] trading days with its interval [t0, t1]."""
    days = _days(context)
    frame = compute_labels(market_bars, corporate_actions, days, horizon=SETTINGS.label_horizon)
    return Output(frame, metadata={"days": len(days), "rows": frame.height,
                                   "horizon": SETTINGS.label_horizon})
