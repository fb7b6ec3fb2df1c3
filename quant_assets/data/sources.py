"""The file source: the four raw tables from a folder in the documented layout.

Selected by ``QUANT_SOURCE=files`` and ``QUANT_DATA_DIR=<folder>`` (settings.py); the layout,
the column rules and the knowledge-time rules are documented in ``docs/data_layout.md``:

    <data dir>/
      layout.yaml                        optional: options and column mapping (``Layout``)
      bars/**/*.csv|*.parquet            required: any number of files (per symbol, per year, one)
      universe.csv|.parquet              optional (derived from the bars, with a warning)
      corporate_actions.csv|.parquet     optional
      fundamentals.csv|.parquet          optional
      benchmark.csv|.parquet             optional: an index level (date, close) for the report

Everything is read and checked before anything is returned: a file that cannot become
contract rows raises ``SourceFileError`` (a ``LandingFileError``: file, rule, columns or
rows); rows that break a rule of ``quality.py`` (the landing folder's rules) raise
``SourceRejected`` listing each rule with the files and 1-based data rows that broke it.
Nothing is substituted: a missing optional bar field stays null (``FileSourceData.
missing_bar_fields``; ``features.availability.null_features`` says which features that
nulls), a missing fundamentals knowledge_time is an error unless the layout gives a
filing lag.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import yaml

from quant_assets import calendar
from quant_assets.data import quality
from quant_assets.data.files import (
    CSV_SUFFIXES,
    PARQUET_SUFFIXES,
    LandingFileError,
    bad_rows,
    parse_utc_csv_times,
    read_raw_csv,
    read_raw_parquet,
)
from quant_assets.data.reference import new_versions, universe_versions
from quant_assets.data.schemas import (
    BENCHMARK_SCHEMA,
    CORPORATE_ACTIONS_SCHEMA,
    FUNDAMENTALS_SCHEMA,
    MARKET_BARS_SCHEMA,
    UNIVERSE_SCHEMA,
    UTC_TIME,
)
from quant_assets.data.simulator import MarketData

LAYOUT_FILE = "layout.yaml"
BARS_DIR = "bars"
REFERENCE_TABLES = ("universe", "corporate_actions", "fundamentals")
TABLES = ("market_bars", *REFERENCE_TABLES)
BENCHMARK = "benchmark"
SUFFIXES = PARQUET_SUFFIXES + CSV_SUFFIXES
_MAX_SHOWN = 5
DERIVED_SECTOR = "unknown"
SURVIVORSHIP_WARNING = (
    "no universe file: the universe is derived from the bars (listed_from = first bar, never "
    "delisted, sector 'unknown'). It is survivorship-prone: names that were delisted before the "
    "data was collected are missing, and results overstate what a strategy would have earned."
)


@dataclass(frozen=True)
class _Spec:
    """Columns of one table as a file may give them."""

    table: str
    schema: Mapping[str, pl.DataType]
    required: tuple[str, ...]
    defaults: Mapping[str, object]  # optional column -> value when absent (None: null)


SPECS: dict[str, _Spec] = {
    "market_bars": _Spec(
        "market_bars", MARKET_BARS_SCHEMA, ("date", "instrument_id", "close"),
        {"open": None, "high": None, "low": None, "volume": None, "knowledge_time": None},
    ),
    "universe": _Spec(
        "universe", UNIVERSE_SCHEMA, ("instrument_id", "sector", "listed_from"),
        {"listed_until": None, "knowledge_time": None},
    ),
    "corporate_actions": _Spec(
        "corporate_actions", CORPORATE_ACTIONS_SCHEMA, ("instrument_id", "ex_date"),
        {"split_ratio": 1.0, "cash_dividend": 0.0, "knowledge_time": None},
    ),
    "fundamentals": _Spec(
        "fundamentals", FUNDAMENTALS_SCHEMA, ("instrument_id", "field", "period_end", "value"),
        {"knowledge_time": None},
    ),
    BENCHMARK: _Spec(BENCHMARK, BENCHMARK_SCHEMA, ("date", "close"), {}),
}
# names in layout.yaml's `columns:` for each table
_LAYOUT_TABLE_NAMES = {"bars": "market_bars", "universe": "universe",
                       "corporate_actions": "corporate_actions", "fundamentals": "fundamentals",
                       "benchmark": BENCHMARK}


class SourceFileError(LandingFileError):
    """A file of the data directory that cannot be read as contract rows."""


@dataclass(frozen=True)
class Problem:
    table: str
    rule: str
    message: str
    locations: tuple[str, ...]  # "bars/AAPL.csv row 12"

    def __str__(self) -> str:
        where = "; ".join(self.locations) if self.locations else "(table-wide)"
        return f"[{self.rule}] {where}: {self.message}"


class SourceRejected(ValueError):
    """Rows of the data directory that break quality rules: nothing is loaded."""

    def __init__(self, data_dir: Path, problems: list[Problem]) -> None:
        self.data_dir = data_dir
        self.problems = problems
        lines = [f"data directory {data_dir}: {len(problems)} rule(s) failed, nothing was loaded:"]
        lines += [f"- {p}" for p in problems]
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- layout.yaml


@dataclass(frozen=True)
class Layout:
    """Options of a data directory (``layout.yaml``; every key optional)."""

    # bars are already split- and dividend-adjusted (e.g. Yahoo's Adj Close): no
    # corporate_actions may be given (they would adjust twice); price levels are not PIT
    bars_adjusted: bool = False
    # bars without knowledge_time: known at the session's close + this delay
    bars_knowledge_delay: dt.timedelta = dt.timedelta(0)
    # fundamentals without knowledge_time: known at the close of the first session on or
    # after period_end + this many calendar days; None = such rows are an error
    fundamentals_filing_lag_days: int | None = None
    # bars files without an instrument_id column: the file name's stem is the instrument
    instrument_from_filename: bool = False
    # strptime format of date columns in CSV files (e.g. "%m/%d/%Y" for M/D/YYYY)
    date_format: str = "%Y-%m-%d"
    # the name the report shows for benchmark.csv (e.g. "S&P 500 index")
    benchmark_name: str = "benchmark index"
    # per table: source column -> contract column (None: ignore the column)
    columns: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)


def read_layout(data_dir: str | Path) -> Layout:
    """The directory's ``layout.yaml`` (defaults when absent); errors name the file and key."""
    path = Path(data_dir) / LAYOUT_FILE
    if not path.exists():
        return Layout()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SourceFileError(path, "layout", f"not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SourceFileError(path, "layout", "must be a mapping of options")
    known = set(Layout.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SourceFileError(path, "layout", f"unknown keys {unknown} (known: {sorted(known)})")
    kwargs: dict[str, object] = {}
    for key in ("bars_adjusted", "instrument_from_filename"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise SourceFileError(path, "layout", f"{key}: {raw[key]!r} must be true or false")
            kwargs[key] = raw[key]
    if "bars_knowledge_delay" in raw:
        from quant_assets.settings import parse_duration

        try:
            kwargs["bars_knowledge_delay"] = parse_duration("bars_knowledge_delay", str(raw["bars_knowledge_delay"]))
        except ValueError as exc:
            raise SourceFileError(path, "layout", str(exc)) from exc
    lag = raw.get("fundamentals_filing_lag_days")
    if lag is not None:
        if not isinstance(lag, int) or isinstance(lag, bool) or lag < 0:
            raise SourceFileError(path, "layout", f"fundamentals_filing_lag_days: {lag!r} must be an integer >= 0")
        kwargs["fundamentals_filing_lag_days"] = lag
    if "benchmark_name" in raw:
        if not isinstance(raw["benchmark_name"], str) or not raw["benchmark_name"].strip():
            raise SourceFileError(path, "layout", f"benchmark_name: {raw['benchmark_name']!r} must be a non-empty string")
        kwargs["benchmark_name"] = raw["benchmark_name"].strip()
    if "date_format" in raw:
        fmt = raw["date_format"]
        if not isinstance(fmt, str) or "%" not in fmt:
            raise SourceFileError(path, "layout", f"date_format: {fmt!r} must be a strptime format like '%m/%d/%Y'")
        kwargs["date_format"] = fmt
    columns = raw.get("columns") or {}
    if not isinstance(columns, dict):
        raise SourceFileError(path, "layout", "columns: must map a table name to {source column: contract column}")
    mapped: dict[str, dict[str, str | None]] = {}
    for name, mapping in columns.items():
        if name not in _LAYOUT_TABLE_NAMES:
            raise SourceFileError(path, "layout", f"columns: unknown table {name!r} (one of {list(_LAYOUT_TABLE_NAMES)})")
        table = _LAYOUT_TABLE_NAMES[name]
        if not isinstance(mapping, dict):
            raise SourceFileError(path, "layout", f"columns.{name}: must be a mapping")
        for source_col, target in mapping.items():
            if target is not None and target not in SPECS[table].schema:
                raise SourceFileError(
                    path, "layout",
                    f"columns.{name}.{source_col}: {target!r} is not a {table} column "
                    f"(one of {list(SPECS[table].schema)}, or null to ignore it)",
                )
        mapped[table] = {str(k): v for k, v in mapping.items()}
    kwargs["columns"] = mapped
    return Layout(**kwargs)


def bars_adjusted(data_dir: str | Path | None) -> bool:
    """Whether a data directory's bars are split/dividend adjusted (False: no directory)."""
    return read_layout(data_dir).bars_adjusted if data_dir else False


# --------------------------------------------------------------------------- one file


def _hint(table: str, column: str, layout: Layout) -> str:
    lowered = column.strip().lower().replace(" ", "_")
    if lowered == "adj_close":
        return (f"'{column}' is an adjusted close: map it in {LAYOUT_FILE} (columns: bars: "
                f"{{'{column}': close}}) and set bars_adjusted: true, or ignore it ('{column}': null)")
    if lowered in SPECS[table].schema:
        return f"did you mean {lowered!r}? map it in {LAYOUT_FILE} (columns: ... {{'{column}': {lowered}}})"
    if lowered in ("symbol", "ticker"):
        return f"map it in {LAYOUT_FILE} (columns: ... {{'{column}': instrument_id}})"
    return f"map it to a contract column in {LAYOUT_FILE} or ignore it with null"


def _dates(source: Path, raw: pl.DataFrame, col: str, fmt: str) -> pl.Series:
    series = raw[col]
    if series.dtype == pl.Date:
        return series
    if isinstance(series.dtype, pl.Datetime):
        if series.dtype.time_zone is None and (series.dt.time() == dt.time(0)).fill_null(True).all():
            return series.dt.date()
        raise SourceFileError(source, "dtype", f"column {col} is {series.dtype}; expected a date (no time of day)")
    if series.dtype != pl.String:
        raise SourceFileError(source, "dtype", f"column {col} is {series.dtype}; expected a date")
    parsed = series.str.to_date(fmt, strict=False)
    problem = bad_rows(raw, col, parsed)
    if problem:
        sample = series.drop_nulls().head(1).to_list()
        hint = ""
        if sample and "/" in sample[0] and "/" not in fmt:
            hint = f"; the values look like M/D/YYYY: set date_format: '%m/%d/%Y' in {LAYOUT_FILE}"
        raise SourceFileError(source, "dtype", f"{problem}; expected dates in format {fmt!r}{hint}")
    return parsed


def _floats(source: Path, raw: pl.DataFrame, col: str) -> pl.Series:
    series = raw[col]
    if series.dtype.is_numeric():
        return series.cast(pl.Float64)
    if series.dtype != pl.String:
        raise SourceFileError(source, "dtype", f"column {col} is {series.dtype}; expected a number")
    parsed = series.cast(pl.Float64, strict=False)
    problem = bad_rows(raw, col, parsed)
    if problem:
        raise SourceFileError(source, "dtype", f"{problem}; expected a number with '.' as decimal point")
    return parsed


def _times(source: Path, raw: pl.DataFrame, col: str) -> pl.Series:
    series = raw[col]
    if isinstance(series.dtype, pl.Datetime):
        if series.dtype.time_zone is None:
            raise SourceFileError(source, "timezone", f"column {col} is timezone-naive {series.dtype}; it must carry a timezone")
        return series.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    if series.dtype != pl.String:
        raise SourceFileError(source, "dtype", f"column {col} is {series.dtype}; expected an ISO-8601 time with a timezone")
    parsed = parse_utc_csv_times(source, raw, col)
    problem = bad_rows(raw, col, parsed)
    if problem:
        raise SourceFileError(source, "dtype", f"{problem}; expected ISO-8601 with a timezone ('Z' or '+HH:MM')")
    return parsed


def read_table_file(path: str | Path, table: str, layout: Layout, root: Path | None = None) -> pl.DataFrame:
    """One file of `table` as typed contract columns (those it has) plus ``_file`` (path
    relative to `root`) and ``_row`` (1-based data row). SourceFileError on what cannot be
    read: file, rule, columns or rows."""
    source = Path(path)
    spec = SPECS[table]
    suffix = source.suffix.lower()
    if suffix not in SUFFIXES:
        raise SourceFileError(source, "file_type", f"suffix {source.suffix!r} is not one of {SUFFIXES}")
    if source.stat().st_size == 0:
        raise SourceFileError(source, "empty", "the file has 0 bytes")
    try:
        raw = read_raw_parquet(source) if suffix in PARQUET_SUFFIXES else read_raw_csv(source)
    except LandingFileError as exc:
        raise SourceFileError(source, exc.rule, exc.detail) from exc
    mapping = dict(layout.columns.get(table, {}))
    absent = [c for c in mapping if c not in raw.columns]
    raw = raw.drop([c for c, t in mapping.items() if t is None and c in raw.columns])
    raw = raw.rename({c: t for c, t in mapping.items() if t is not None and c in raw.columns})
    duplicated = sorted({c for c in raw.columns if raw.columns.count(c) > 1})
    if duplicated:
        raise SourceFileError(source, "columns", f"columns {duplicated} appear twice after the {LAYOUT_FILE} mapping")
    if table == "market_bars" and "instrument_id" not in raw.columns and layout.instrument_from_filename:
        raw = raw.with_columns(pl.lit(source.stem).alias("instrument_id"))
    unknown = [c for c in raw.columns if c not in spec.schema]
    missing = [c for c in spec.required if c not in raw.columns]
    if unknown or missing:
        parts = []
        if missing:
            parts.append(f"missing required columns {missing}")
            if "instrument_id" in missing and table == "market_bars":
                parts.append(f"(one file per symbol without a symbol column: set instrument_from_filename: true in {LAYOUT_FILE})")
        for c in unknown:
            parts.append(f"unexpected column {c!r}: {_hint(table, c, layout)}")
        if absent:
            parts.append(f"{LAYOUT_FILE} maps columns this file does not have: {absent}")
        raise SourceFileError(
            source, "columns",
            "; ".join(parts) + f" (expected {list(spec.required)} and optionally {list(spec.defaults)})",
        )
    out: dict[str, pl.Series] = {}
    for col in raw.columns:
        want = spec.schema[col]
        if want == pl.Date():
            out[col] = _dates(source, raw, col, layout.date_format)
        elif want == pl.Float64():
            out[col] = _floats(source, raw, col)
        elif want == UTC_TIME:
            out[col] = _times(source, raw, col)
        else:
            out[col] = raw[col].cast(pl.String)
    frame = pl.DataFrame([s.alias(c) for c, s in out.items()])
    name = str(source.relative_to(root)) if root is not None and source.is_relative_to(root) else str(source)
    return frame.with_columns(pl.lit(name).alias("_file"), pl.int_range(1, pl.len() + 1, dtype=pl.UInt32).alias("_row"))


# --------------------------------------------------------------------------- the folder


@dataclass(frozen=True)
class FileSourceData:
    """The loaded tables and what the run's metadata should say about them."""

    tables: MarketData  # contract frames, knowledge-time rules applied
    as_given: dict[str, pl.DataFrame]  # reference tables before the rules (null knowledge_time kept)
    layout: Layout
    files: dict[str, tuple[str, ...]]  # table -> files read (relative to the data dir)
    missing_bar_fields: tuple[str, ...]  # optional bar fields no row has (close-only: all four)
    missing_tables: tuple[str, ...]  # optional tables without a file
    universe_derived: bool
    warnings: tuple[str, ...]
    benchmark: pl.DataFrame | None = None  # (date, close) of benchmark.csv, checked; None if absent

    def metadata(self) -> dict[str, object]:
        """Plain values for Dagster/MLflow metadata: how honest the data is."""
        return {
            "source": "files",
            "bars_adjusted": self.layout.bars_adjusted,
            "missing_bar_fields": list(self.missing_bar_fields),
            "missing_tables": list(self.missing_tables),
            "universe_derived_from_bars": self.universe_derived,
            "files": {k: len(v) for k, v in self.files.items()},
            "benchmark": self.layout.benchmark_name if self.benchmark is not None else None,
            "caveats": list(self.caveats()),
            "warnings": list(self.warnings),
        }

    def caveats(self) -> tuple[str, ...]:
        """What a reader of any result built on this data must know, derived from the data
        (not from where it came from): survivorship, missing fields, adjusted prices."""
        out = []
        universe = self.tables.universe
        if self.universe_derived:
            out.append("survivors only: the universe is derived from the bars (no universe file)")
        elif universe.height and universe["listed_until"].null_count() == universe.height:
            out.append("survivors only: no instrument of the universe was ever delisted, so names that "
                       "died or left are absent (survivorship bias: results overstate returns)")
        if set(self.missing_bar_fields) == {"open", "high", "low", "volume"}:
            out.append("close-only: no open/high/low/volume; the features that need them are null")
        elif self.missing_bar_fields:
            out.append(f"bars lack {', '.join(self.missing_bar_fields)}; the features that need them are null")
        if self.layout.bars_adjusted:
            out.append("adjusted: closes are split- and dividend-adjusted, so price levels embed later "
                       "corporate actions (returns are unaffected; price-level features are not point in time)")
        if self.benchmark is not None and self.layout.bars_adjusted:
            out.append(f"benchmark: {self.layout.benchmark_name} returns come from its level as given "
                       "(a price index leaves out the dividends that adjusted closes include)")
        if "fundamentals" in self.missing_tables:
            out.append("no fundamentals: the fundamentals-based features are null")
        return tuple(out)


def table_files(data_dir: str | Path, table: str) -> list[Path]:
    """The files of `table` in the layout, sorted; hidden and '_' names are skipped."""
    root = Path(data_dir)
    if table == "market_bars":
        folder = root / BARS_DIR
        if not folder.is_dir():
            return []
        return sorted(
            p for p in folder.rglob("*")
            if p.is_file() and p.suffix.lower() in SUFFIXES
            and not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
        )
    found = [root / f"{table}{s}" for s in SUFFIXES if (root / f"{table}{s}").is_file()]
    if len(found) > 1:
        raise SourceFileError(found[1], "duplicate_file", f"{table} is given twice: {[p.name for p in found]}; keep one")
    return found


def _concat(frames: list[pl.DataFrame], spec: _Spec) -> pl.DataFrame:
    if not frames:
        return pl.DataFrame(schema={**spec.schema, "_file": pl.String, "_row": pl.UInt32})
    out = pl.concat(frames, how="diagonal")
    fills = []
    for col, dtype in spec.schema.items():
        default = spec.defaults.get(col)
        if col not in out.columns:
            fills.append(pl.lit(default, dtype=dtype).alias(col))
        elif default is not None:
            fills.append(pl.col(col).fill_null(default))  # documented default for empty cells
    return out.with_columns(fills).select(*spec.schema, "_file", "_row").cast(dict(spec.schema))


def _sessions_frame() -> pl.DataFrame:
    return pl.DataFrame({"_session": calendar.sessions().days}, schema={"_session": pl.Date})


def _session_on_or_after(frame: pl.DataFrame, col: str, out: str) -> pl.DataFrame:
    keyed = frame.with_row_index("_i").sort(col)
    joined = keyed.join_asof(_sessions_frame(), left_on=col, right_on="_session", strategy="forward")
    return joined.sort("_i").drop("_i").rename({"_session": out})


def _session_before(frame: pl.DataFrame, col: str, out: str) -> pl.DataFrame:
    keyed = frame.with_row_index("_i").with_columns((pl.col(col) - pl.duration(days=1)).alias("_before")).sort("_before")
    joined = keyed.join_asof(_sessions_frame(), left_on="_before", right_on="_session", strategy="backward")
    return joined.sort("_i").drop("_i", "_before").rename({"_session": out})


def bars_knowledge_time(delay: dt.timedelta) -> pl.Expr:
    """Rule for a bar without knowledge_time: its session's close + `delay`."""
    return pl.coalesce(pl.col("knowledge_time"), calendar.session_close_expr(pl.col("date")) + pl.lit(delay))


def _apply_rules(tables: dict[str, pl.DataFrame], layout: Layout, problems: list[Problem]) -> dict[str, pl.DataFrame]:
    out = dict(tables)
    out["market_bars"] = tables["market_bars"].with_columns(
        bars_knowledge_time(layout.bars_knowledge_delay).cast(UTC_TIME).alias("knowledge_time")
    )
    # an action without an announcement time: known at the close of the session before its
    # ex-date (exchanges publish ex-dates before the open, so never later than that)
    actions = _session_before(tables["corporate_actions"], "ex_date", "_known_session")
    out["corporate_actions"] = actions.with_columns(
        pl.coalesce(pl.col("knowledge_time"), calendar.session_close_expr(pl.col("_known_session"))).alias("knowledge_time")
    ).drop("_known_session")
    funds = tables["fundamentals"]
    undated = funds.filter(pl.col("knowledge_time").is_null())
    if undated.height and layout.fundamentals_filing_lag_days is None:
        problems.append(Problem(
            "fundamentals", "filing_lag_missing",
            f"{undated.height} row(s) have no knowledge_time and {LAYOUT_FILE} sets no "
            "fundamentals_filing_lag_days: when a figure was published cannot be guessed without "
            "leaking it early; add knowledge_time (publication) or the lag",
            _locations(undated),
        ))
    elif undated.height:
        lag = pl.duration(days=layout.fundamentals_filing_lag_days)
        funds = _session_on_or_after(funds.with_columns((pl.col("period_end") + lag).alias("_filed")), "_filed", "_s")
        funds = funds.with_columns(
            pl.coalesce(pl.col("knowledge_time"), calendar.session_close_expr(pl.col("_s"))).alias("knowledge_time")
        ).drop("_filed", "_s")
    out["fundamentals"] = funds
    return out


def _locations(rows: pl.DataFrame) -> tuple[str, ...]:
    shown = [f"{f} row {r}" for f, r in rows.select("_file", "_row").head(_MAX_SHOWN).rows()]
    if rows.height > _MAX_SHOWN:
        shown.append(f"... {rows.height - _MAX_SHOWN} more")
    return tuple(shown)


def _locate(violation: quality.Violation, annotated: pl.DataFrame, keys: list[str]) -> tuple[str, ...]:
    """Files and rows behind a violation: by the 1-based `row` of the landing rules, else by
    the key values of its examples."""
    examples = violation.examples
    if examples and "row" in examples[0]:
        positions = [e["row"] - 1 for e in examples if e.get("row") is not None]
        return _locations(annotated[positions])
    rows = []
    for example in examples:
        match = pl.lit(True)
        usable = [k for k in keys if k in example]
        if not usable:
            continue
        for k in usable:
            value = example[k]
            match = match & (pl.col(k).is_null() if value is None else pl.col(k) == pl.lit(value))
        rows.append(annotated.filter(match))
    if not rows:
        return ()
    return _locations(pl.concat(rows).unique(["_file", "_row"], maintain_order=True))


_KEYS = {
    BENCHMARK: ["date"],
    "market_bars": ["date", "instrument_id"],
    "universe": ["instrument_id", "knowledge_time"],
    "corporate_actions": ["instrument_id", "ex_date", "knowledge_time"],
    "fundamentals": ["instrument_id", "field", "period_end", "knowledge_time"],
}


def _check(
    table: str,
    annotated: pl.DataFrame,
    violations: list[quality.Violation],
    problems: list[Problem],
    notes: Mapping[str, str] | None = None,
) -> None:
    for v in violations:
        note = (notes or {}).get(v.rule, "")
        problems.append(Problem(table, v.rule, note + v.message, _locate(v, annotated, _KEYS[table])))


def derive_universe(bars: pl.DataFrame) -> pl.DataFrame:
    """Listing rows from the bars alone (first bar = listed_from, never delisted, sector
    'unknown'): survivorship-prone, see ``SURVIVORSHIP_WARNING``."""
    return (
        bars.group_by("instrument_id")
        .agg(pl.col("date").min().alias("listed_from"))
        .select(
            "instrument_id", pl.lit(DERIVED_SECTOR).alias("sector"), "listed_from",
            pl.lit(None, pl.Date).alias("listed_until"), pl.lit(None, UTC_TIME).alias("knowledge_time"),
        )
        .sort("instrument_id")
    )


def load_data_dir(data_dir: str | Path, *, as_of: dt.datetime | None = None) -> FileSourceData:
    """Read, check and return the four raw tables of a data directory (module doc).

    ``as_of`` (default now, UTC): no row may be known after it. Raises SourceFileError for a
    file that cannot be read and SourceRejected listing every broken rule with its files
    and rows; returns only when every table passes.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise SourceFileError(root, "data_dir", "QUANT_DATA_DIR is not a folder")
    as_of = as_of or dt.datetime.now(dt.UTC)
    layout = read_layout(root)
    files = {t: table_files(root, t) for t in TABLES}
    if not files["market_bars"]:
        raise SourceFileError(root / BARS_DIR, "no_bars", f"no CSV or Parquet files under {root / BARS_DIR}")
    frames = {t: [read_table_file(p, t, layout, root) for p in files[t]] for t in TABLES}
    present_bar_fields = {c for f in frames["market_bars"] for c in f.columns}
    missing_fields = tuple(
        c for c in ("open", "high", "low", "volume")
        if c not in present_bar_fields
        or all(f[c].null_count() == f.height for f in frames["market_bars"] if c in f.columns)
    )
    raw = {t: _concat(frames[t], SPECS[t]) for t in TABLES}
    warn: list[str] = []
    derived = not files["universe"]
    if derived:
        warn.append(SURVIVORSHIP_WARNING)
        warnings.warn(SURVIVORSHIP_WARNING, stacklevel=2)
        raw["universe"] = derive_universe(raw["market_bars"]).with_columns(
            pl.lit("(derived from bars)").alias("_file"), pl.lit(None, pl.UInt32).alias("_row"))
    problems: list[Problem] = []
    if layout.bars_adjusted:
        real_actions = raw["corporate_actions"].filter((pl.col("split_ratio") != 1.0) | (pl.col("cash_dividend") != 0.0))
        if real_actions.height:
            problems.append(Problem(
                "corporate_actions", "adjusted_twice",
                f"{LAYOUT_FILE} says bars_adjusted: true, and {real_actions.height} corporate action(s) "
                "would adjust the prices a second time: remove corporate_actions or give unadjusted bars",
                _locations(real_actions),
            ))
    as_given = {t: raw[t] for t in REFERENCE_TABLES}
    ruled = _apply_rules(raw, layout, problems)
    universe_rows = ruled["universe"]
    # the rule-based versions of the universe (listing, delisting); file rows keep their origin
    universe = universe_versions(universe_rows.drop("_file", "_row"))
    origin = universe_rows.select("instrument_id", "_file", "_row").unique("instrument_id", keep="first")
    universe_annotated = universe.join(origin, on="instrument_id", how="left")

    contract = {t: ruled[t].drop("_file", "_row") for t in ("market_bars", "corporate_actions", "fundamentals")}
    contract["universe"] = universe
    _check("universe", universe_annotated, quality.check_universe(universe), problems)
    bars_sorted = ruled["market_bars"].sort("date", "instrument_id")
    bars = bars_sorted.drop("_file", "_row")
    unknown = sorted(set(bars["instrument_id"].unique().to_list()) - set(universe["instrument_id"].to_list()))
    notes = {"unknown_instrument": f"instruments in the bars but not in the universe: {unknown}. "}
    _check("market_bars", bars_sorted, quality.check_market_bars(bars, universe, as_of=as_of), problems, notes)
    actions = None if layout.bars_adjusted else contract["corporate_actions"]
    _check("market_bars", bars_sorted, quality.check_price_jump(bars, bars.clear(), actions), problems)
    # rows without a knowledge_time rule already failed: their null times would only repeat it
    undatable = {p.table for p in problems if p.rule == "filing_lag_missing"}
    for table, check in (("corporate_actions", quality.check_corporate_actions), ("fundamentals", quality.check_fundamentals)):
        if table not in undatable:
            _check(table, ruled[table], check(contract[table]), problems)
    benchmark = _benchmark(root, layout, problems)
    if problems:
        raise SourceRejected(root, problems)
    tables = MarketData(
        universe=universe,
        market_bars=bars,
        corporate_actions=contract["corporate_actions"].sort("instrument_id", "ex_date", "knowledge_time"),
        fundamentals=contract["fundamentals"].sort("instrument_id", "period_end", "field", "knowledge_time"),
    )
    return FileSourceData(
        tables=tables,
        as_given={t: as_given[t].drop("_file", "_row") for t in REFERENCE_TABLES},
        layout=layout,
        files={t: tuple(str(p.relative_to(root)) for p in files[t]) for t in TABLES},
        missing_bar_fields=missing_fields,
        missing_tables=tuple(t for t in REFERENCE_TABLES if not files[t]),
        universe_derived=derived,
        warnings=tuple(warn),
        benchmark=benchmark,
    )


def _benchmark(root: Path, layout: Layout, problems: list[Problem]) -> pl.DataFrame | None:
    """benchmark.csv|.parquet (date, close), checked by ``quality.check_benchmark``."""
    found = table_files(root, BENCHMARK)
    if not found:
        return None
    annotated = _concat([read_table_file(p, BENCHMARK, layout, root) for p in found], SPECS[BENCHMARK])
    annotated = annotated.sort("date", maintain_order=True)
    frame = annotated.drop("_file", "_row")
    _check(BENCHMARK, annotated, quality.check_benchmark(frame), problems)
    return frame


def read_bars_file(path: str | Path, layout: Layout, root: Path | None = None) -> pl.DataFrame:
    """One bars file as contract rows (optional fields null, knowledge-time rule applied):
    how the landing folder reads a file when the source is a data directory, so a new day's
    file may use the directory's layout.yaml (mapping, date format, symbol from file name).
    Row rules are the caller's (the landing rules)."""
    frame = _concat([read_table_file(path, "market_bars", layout, root)], SPECS["market_bars"])
    ruled = frame.with_columns(bars_knowledge_time(layout.bars_knowledge_delay).cast(UTC_TIME).alias("knowledge_time"))
    return ruled.drop("_file", "_row")


# --------------------------------------------------------------------------- incremental


REFERENCE_KEYS: dict[str, tuple[str, ...]] = {
    "universe": ("instrument_id",),
    "corporate_actions": ("instrument_id", "ex_date"),
    "fundamentals": ("instrument_id", "field", "period_end"),
}


def reference_updates(
    stored: Mapping[str, pl.DataFrame | None],
    loaded: FileSourceData,
    now: dt.datetime,
) -> dict[str, pl.DataFrame]:
    """Rows to APPEND to each stored reference table (never an overwrite).

    First load (nothing stored): the loaded table, knowledge-time rules applied. Later
    loads: rows with their own knowledge_time that are not stored yet, plus rows without
    one that are new or differ from their key's latest stored version, stamped ``now`` (what
    arrived now was not known before; the rules apply to the first load only).
    """
    out: dict[str, pl.DataFrame] = {}
    for table in REFERENCE_TABLES:
        current = getattr(loaded.tables, table)
        have = stored.get(table)
        if have is None or have.height == 0:
            out[table] = current
            continue
        given = loaded.as_given[table]
        schema = SPECS[table].schema
        key = list(REFERENCE_KEYS[table])
        dated = given.filter(pl.col("knowledge_time").is_not_null()).join(
            have.select(*key, "knowledge_time"), on=[*key, "knowledge_time"], how="anti", nulls_equal=True
        )
        undated = given.filter(pl.col("knowledge_time").is_null())
        fresh = new_versions(have, undated, key, now) if undated.height else undated
        out[table] = pl.concat([dated, fresh]).select(list(schema)).cast(dict(schema)).sort([*key, "knowledge_time"])
    return out


# --------------------------------------------------------------------------- writing


BAR_SPLITS = ("symbol", "year", "single")


def _write(frame: pl.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        frame.write_parquet(path)
    else:
        frame.write_csv(path, date_format="%Y-%m-%d", datetime_format="%Y-%m-%dT%H:%M:%S%.6f%:z", float_precision=None)
    return path


def write_data_dir(
    data_dir: str | Path,
    tables: MarketData,
    *,
    fmt: str = "parquet",
    bars_split: str = "symbol",
    layout: Mapping[str, object] | None = None,
    drop_bar_columns: tuple[str, ...] = (),
) -> list[Path]:
    """Write contract tables into the documented layout (the inverse of `load_data_dir`):
    bars one file per symbol, per year or a single file; reference tables as one file each
    (empty ones are left out); `layout` (if given) as layout.yaml. Returns the paths."""
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt={fmt!r} must be 'parquet' or 'csv'")
    if bars_split not in BAR_SPLITS:
        raise ValueError(f"bars_split={bars_split!r} must be one of {BAR_SPLITS}")
    root = Path(data_dir)
    suffix = f".{fmt}"
    written = []
    bars = tables.market_bars.drop(list(drop_bar_columns))
    if bars_split == "single":
        written.append(_write(bars, root / BARS_DIR / f"bars{suffix}"))
    else:
        by = pl.col("instrument_id") if bars_split == "symbol" else pl.col("date").dt.year().cast(pl.String)
        for (name,), part in bars.with_columns(by.alias("_part")).sort("_part", "date", "instrument_id").group_by(
            "_part", maintain_order=True
        ):
            written.append(_write(part.drop("_part"), root / BARS_DIR / f"{name}{suffix}"))
    for table in REFERENCE_TABLES:
        frame = getattr(tables, table)
        if frame.height:
            written.append(_write(frame, root / f"{table}{suffix}"))
    if layout:
        path = root / LAYOUT_FILE
        path.write_text(yaml.safe_dump(dict(layout), sort_keys=False))
        written.append(path)
    return written
