"""The Delta storage layer: predicate writes by time window, range reads, versions.

The stock ``DeltaLakePolarsIOManager`` (dagster-deltalake-polars 0.29.27) turns a time
window into ``date = start``; ``test_stock_manager_breaks_on_ranges`` pins that
behaviour so we notice if upstream fixes it, and the same scenario passes on ours.
"""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from dagster import (
    AssetKey,
    BackfillPolicy,
    DagsterInstance,
    DailyPartitionsDefinition,
    asset,
    materialize,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from quant_assets.partitions import add_partition_metadata
from quant_assets.warehouse import PartitionWindow, Warehouse, WarehouseError
from resources.io_manager import DeltaIOManager

D = dt.date.fromisoformat
DAYS = DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-11")


@asset(
    partitions_def=DAYS,
    metadata={"partition_expr": "date"},
    backfill_policy=BackfillPolicy.single_run(),
)
def upstream_days(context) -> pl.DataFrame:
    window = context.partition_time_window
    days = pl.date_range(window.start.date(), window.end.date(), closed="left", eager=True)
    return pl.DataFrame({"date": days, "v": [float(d.day) for d in days]})


@asset(
    partitions_def=DAYS,
    metadata={"partition_expr": "date"},
    backfill_policy=BackfillPolicy.single_run(),
)
def downstream_days(upstream_days: pl.DataFrame) -> pl.DataFrame:
    return upstream_days.with_columns(w=pl.col("v") * 2)


def _run_ranges(io_manager, ranges) -> list[bool]:
    instance = DagsterInstance.ephemeral()
    results = []
    for start, end in ranges:
        try:
            res = materialize(
                [upstream_days, downstream_days],
                instance=instance,
                resources={"io_manager": io_manager},
                tags={ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end},
                raise_on_error=False,
            )
            results.append(res.success)
        except Exception:  # the stock manager raises from handle_output
            results.append(False)
    return results


OVERLAPPING = [("2024-01-01", "2024-01-05"), ("2024-01-03", "2024-01-08")]


def test_overlapping_range_backfills_write_exactly_their_ranges(tmp_path):
    ok = _run_ranges(DeltaIOManager(root=str(tmp_path)), OVERLAPPING)
    assert ok == [True, True]
    down = pl.read_delta(str(tmp_path / "downstream_days")).sort("date")
    # every day of the union exactly once, and downstream saw every upstream day
    assert down.get_column("date").to_list() == [D(f"2024-01-0{i}") for i in range(1, 9)]
    assert down.get_column("w").to_list() == [2.0 * i for i in range(1, 9)]


def test_stock_manager_breaks_on_ranges(tmp_path):
    """dagster-deltalake-polars 0.29.27: a range read returns one day; an overlapping
    range write into the existing table fails. If this starts passing differently,
    upstream has fixed the bug and resources/io_manager.py can be reconsidered."""
    stock = pytest.importorskip("dagster_deltalake_polars")
    from dagster_deltalake import LocalConfig

    manager = stock.DeltaLakePolarsIOManager(root_uri=str(tmp_path), storage_options=LocalConfig())
    ok = _run_ranges(manager, OVERLAPPING)
    assert ok == [True, False]  # the second, overlapping range cannot be written
    down = pl.read_delta(str(tmp_path / "public" / "downstream_days"))
    # the first range "succeeded" but downstream silently read a single day
    assert down.height == 1


def test_rerun_of_one_day_replaces_exactly_that_day(tmp_path):
    wh = Warehouse(str(tmp_path))
    days = [D("2024-01-02"), D("2024-01-03"), D("2024-01-04")]
    first = wh.write(["t"], pl.DataFrame({"date": days, "x": [1.0, 2.0, 3.0]}),
                     PartitionWindow("date", D("2024-01-02"), D("2024-01-05")))
    second = wh.write(["t"], pl.DataFrame({"date": [D("2024-01-03")] * 2, "x": [20.0, 21.0]}),
                      PartitionWindow("date", D("2024-01-03"), D("2024-01-04")))
    assert (first.version, second.version) == (0, 1)
    out = wh.read(["t"]).frame.sort("date", "x")
    assert out.get_column("x").to_list() == [1.0, 20.0, 21.0, 3.0]
    # time travel keeps the first version intact
    assert wh.read(["t"], version=0).frame.sort("date").get_column("x").to_list() == [1.0, 2.0, 3.0]
    # a range read filters with the same predicate
    window = wh.read(["t"], PartitionWindow("date", D("2024-01-03"), D("2024-01-05"))).frame
    assert sorted(window.get_column("x").to_list()) == [3.0, 20.0, 21.0]


def test_rows_outside_the_partition_are_rejected_and_nothing_is_written(tmp_path):
    wh = Warehouse(str(tmp_path))
    wh.write(["t"], pl.DataFrame({"date": [D("2024-01-02")], "x": [1.0]}),
             PartitionWindow("date", D("2024-01-02"), D("2024-01-03")))
    bad = pl.DataFrame({"date": [D("2024-01-02"), D("2024-01-09")], "x": [5.0, 6.0]})
    with pytest.raises(WarehouseError, match=r"1 rows fall outside the partition date in \[2024-01-02, 2024-01-03\)"):
        wh.write(["t"], bad, PartitionWindow("date", D("2024-01-02"), D("2024-01-03")))
    with pytest.raises(WarehouseError, match="partition column 'date' is missing"):
        wh.write(["t"], pl.DataFrame({"x": [1.0]}), PartitionWindow("date", D("2024-01-02"), D("2024-01-03")))
    assert wh.version(["t"]) == 0
    assert wh.read(["t"]).frame.get_column("x").to_list() == [1.0]


def test_unpartitioned_write_overwrites_the_table(tmp_path):
    wh = Warehouse(str(tmp_path))
    wh.write(["u"], pl.DataFrame({"a": [1, 2, 3]}))
    res = wh.write(["u"], pl.DataFrame({"a": [9], "b": ["x"]}))
    assert res.version == 1
    assert wh.read(["u"]).frame.to_dicts() == [{"a": 9, "b": "x"}]


def test_missing_table_error_names_the_table(tmp_path):
    with pytest.raises(WarehouseError, match="table features/pit does not exist"):
        Warehouse(str(tmp_path)).read(["features", "pit"])


@asset(partitions_def=DAYS, metadata={"partition_expr": "date"}, backfill_policy=BackfillPolicy.single_run())
def rows_by_helper(context) -> pl.DataFrame:
    """A range run's per-day metadata through add_partition_metadata (one update)."""
    days = [dt.date.fromisoformat(k) for k in context.partition_keys]
    frame = pl.DataFrame({"date": [d for d in days for _ in range(d.day)], "v": 1.0})
    context.add_asset_metadata({"first": "by hand"}, partition_key=context.partition_keys[0])
    add_partition_metadata(context.get_step_execution_context(), context.asset_key,
                           {k: {"rows": d.day, "day": k} for k, d in zip(context.partition_keys, days, strict=True)})
    return frame


@asset(partitions_def=DAYS, metadata={"partition_expr": "date"}, backfill_policy=BackfillPolicy.single_run())
def rows_by_call(context) -> pl.DataFrame:
    """The same through Dagster's add_asset_metadata, one call a day."""
    days = [dt.date.fromisoformat(k) for k in context.partition_keys]
    frame = pl.DataFrame({"date": [d for d in days for _ in range(d.day)], "v": 1.0})
    context.add_asset_metadata({"first": "by hand"}, partition_key=context.partition_keys[0])
    for key, day in zip(context.partition_keys, days, strict=True):
        context.add_asset_metadata({"rows": day.day, "day": key}, partition_key=key)
    return frame


@asset(partitions_def=DAYS, backfill_policy=BackfillPolicy.single_run())
def rows_outside_the_run(context) -> None:
    add_partition_metadata(context.get_step_execution_context(), context.asset_key, {"2024-01-09": {"rows": 1}})


def _metadata_by_partition(instance, key: str) -> dict:
    records = instance.fetch_materializations(AssetKey(key), limit=100).records
    out = {}
    for r in records:
        meta = dict(r.asset_materialization.metadata)
        meta.pop("table_uri")  # each asset's own table
        out[r.partition_key] = {k: getattr(v, "value", v) for k, v in meta.items()}
    return out


def test_partition_metadata_in_one_update_equals_one_call_a_day(tmp_path):
    instance = DagsterInstance.ephemeral()
    result = materialize([rows_by_helper, rows_by_call], instance=instance,
                         resources={"io_manager": DeltaIOManager(root=str(tmp_path))},
                         tags={ASSET_PARTITION_RANGE_START_TAG: "2024-01-02", ASSET_PARTITION_RANGE_END_TAG: "2024-01-05"})
    assert result.success
    helper, call = _metadata_by_partition(instance, "rows_by_helper"), _metadata_by_partition(instance, "rows_by_call")
    assert helper == call
    # each day its own counts: the asset's (rows) and the IO manager's (dagster/row_count,
    # also through add_partition_metadata), and what was added before kept
    assert sorted(helper) == ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"]
    assert [(m["rows"], m["dagster/row_count"], m["day"]) for _, m in sorted(helper.items())] == [
        (d, d, f"2024-01-0{d}") for d in range(2, 6)]
    assert helper["2024-01-02"]["first"] == "by hand" and "first" not in helper["2024-01-03"]


def test_partition_metadata_outside_the_run_is_refused():
    result = materialize([rows_outside_the_run], instance=DagsterInstance.ephemeral(), raise_on_error=False,
                         tags={ASSET_PARTITION_RANGE_START_TAG: "2024-01-02", ASSET_PARTITION_RANGE_END_TAG: "2024-01-05"})
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "2024-01-09' that is not being targeted" in failure.step_failure_data.error.message
