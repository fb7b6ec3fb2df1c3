"""Write the real daily prices bundled in skfolio's wheel into the documented file layout.

    python -m quant_assets.data.real_layout <dir> [--start 2015-01-02] [--end 2022-12-28]
                                                  [--symbols AAPL,MSFT,...]

The folder is then an ordinary ``QUANT_SOURCE=files QUANT_DATA_DIR=<dir>`` source, read
through the same code and rules as a user's own files. What the data is, honestly:

- survivors only: the 20 names are S&P 500 members as of the data's collection; names that
  left the index or died are absent, so any backtest on them is survivorship-biased;
- close-only: no open/high/low/volume, so the features that need them are null
  (``features.availability.null_features``);
- adjusted: the closes are split- and dividend-adjusted (``bars_adjusted: true``, no
  corporate actions), so price levels embed later actions and are not point in time;
- no fundamentals: the fundamentals-based features are null;
- knowledge times follow the layout rules (a bar is known at its session's close).

The S&P 500 index level goes to ``benchmark.csv`` (date, close; ``benchmark_name`` in
layout.yaml), the report's benchmark; it is not one of the four raw tables. It is a price
index (no dividends) while the stocks' closes are dividend-adjusted. ``SOURCE.md`` in the folder repeats the caveats.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import polars as pl
import yaml

from quant_assets.data import real
from quant_assets.data.sources import BARS_DIR, LAYOUT_FILE

BENCHMARK_FILE = "benchmark.csv"
CAVEATS = (
    "survivors only: today's S&P 500 members; delisted names are absent (survivorship bias)",
    "close-only: no open/high/low/volume; features that need them are null",
    "adjusted: closes are split- and dividend-adjusted; price levels are not point in time",
    "no fundamentals and no corporate actions",
    "benchmark: the S&P 500 price index (without dividends), against dividend-adjusted stocks",
)
LAYOUT = {"bars_adjusted": True, "benchmark_name": "S&P 500 index"}


def write_real_layout(
    data_dir: str | Path,
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    symbols: list[str] | None = None,
) -> dict[str, object]:
    """Write skfolio's bundled S&P 500 prices into `data_dir` (module doc); returns a summary
    (symbols, first and last day, rows, caveats). Raises ValueError for unknown symbols or an
    empty selection."""
    prices = real.load_sp500_prices()
    index = real.load_sp500_index()
    known = sorted(real.SECTORS)
    if symbols is not None:
        unknown = sorted(set(symbols) - set(known))
        if unknown:
            raise ValueError(f"symbols {unknown} are not in the skfolio data set {known}")
        prices = prices.filter(pl.col("instrument_id").is_in(symbols))
    if start is not None:
        prices, index = prices.filter(pl.col("date") >= start), index.filter(pl.col("date") >= start)
    if end is not None:
        prices, index = prices.filter(pl.col("date") <= end), index.filter(pl.col("date") <= end)
    if prices.height == 0:
        raise ValueError(f"no prices between {start} and {end} for {symbols or known}")
    root = Path(data_dir)
    (root / BARS_DIR).mkdir(parents=True, exist_ok=True)
    for stale in (root / BARS_DIR).glob("*.csv"):  # a narrower rerun must not keep old names
        if stale.stem in real.SECTORS:
            stale.unlink()
    for (symbol,), part in prices.sort("instrument_id", "date").group_by("instrument_id", maintain_order=True):
        part.select("date", "instrument_id", "close").write_csv(root / BARS_DIR / f"{symbol}.csv", date_format="%Y-%m-%d")
    # survivors: every name listed from its first bar on and never delisted (that is the bias)
    universe = (
        prices.group_by("instrument_id").agg(pl.col("date").min().alias("listed_from"))
        .join(real.sectors_frame(), on="instrument_id")
        .select("instrument_id", "sector", "listed_from", pl.lit(None, pl.Date).alias("listed_until"))
        .sort("instrument_id")
    )
    universe.write_csv(root / "universe.csv", date_format="%Y-%m-%d")
    index.write_csv(root / BENCHMARK_FILE, date_format="%Y-%m-%d")
    (root / LAYOUT_FILE).write_text(
        "# written by quant_assets.data.real_layout from " + real.SOURCE + "\n" + yaml.safe_dump(LAYOUT)
    )
    (root / "SOURCE.md").write_text(
        f"# Real daily prices\n\nSource: {real.SOURCE} (BSD-3-Clause; test/example data).\n\n"
        + "".join(f"- {c}\n" for c in CAVEATS)
    )
    return {
        "symbols": sorted(universe["instrument_id"].to_list()),
        "first_day": prices["date"].min(),
        "last_day": prices["date"].max(),
        "rows": prices.height,
        "caveats": list(CAVEATS),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--start", type=dt.date.fromisoformat)
    parser.add_argument("--end", type=dt.date.fromisoformat)
    parser.add_argument("--symbols", type=lambda s: [x.strip() for x in s.split(",") if x.strip()])
    args = parser.parse_args(argv)
    summary = write_real_layout(args.data_dir, start=args.start, end=args.end, symbols=args.symbols)
    print(f"wrote {summary['rows']} bars of {len(summary['symbols'])} names "
          f"{summary['first_day']}..{summary['last_day']} to {args.data_dir}")
    for caveat in summary["caveats"]:
        print(f"  caveat: {caveat}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
