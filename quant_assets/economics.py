"""Run economics: what every materialisation cost, and a platform report over the instance.

Two halves, as elsewhere in the project:

- Pure: ``Usage`` (what a step used), ``estimate_cost`` and ``usage_metadata`` (the pool's
  price x wall time, the Dagster metadata of one materialisation) and ``summarise`` (polars
  aggregation of materialisation and failure records by asset, pool and day).
- Dagster: ``measured`` (a context manager used inside an asset body that records queue,
  wall and CPU time, peak memory, rows in/out, throughput and estimated cost as output
  metadata), ``collect_records`` (reads run records and the event log of an instance) and
  ``platform_report`` / ``main`` (``python -m quant_assets.economics``; the CLI entry the
  ``platform-report`` command calls).

Cost model: a step reserves its pool's requests (``Pool.cores``, ``Pool.gpus``) for its wall
time, so its estimated cost is ``Pool.hourly_price() x wall hours``; the prices live next to
the pools in ``deploy/pools.yaml``. The measured CPU time is reported beside it
(``econ.cpu_utilisation`` = CPU seconds / (wall seconds x reserved cores)) to show
over-sized pools.

Usage inside an asset::

    from quant_assets.economics import measured

    @asset(...)
    def pit_features(context, market_bars: pl.DataFrame, ...) -> pl.DataFrame:
        with measured(context) as m:
            frame = build(...)
            m.rows(rows_in=market_bars.height, rows_out=frame.height)
        return frame

The pool is the op's Dagster pool (set from pools.yaml by ``apply_placement``); the
metadata is added when the block exits normally. The Delta write by the IO manager happens
after the asset returns and is not included in the measured time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import resource
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from quant_assets.placement import POOL_LABEL, PlacementPolicy, Pool, load_policy

__all__ = [
    "METADATA_PREFIX",
    "Meter",
    "PlatformReport",
    "Usage",
    "collect_records",
    "estimate_cost",
    "main",
    "measured",
    "platform_report",
    "summarise",
    "usage_metadata",
]

METADATA_PREFIX = "econ."
# Linux reports ru_maxrss in KiB, macOS in bytes.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


# ---------------------------------------------------------------------------------------------
# Pure core


@dataclass(frozen=True)
class Usage:
    """What one step used. Times in seconds; ``queue_s`` is its run's create -> start time."""

    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    rows_in: int | None = None
    rows_out: int | None = None
    queue_s: float | None = None

    @property
    def throughput(self) -> float | None:
        """Output rows per wall second (input rows where no output count is known)."""
        rows = self.rows_out if self.rows_out is not None else self.rows_in
        if rows is None or self.wall_s <= 0:
            return None
        return rows / self.wall_s


def estimate_cost(pool: Pool, wall_s: float) -> float:
    """The pool's hourly price (its reserved cores and GPUs) for ``wall_s`` seconds."""
    if wall_s < 0:
        raise ValueError(f"wall time must be >= 0, got {wall_s}")
    return pool.hourly_price() * wall_s / 3600.0


def usage_metadata(
    usage: Usage, pool: Pool | None, cost_share: float = 1.0
) -> dict[str, float | int | str]:
    """The ``econ.*`` metadata of one materialisation (plain values; Dagster infers types).

    ``cost_share``: the fraction of the step's cost this materialisation carries (a step
    that writes n assets gives each 1/n, so that summing costs over assets counts the step
    once); recorded as ``econ.cost_share`` when below 1."""
    if not 0 < cost_share <= 1:
        raise ValueError(f"cost_share must be in (0, 1], got {cost_share}")
    p = METADATA_PREFIX
    meta: dict[str, float | int | str] = {
        f"{p}wall_s": round(usage.wall_s, 6),
        f"{p}cpu_s": round(usage.cpu_s, 6),
        f"{p}peak_rss_mib": round(usage.peak_rss_bytes / 2**20, 3),
    }
    if usage.queue_s is not None:
        meta[f"{p}queue_s"] = round(usage.queue_s, 6)
    if usage.rows_in is not None:
        meta[f"{p}rows_in"] = int(usage.rows_in)
    if usage.rows_out is not None:
        meta[f"{p}rows_out"] = int(usage.rows_out)
    if usage.throughput is not None:
        meta[f"{p}rows_per_s"] = round(usage.throughput, 3)
    if pool is not None:
        meta[f"{p}pool"] = pool.name
        # significant digits, not decimals: a short step costs fractions of a micro-dollar
        meta[f"{p}cost"] = float(f"{estimate_cost(pool, usage.wall_s) * cost_share:.6g}")
        if cost_share < 1:
            meta[f"{p}cost_share"] = round(cost_share, 6)
        meta[f"{p}currency"] = pool.price.currency
        cores = float(pool.cores)
        if cores > 0 and usage.wall_s > 0:
            meta[f"{p}cpu_utilisation"] = round(usage.cpu_s / (usage.wall_s * cores), 4)
    return meta


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


# ---------------------------------------------------------------------------------------------
# Dagster: measuring inside an asset


@functools.lru_cache(maxsize=4)
def _policy(path: str | None) -> PlacementPolicy:
    return load_policy(path)


def _context_pool(context: Any) -> str | None:
    op_def = getattr(context, "op_def", None)
    pool = getattr(op_def, "pool", None) if op_def is not None else None
    if pool:
        return pool
    try:
        spec_tags = context.assets_def.specs_by_key[context.asset_key].tags
    except Exception:  # noqa: BLE001 - op contexts and multi-assets have no single spec
        return None
    return spec_tags.get(POOL_LABEL)


def _queue_time(context: Any) -> float | None:
    record = context.instance.get_run_record_by_id(context.run_id)
    if record is None or record.start_time is None:
        return None
    return max(0.0, record.start_time - record.create_timestamp.timestamp())


@dataclass
class Meter:
    """Handed out by ``measured``; ``rows`` records the row counts; after the block,
    ``usage`` and ``metadata`` hold what was measured (of the first output when the step
    has several; ``metadata_by_output`` has each output's)."""

    pool: Pool | None
    rows_in: int | None = None
    rows_out: int | None = None
    usage: Usage | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    rows_out_by_output: dict[str, int] = field(default_factory=dict)
    metadata_by_output: dict[str, dict[str, Any]] = field(default_factory=dict)

    def rows(
        self,
        *,
        rows_in: int | None = None,
        rows_out: int | None = None,
        output: str | None = None,
    ) -> None:
        """Record the rows read and written; ``output`` names the output that ``rows_out``
        counts (multi-output steps: one call per output)."""
        for name, value in (("rows_in", rows_in), ("rows_out", rows_out)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
            if name == "rows_out" and output is not None:
                self.rows_out_by_output[output] = value
            else:
                setattr(self, name, value)


@contextmanager
def measured(
    context: Any,
    pool: str | None = None,
    *,
    policy: PlacementPolicy | None = None,
    output_name: str | Sequence[str] | None = None,
) -> Iterator[Meter]:
    """Measure the block and add the ``econ.*`` metadata to the step's output.

    ``output_name``: the output to annotate (assets with check specs: ``"result"``); a
    multi-asset passes all its output names, and each output gets the step's measurements,
    its own ``rows_out`` (``meter.rows(rows_out=..., output=name)``) and an equal share of
    the step's cost (``econ.cost_share``).

    ``pool`` defaults to the op's Dagster pool (placement sets it from pools.yaml);
    ``policy`` to deploy/pools.yaml. A pool the policy does not know is an error; an asset
    with no pool gets no cost. Wall time is ``time.perf_counter``; CPU time is this
    process's (all threads) plus children reaped during the block; peak memory is the
    process's peak RSS (a step's own on the multiprocess and Kubernetes executors, the
    whole process's when run in-process)."""
    pool_name = pool or _context_pool(context)
    resolved = (policy or _policy(None)).pool(pool_name) if pool_name else None
    meter = Meter(pool=resolved)
    queue_s = _queue_time(context)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    yield meter
    wall = time.perf_counter() - wall0
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (time.process_time() - cpu0) + (
        (children1.ru_utime - children0.ru_utime) + (children1.ru_stime - children0.ru_stime)
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_UNIT
    if output_name is None or isinstance(output_name, str):
        names: list[str | None] = [output_name]
    else:
        names = list(output_name)
        if not names:
            raise ValueError("measured: output_name is an empty list")
    for name in names:
        rows_out = meter.rows_out_by_output.get(name, meter.rows_out) if name else meter.rows_out
        usage = Usage(wall, cpu, peak, meter.rows_in, rows_out, queue_s)
        metadata = usage_metadata(usage, resolved, cost_share=1.0 / len(names))
        if meter.usage is None:
            meter.usage, meter.metadata = usage, metadata
        if name is None:
            context.add_output_metadata(metadata)
        else:
            meter.metadata_by_output[name] = metadata
            context.add_output_metadata(metadata, output_name=name)


# ---------------------------------------------------------------------------------------------
# Dagster: reading the instance


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
    policy = policy or _policy(None)
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
    """``python -m quant_assets.economics [--days N] [--format text|json]``: the platform
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


if __name__ == "__main__":
    sys.exit(main())
