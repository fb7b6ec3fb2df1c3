"""The file source: market-bar files dropped into a landing folder (Parquet or CSV).

Conventions
-----------
- A landing file holds rows of the ``market_bars`` contract: date, instrument_id, open, high,
  low, close, volume, knowledge_time (any column order; the reader returns contract order).
- The format comes from the suffix: ``.parquet`` / ``.pq`` or ``.csv`` (comma-delimited, header
  row). CSV dates are ISO ``YYYY-MM-DD``; CSV knowledge_time is ISO-8601 WITH a timezone
  (``Z`` or ``+HH:MM``; ``T`` or a space between date and time), converted to UTC. Empty CSV
  fields are nulls and left to the quality checks.
- A file that cannot become a contract frame raises ``LandingFileError`` naming the file,
  the rule (``file_type``, ``unreadable``, ``empty``, ``truncated``, ``delimiter``,
  ``columns``, ``dtype``, ``timezone``) and the offending columns/rows (row numbers are 1-based data rows).
  Row-level content (prices, duplicates, trading days) is the job of ``quality.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import polars as pl

from quant_assets.data.simulator import MARKET_BARS_SCHEMA

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)
LANDING_SUFFIXES = PARQUET_SUFFIXES + CSV_SUFFIXES
_MAX_SHOWN = 5
# what a corrupt, truncated or undecodable file raises from the polars readers
_READ_ERRORS = (pl.exceptions.PolarsError, OSError, UnicodeDecodeError)
_NUMERIC = ("open", "high", "low", "close", "volume")
_OTHER_DELIMITERS = (";", "\t", "|")
_ISO_WITH_OFFSET = "%Y-%m-%dT%H:%M:%S%.f%z"
# a date and a time of day with nothing after it: a timestamp without a timezone
_NAIVE_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$"


class LandingFileError(ValueError):
    """A landing file that cannot be read as market bars."""

    def __init__(self, path: str | Path, rule: str, message: str) -> None:
        self.path = Path(path)
        self.rule = rule
        self.detail = message
        super().__init__(f"landing file {self.path}: rule '{rule}': {message}")


def list_landing_files(folder: str | Path) -> list[Path]:
    """Parquet and CSV files directly in `folder`, sorted by name; [] when it does not exist.

    Hidden and in-progress names (starting with '.' or '_') are skipped so that a writer can
    drop a temporary file and rename it when complete.
    """
    root = Path(folder)
    if not root.exists():
        return []
    if not root.is_dir():
        raise NotADirectoryError(f"landing folder {root} is not a directory")
    return sorted(
        p
        for p in root.iterdir()
        if p.is_file()
        and p.suffix.lower() in LANDING_SUFFIXES
        and not p.name.startswith((".", "_"))
    )


def write_market_bars_file(df: pl.DataFrame, path: str | Path) -> Path:
    """Write a contract market_bars frame as Parquet or CSV (by suffix); returns the path."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in LANDING_SUFFIXES:
        raise ValueError(f"{target}: suffix {target.suffix!r} is not one of {LANDING_SUFFIXES}")
    if dict(df.schema) != MARKET_BARS_SCHEMA:
        raise ValueError(
            f"{target}: frame schema {dict(df.schema)} is not the market_bars contract "
            f"{MARKET_BARS_SCHEMA}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix in PARQUET_SUFFIXES:
        df.write_parquet(target)
    else:
        df.write_csv(
            target,
            date_format="%Y-%m-%d",
            datetime_format="%Y-%m-%dT%H:%M:%S%.6f%:z",
            float_precision=None,
        )
    return target


def read_market_bars_file(path: str | Path) -> pl.DataFrame:
    """Read one landing file into the market_bars contract schema (see module docstring)."""
    source = Path(path)
    suffix = source.suffix.lower()
    if suffix not in LANDING_SUFFIXES:
        raise LandingFileError(
            source, "file_type", f"suffix {source.suffix!r} is not one of {LANDING_SUFFIXES}"
        )
    try:
        size = source.stat().st_size
    except OSError as exc:
        raise LandingFileError(source, "unreadable", f"cannot open the file: {exc}") from exc
    if size == 0:
        raise LandingFileError(source, "empty", "the file has 0 bytes")
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(source)
    return _read_csv(source)


def _check_columns(source: Path, columns: list[str]) -> None:
    expected = list(MARKET_BARS_SCHEMA)
    missing = [c for c in expected if c not in columns]
    extra = [c for c in columns if c not in MARKET_BARS_SCHEMA]
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if missing or extra or duplicated:
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if extra:
            parts.append(f"unexpected columns {extra}")
        if duplicated:
            parts.append(f"duplicated columns {duplicated}")
        raise LandingFileError(
            source, "columns", "; ".join(parts) + f" (expected exactly {expected})"
        )


def _check_not_empty(source: Path, df: pl.DataFrame) -> None:
    if df.height == 0:
        raise LandingFileError(source, "empty", "the file has a header but no rows")


def _read_parquet(source: Path) -> pl.DataFrame:
    df = read_raw_parquet(source)
    _check_columns(source, df.columns)
    problems: list[str] = []
    casts: list[pl.Expr] = []
    for col, want in MARKET_BARS_SCHEMA.items():
        have = df.schema[col]
        if col in _NUMERIC and have.is_numeric():
            casts.append(pl.col(col).cast(pl.Float64))  # integer volumes/prices are fine
        elif col == "instrument_id" and have in (pl.String(), pl.Categorical()):
            casts.append(pl.col(col).cast(pl.String))
        elif col == "knowledge_time" and isinstance(have, pl.Datetime):
            if have.time_zone is None:
                raise LandingFileError(
                    source,
                    "timezone",
                    f"column knowledge_time is timezone-naive {have}; "
                    "it must carry a timezone (it is converted to UTC)",
                )
            casts.append(pl.col(col).dt.convert_time_zone("UTC").dt.cast_time_unit("us"))
        elif have == want:
            casts.append(pl.col(col))
        else:
            problems.append(f"{col} is {have} (expected {want})")
    if problems:
        raise LandingFileError(source, "dtype", "wrong column types: " + "; ".join(problems))
    return df.select(casts).select(list(MARKET_BARS_SCHEMA))


def _bad_rows(raw: pl.DataFrame, col: str, parsed: pl.Series) -> str:
    # a value that was present but did not parse; 1-based data row numbers
    bad = raw.with_row_index("row", offset=1).filter(
        pl.col(col).is_not_null() & (pl.col(col).str.strip_chars() != "") & parsed.is_null()
    )
    if bad.height == 0:
        return ""
    shown = ", ".join(f"row {r}: {v!r}" for r, v in bad.select("row", col).head(_MAX_SHOWN).rows())
    return f"{col}: {bad.height} unparseable value(s) ({shown})"


def _check_row_lengths(source: Path, width: int) -> None:
    """Reject rows with fewer fields than the header (polars pads them with nulls)."""
    # only called when nulls exist, so the Python pass is rare
    short: list[tuple[int, int]] = []
    with source.open(newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for row_number, row in enumerate(reader, start=1):
            if row and len(row) < width:
                short.append((row_number, len(row)))
    if short:
        shown = ", ".join(f"row {r} has {n} field(s)" for r, n in short[:_MAX_SHOWN])
        raise LandingFileError(
            source,
            "truncated",
            f"{len(short)} row(s) with fewer than {width} fields ({shown}); "
            "the file looks truncated or malformed",
        )


def read_raw_csv(source: Path) -> pl.DataFrame:
    """A CSV file as all-string columns (stripped, "" -> null), after the file-level rules
    (``unreadable``, ``delimiter``, ``empty``, ``truncated``)."""
    try:
        raw = pl.read_csv(source, infer_schema=False)
    except _READ_ERRORS as exc:
        raise LandingFileError(source, "unreadable", f"not a readable CSV file: {exc}") from exc
    if raw.width == 1 and any(d in raw.columns[0] for d in _OTHER_DELIMITERS):
        used = next(d for d in _OTHER_DELIMITERS if d in raw.columns[0])
        raise LandingFileError(
            source,
            "delimiter",
            f"the header is one column {raw.columns[0]!r}: the file looks {used!r}-delimited; "
            "CSV files must be comma-delimited",
        )
    _check_not_empty(source, raw)
    if raw.select(pl.any_horizontal(pl.all().is_null().any())).item():
        _check_row_lengths(source, raw.width)
    return raw.with_columns(pl.col(c).str.strip_chars().replace("", None) for c in raw.columns)


def read_raw_parquet(source: Path) -> pl.DataFrame:
    """A Parquet file as stored, after the file-level rules (``unreadable``, ``empty``)."""
    try:
        df = pl.read_parquet(source)
    except _READ_ERRORS as exc:
        raise LandingFileError(
            source, "unreadable", f"not a readable Parquet file (truncated or corrupt?): {exc}"
        ) from exc
    _check_not_empty(source, df)
    return df


def parse_utc_csv_times(source: Path, raw: pl.DataFrame, col: str) -> pl.Series:
    """An all-string CSV column of ISO-8601 times WITH a timezone as Datetime("us", "UTC");
    LandingFileError (``timezone``) for naive values; unparseable values are null (the
    caller reports them with ``bad_rows``)."""
    values = raw[col]
    naive = raw.with_row_index("row", offset=1).filter(values.str.contains(_NAIVE_TIMESTAMP).fill_null(False))
    if naive.height:
        shown = ", ".join(
            f"row {r}: {v!r}" for r, v in naive.select("row", col).head(_MAX_SHOWN).rows()
        )
        raise LandingFileError(
            source,
            "timezone",
            f"{col}: {naive.height} value(s) without a timezone ({shown}); "
            "write ISO-8601 with 'Z' or '+HH:MM'",
        )
    normalised = (
        values.str.replace(" ", "T", literal=True)
        .str.replace(r"Z$", "+00:00")
        .str.replace(r"([+-]\d{2})$", "${1}:00")
    )
    return normalised.str.to_datetime(_ISO_WITH_OFFSET, time_unit="us", time_zone="UTC", strict=False)


def bad_rows(raw: pl.DataFrame, col: str, parsed: pl.Series) -> str:
    """'col: n unparseable value(s) (row r: value, ...)' or '' (public name of _bad_rows)."""
    return _bad_rows(raw, col, parsed)


def _read_csv(source: Path) -> pl.DataFrame:
    raw = read_raw_csv(source)
    _check_columns(source, raw.columns)

    kt = raw["knowledge_time"]
    naive_mask = kt.str.contains(_NAIVE_TIMESTAMP)
    naive = raw.with_row_index("row", offset=1).filter(naive_mask.fill_null(False))
    if naive.height:
        shown = ", ".join(
            f"row {r}: {v!r}"
            for r, v in naive.select("row", "knowledge_time").head(_MAX_SHOWN).rows()
        )
        raise LandingFileError(
            source,
            "timezone",
            f"knowledge_time: {naive.height} value(s) without a timezone ({shown}); "
            "write ISO-8601 with 'Z' or '+HH:MM'",
        )

    normalised = (
        kt.str.replace(" ", "T", literal=True)
        .str.replace(r"Z$", "+00:00")
        .str.replace(r"([+-]\d{2})$", "${1}:00")
    )
    parsed = {
        "date": raw["date"].str.to_date("%Y-%m-%d", strict=False),
        "instrument_id": raw["instrument_id"],
        **{c: raw[c].cast(pl.Float64, strict=False) for c in _NUMERIC},
        "knowledge_time": normalised.str.to_datetime(
            _ISO_WITH_OFFSET, time_unit="us", time_zone="UTC", strict=False
        ),
    }
    problems = [
        p for c in ("date", *_NUMERIC, "knowledge_time") if (p := _bad_rows(raw, c, parsed[c]))
    ]
    if problems:
        raise LandingFileError(source, "dtype", "; ".join(problems))
    return pl.DataFrame([parsed[c].alias(c) for c in MARKET_BARS_SCHEMA])
