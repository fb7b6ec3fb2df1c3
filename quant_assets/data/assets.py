"""Raw market data assets: universe, market_bars [day], corporate_actions, fundamentals,
and what describes the source: benchmark (an index level given with the data) and
data_source (the source and its caveats, for the report).

Thin wiring: the data come from the market source resource (the seeded simulator by
default, a data directory with ``QUANT_SOURCE=files``, or the landing folder for
market_bars) and pass the blocking quality rules of ``quality.py`` before anything is
written. A failing rule records a failed asset check naming the rule and the rows, then
fails the step, so nothing is written and nothing downstream runs. A data directory that
breaks a rule (``SourceRejected``, ``SourceFileError``: file, row and rule) fails the step
the same way, before anything is written and without retries.

With the file source the reference tables (universe, corporate_actions, fundamentals) are
bitemporal and grow by appending: each run appends ``sources.reference_updates`` (new or
changed rows as new versions; a change is stamped with the time it was loaded) through the
warehouse's append path; a stored version is never overwritten. The simulator's tables are
replaced whole (the simulation is the same every run).
"""


import datetime as dt
from collections.abc import Callable, Iterator

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    Failure,
    MetadataValue,
    Output,
    asset,
)

from quant_assets.asset_catalog import COLUMN_SCHEMA, column_schema, owners_of
from quant_assets.data import market, quality, sources
from quant_assets.data.files import LandingFileError
from quant_assets.data.schemas import RAW_TABLE_SCHEMAS
from quant_assets.partitions import daily_backfill_policy, trading_day_partitions
from quant_assets.retries import IO_RETRY, not_retried
from quant_assets.run_costs import measured
from quant_assets.warehouse import WRITE_ID_KEY, Warehouse
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


# deterministic source errors: the same on every attempt, so never retried
SOURCE_ERRORS = (LandingFileError, sources.SourceRejected)
# commit metadata naming the source that wrote a reference table's rows
SOURCE_KEY = "quant.source"


def _checked(
    frame: pl.DataFrame | None,
    rules: tuple[str, ...],
    violations: list[quality.Violation],
    metadata: dict | None = None,
    rows: int | None = None,
) -> Iterator[Output | AssetCheckResult]:
    """Check results for every rule; on any violation fail before writing anything.
    ``frame`` None: the asset wrote its rows itself (append), ``rows`` were checked."""
    checked = frame.height if frame is not None else rows
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
            metadata={"violating_rows": v.n_rows} if v else {"rows_checked": checked},
        )
    if violations:
        raise Failure(
            description=quality.format_violations(violations),
            metadata={"failed_rules": MetadataValue.json([v.rule for v in violations])},
            allow_retries=False,  # a data error is not transient: no IO retry
        )
    yield Output(frame, metadata={"rows": checked, **(metadata or {})})


def _file_source(source: MarketSource) -> sources.FileSourceData:
    with not_retried(*SOURCE_ERRORS):  # a bad file or row is bad on every attempt
        return market.file_source(source.data_dir)


def _bars(source: MarketSource, kind: str) -> tuple[pl.DataFrame, dict]:
    """All bars of the source ``kind`` (default: the resource's), and what to record about them."""
    kind = kind or source.source
    if kind == "simulator":
        return market.simulated_for(source).market_bars, {}
    if kind == "files":
        loaded = _file_source(source)
        return loaded.tables.market_bars, loaded.metadata()
    if kind == "landing":
        # with a data directory, landing files may use its layout.yaml (mapping, dates)
        layout = sources.read_layout(source.data_dir) if source.source == "files" else None
        return market.landing_bars(source.landing_dir, layout), {}
    raise ValueError(f"market source {kind!r} must be one of {market.SOURCES}")


def _source_tag(source: MarketSource) -> str:
    return f"files:{source.data_dir}"


def _stored_versions(warehouse: Warehouse, name: str, tag: str) -> pl.DataFrame | None:
    """The stored rows of ``name`` when this data directory wrote them; None when there
    are none or another source wrote them (a source switch replaces the table once)."""
    if not warehouse.exists([name]):
        return None
    # the latest commit of the one write path (maintenance commits carry no write id)
    ours = next((h for h in warehouse.table([name]).history(50) if WRITE_ID_KEY in h), {})
    if ours.get(SOURCE_KEY) != tag:
        return None
    return warehouse.read([name]).frame


def _reference_from_files(
    context: AssetExecutionContext, name: str, source: MarketSource, check, meter
) -> tuple[list[quality.Violation], int, dict]:
    """Append the new versions of reference table ``name`` (module doc) unless a rule
    fails: (violations, rows checked, metadata). The rows are written here, through the
    warehouse's write (first load) or append path, never by the IO manager."""
    loaded = _file_source(source)
    warehouse: Warehouse = context.resources.io_manager.warehouse
    tag = _source_tag(source)
    stored = _stored_versions(warehouse, name, tag)
    new = sources.reference_updates({name: stored}, loaded, dt.datetime.now(dt.UTC))[name]
    table = new if stored is None else pl.concat([stored, new.select(stored.columns)])
    violations = check(table)
    meter.rows(rows_out=new.height)
    if violations:  # nothing is written
        return violations, table.height, {}
    commit = {SOURCE_KEY: tag, "dagster.run_id": context.run_id}
    if stored is None:  # first load from this directory: the whole table
        written = warehouse.write([name], new, None, commit)
    elif new.height:
        written = warehouse.append([name], new, commit)
    else:
        written = None
    return [], table.height, {
        "appended_rows": new.height,
        "versions": table.height,
        "delta_version": written.version if written else warehouse.version([name]),
        "source": tag,
        **_source_metadata(loaded),
    }


def _source_metadata(loaded: sources.FileSourceData) -> dict:
    return {"source_metadata": MetadataValue.json(loaded.metadata())}


def _unpartitioned(name: str, check: Callable[[pl.DataFrame], list[quality.Violation]]):
    rules = quality.RULES_BY_TABLE[name]

    @asset(
        name=name,
        group_name=GROUP,
        owners=owners_of(GROUP),
        kinds={"delta", "polars"},
        metadata={COLUMN_SCHEMA: column_schema(RAW_TABLE_SCHEMAS[name])},
        check_specs=_specs(name, rules),
        retry_policy=IO_RETRY,
        # io_manager: the file source appends through the warehouse itself
        required_resource_keys={"io_manager", "market_source"},
        description=f"Raw `{name}` table (bitemporal; see ARCHITECTURE.md for the schema).",
    )
    def _asset(context: AssetExecutionContext):
        market_source: MarketSource = context.resources.market_source
        if market_source.source == "files":
            with measured(context, output_name="result") as meter:
                violations, rows, meta = _reference_from_files(context, name, market_source, check, meter)
            # Output without a value: the rows are already appended (the IO manager skips None)
            yield from _checked(None, rules, violations, meta, rows=rows)
            return
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
    owners=owners_of(GROUP),
    kinds={"delta", "polars"},
    partitions_def=trading_day_partitions,
    metadata={"partition_expr": "date", COLUMN_SCHEMA: column_schema(RAW_TABLE_SCHEMAS["market_bars"])},
    check_specs=_specs("market_bars", quality.RULES_BY_TABLE["market_bars"]),
    backfill_policy=daily_backfill_policy(),  # the daily job's one chunking
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
        with not_retried(*SOURCE_ERRORS):  # a bad file is bad on every attempt
            bars, described = _bars(market_source, config.source)
        frame = market.bars_between(bars, window.start.date(), window.end.date())
        violations = quality.check_market_bars(frame, universe, as_of=dt.datetime.now(dt.UTC))
        violations += quality.check_bars_present(frame, window.start.date(), window.end.date())
        meter.rows(rows_out=frame.height)
    yield from _checked(
        frame,
        quality.RULES_BY_TABLE["market_bars"],
        violations,
        {
            "source": config.source or market_source.source,
            "instruments": frame["instrument_id"].n_unique(),
            # e.g. close-only bars: which fields are null (never substituted) and why
            **({"source_metadata": MetadataValue.json(described),
                "missing_bar_fields": MetadataValue.json(described["missing_bar_fields"])} if described else {}),
        },
    )


BENCHMARK_SCHEMA = {"date": pl.Date(), "name": pl.String(), "close": pl.Float64(), "return": pl.Float64()}


@asset(
    group_name=GROUP,
    owners=owners_of(GROUP),
    kinds={"delta", "polars"},
    metadata={COLUMN_SCHEMA: column_schema(BENCHMARK_SCHEMA)},
    check_specs=_specs("benchmark", quality.RULES_BY_TABLE["benchmark"]),
    retry_policy=IO_RETRY,
)
def benchmark(context: AssetExecutionContext, market_source: MarketSource):
    """The benchmark index given with the data (``benchmark.csv`` of a data directory, e.g.
    the S&P 500 index): date, name, close and the simple daily return. Empty when the
    source has none (the simulator): the report then uses the market factor. Replaced
    whole each run: an index level is read ex post by the report, never by a feature."""
    frame = pl.DataFrame(schema=BENCHMARK_SCHEMA)
    with measured(context, output_name="result") as meter:
        if market_source.source == "files":
            loaded = _file_source(market_source)
            if loaded.benchmark is not None:
                frame = loaded.benchmark.select(
                    "date", pl.lit(loaded.layout.benchmark_name).alias("name"), "close",
                    (pl.col("close") / pl.col("close").shift(1) - 1.0).alias("return"),
                )
        violations = quality.check_benchmark(frame.select("date", "close"))
        meter.rows(rows_out=frame.height)
    yield from _checked(frame, quality.RULES_BY_TABLE["benchmark"], violations,
                        {"name": frame["name"][0] if frame.height else "(none)"})


SIMULATED_CAVEATS = (
    "synthetic: a seeded simulated market (quant_assets/data/simulator.py), not real prices",
)


@asset(group_name=GROUP, owners=owners_of(GROUP), kinds={"delta", "polars"}, retry_policy=IO_RETRY)
def data_source(context: AssetExecutionContext, market_source: MarketSource):
    """Where the raw tables come from and what a reader must know about them, as
    (item, value) rows: source, data_dir, bars_adjusted, missing_bar_fields, benchmark,
    and one ``caveat`` row each (survivors only, close-only, adjusted, ...). The validation
    report and the demo print the caveats."""
    with measured(context) as meter:
        if market_source.source == "files":
            loaded = _file_source(market_source)
            meta = loaded.metadata()
            items = [
                ("source", "files"), ("data_dir", market_source.data_dir),
                ("bars_adjusted", str(loaded.layout.bars_adjusted).lower()),
                ("missing_bar_fields", ",".join(loaded.missing_bar_fields)),
                ("missing_tables", ",".join(loaded.missing_tables)),
                ("benchmark", meta["benchmark"] or ""),
                *(("caveat", c) for c in loaded.caveats()),
            ]
        else:
            items = [("source", "simulated"), ("seed", str(market_source.seed)),
                     *(("caveat", c) for c in SIMULATED_CAVEATS)]
        frame = pl.DataFrame(items, schema={"item": pl.String, "value": pl.String}, orient="row")
        meter.rows(rows_out=frame.height)
    caveats = frame.filter(pl.col("item") == "caveat")["value"].to_list()
    return Output(frame, metadata={"rows": frame.height, "caveats": MetadataValue.json(caveats)})
