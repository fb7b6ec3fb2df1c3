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

# The landing rules are pure checks in quality.py (the file source runs them too).
LANDING_RULES = quality.LANDING_RULES
MAX_DAILY_PRICE_RATIO = quality.MAX_DAILY_PRICE_RATIO
check_row_order = quality.check_row_order
check_knowledge_time_future = quality.check_knowledge_time_future
check_restatement_older = quality.check_restatement_older
check_price_jump = quality.check_price_jump
_PREVIOUS_CLOSE_LOOKBACK = dt.timedelta(days=14)  # how far back to look for a previous stored close


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
