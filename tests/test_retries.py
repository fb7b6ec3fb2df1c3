"""The I/O retry policy (quant_assets/retries.py): which assets of the code location carry
it, that it backs off exponentially with jitter, and that deterministic failures (a
blocking quality rule, a refusal) fail at once instead of going through the retries."""

import os
import sys
from pathlib import Path

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    Backoff,
    DagsterEventType,
    DagsterInstance,
    Jitter,
    RetryPolicy,
    asset,
    materialize,
)

from quant_assets.retries import IO_RETRY, not_retried, refuse
from quant_assets.warehouse import Warehouse
from resources.io_manager import DeltaIOManager


def _retry_policies() -> dict[str, RetryPolicy | None]:
    from quant_assets.definitions import defs

    out = {}
    for assets_def in defs.resolve_asset_graph().assets_defs:
        if not isinstance(assets_def, AssetsDefinition) or not assets_def.is_executable:
            continue
        for key in assets_def.keys:
            out[key.to_user_string()] = assets_def.op.retry_policy
    return out


def test_io_policy_backs_off_exponentially_with_jitter():
    assert IO_RETRY.max_retries >= 2
    assert IO_RETRY.backoff is Backoff.EXPONENTIAL
    assert IO_RETRY.jitter is Jitter.PLUS_MINUS
    assert 0 < IO_RETRY.delay <= 2
    # each wait grows (jitter is +-delay, so compare the centres two attempts apart)
    first, third = IO_RETRY.calculate_delay(1), IO_RETRY.calculate_delay(3)
    assert third > first


def test_every_io_bound_asset_carries_the_io_policy():
    policies = _retry_policies()
    for expected in ("universe", "market_bars", "corporate_actions", "fundamentals",
                     "strategy_grid", "strategy_grid_returns",
                     "pit_features", "labels", "lgbm_model", "seq_model", "oos_predictions",
                     "sweep_trials", "trial_returns", "backtest", "validation_report",
                     "champion_model", "daily_scores", "drift_report", "signal_health"):
        assert expected in policies, expected
    # every asset takes IO_RETRY: each one reads or writes the warehouse, MLflow or a source
    # (even the CPU-bound strategy_grid commits to Delta and logs an MLflow run, and a
    # dropped commit there failed the transient-faults run)
    wrong = {key: policy for key, policy in policies.items() if policy != IO_RETRY}
    assert wrong == {}, wrong


def _retries(result) -> int:
    return sum(e.event_type == DagsterEventType.STEP_UP_FOR_RETRY for e in result.all_events)


def test_refusal_is_not_retried_but_a_transient_error_is():
    calls = {"refused": 0, "wrapped": 0, "flaky": 0}

    @asset(retry_policy=IO_RETRY)
    def refused(context: AssetExecutionContext) -> int:
        calls["refused"] += 1
        raise refuse("bad input: rule 'x'")

    @asset(retry_policy=IO_RETRY)
    def wrapped(context: AssetExecutionContext) -> int:
        calls["wrapped"] += 1
        with not_retried(ValueError):
            raise ValueError("landing file f.csv: rule 'dtype'")

    @asset(retry_policy=IO_RETRY)
    def flaky(context: AssetExecutionContext) -> int:
        calls["flaky"] += 1
        if calls["flaky"] < 2:
            raise ConnectionError("store unavailable")
        return 1

    with DagsterInstance.ephemeral() as instance:
        results = {
            name: materialize([a], instance=instance, raise_on_error=False)
            for name, a in (("refused", refused), ("wrapped", wrapped), ("flaky", flaky))
        }
    for name in ("refused", "wrapped"):
        assert not results[name].success and _retries(results[name]) == 0, name
        assert calls[name] == 1
    message = results["wrapped"].get_step_failure_events()[0].event_specific_data.error.message
    assert "landing file f.csv: rule 'dtype'" in message
    assert results["flaky"].success and _retries(results["flaky"]) == 1


def test_blocking_quality_failure_is_not_retried(tmp_path: Path, monkeypatch):
    from quant_assets.data import market
    from quant_assets.data.assets import corporate_actions, fundamentals, universe
    from quant_assets.settings import Settings
    from resources import build_resources

    sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
    from bad_inputs.corpus import with_zero_split

    monkeypatch.setattr(market, "simulated_market", with_zero_split(market.simulated_market))

    old = os.environ["QUANT_HOME"]
    os.environ["QUANT_HOME"] = str(tmp_path)
    try:
        settings = Settings.from_env()
    finally:
        os.environ["QUANT_HOME"] = old
    resources = build_resources(settings)
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [universe, corporate_actions, fundamentals], selection=[corporate_actions],
            resources=resources, instance=instance, raise_on_error=False,
        )
    assert not result.success
    assert _retries(result) == 0
    errors = [e.event_specific_data.error.message for e in result.get_step_failure_events()]
    assert any("split_ratio_positive_finite" in m for m in errors), errors


def test_a_missing_upstream_table_fails_at_once_naming_it(tmp_path: Path):
    """An input table that was never materialised is missing on every attempt: the Delta
    IO manager refuses the step at once (no retries), and says which table to build."""
    calls = {"reader": 0}

    @asset
    def never_built() -> pl.DataFrame:
        return pl.DataFrame({"x": [1.0]})

    @asset(retry_policy=IO_RETRY, ins={"never_built": AssetIn()})
    def reader(never_built: pl.DataFrame) -> pl.DataFrame:
        calls["reader"] += 1
        return never_built

    io = DeltaIOManager(root=str(tmp_path / "warehouse"))
    with DagsterInstance.ephemeral() as instance:
        result = materialize([never_built, reader], selection=[reader], resources={"io_manager": io},
                             instance=instance, raise_on_error=False)
    assert not result.success and _retries(result) == 0
    assert calls["reader"] == 0  # it failed loading its input, once
    message = result.get_step_failure_events()[0].event_specific_data.error.message
    assert "table never_built does not exist" in message and "materialise it first" in message, message
    assert not Warehouse(str(tmp_path / "warehouse")).exists(["reader"])
