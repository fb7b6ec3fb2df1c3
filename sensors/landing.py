"""Landing-zone sensor: new market_bars files in the landing folder start runs.

Each file is processed once (the cursor remembers name, size and mtime). A file that does
not parse, or whose rows break a quality rule, is moved to ``<landing>/rejected/`` with a
``.reason.txt`` beside it naming the file, the rule and the rows; nothing is launched
for it, so no partition changes. A good file requests one run per trading day it
contains, with market_bars reading from the landing folder.

Beyond the rules of ``quality.check_market_bars`` (run here against the stored universe,
so unknown instruments are caught before a run starts), the landing path applies rules
that need context a single frame does not carry (see ``LANDING_RULES``): the time of the
evaluation (no bar known in the future), the bars already stored (a restatement must not
be older than what it replaces; an absurd jump against the previous close), and the row
order that file producers promise.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from pathlib import Path

import polars as pl
from dagster import RunRequest, SensorEvaluationContext, SkipReason, sensor

from quant_assets.data import quality
from quant_assets.data.files import LandingFileError, list_landing_files, read_market_bars_file
from quant_assets.jobs import daily_features_job
from quant_assets.partitions import trading_day_partitions
from quant_assets.settings import load_settings
from quant_assets.warehouse import PartitionWindow, Warehouse, WarehouseError

SETTINGS = load_settings()

REJECTED = "rejected"

# Rules the landing path adds to quality.check_market_bars (description per rule).
LANDING_RULES: dict[str, str] = {
    "row_order": "Rows are sorted by (date, instrument_id), as file producers promise.",
    "knowledge_time_future": "No bar is known after the evaluation time (now, UTC).",
    "restatement_older": "A bar that replaces a stored bar is not known earlier than it.",
    "price_jump": "close / previous close (split-adjusted) stays within [1/MAX, MAX].",
}
# A split-adjusted close-to-close move beyond x4 (or below /4) in one day is a data error
# (a misplaced decimal, a currency mix-up), never a market move in this universe: the
# simulator's largest daily move over 2022-2024 is well under 2x.
MAX_DAILY_PRICE_RATIO = 4.0
# how far back to look for an instrument's previous stored close
_PREVIOUS_CLOSE_LOOKBACK = dt.timedelta(days=14)
_KEYS = ["date", "instrument_id"]


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"


def reject(path: Path, reason: str) -> Path:
    folder = path.parent / REJECTED
    folder.mkdir(exist_ok=True)
    target = folder / path.name
    shutil.move(str(path), target)
    target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
    return target


def _violation(rule: str, bad: pl.DataFrame, columns: list[str], what: str) -> quality.Violation:
    # the same shape and message format as quality.py, so one formatter serves both
    examples = bad.select(columns).head(quality.MAX_EXAMPLES).to_dicts()
    shown = "; ".join(", ".join(f"{k}={v}" for k, v in row.items()) for row in examples)
    message = f"market_bars: rule '{rule}' failed on {bad.height} row(s): {what}. Examples: {shown}"
    return quality.Violation(rule=rule, n_rows=bad.height, examples=examples, message=message)


def check_row_order(bars: pl.DataFrame) -> list[quality.Violation]:
    """Rows out of (date, instrument_id) order, with their 1-based row numbers."""
    numbered = bars.with_row_index("row", offset=1)
    prev_date = pl.col("date").shift(1)
    prev_id = pl.col("instrument_id").shift(1)
    before_previous = (pl.col("date") < prev_date) | (
        (pl.col("date") == prev_date) & (pl.col("instrument_id") < prev_id)
    )
    bad = numbered.filter(before_previous.fill_null(False))
    if bad.height == 0:
        return []
    return [_violation(
        "row_order", bad, ["row", *_KEYS],
        "row is before its predecessor in (date, instrument_id) order",
    )]


def check_knowledge_time_future(bars: pl.DataFrame, as_of: dt.datetime) -> list[quality.Violation]:
    """Bars whose knowledge_time is after ``as_of`` (a timezone-aware UTC time)."""
    bad = bars.with_row_index("row", offset=1).filter(
        (pl.col("knowledge_time") > pl.lit(as_of).dt.convert_time_zone("UTC")).fill_null(False)
    )
    if bad.height == 0:
        return []
    return [_violation(
        "knowledge_time_future", bad, ["row", *_KEYS, "knowledge_time"],
        f"knowledge_time is after the evaluation time {as_of.isoformat()}",
    )]


def check_restatement_older(bars: pl.DataFrame, stored: pl.DataFrame) -> list[quality.Violation]:
    """Bars that would replace a stored bar of the same key with an earlier knowledge_time:
    a restatement is newer information by definition, so an older one is a stale resend."""
    if stored.height == 0:
        return []
    joined = bars.with_row_index("row", offset=1).join(
        stored.select(*_KEYS, pl.col("knowledge_time").alias("stored_knowledge_time")),
        on=_KEYS, how="inner",
    )
    older = pl.col("knowledge_time") < pl.col("stored_knowledge_time")
    bad = joined.filter(older.fill_null(False))
    if bad.height == 0:
        return []
    return [_violation(
        "restatement_older", bad, ["row", *_KEYS, "knowledge_time", "stored_knowledge_time"],
        "knowledge_time is earlier than that of the stored bar it would replace",
    )]


def check_price_jump(
    bars: pl.DataFrame,
    stored: pl.DataFrame,
    corporate_actions: pl.DataFrame | None = None,
    max_ratio: float = MAX_DAILY_PRICE_RATIO,
) -> list[quality.Violation]:
    """close / previous close per instrument, divided out by a split on the bar's date
    (``split_ratio`` new shares per old share lowers the unadjusted price by that factor),
    outside [1/max_ratio, max_ratio]. The previous close comes from the file itself or from
    the stored bars before the file's days."""
    numbered = bars.with_row_index("row", offset=1)
    earlier = stored.join(bars.select(_KEYS), on=_KEYS, how="anti") if stored.height else stored
    history = pl.concat(
        [
            numbered.select("row", *_KEYS, "close"),
            earlier.select(pl.lit(None, pl.UInt32).alias("row"), *_KEYS, "close"),
        ],
        how="vertical",
    )
    history = history.sort("instrument_id", "date").with_columns(
        pl.col("close").shift(1).over("instrument_id").alias("previous_close")
    )
    if corporate_actions is not None and corporate_actions.height:
        splits = (
            corporate_actions.group_by("instrument_id", "ex_date")
            .agg(pl.col("split_ratio").product())
            .rename({"ex_date": "date"})
        )
        history = history.join(splits, on=_KEYS, how="left")
    else:
        history = history.with_columns(pl.lit(None, pl.Float64).alias("split_ratio"))
    ratio = pl.col("close") * pl.col("split_ratio").fill_null(1.0) / pl.col("previous_close")
    bad = history.filter(
        pl.col("row").is_not_null()
        # a non-finite or non-positive price is price_positive_finite's to report
        & (pl.col("close").is_finite() & (pl.col("close") > 0)).fill_null(False)
        & (pl.col("previous_close").is_finite() & (pl.col("previous_close") > 0)).fill_null(False)
        & (ratio.abs().log() > math.log(max_ratio)).fill_null(False)
    ).with_columns(ratio.alias("ratio"))
    if bad.height == 0:
        return []
    return [_violation(
        "price_jump", bad.sort("row"), ["row", *_KEYS, "previous_close", "close", "ratio"],
        f"split-adjusted close / previous close outside [1/{max_ratio:g}, {max_ratio:g}]",
    )]


def _stored(warehouse: Warehouse | None, key: str, selection=None) -> pl.DataFrame | None:
    if warehouse is None or not warehouse.exists([key]):
        return None
    try:
        return warehouse.read([key], selection).frame
    except WarehouseError:
        return None


def validate_bars(
    bars: pl.DataFrame,
    *,
    as_of: dt.datetime,
    warehouse: Warehouse | None = None,
) -> list[quality.Violation]:
    """Every violation of a contract-typed landing frame: quality.py's rules (against the
    stored universe when there is one), then the landing rules of ``LANDING_RULES``."""
    universe = _stored(warehouse, "universe")
    violations = quality.check_market_bars(bars, universe)
    blocking = {"schema", "null_key"}
    if any(v.rule in blocking for v in violations) or bars.height == 0:
        return violations  # the row rules below need well-typed, non-null keys
    violations += check_row_order(bars)
    violations += check_knowledge_time_future(bars, as_of)
    lo, hi = bars["date"].min(), bars["date"].max()
    window = PartitionWindow("date", lo - _PREVIOUS_CLOSE_LOOKBACK, hi + dt.timedelta(days=1))
    stored = _stored(warehouse, "market_bars", window)
    if stored is None:
        stored = bars.clear()
    violations += check_restatement_older(bars, stored)
    violations += check_price_jump(bars, stored, _stored(warehouse, "corporate_actions"))
    return violations


def evaluate_landing(
    landing_dir: Path,
    seen: set[str],
    *,
    warehouse: Warehouse | None = None,
    as_of: dt.datetime | None = None,
) -> tuple[list[RunRequest], list[str], set[str]]:
    """Pure-ish core of the sensor: (run requests, log lines, new seen set).

    ``warehouse`` (optional) supplies the stored universe, bars and corporate actions for
    the rules that need them; ``as_of`` is the evaluation time (default: now, UTC).
    """
    as_of = as_of or dt.datetime.now(dt.UTC)
    requests: list[RunRequest] = []
    logs: list[str] = []
    seen = set(seen)
    for path in list_landing_files(landing_dir):
        fp = _fingerprint(path)
        if fp in seen:
            continue
        try:
            bars = read_market_bars_file(path)
            violations = validate_bars(bars, as_of=as_of, warehouse=warehouse)
            if violations:
                raise LandingFileError(
                    path, violations[0].rule, quality.format_violations(violations)
                )
        except LandingFileError as exc:
            moved = reject(path, str(exc))
            logs.append(f"rejected {path.name}: {exc} (moved to {moved})")
            continue
        seen.add(fp)
        days = sorted({d.isoformat() for d in bars.get_column("date").unique().to_list()})
        for key in days:
            if not trading_day_partitions.has_partition_key(key):
                logs.append(f"{path.name}: {key} is outside the trading-day partitions, skipped")
                continue
            requests.append(
                RunRequest(
                    run_key=f"{fp}:{key}",
                    partition_key=key,
                    run_config={"ops": {"market_bars": {"config": {"source": "landing"}}}},
                    tags={"quant/landing_file": path.name},
                )
            )
    return requests, logs, seen


@sensor(job=daily_features_job, minimum_interval_seconds=60, description=__doc__)
def landing_files_sensor(context: SensorEvaluationContext):
    landing = Path(SETTINGS.landing_dir)
    if not landing.exists():
        return SkipReason(f"landing folder {landing} does not exist")
    seen = set(json.loads(context.cursor)) if context.cursor else set()
    requests, logs, seen = evaluate_landing(
        landing, seen, warehouse=Warehouse(SETTINGS.warehouse_uri)
    )
    for line in logs:
        context.log.info(line)
    context.update_cursor(json.dumps(sorted(seen)))
    if not requests:
        return SkipReason("no new landing files")
    return requests
