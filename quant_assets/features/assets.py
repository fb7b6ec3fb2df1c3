"""``pit_features`` and ``labels``: one partition per trading day.

Lookback windows read the upstream days they need through a partition mapping (not the
whole table); range backfills run in chunks (BackfillPolicy), not one run per day.
The asset's code_version is the hash of every feature definition
(``features_code_version()``), so a changed definition marks the materialised partitions
stale: Dagster compares the ``dagster/code_version`` tag recorded with each
materialisation with the definition's current code_version (its stale-status resolver
reports the cause "has a new code version").

``pit_features`` carries a blocking asset check, ``no_lookahead_leak``: sampled days of
the run are recomputed from inputs truncated at their cutoff (``guard.py``); any
difference fails the check and the step before anything is written, so nothing
downstream runs.
"""


import datetime as dt

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    Failure,
    MetadataValue,
    Output,
    TimeWindowPartitionMapping,
    asset,
)

from quant_assets.asset_catalog import COLUMN_SCHEMA, column_schema, owners_of
from quant_assets.automation import after, restated
from quant_assets.data.sources import bars_adjusted
from quant_assets.features import (
    FeatureConfig,
    compute_features,
    compute_labels,
    features_code_version,
    guard,
    required_lookback_days,
)
from quant_assets.features.availability import availability_metadata
from quant_assets.features.catalog import active_features
from quant_assets.features.engine import output_schema
from quant_assets.features.labels import LABEL_SCHEMA
from quant_assets.partitions import (
    add_partition_metadata,
    daily_backfill_policy,
    label_partitions,
    trading_day_partitions,
)
from quant_assets.retries import IO_RETRY, not_retried
from quant_assets.run_costs import measured
from quant_assets.settings import load_settings

SETTINGS = load_settings()

GROUP = "features"
CHUNK = daily_backfill_policy()
LEAK_CHECK = "no_lookahead_leak"
# Days of each run recomputed by the leak check, and instruments of each such day: a day
# computed alone costs about a context year of its instruments' series features, so a
# sample of instruments (with the whole cross-section for the market return and the sector
# ranks) keeps the check to a few percent of a run.
LEAK_CHECK_DAYS = 3
LEAK_CHECK_INSTRUMENTS = 50


def _days(context: AssetExecutionContext) -> list[dt.date]:
    return [dt.date.fromisoformat(k) for k in context.partition_keys]


def features_column_schema():
    """pit_features' columns: the keys, then one per feature of the catalogue, described."""
    features = active_features()
    return column_schema(
        output_schema(list(features)),
        {"date": "trading day (the as-of day of every value)", "instrument_id": "instrument",
         **{name: f"{f.description} [{f.family}, {f.window}-day window, {f.kind}]" for name, f in features.items()}},
    )


def per_partition_rows(context: AssetExecutionContext, frame: pl.DataFrame) -> None:
    """Each day of a range run gets its own row count, not the run's total."""
    counts = dict(frame.group_by("date").len().iter_rows())
    add_partition_metadata(context.get_step_execution_context(), context.asset_key,
                           {day.isoformat(): {"rows": counts.get(day, 0)} for day in _days(context)})


def build_pit_features(code_version: str) -> AssetsDefinition:
    """The ``pit_features`` asset with the given code_version (the feature registry's hash;
    a separate builder so that tests can show what a changed definition does)."""

    @asset(
        name="pit_features",
        group_name=GROUP,
        owners=owners_of(GROUP),
        kinds={"polars", "delta"},
        partitions_def=trading_day_partitions,
        metadata={"partition_expr": "date", COLUMN_SCHEMA: features_column_schema()},
        backfill_policy=CHUNK,
        code_version=code_version,
        retry_policy=IO_RETRY,  # reads/writes Delta (quant_assets/retries.py)
        # a day's features are built with its bars (daily_features_job: the schedule after the
        # cutoff, a landing file); by themselves only when a restated day they read changed
        automation_condition=restated(["market_bars"]),
        check_specs=[
            AssetCheckSpec(
                LEAK_CHECK,
                asset="pit_features",
                blocking=True,
                description="Sampled days recomputed from inputs cut at their as-of cutoff "
                "equal the computed features exactly (no look-ahead).",
            )
        ],
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
        config = FeatureConfig(cutoff_time=SETTINGS.cutoff_time)
        with measured(context, output_name="result") as meter:  # run costs; checks are outputs too
            frame = compute_features(universe, market_bars, corporate_actions, fundamentals, days, config)
            sampled = guard.sample_days(days, LEAK_CHECK_DAYS, SETTINGS.seed)
            leaks = guard.find_leaks(frame, universe, market_bars, corporate_actions, fundamentals, sampled, config,
                                     instruments=LEAK_CHECK_INSTRUMENTS, seed=SETTINGS.seed)
            meter.rows(rows_in=market_bars.height, rows_out=frame.height)
        checked = {"sampled_days": MetadataValue.json([d.isoformat() for d in sampled]),
                   "sampled_instruments_per_day": LEAK_CHECK_INSTRUMENTS}
        if leaks:
            message = guard.format_leaks(leaks)
            yield AssetCheckResult(
                check_name=LEAK_CHECK,
                passed=False,
                severity=AssetCheckSeverity.ERROR,
                description=message,
                metadata={
                    **checked,
                    "leaky_features": MetadataValue.json(sorted({leak.feature for leak in leaks})),
                },
            )
            # fail before the output: nothing is written and nothing downstream runs
            raise Failure(description=message, allow_retries=False)  # deterministic: a retry finds the same leak
        yield AssetCheckResult(check_name=LEAK_CHECK, passed=True, metadata=checked)
        # which features are null for every row and why (never computed from a substitute)
        available = availability_metadata(market_bars, fundamentals, bars_adjusted(SETTINGS.data_dir if SETTINGS.source == "files" else None))
        per_partition_rows(context, frame)
        yield Output(frame, metadata={"run_days": len(days), "features": frame.width - 2,
                                      **{k: MetadataValue.json(v) for k, v in available.items()}})

    return pit_features


pit_features = build_pit_features(features_code_version())


@asset(
    group_name=GROUP,
    owners=owners_of(GROUP),
    kinds={"polars", "delta"},
    # a label's partition exists once the bars of its horizon can (partitions.label_partitions)
    partitions_def=label_partitions,
    metadata={"partition_expr": "date",
              COLUMN_SCHEMA: column_schema(LABEL_SCHEMA)},
    backfill_policy=CHUNK,
    code_version="labels-v1",
    # as soon as the bars of its horizon are in; again when a day of its horizon is restated
    automation_condition=after(["market_bars"]),
    retry_policy=IO_RETRY,  # reads/writes Delta (quant_assets/retries.py)
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
    # compute_labels' ValueErrors (bars not yet there for t1, non-trading days) are
    # deterministic: fail at once rather than through the I/O retries
    with measured(context) as meter, not_retried(ValueError):
        frame = compute_labels(market_bars, corporate_actions, days, horizon=SETTINGS.label_horizon)
        meter.rows(rows_in=market_bars.height, rows_out=frame.height)
    per_partition_rows(context, frame)
    return Output(frame, metadata={"run_days": len(days), "horizon": SETTINGS.label_horizon})
