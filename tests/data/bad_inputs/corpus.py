"""The bad-input corpus: one landing file per kind of bad market-bars input.

Each kind corrupts a good frame of one trading day's bars (contract schema, as the
warehouse already stores them) and writes one file. ``where`` says which layer must
reject it and ``rule`` the rule name expected in the message:

- ``file``: ``quant_assets/data/files.py`` (LandingFileError while reading);
- ``quality``: a rule of ``quant_assets/data/quality.py`` (the blocking asset checks of
  market_bars, and the landing sensor, which runs the same rules);
- ``landing``: a rule that only the landing sensor applies today
  (``sensors/landing.py`` ``LANDING_RULES``; it needs the evaluation time or stored bars).

``asset_day`` is the partition whose market_bars run would read the file; None when no
partition's window covers the bad rows (a holiday is in no trading-day window), so only
the landing sensor can see them.

Write the whole corpus into a folder: ``python tests/data/bad_inputs/corpus.py OUT_DIR``.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

GOOD_DAY = dt.date(2022, 6, 29)
HOLIDAY = dt.date(2022, 7, 4)  # Independence Day: in no partition's window
WEEKEND_PARTITION = dt.date(2022, 7, 1)  # its window [07-01, 07-04) covers the weekend
SATURDAY = dt.date(2022, 7, 2)


@dataclass(frozen=True)
class BadKind:
    name: str
    where: str  # "file" | "quality" | "landing"
    rule: str
    suffix: str
    make: Callable[[pl.DataFrame, Path], None]  # (good bars of GOOD_DAY, target path)
    asset_day: dt.date | None = GOOD_DAY


def _set(df: pl.DataFrame, col: str, value, rows: int = 1) -> pl.DataFrame:
    idx = pl.int_range(pl.len())
    return df.with_columns(
        pl.when(idx < rows).then(pl.lit(value, dtype=df.schema[col])).otherwise(pl.col(col)).alias(col)
    )


def _parquet(transform: Callable[[pl.DataFrame], pl.DataFrame]):
    def make(good: pl.DataFrame, path: Path) -> None:
        transform(good).write_parquet(path)

    return make


def _csv(transform: Callable[[pl.DataFrame], pl.DataFrame], **kwargs):
    def make(good: pl.DataFrame, path: Path) -> None:
        frame = transform(good)
        naive = frame.schema.get("knowledge_time") == pl.Datetime("us")
        frame.write_csv(
            path, date_format="%Y-%m-%d",
            # a naive time has no offset to print
            datetime_format="%Y-%m-%dT%H:%M:%S%.6f" if naive else "%Y-%m-%dT%H:%M:%S%.6f%:z",
            float_precision=None, **kwargs,
        )

    return make


def _text(body: Callable[[pl.DataFrame], str]):
    def make(good: pl.DataFrame, path: Path) -> None:
        path.write_text(body(good))

    return make


def _truncated_parquet(good: pl.DataFrame, path: Path) -> None:
    good.write_parquet(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy cut off half-way


def _truncated_csv(good: pl.DataFrame) -> str:
    full = good.write_csv(datetime_format="%Y-%m-%dT%H:%M:%S%.6f%:z", float_precision=None)
    lines = full.splitlines()
    return "\n".join(lines[:-1] + [lines[-1][: len(lines[-1]) // 2]]) + "\n"


def _empty(good: pl.DataFrame, path: Path) -> None:
    path.write_bytes(b"")


def _jump(df: pl.DataFrame) -> pl.DataFrame:
    first = pl.int_range(pl.len()) == 0
    return df.with_columns(
        pl.when(first).then(pl.col(c) * 50).otherwise(pl.col(c)).alias(c)
        for c in ("open", "high", "low", "close")
    )


def _swap_high_low(df: pl.DataFrame) -> pl.DataFrame:
    first = pl.int_range(pl.len()) == 0
    return df.with_columns(
        pl.when(first).then(pl.col("low")).otherwise(pl.col("high")).alias("high"),
        pl.when(first).then(pl.col("high")).otherwise(pl.col("low")).alias("low"),
    )


def _holiday(df: pl.DataFrame) -> pl.DataFrame:
    # the good partition's bars plus one bar dated on the holiday
    extra = df.head(1).with_columns(
        pl.lit(HOLIDAY).alias("date"), pl.col("knowledge_time") + pl.duration(days=5)
    )
    return pl.concat([df, extra])


KINDS: list[BadKind] = [
    BadKind("nan_price", "quality", "price_positive_finite", ".parquet",
            _parquet(lambda d: _set(d, "close", float("nan")))),
    BadKind("inf_price", "quality", "price_positive_finite", ".parquet",
            _parquet(lambda d: _set(d, "high", float("inf")))),
    BadKind("zero_price", "quality", "price_positive_finite", ".parquet",
            _parquet(lambda d: _set(d, "low", 0.0))),
    BadKind("negative_price", "quality", "price_positive_finite", ".csv",
            _csv(lambda d: _set(d, "open", -5.0))),
    BadKind("null_price", "quality", "price_positive_finite", ".csv",
            _csv(lambda d: _set(d, "close", None))),
    BadKind("high_below_low", "quality", "ohlc_consistency", ".parquet", _parquet(_swap_high_low)),
    BadKind("negative_volume", "quality", "volume_non_negative", ".parquet",
            _parquet(lambda d: _set(d, "volume", -100.0))),
    BadKind("duplicate_key", "quality", "duplicate_key", ".parquet",
            _parquet(lambda d: pl.concat([d, d.head(2)]).sort("date", "instrument_id"))),
    BadKind("unsorted_rows", "landing", "row_order", ".parquet",
            _parquet(lambda d: d.sort("instrument_id", descending=True))),
    BadKind("missing_column", "file", "columns", ".parquet", _parquet(lambda d: d.drop("volume"))),
    BadKind("extra_column", "file", "columns", ".csv",
            _csv(lambda d: d.with_columns(pl.lit("x").alias("venue")))),
    BadKind("wrong_dtype", "file", "dtype", ".parquet",
            _parquet(lambda d: d.with_columns(pl.col("date").cast(pl.Datetime("us"))))),
    BadKind("string_numbers", "file", "dtype", ".parquet",
            _parquet(lambda d: d.with_columns(pl.col("close").cast(pl.String)))),
    BadKind("unparseable_number_csv", "file", "dtype", ".csv",
            _csv(lambda d: d.with_columns(pl.col("close").cast(pl.String)).pipe(_set, "close", "12,5"))),
    BadKind("timezone_naive_csv", "file", "timezone", ".csv",
            _csv(lambda d: d.with_columns(pl.col("knowledge_time").dt.replace_time_zone(None)))),
    BadKind("timezone_naive_parquet", "file", "timezone", ".parquet",
            _parquet(lambda d: d.with_columns(pl.col("knowledge_time").dt.replace_time_zone(None)))),
    BadKind("null_knowledge_time", "quality", "knowledge_time_present", ".csv",
            _csv(lambda d: _set(d, "knowledge_time", None))),
    BadKind("knowledge_before_event", "quality", "knowledge_time_before_date", ".parquet",
            _parquet(lambda d: d.with_columns(pl.col("knowledge_time") - pl.duration(days=2)))),
    BadKind("knowledge_in_future", "landing", "knowledge_time_future", ".parquet",
            _parquet(lambda d: _set(d, "knowledge_time",
                                    dt.datetime(2099, 1, 1, tzinfo=dt.UTC)))),
    BadKind("unknown_instrument", "quality", "unknown_instrument", ".parquet",
            _parquet(lambda d: _set(d, "instrument_id", "AAA_UNKNOWN"))),
    BadKind("empty_file", "file", "empty", ".parquet", _empty),
    BadKind("header_only_csv", "file", "empty", ".csv", _csv(lambda d: d.clear())),
    BadKind("truncated_parquet", "file", "unreadable", ".parquet", _truncated_parquet),
    BadKind("truncated_csv", "file", "truncated", ".csv", _text(_truncated_csv)),
    BadKind("wrong_delimiter", "file", "delimiter", ".csv", _csv(lambda d: d, separator=";")),
    BadKind("restatement_older", "landing", "restatement_older", ".parquet",
            _parquet(lambda d: d.with_columns(pl.col("knowledge_time") - pl.duration(hours=1)))),
    BadKind("holiday_bars", "quality", "trading_day", ".parquet", _parquet(_holiday),
            asset_day=None),
    BadKind("weekend_bars", "quality", "trading_day", ".parquet",
            _parquet(lambda d: d.with_columns(
                pl.lit(SATURDAY).alias("date"),
                pl.col("knowledge_time") + pl.duration(days=3),
            )),
            asset_day=WEEKEND_PARTITION),
    BadKind("absurd_price_jump", "landing", "price_jump", ".parquet", _parquet(_jump)),
]


def write_kind(kind: BadKind, good: pl.DataFrame, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind.name}{kind.suffix}"
    kind.make(good, path)
    return path


def good_bars(n_instruments: int = 30, seed: int = 7) -> pl.DataFrame:
    """GOOD_DAY's bars exactly as the test settings' simulator makes them."""
    from quant_assets.data.simulator import SimulatorConfig, simulate_market

    md = simulate_market(SimulatorConfig(
        n_instruments=n_instruments, seed=seed,
        start=dt.date(2022, 1, 3), end=dt.date(2023, 4, 28),
    ))
    return md.market_bars.filter(pl.col("date") == GOOD_DAY).sort("date", "instrument_id")


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bad_inputs_out")
    good = good_bars()
    for k in KINDS:
        print(write_kind(k, good, out))


def with_zero_split(simulated):
    """``data.market.simulated_market`` with the first split ratio set to 0 (a bad vendor
    record): monkeypatch it in to feed the corporate_actions asset a zero split."""
    import polars as pl

    def zero_split(*args):
        data = simulated(*args)
        ca = data.corporate_actions.with_columns(
            pl.when(pl.int_range(pl.len()) == 0).then(0.0).otherwise(pl.col("split_ratio"))
            .alias("split_ratio")
        )
        return data._replace(corporate_actions=ca)

    return zero_split
