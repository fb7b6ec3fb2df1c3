"""Run costs: what every materialisation used and cost, measured inside the asset body.

``measured`` is a context manager used inside an asset body that records queue, wall and CPU
time, peak memory, rows in/out, throughput and estimated cost as ``econ.*`` output metadata;
``python -m quant_assets platform-report`` (``quant_assets/cli/platform_report.py``) sums it
over the instance by asset, pool and day.

Cost model: a step reserves its pool's requests (``Pool.cores``, ``Pool.gpus``) for its wall
time, so its estimated cost is ``Pool.hourly_price() x wall hours``; the prices live next to
the pools in ``deploy/pools.yaml``. The measured CPU time is reported beside it
(``econ.cpu_utilisation`` = CPU seconds / (wall seconds x reserved cores)) to show
over-sized pools.

Usage inside an asset::

    from quant_assets.run_costs import measured

    @asset(...)
    def pit_features(context, market_bars: pl.DataFrame, ...) -> pl.DataFrame:
        with measured(context) as m:
            frame = build(...)
            m.rows(rows_in=market_bars.height, rows_out=frame.height)
        return frame

The pool is the op's Dagster pool (set from pools.yaml by ``placement.apply``); the metadata
is added when the block exits normally. The Delta write by the IO manager happens after the
asset returns and is not included in the measured time. The context is used duck-typed (no
Dagster import): ``op_def.pool``, ``assets_def``, ``instance`` and ``add_output_metadata``.
"""

from __future__ import annotations

import functools
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from quant_assets.placement.policy import POOL_LABEL, PlacementPolicy, Pool, load_policy

__all__ = ["METADATA_PREFIX", "Meter", "Usage", "estimate_cost", "measured", "usage_metadata"]

METADATA_PREFIX = "econ."
# Linux reports ru_maxrss in KiB, macOS in bytes.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


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


def default_policy() -> PlacementPolicy:
    """deploy/pools.yaml, read once per process."""
    return _policy(None)
