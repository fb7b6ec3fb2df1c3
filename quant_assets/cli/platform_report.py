"""``python -m quant_assets platform-report``: queue time, throughput, cost, failures and
retries by asset, pool and day, read from a Dagster instance's runs and event log (the
``econ.*`` metadata that ``quant_assets.run_costs.measured`` records)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from quant_assets.placement.policy import POOL_LABEL, PlacementPolicy
from quant_assets.run_costs import METADATA_PREFIX, default_policy

# One row per materialisation / per failed asset step; what `summarise` aggregates.
MATERIALISATION_SCHEMA = {
    "asset": pl.String,
    "partition": pl.String,
    "run_id": pl.String,
    "pool": pl.String,
    "day": pl.Date,
    "queue_s": pl.Float64,
    "wall_s": pl.Float64,
    "cpu_s": pl.Float64,
    "peak_rss_mib": pl.Float64,
    "rows_out": pl.Int64,
    "cost": pl.Float64,
    "data_version": pl.String,
}
FAILURE_SCHEMA = {
    "asset": pl.String,
    "run_id": pl.String,
    "pool": pl.String,
    "day": pl.Date,
    "kind": pl.String,  # "failure" (the step gave up) or "retry" (the step was retried)
}

_GROUPINGS = {"asset": ["asset"], "pool": ["pool"], "day": ["day"]}


def summarise(
    materialisations: pl.DataFrame, failures: pl.DataFrame
) -> dict[str, pl.DataFrame]:
    """Aggregate by asset, by pool and by day: materialisations, steps, runs, queue time
    p50/p90, wall time p50, rows out, throughput (rows out / wall second over the group),
    cost total and per run, failures and retries, and (by asset) the data versions written.

    A range run materialises many partitions in one step, and every partition's event
    carries that step's measurements; they are counted once per step (run, asset), not
    once per partition."""
    steps = materialisations.group_by(["run_id", "asset"], maintain_order=True).agg(
        pl.len().alias("partitions"),
        pl.col("pool").drop_nulls().first(),
        pl.col("day").min(),
        pl.col("queue_s", "wall_s", "cpu_s", "peak_rss_mib", "rows_out", "cost").first(),
        pl.col("data_version").drop_nulls().unique(),
    )
    out: dict[str, pl.DataFrame] = {}
    for name, keys in _GROUPINGS.items():
        agg = [
            pl.col("partitions").sum().alias("materialisations"),
            pl.len().alias("steps"),
            pl.col("run_id").n_unique().alias("runs"),
            pl.col("queue_s").quantile(0.5, "linear").alias("queue_p50_s"),
            pl.col("queue_s").quantile(0.9, "linear").alias("queue_p90_s"),
            pl.col("wall_s").quantile(0.5, "linear").alias("wall_p50_s"),
            pl.col("wall_s").sum().alias("wall_total_s"),
            pl.col("cpu_s").sum().alias("cpu_total_s"),
            pl.col("peak_rss_mib").max().alias("peak_rss_max_mib"),
            pl.col("rows_out").sum().alias("rows_out"),
            pl.col("cost").sum().alias("cost_total"),
        ]
        if name == "asset":
            agg.append(
                pl.col("data_version").list.explode(keep_nulls=False, empty_as_null=False)
                .drop_nulls().unique().sort()
                .alias("data_versions")
            )
        done = steps.group_by(keys).agg(agg)
        done = done.with_columns(
            pl.when(pl.col("wall_total_s") > 0)
            .then(pl.col("rows_out") / pl.col("wall_total_s"))
            .alias("rows_per_s"),
            (pl.col("cost_total") / pl.col("runs")).alias("cost_per_run"),
        )
        bad = failures.group_by(keys).agg(
            (pl.col("kind") == "failure").sum().cast(pl.Int64).alias("failures"),
            (pl.col("kind") == "retry").sum().cast(pl.Int64).alias("retries"),
        )
        table = done.join(bad, on=keys, how="full", coalesce=True).with_columns(
            pl.col("materialisations", "steps", "runs").fill_null(0).cast(pl.Int64),
            pl.col("failures", "retries").fill_null(0),
        )
        out[name] = table.sort(keys, nulls_last=True)
    return out


def _value(entry: Any) -> Any:
    return getattr(entry, "value", entry)


def _day(timestamp: float) -> dt.date:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).date()


def collect_records(
    instance: Any,
    *,
    since: dt.datetime | None = None,
    asset_pools: Mapping[str, str] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(materialisations, failures, runs) of every run created after ``since``.

    A materialisation's pool is its ``econ.pool`` metadata, else ``asset_pools``
    (asset key -> pool), else null; failures take the pool the asset has elsewhere."""
    from dagster import DagsterEventType, RunsFilter
    from dagster._core.storage.dagster_run import DagsterRunStatus

    wanted = {
        DagsterEventType.ASSET_MATERIALIZATION,
        DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
        DagsterEventType.ASSET_FAILED_TO_MATERIALIZE,
        DagsterEventType.STEP_UP_FOR_RETRY,
        DagsterEventType.STEP_FAILURE,
    }
    pools = dict(asset_pools or {})
    mats: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    filters = RunsFilter(created_after=since) if since is not None else None
    for record in instance.get_run_records(filters=filters):
        run = record.dagster_run
        queue_s = (
            max(0.0, record.start_time - record.create_timestamp.timestamp())
            if record.start_time is not None
            else None
        )
        runs.append({
            "run_id": run.run_id,
            "job": run.job_name,
            "status": run.status.value,
            "failed": run.status == DagsterRunStatus.FAILURE,
            "is_retry_of_run": "dagster/parent_run_id" in run.tags,
            "queue_s": queue_s,
            "day": record.create_timestamp.astimezone(dt.UTC).date(),
        })
        step_assets: dict[str, set[str]] = {}
        failed_assets: set[tuple[str, str]] = set()
        events = instance.all_logs(run.run_id, of_type=wanted)
        for entry in events:
            event = entry.dagster_event
            if event is None:
                continue
            kind = event.event_type
            if kind == DagsterEventType.ASSET_MATERIALIZATION_PLANNED:
                step_assets.setdefault(event.step_key or "", set()).add(
                    event.asset_key.to_user_string()
                )
            elif kind == DagsterEventType.ASSET_MATERIALIZATION:
                mat = event.event_specific_data.materialization
                meta = {k: _value(v) for k, v in mat.metadata.items()}
                asset = mat.asset_key.to_user_string()
                pool = meta.get(f"{METADATA_PREFIX}pool") or pools.get(asset)
                if pool:
                    pools.setdefault(asset, pool)
                version = meta.get("delta_version", (mat.tags or {}).get("dagster/data_version"))
                mats.append({
                    "asset": asset,
                    "partition": mat.partition,
                    "run_id": run.run_id,
                    "pool": pool,
                    "day": _day(entry.timestamp),
                    "queue_s": meta.get(f"{METADATA_PREFIX}queue_s", queue_s),
                    "wall_s": meta.get(f"{METADATA_PREFIX}wall_s"),
                    "cpu_s": meta.get(f"{METADATA_PREFIX}cpu_s"),
                    "peak_rss_mib": meta.get(f"{METADATA_PREFIX}peak_rss_mib"),
                    "rows_out": meta.get(f"{METADATA_PREFIX}rows_out",
                                         meta.get("dagster/row_count")),
                    "cost": meta.get(f"{METADATA_PREFIX}cost"),
                    "data_version": None if version is None else str(version),
                })
            elif kind == DagsterEventType.ASSET_FAILED_TO_MATERIALIZE:
                asset = event.asset_key.to_user_string()
                if (run.run_id, asset) not in failed_assets:
                    failed_assets.add((run.run_id, asset))
                    bad.append({"asset": asset, "run_id": run.run_id, "pool": None,
                                "day": _day(entry.timestamp), "kind": "failure"})
            elif kind == DagsterEventType.STEP_FAILURE:
                # older runs / steps without the per-asset event: count each planned asset once
                for asset in step_assets.get(event.step_key or "", ()):
                    if (run.run_id, asset) not in failed_assets:
                        failed_assets.add((run.run_id, asset))
                        bad.append({"asset": asset, "run_id": run.run_id, "pool": None,
                                    "day": _day(entry.timestamp), "kind": "failure"})
            elif kind == DagsterEventType.STEP_UP_FOR_RETRY:
                for asset in step_assets.get(event.step_key or "", ()) or {event.step_key or "?"}:
                    bad.append({"asset": asset, "run_id": run.run_id, "pool": None,
                                "day": _day(entry.timestamp), "kind": "retry"})
    for row in bad:
        row["pool"] = pools.get(row["asset"])
    return (
        pl.DataFrame(mats, schema=MATERIALISATION_SCHEMA),
        pl.DataFrame(bad, schema=FAILURE_SCHEMA),
        pl.DataFrame(runs, schema={
            "run_id": pl.String, "job": pl.String, "status": pl.String, "failed": pl.Boolean,
            "is_retry_of_run": pl.Boolean, "queue_s": pl.Float64, "day": pl.Date,
        }),
    )


@dataclass(frozen=True)
class PlatformReport:
    by_asset: pl.DataFrame
    by_pool: pl.DataFrame
    by_day: pl.DataFrame
    runs: pl.DataFrame  # one row per run: job, status, queue time, whether it retries a run
    currency: str = "USD"

    def totals(self) -> dict[str, Any]:
        runs = self.runs
        queue = runs.get_column("queue_s").drop_nulls()
        return {
            "runs": runs.height,
            "failed_runs": int(runs.get_column("failed").sum()) if runs.height else 0,
            "run_retries": int(runs.get_column("is_retry_of_run").sum()) if runs.height else 0,
            "run_queue_p50_s": queue.quantile(0.5, "linear") if queue.len() else None,
            "run_queue_p90_s": queue.quantile(0.9, "linear") if queue.len() else None,
            "materialisations": int(self.by_asset.get_column("materialisations").sum())
            if self.by_asset.height else 0,
            "cost_total": float(self.by_pool.get_column("cost_total").fill_null(0).sum())
            if self.by_pool.height else 0.0,
            "currency": self.currency,
        }

    def to_json(self) -> str:
        def rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
            return json.loads(frame.write_json())

        return json.dumps({
            "totals": self.totals(),
            "by_asset": rows(self.by_asset),
            "by_pool": rows(self.by_pool),
            "by_day": rows(self.by_day),
        }, indent=2, default=str)

    def to_text(self) -> str:
        cols = ["materialisations", "steps", "runs", "queue_p50_s", "queue_p90_s", "wall_p50_s",
                "rows_per_s", "cost_total", "cost_per_run", "failures", "retries"]
        totals = self.totals()
        lines = [
            f"quant-assets platform report: {totals['runs']} runs "
            f"({totals['failed_runs']} failed, {totals['run_retries']} run retries), "
            f"{totals['materialisations']} materialisations, "
            f"estimated cost {totals['cost_total']:.4f} {self.currency}",
        ]
        with pl.Config(tbl_rows=200, tbl_cols=20, tbl_width_chars=200, float_precision=4,
                       tbl_hide_dataframe_shape=True, fmt_str_lengths=60):
            for title, frame, key in (("By pool", self.by_pool, "pool"),
                                      ("By asset", self.by_asset, "asset"),
                                      ("By day", self.by_day, "day")):
                extra = ["data_versions"] if key == "asset" else []
                view = frame.select([key, *cols, *extra])
                if extra:
                    view = view.with_columns(
                        pl.col("data_versions").list.join(",").str.slice(0, 40)
                    )
                lines += ["", title, str(view)]
        return "\n".join(lines)


def platform_report(
    instance: Any,
    *,
    since: dt.datetime | None = None,
    asset_pools: Mapping[str, str] | None = None,
    policy: PlacementPolicy | None = None,
) -> PlatformReport:
    """Summarise the instance's runs and materialisations by asset, pool and day."""
    mats, failures, runs = collect_records(instance, since=since, asset_pools=asset_pools)
    tables = summarise(mats, failures)
    policy = policy or default_policy()
    currencies = {p.price.currency for p in policy.pools.values()}
    currency = currencies.pop() if len(currencies) == 1 else "mixed"
    return PlatformReport(tables["asset"], tables["pool"], tables["day"], runs, currency)


def asset_pools_of(assets: Iterable[Any]) -> dict[str, str]:
    """Asset key -> pool from placed definitions (their ``quant-assets/pool`` tag), so that
    failures of assets that never materialised are attributed to their pool."""
    out: dict[str, str] = {}
    for item in assets:
        for spec in getattr(item, "specs", ()):
            pool = spec.tags.get(POOL_LABEL)
            if pool:
                out[spec.key.to_user_string()] = pool
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m quant_assets platform-report [--days N] [--format text|json]``: the platform
    report of the instance at DAGSTER_HOME (default $QUANT_HOME/dagster)."""
    parser = argparse.ArgumentParser(
        prog="quant_assets platform-report",
        description="Queue time, throughput, cost, failures and retries by asset, pool and day.",
    )
    parser.add_argument("--days", type=int, default=None,
                        help="only runs created in the last N days (default: all)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--dagster-home", default=None,
                        help="instance directory (default: DAGSTER_HOME / QUANT_HOME settings)")
    args = parser.parse_args(argv)
    if args.days is not None and args.days < 1:
        parser.error("--days must be >= 1")

    from dagster import DagsterInstance

    from quant_assets.settings import Settings

    home = Path(args.dagster_home) if args.dagster_home else Settings.from_env().dagster_home
    if not (home / "dagster.yaml").exists() and not home.is_dir():
        print(f"no Dagster instance at {home} (run the demo first or set DAGSTER_HOME)",
              file=sys.stderr)
        return 1
    since = (
        dt.datetime.now(dt.UTC) - dt.timedelta(days=args.days) if args.days is not None else None
    )
    pools: dict[str, str] = {}
    try:
        from quant_assets.definitions import defs

        pools = asset_pools_of(defs.assets or [])
    except Exception as exc:  # noqa: BLE001 - the report still works from metadata alone
        print(f"(asset pools from the code location unavailable: {exc})", file=sys.stderr)
    with DagsterInstance.from_config(str(home)) as instance:
        report = platform_report(instance, since=since, asset_pools=pools)
    print(report.to_json() if args.format == "json" else report.to_text())
    return 0


