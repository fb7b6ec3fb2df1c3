"""Landing-zone sensor: new market_bars files in the landing folder, or new files in the data
directory (``QUANT_SOURCE=files``), start runs.

Each file is processed once (the cursor remembers name, size and mtime). A file that does
not parse, or whose rows break a quality rule, is moved to ``<landing>/rejected/`` with a
``.reason.txt`` beside it naming the file, the rule and the rows; nothing is launched
for it, so no partition changes. A good file requests one run per trading day it
contains, with market_bars reading from the landing folder (a bar in several files from the
latest delivery: ``market.latest_deliveries``).

Beyond the rules of ``quality.check_market_bars`` (run here against the stored universe,
so unknown instruments are caught before a run starts), the landing path applies rules
that need context a single frame does not carry (see ``LANDING_RULES``): the time of the
evaluation (no bar known in the future), the bars already stored (a restatement must not
be older than what it replaces; an absurd jump against the previous close), and the row
order that file producers promise.

With the file source, landing files may use the data directory's ``layout.yaml`` (column
mapping, date format, symbol from the file name, the bars' knowledge-time rule), and the
data directory itself is watched (``evaluate_data_dir``): when its files change, the whole
directory is loaded through the same rules as the assets (``sources.load_data_dir``: a
rejection names file, row and rule, and starts nothing); a change of a reference file
requests a reference_data_job run (the tables append new versions); days whose bars are new
or differ from the stored ones request daily runs, once the stored universe knows every
instrument of the directory (a new symbol's listing is appended first).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import polars as pl
from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SkipReason, sensor

from quant_assets.data import quality, sources
from quant_assets.data.files import LandingFileError, list_landing_files
from quant_assets.data.market import data_dir_state, file_source, read_landing_file
from quant_assets.data.reference import current_universe
from quant_assets.jobs import daily_features_job, reference_data_job
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
    layout: sources.Layout | None = None,
) -> tuple[list[RunRequest], list[str], set[str]]:
    """Pure-ish core of the sensor: (run requests, log lines, new seen set).

    ``warehouse`` (optional) supplies the stored universe, bars and corporate actions for
    the rules that need them; ``as_of`` is the evaluation time (default: now, UTC);
    ``layout`` (the file source's ``layout.yaml``) reads files in the data directory's layout.
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
            bars = read_landing_file(path, layout)
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
                    job_name=daily_features_job.name,
                    tags={"quant/landing_file": path.name},
                )
            )
    return requests, logs, seen


def _state_key(prefix: str, state: tuple) -> str:
    import hashlib

    return prefix + hashlib.sha256(json.dumps(state).encode()).hexdigest()[:16]


def changed_days(loaded: pl.DataFrame, stored: pl.DataFrame | None) -> list[dt.date]:
    """Days whose bars are not stored yet or differ from the stored rows (a corrected bar)."""
    if stored is None or stored.height == 0:
        return sorted(loaded["date"].unique().to_list())
    cols = loaded.columns
    differ = loaded.join(stored.select(cols), on=cols, how="anti", nulls_equal=True)
    gone = stored.select(cols).join(loaded, on=["date", "instrument_id"], how="anti")
    return sorted(set(differ["date"].to_list()) | set(gone["date"].to_list()))


def evaluate_data_dir(
    data_dir: Path,
    seen: set[str],
    *,
    warehouse: Warehouse | None = None,
) -> tuple[list[RunRequest], list[str], set[str]]:
    """The data directory's part of the sensor (module doc): (run requests, log lines, new
    seen set). ``seen`` holds one key per state of the bars files and of the reference
    files: an unchanged directory costs a directory listing."""
    seen = set(seen)
    root = Path(data_dir)
    state = data_dir_state(root)
    bars_files = {str(p.relative_to(root)) for p in sources.table_files(root, "market_bars")}
    bars_key = _state_key("data-dir-bars:", [s for s in state if s[0] in bars_files])
    ref_key = _state_key("data-dir-reference:", [s for s in state if s[0] not in bars_files])
    # a rejected state of the whole directory: remembered on its own, so that the state
    # that fixes it is judged afresh (marking the reference key seen on a rejection would
    # lose the reference run of a directory rejected before its first accepted state)
    rejected_key = _state_key("data-dir-rejected:", state)
    if (bars_key in seen and ref_key in seen) or rejected_key in seen:
        return [], [], seen
    try:
        loaded = file_source(root)
    except (sources.SourceFileError, sources.SourceRejected) as exc:
        # the whole directory is rejected until it is fixed: nothing starts; logged once
        seen.add(rejected_key)
        return [], [f"data directory rejected, no run started: {exc}"], seen
    requests, logs = [], []
    if ref_key not in seen:
        requests.append(RunRequest(run_key=ref_key, job_name=reference_data_job.name,
                                   tags={"quant/data_dir": str(root)}))
        logs.append(f"{root}: reference files changed: reference_data_job requested")
        seen.add(ref_key)
    if bars_key in seen:
        return requests, logs, seen
    universe = _stored(warehouse, "universe")
    known = set(current_universe(universe)["instrument_id"].to_list()) if universe is not None else set()
    bars = loaded.tables.market_bars
    waiting = sorted(set(bars["instrument_id"].unique().to_list()) - known)
    if waiting:  # not marked seen: evaluated again on the next tick
        logs.append(f"{root}: waiting for the reference run to list {waiting[:5]} before their bars' runs")
        return requests, logs, seen
    stored = _stored(warehouse, "market_bars")
    for day in changed_days(bars, stored):
        key = day.isoformat()
        if not trading_day_partitions.has_partition_key(key):
            logs.append(f"{root}: {key} is outside the trading-day partitions, skipped")
            continue
        requests.append(RunRequest(run_key=f"{bars_key}:{key}", partition_key=key, job_name=daily_features_job.name,
                                   tags={"quant/data_dir": str(root)}))
    seen.add(bars_key)
    return requests, logs, seen


@sensor(
    jobs=[daily_features_job, reference_data_job],
    minimum_interval_seconds=60,
    description=__doc__,
    # a deployment (QUANT_AUTOMATION=on) watches its landing folder from the start, as the
    # daily schedule and the automation sensor run by themselves
    default_status=DefaultSensorStatus.RUNNING if SETTINGS.automation else DefaultSensorStatus.STOPPED,
)
def landing_files_sensor(context: SensorEvaluationContext):
    landing = Path(SETTINGS.landing_dir)
    files_source = SETTINGS.source == "files" and SETTINGS.data_dir is not None
    if not landing.exists() and not files_source:
        return SkipReason(f"landing folder {landing} does not exist")
    seen = set(json.loads(context.cursor)) if context.cursor else set()
    warehouse = Warehouse(SETTINGS.warehouse_uri)
    requests, logs = [], []
    if landing.exists():
        layout = sources.read_layout(SETTINGS.data_dir) if files_source else None
        requests, logs, seen = evaluate_landing(landing, seen, warehouse=warehouse, layout=layout)
    if files_source:
        more, more_logs, seen = evaluate_data_dir(SETTINGS.data_dir, seen, warehouse=warehouse)
        requests, logs = requests + more, logs + more_logs
    for line in logs:
        context.log.info(line)
    context.update_cursor(json.dumps(sorted(seen)))
    if not requests:
        return SkipReason("no new landing files")
    return requests
