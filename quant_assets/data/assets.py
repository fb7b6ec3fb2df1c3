"""Raw market data assets: universe, market_bars [day], corporate_actions, fundamentals.

Thin wiring: the data come from the market source resource (the seeded simulator by
default, or the landing folder for market_bars) and pass the blocking quality rules of
``quality.py`` before anything is written. A failing rule records a failed asset check
naming the rule and the rows, then fails the step, so nothing is written and nothing
downstream runs.
"""


import datetime as dt
from collections.abc import Callable, Iterator

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    BackfillPolicy,
    Config,
    Failure,
    MetadataValue,
    Output,
    asset,
)

from quant_assets.data import market, quality
from quant_assets.data.files import LandingFileError
from quant_assets.partitions import trading_day_partitions
from quant_assets.retries import IO_RETRY, not_retried
from quant_assets.run_costs import measured
from resources.market_source import MarketSource

GROUP = "market_data"
# Reading files or object storage can fail transiently; the write is atomic, so retry
# (IO_RETRY: exponential backoff with jitter, quant_assets/retries.py). Quality failures
# and bad landing files are raised with allow_retries=False: they fail the same every time.


def _specs(asset_name: str, rules: tuple[str, ...]) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(rule, asset=asset_name, blocking=True, description=quality.RULE_DOCS[rule])
        for rule in rules
    ]


def _checked(
    frame: pl.DataFrame,
    rules: tuple[str, ...],
    violations: list[quality.Violation],
    metadata: dict | None = None,
) -> Iterator[Output | AssetCheckResult]:
    """Check results for every rule; on any violation fail before writing anything."""
    by_rule = {v.rule: v for v in violations}
    unknown = set(by_rule) - set(rules)
    if unknown:  # a rule without a declared check must still block
        raise Failure(description=quality.format_violations(violations), allow_retries=False)
    for rule in rules:
        v = by_rule.get(rule)
        yield AssetCheckResult(
            check_name=rule,
            passed=v is None,
            severity=AssetCheckSeverity.ERROR,
            description=v.message if v else None,
            metadata={"violating_rows": v.n_rows} if v else {"rows_checked": frame.height},
        )
    if violations:
        raise Failure(
            description=quality.format_violations(violations),
            metadata={"failed_rules": MetadataValue.json([v.rule for v in violations])},
            allow_retries=False,  # a data error is not transient: no IO retry
        )
    yield Output(frame, metadata={"rows": frame.height, **(metadata or {})})


def _bars(source: MarketSource, kind: str) -> pl.DataFrame:
    """All bars of the source ``kind`` (default: the resource's)."""
    kind = kind or source.source
    if kind == "simulator":
        return market.simulated_for(source).market_bars
    if kind == "landing":
        return market.landing_bars(source.landing_dir)
    raise ValueError(f"market source {kind!r} must be one of {market.SOURCES}")


def _unpartitioned(name: str, check: Callable[[pl.DataFrame], list[quality.Violation]]):
    rules = quality.RULES_BY_TABLE[name]

    @asset(
        name=name,
        group_name=GROUP,
        check_specs=_specs(name, rules),
        retry_policy=IO_RETRY,
        description=f"Raw `{name}` table (bitemporal; see ARCHITECTURE.md for the schema).",
    )
    def _asset(context: AssetExecutionContext, market_source: MarketSource):
        with measured(context, output_name="result") as meter:  # run costs; checks are outputs too
            frame = getattr(market.simulated_for(market_source), name)
            violations = check(frame)
            meter.rows(rows_out=frame.height)
        yield from _checked(frame, rules, violations)

    return _asset


universe = _unpartitioned("universe", quality.check_universe)
corporate_actions = _unpartitioned("corporate_actions", quality.check_corporate_actions)
fundamentals = _unpartitioned("fundamentals", quality.check_fundamentals)


class MarketBarsConfig(Config):
    source: str = ""  # "" = the market_source resource's default; "landing" for files


@asset(
    group_name=GROUP,
    partitions_def=trading_day_partitions,
    metadata={"partition_expr": "date"},
    check_specs=_specs("market_bars", quality.RULES_BY_TABLE["market_bars"]),
    # same chunking as pit_features, so a daily job keeps one policy
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=400),
    retry_policy=IO_RETRY,
)
def market_bars(
    context: AssetExecutionContext,
    config: MarketBarsConfig,
    market_source: MarketSource,
    universe: pl.DataFrame,
):
    """Daily OHLCV as traded (unadjusted) with the time each bar became known."""
    window = context.partition_time_window
    with measured(context, output_name="result") as meter:  # run costs; checks are outputs too
        with not_retried(LandingFileError):  # a bad file is bad on every attempt
            frame = market.bars_between(
                _bars(market_source, config.source), window.start.date(), window.end.date()
            )
        violations = quality.check_market_bars(frame, universe, as_of=dt.datetime.now(dt.UTC))
        violations += quality.check_bars_present(frame, window.start.date(), window.end.date())
        meter.rows(rows_out=frame.height)
    yield from _checked(
        frame,
        quality.RULES_BY_TABLE["market_bars"],
        violations,
        {"source": config.source or market_source.source, "instruments": frame["instrument_id"].n_unique()},
    )
