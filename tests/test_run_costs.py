"""Run economics: cost model, per-materialisation metadata from `measured`, and the platform
report read back from a real (SQLite) Dagster instance with successes, a retried failure
and two pools."""


import datetime as dt
import json
import math
import time

import polars as pl
import pytest
from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    DagsterInstance,
    DailyPartitionsDefinition,
    Output,
    RetryPolicy,
    asset,
    materialize,
)

from quant_assets.cli.platform_report import asset_pools_of, main, platform_report, summarise
from quant_assets.placement.apply import apply_placement
from quant_assets.placement.policy import load_policy, parse_policy
from quant_assets.run_costs import Usage, estimate_cost, measured, usage_metadata

POLICY = parse_policy({
    "version": 1,
    "default": "small",
    "pools": {
        "small": {"local_limit": 2, "price": {"per_core_hour": 0.5, "per_gpu_hour": 0.0},
                  "k8s": {"resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}},
        "gpu": {"local_limit": 1, "price": {"per_core_hour": 0.1, "per_gpu_hour": 3.0},
                "k8s": {"resources": {"requests": {"cpu": "4", "memory": "1Gi", "nvidia.com/gpu": "1"},
                                      "limits": {"nvidia.com/gpu": "1"}}}},
    },
    "rules": [{"keys": ["trainer", "flaky"], "pool": "gpu"}],
})

DAYS = DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-04")


@asset(partitions_def=DAYS)
def bars(context: AssetExecutionContext) -> list[int]:
    with measured(context, policy=POLICY) as m:
        rows = list(range(1000))
        sum(i * i for i in range(200_000))  # some CPU work to measure
        m.rows(rows_in=0, rows_out=len(rows))
    return rows


@asset
def trainer(context: AssetExecutionContext, bars: dict):
    with measured(context, policy=POLICY) as m:
        time.sleep(0.2)
        total = sum(len(v) for v in bars.values())
        m.rows(rows_in=total, rows_out=1)
    # the project's assets return Output(..., metadata=...): both sets must land
    return Output(total, metadata={"partitions_read": len(bars)})


@asset(retry_policy=RetryPolicy(max_retries=1))
def flaky(context: AssetExecutionContext) -> int:
    with measured(context, policy=POLICY):
        raise RuntimeError("boom")


@asset(partitions_def=DAYS, backfill_policy=BackfillPolicy.single_run())
def ranged(context: AssetExecutionContext) -> None:
    with measured(context, policy=POLICY) as m:
        time.sleep(0.05)
        m.rows(rows_out=10 * len(context.partition_keys))


PLACED = apply_placement([bars, trainer, flaky, ranged], POLICY)


def test_cost_is_pool_price_times_wall_time():
    small, gpu = POLICY.pool("small"), POLICY.pool("gpu")
    assert small.hourly_price() == pytest.approx(1.0)  # 2 cores x 0.5
    assert gpu.hourly_price() == pytest.approx(4 * 0.1 + 3.0)
    assert estimate_cost(small, 1800) == pytest.approx(0.5)
    assert estimate_cost(gpu, 36) == pytest.approx(3.4 / 100)
    with pytest.raises(ValueError):
        estimate_cost(small, -1)
    # the shipped pools all price: a GPU step costs more than a CPU step of the same length
    shipped = load_policy()
    assert estimate_cost(shipped.pool("gpu"), 3600) > estimate_cost(shipped.pool("cpu"), 3600) > 0


def test_usage_metadata():
    usage = Usage(wall_s=10.0, cpu_s=15.0, peak_rss_bytes=512 * 2**20, rows_in=100,
                  rows_out=50, queue_s=2.5)
    meta = usage_metadata(usage, POLICY.pool("small"))
    assert meta["econ.rows_per_s"] == 5.0
    assert meta["econ.peak_rss_mib"] == 512.0
    assert meta["econ.cost"] == pytest.approx(10 / 3600)
    assert meta["econ.cpu_utilisation"] == 0.75  # 15 CPU s over 10 s x 2 cores
    assert meta["econ.pool"] == "small" and meta["econ.queue_s"] == 2.5
    bare = usage_metadata(Usage(1.0, 0.5, 0), None)
    assert "econ.cost" not in bare and "econ.rows_per_s" not in bare
    # a step writing two assets: each materialisation carries half the step's cost
    half = usage_metadata(usage, POLICY.pool("small"), cost_share=0.5)
    assert half["econ.cost"] == pytest.approx(meta["econ.cost"] / 2)
    assert half["econ.cost_share"] == 0.5 and "econ.cost_share" not in meta
    with pytest.raises(ValueError):
        usage_metadata(usage, None, cost_share=0)


def test_summarise_percentiles_throughput_and_failures():
    day = dt.date(2024, 1, 2)
    # asset a: two range steps of two partitions each (their events repeat the step's
    # measurements); asset b: one single-partition step
    mats = pl.DataFrame({
        "asset": ["a"] * 4 + ["b"],
        "partition": ["1", "2", "3", "4", None],
        "run_id": ["r1", "r1", "r2", "r2", "r3"],
        "pool": ["p"] * 4 + ["q"],
        "day": [day] * 5,
        "queue_s": [0.0, 0.0, 10.0, 10.0, 1.0],
        "wall_s": [2.0, 2.0, 4.0, 4.0, 3.0],
        "cpu_s": [1.0] * 5,
        "peak_rss_mib": [1.0, 1.0, 4.0, 4.0, 5.0],
        "rows_out": [20, 20, 40, 40, 3],
        "cost": [0.2, 0.2, 0.4, 0.4, 0.3],
        "data_version": ["1", "1", "2", "2", None],
    })
    failures = pl.DataFrame({
        "asset": ["a", "a", "c"], "run_id": ["r2", "r2", "r4"], "pool": ["p", "p", "q"],
        "day": [day] * 3, "kind": ["retry", "failure", "failure"],
    })
    tables = summarise(mats, failures)
    a = tables["asset"].filter(pl.col("asset") == "a").row(0, named=True)
    assert a["materialisations"] == 4 and a["steps"] == 2 and a["runs"] == 2
    assert a["queue_p50_s"] == 5.0 and a["queue_p90_s"] == pytest.approx(9.0)
    assert a["rows_out"] == 60 and a["wall_total_s"] == 6.0  # once per step
    assert a["rows_per_s"] == pytest.approx(60 / 6)
    assert a["cost_total"] == pytest.approx(0.6) and a["cost_per_run"] == pytest.approx(0.3)
    assert a["peak_rss_max_mib"] == 4.0
    assert a["failures"] == 1 and a["retries"] == 1
    assert a["data_versions"] == ["1", "2"]
    c = tables["asset"].filter(pl.col("asset") == "c").row(0, named=True)
    assert c["materialisations"] == 0 and c["failures"] == 1  # failed, never materialised
    q = tables["pool"].filter(pl.col("pool") == "q").row(0, named=True)
    assert q["failures"] == 1 and q["cost_total"] == pytest.approx(0.3)
    assert tables["day"].height == 1 and tables["day"]["failures"][0] == 2


@pytest.fixture(scope="module")
def instance_with_history(tmp_path_factory):
    home = tmp_path_factory.mktemp("econ-dagster")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with DagsterInstance.from_config(str(home)) as instance:
        for day in ("2024-01-01", "2024-01-02", "2024-01-03"):
            assert materialize(PLACED, selection=["bars"], partition_key=day,
                               instance=instance).success
        # the unpartitioned trainer reads every partition of bars
        assert materialize(PLACED, selection=["trainer"], instance=instance).success
        # one step over three partitions (a range run)
        assert materialize(PLACED, selection=["ranged"], instance=instance,
                           tags={"dagster/asset_partition_range_start": "2024-01-01",
                                 "dagster/asset_partition_range_end": "2024-01-03"}).success
        failed = materialize(PLACED, selection=["flaky"], instance=instance,
                             raise_on_error=False)
        assert not failed.success
    return home


def _materialisations(instance, key):
    from dagster import AssetKey

    result = instance.fetch_materializations(AssetKey(key), limit=100)
    return [r.asset_materialization for r in result.records]


def test_measured_adds_metadata_to_the_materialisation(instance_with_history):
    with DagsterInstance.from_config(str(instance_with_history)) as instance:
        bars_mats = _materialisations(instance, "bars")
        trainer_mats = _materialisations(instance, "trainer")
    assert len(bars_mats) >= 3
    meta = {k: v.value for k, v in bars_mats[0].metadata.items()}
    assert meta["econ.pool"] == "small"  # the op's pool, set by apply_placement
    assert meta["econ.rows_out"] == 1000 and meta["econ.rows_in"] == 0
    assert meta["econ.wall_s"] > 0 and meta["econ.cpu_s"] > 0
    assert meta["econ.peak_rss_mib"] > 10
    assert meta["econ.queue_s"] >= 0
    assert meta["econ.cost"] == pytest.approx(meta["econ.wall_s"] / 3600 * 1.0, rel=1e-3)
    tmeta = {k: v.value for k, v in trainer_mats[0].metadata.items()}
    assert tmeta["econ.pool"] == "gpu" and tmeta["econ.wall_s"] >= 0.2
    assert tmeta["econ.rows_in"] == 3000 and tmeta["partitions_read"] == 3
    assert tmeta["econ.cost"] == pytest.approx(tmeta["econ.wall_s"] / 3600 * 3.4, rel=1e-3)
    # sleeping is not CPU: utilisation far below one core of the four reserved
    assert tmeta["econ.cpu_utilisation"] < 0.25


def test_platform_report_by_asset_pool_and_day(instance_with_history):
    with DagsterInstance.from_config(str(instance_with_history)) as instance:
        report = platform_report(instance, policy=POLICY,
                                 asset_pools=asset_pools_of(PLACED))
    by_asset = {r["asset"]: r for r in report.by_asset.iter_rows(named=True)}
    assert by_asset["bars"]["materialisations"] == 3
    assert by_asset["bars"]["runs"] == 3
    assert by_asset["trainer"]["materialisations"] == 1
    assert by_asset["flaky"]["materialisations"] == 0
    ranged_row = by_asset["ranged"]
    assert ranged_row["materialisations"] == 3 and ranged_row["steps"] == 1
    assert ranged_row["rows_out"] == 30  # the step's rows, not 3 x 30
    assert ranged_row["cost_total"] == pytest.approx(ranged_row["wall_total_s"] / 3600 * 1.0,
                                                     rel=1e-3)
    assert by_asset["flaky"]["failures"] == 1 and by_asset["flaky"]["retries"] == 1
    assert by_asset["bars"]["rows_per_s"] > 0 and by_asset["bars"]["cost_per_run"] > 0
    assert not math.isnan(by_asset["bars"]["queue_p90_s"])
    by_pool = {r["pool"]: r for r in report.by_pool.iter_rows(named=True)}
    assert set(by_pool) == {"small", "gpu"}
    assert by_pool["gpu"]["failures"] == 1  # flaky never materialised; its pool from the defs
    assert by_pool["gpu"]["cost_total"] > 0 and by_pool["small"]["cost_total"] > 0
    assert report.by_day.height == 1
    totals = report.totals()
    assert totals["runs"] == 6 and totals["failed_runs"] == 1
    assert totals["cost_total"] == pytest.approx(
        report.by_asset.get_column("cost_total").fill_null(0).sum())
    text = report.to_text()
    assert "By pool" in text and "flaky" in text
    parsed = json.loads(report.to_json())
    assert parsed["totals"]["materialisations"] == 7


def test_report_cli(instance_with_history, capsys):
    assert main(["--dagster-home", str(instance_with_history), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["totals"]["runs"] == 6
    assert main(["--dagster-home", str(instance_with_history), "--days", "1"]) == 0
    assert "platform report" in capsys.readouterr().out


def test_unknown_pool_is_an_error():
    from quant_assets.placement.policy import PolicyError

    @asset
    def odd(context: AssetExecutionContext) -> int:
        with measured(context, "nope", policy=POLICY):
            return 1

    with DagsterInstance.ephemeral() as instance:
        result = materialize([odd], instance=instance, raise_on_error=False)
    assert not result.success
    error = result.get_step_failure_events()[0].event_specific_data.error
    chain = []
    while error is not None:
        chain.append(error)
        error = error.cause
    assert any(e.cls_name == PolicyError.__name__ and "nope" in e.message for e in chain)


def test_every_asset_of_the_definitions_is_measured():
    """Fast guard (the full flow is tests/test_economics_all_assets.py): the compute
    function of every executable asset of the code location uses ``measured``."""
    import inspect

    from dagster import AssetsDefinition

    from quant_assets.definitions import defs

    unmeasured = []
    for assets_def in defs.resolve_asset_graph().assets_defs:
        if not isinstance(assets_def, AssetsDefinition) or not assets_def.is_executable:
            continue
        fn = assets_def.op.compute_fn.decorated_fn
        # a per-family factory's compute function delegates to one module-level body
        # (``_run_backtest``, ``_validation_report``): follow the functions it calls
        called = [fn.__globals__.get(name) for name in fn.__code__.co_names]
        bodies = [fn, *(f for f in called if inspect.isfunction(f)
                        and f.__module__ == fn.__module__)]
        if not any("measured(" in inspect.getsource(f) for f in bodies):
            unmeasured.extend(k.to_user_string() for k in assets_def.keys)
    assert unmeasured == [], unmeasured
