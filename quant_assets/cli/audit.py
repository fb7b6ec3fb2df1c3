"""``python -m quant_assets audit``: print the audit trail (``quant_assets.audit``), oldest first."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Iterable, Sequence

import polars as pl

from quant_assets.audit import ACTIONS, read


def _parse_since(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--since {text!r} is not an ISO date or time") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def format_rows(frame: pl.DataFrame) -> Iterable[str]:
    for r in frame.iter_rows(named=True):
        what = r["object"] + (f" v{r['model_version']}" if r["model_version"] else "")
        parts = r["partitions"] or []
        if parts:
            what += f" [{parts[0]}" + (f" .. {parts[-1]}, {len(parts)}]" if len(parts) > 1 else "]")
        run = f" run {r['dagster_run_id'][:8]}" if r["dagster_run_id"] else ""
        why = f" ({r['reason']})" if r["reason"] else ""
        yield f"{r['time'].isoformat()} {r['actor']} {r['action']} {what}{run}{why}"


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m quant_assets audit``: print the audit trail, oldest first."""
    parser = argparse.ArgumentParser(prog="quant_assets audit", description=cli.__doc__)
    parser.add_argument("--action", choices=ACTIONS)
    parser.add_argument("--since", type=_parse_since, help="ISO date/time (UTC if no zone)")
    parser.add_argument("--object", dest="obj", help="asset key or model name")
    parser.add_argument("--warehouse", help="warehouse root (default: QUANT_WAREHOUSE_URI)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    frame = read(args.warehouse, args.action, args.since, args.obj)
    if args.json:
        for row in frame.iter_rows(named=True):
            print(json.dumps(row, default=str))
    else:
        for line in format_rows(frame):
            print(line)
    return 0
