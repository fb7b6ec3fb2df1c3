"""Sweeps: sampling and trial ids (fast), and a sweep interrupted halfway that resumes
without rerunning finished trials, on a real Dagster instance, Delta and MLflow (slow)."""

from __future__ import annotations

import json
import math
import re

import polars as pl
import pytest
from dagster import DagsterInstance, build_sensor_context
from hypothesis import given
from hypothesis import strategies as st

from quant_assets.trials.search import (
    DEFAULT_SEARCH_SPACE,
    Dimension,
    SearchSpace,
    TrialSpec,
    plan_trials,
)
from quant_assets.trials.trial_registry import pending_batches
from sensors.trials import trial_run_requests

MONTHS = ["2023-01", "2023-02"]


def _space(**overrides) -> SearchSpace:
    data = {**DEFAULT_SEARCH_SPACE, "name": "unit", **overrides}
    return SearchSpace.from_dict(data)


def test_trial_ids_are_stable_and_distinct():
    a, b = plan_trials(_space(), MONTHS), plan_trials(_space(), MONTHS)
    assert [t.trial_id for t in a] == [t.trial_id for t in b]
    assert len({t.trial_id for t in a}) == len(a) == 16
    # the id is a function of the resolved trial, whatever the key order of its parts
    t = a[3]
    shuffled = TrialSpec(t.sweep, dict(reversed(t.params.items())), t.months,
                         dict(reversed(t.lgbm.items())), t.strategy, t.walk_forward)
    assert shuffled.trial_id == t.trial_id
    assert TrialSpec.from_json(t.to_json()) == t
    # anything the result depends on changes the id
    assert plan_trials(_space(seed=1), MONTHS)[0].trial_id != a[0].trial_id
    assert plan_trials(_space(), ["2023-01"])[0].trial_id != a[0].trial_id
    assert plan_trials(_space(name="other"), MONTHS)[0].trial_id != a[0].trial_id
    assert all(re.fullmatch(r"t[0-9a-f]{16}", t.trial_id) for t in a)


def test_sampling_methods_respect_the_space():
    for method in ("sobol", "random"):
        trials = plan_trials(_space(method=method, n_trials=32), MONTHS)
        lr = [t.lgbm["learning_rate"] for t in trials]
        leaves = [t.lgbm["num_leaves"] for t in trials]
        assert all(0.01 <= v <= 0.2 for v in lr) and len(set(lr)) > 20
        assert all(isinstance(v, int) and 7 <= v <= 63 for v in leaves)
        assert {t.strategy["quantile"] for t in trials} == {0.1, 0.2, 0.3}
        assert all(t.lgbm["num_boost_round"] == 200 for t in trials)  # the base
    grid = SearchSpace.from_dict({
        "name": "g", "method": "grid",
        "params": {"lgbm.num_leaves": [7, 15], "strategy.quantile": [0.1, 0.2, 0.3]},
    })
    trials = plan_trials(grid, MONTHS)
    assert len(trials) == 6
    assert {(t.lgbm["num_leaves"], t.strategy["quantile"]) for t in trials} == {
        (n, q) for n in (7, 15) for q in (0.1, 0.2, 0.3)
    }


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"params": {"lgbm.nope": [1]}}, "unknown sweep parameter"),
        ({"params": {"model.num_leaves": [1]}}, "unknown sweep parameter"),
        ({"method": "grid", "params": {"lgbm.learning_rate": {"low": 0.1, "high": 0.2}}},
         "grid sweep needs"),
        ({"method": "bayes"}, "method="),
        ({"params": {"lgbm.learning_rate": {"low": 0.0, "high": 0.2, "log": True}}}, "low > 0"),
        ({"params": {"strategy.execution_lag": [2]}}, "execution_lag"),
        ({"colour": 1}, "unknown keys"),
    ],
)
def test_bad_search_spaces_fail_clearly(data, match):
    with pytest.raises(ValueError, match=match):
        plan_trials(SearchSpace.from_dict({"name": "bad", **data}), MONTHS)


@given(st.lists(st.booleans(), max_size=40), st.integers(1, 7))
def test_pending_batches_cover_exactly_the_pending_trials_in_ranges(done_flags, size):
    """Every pending trial in exactly one batch, in registration order; a batch never spans
    a finished trial (a range run would rerun it) and holds at most `size` trials."""
    registered = [f"t{i:03d}" for i in range(len(done_flags))]
    done = {key for key, flag in zip(registered, done_flags, strict=True) if flag}
    batches = pending_batches(registered, done, size)
    assert [key for batch in batches for key in batch] == [k for k in registered if k not in done]
    for batch in batches:
        assert 1 <= len(batch) <= size
        first, last = registered.index(batch[0]), registered.index(batch[-1])
        assert registered[first : last + 1] == batch  # a contiguous range of pending trials
    requests = trial_run_requests(registered, done, size)
    assert [r.run_key for r in requests] == [
        b[0] if len(b) == 1 else f"{b[0]}..{b[-1]}" for b in batches]


def test_log_and_integer_dimensions():
    d = Dimension("lgbm.min_data_in_leaf", low=20, high=400, log=True, integer=True)
    assert d.at(0.0) == 20 and d.at(0.999999) == 400
    assert d.at(0.5) == round(math.sqrt(20 * 400))


# ------------------------------------------------------------------- end to end (slow)

SPACE = {
    "name": "resume-test",
    "method": "grid",
    "months": MONTHS,
    "base": {"lgbm": {"num_boost_round": 25, "early_stopping_rounds": 10}},
    "params": {"lgbm.num_leaves": [7, 15], "strategy.quantile": [0.1, 0.2, 0.3]},
}


@pytest.fixture(scope="module")
def sweep_env(tmp_path_factory):
    import os

    from quant_assets.models.synthetic import simulated_panel, write_panel
    from quant_assets.settings import Settings
    from resources import build_resources

    home = tmp_path_factory.mktemp("sweep")
    old = os.environ["QUANT_HOME"]
    os.environ["QUANT_HOME"] = str(home)
    try:
        settings = Settings.from_env()
    finally:
        os.environ["QUANT_HOME"] = old
    resources = build_resources(settings)
    write_panel(resources["io_manager"].warehouse, simulated_panel(settings.n_instruments))
    instance = DagsterInstance.ephemeral()
    yield settings, resources, instance
    instance.dispose()


def _child_runs(tracking, sweep):
    return tracking.client().search_runs(
        [tracking.experiment_id()],
        filter_string=f"tags.`quant.sweep` = '{sweep}' and tags.`quant.sweep_role` = 'trial'",
    )


@pytest.mark.slow
@pytest.mark.xdist_group("sweep")
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(sweep_env):
    from quant_assets.cli.sweep import export_best_trial, register_sweep, run_sweep
    from sensors.trials import sweep_trials_sensor

    settings, resources, instance = sweep_env
    tracking, warehouse = resources["tracking"], resources["io_manager"].warehouse
    space = SearchSpace.from_dict(SPACE)
    ids = [t.trial_id for t in plan_trials(space, MONTHS)]

    # "interrupted" after 3 trials, run two per run: a batch of two, then one
    first = run_sweep(space, resources, instance, limit=3, per_run=2)
    assert first.added_partitions == ids and first.pending == ids
    registry = warehouse.read(["sweep_trials"]).frame
    assert sorted(registry["trial_id"]) == sorted(ids[:3])
    finished = dict(zip(registry["trial_id"], registry["mlflow_run_id"], strict=True))
    assert finished[ids[0]] == finished[ids[1]] != finished[ids[2]]  # a child run per batch
    batch = tracking.client().get_run(finished[ids[0]])
    assert batch.data.tags["quant.trials"] == "2"
    steps = tracking.client().get_metric_history(batch.info.run_id, "sharpe")
    rows = registry.sort("trial_id")
    by_id = dict(zip(rows["trial_id"], rows["sharpe"], strict=True))
    assert sorted((m.step, m.value) for m in steps) == [(0, by_id[ids[0]]), (1, by_id[ids[1]])]

    # the sensor asks for exactly the registered trials not materialised yet, one range run
    with build_sensor_context(instance=instance) as ctx:
        requests = list(sweep_trials_sensor(ctx))
    assert [r.run_key for r in requests] == [f"{ids[3]}..{ids[5]}"]
    assert requests[0].partition_key_range.start == ids[3]
    assert requests[0].partition_key_range.end == ids[5]

    second = run_sweep(space, resources, instance, per_run=2)  # resume
    assert second.added_partitions == [] and sorted(second.pending) == sorted(ids[3:])
    assert instance.get_dynamic_partitions("sweep_trials") == ids

    registry = warehouse.read(["sweep_trials"]).frame
    assert registry.height == 6 and registry["trial_id"].n_unique() == 6
    kept = dict(zip(registry["trial_id"], registry["mlflow_run_id"], strict=True))
    assert {k: kept[k] for k in finished} == finished  # finished trials were not rerun
    children = _child_runs(tracking, space.name)
    assert len(children) == 4  # batches [0, 1], [2], then [3, 4], [5]
    assert {r.info.run_id for r in children} == set(kept.values())
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {second.parent_run_id}
    assert first.parent_run_id == second.parent_run_id

    # nothing left: a third resume runs nothing
    again = register_sweep(instance, warehouse, tracking, space)
    assert again.pending == [] and again.added_partitions == []

    # registry rows: params and metrics the validation report reads (n trials, Sharpe spread)
    assert registry["sharpe_per_period"].is_finite().all()
    assert registry["sharpe_per_period"].n_unique() > 1
    params = [json.loads(p) for p in registry["params"]]
    assert {p["strategy.quantile"] for p in params} == {0.1, 0.2, 0.3}
    returns = warehouse.read(["trial_returns"]).frame
    assert returns.columns == ["date", "trial_id", "net_return"]
    per_trial = returns.group_by("trial_id").len()
    assert per_trial.height == 6 and per_trial["len"].n_unique() == 1  # a full returns matrix
    assert returns["date"].min().isoformat() >= "2023-01-01"
    assert returns["date"].max().isoformat() < "2023-03-01"

    # same trial, same data -> the same models: the registry's hashes are reproducible
    from quant_assets.features import total_return_index
    from quant_assets.models.walkforward import feature_columns, join_features_labels
    from quant_assets.trials.trial import run_trial

    row = registry.sort("trial_id").row(0, named=True)
    feats = warehouse.read(["pit_features"]).frame
    result = run_trial(
        join_features_labels(feats, warehouse.read(["labels"]).frame),
        feature_columns(feats),
        feats,
        total_return_index(warehouse.read(["market_bars"]).frame,
                           warehouse.read(["corporate_actions"]).frame),
        TrialSpec.from_json(row["spec"]),
    )
    assert json.loads(row["model_sha256"]) == {m: t.sha256 for m, t in result.models.items()}
    mine = returns.filter(pl.col("trial_id") == row["trial_id"]).sort("date")
    assert mine["net_return"].to_list() == result.daily["net_return"].to_list()

    # the best trial's bundle: under QUANT_HOME and in the parent run
    folder = export_best_trial(warehouse, tracking, space.name, settings.quant_home)
    bundle = json.loads((folder / "trial.json").read_text())
    best_sharpe = registry.filter(pl.col("sharpe").is_finite())["sharpe"].max()
    assert bundle["sharpe"] == best_sharpe and bundle["n_trials"] == 6
    assert sorted(p.name for p in (folder / "models").iterdir()) == ["2023-01.txt", "2023-02.txt"]
    lineage = json.loads((folder / "lineage.json").read_text())
    assert set(lineage["input_versions"]) == {
        "pit_features", "labels", "market_bars", "corporate_actions"
    }
    import hashlib

    shas = json.loads(bundle["model_sha256"])
    for month, sha in shas.items():
        text = (folder / "models" / f"{month}.txt").read_text()
        assert hashlib.sha256(text.encode()).hexdigest() == sha
    logged = {a.path for a in tracking.client().list_artifacts(second.parent_run_id, "best_trial")}
    assert {"best_trial/trial.json", "best_trial/lineage.json", "best_trial/models"} <= logged


# ------------------------------------------------------------------- adaptive (optuna)

ADAPTIVE_SPACE = {
    "name": "adaptive-test",
    "method": "optuna",
    "n_trials": 6,
    "seed": 3,
    "months": MONTHS,
    "base": {"lgbm": {"num_boost_round": 25, "early_stopping_rounds": 10}},
    "params": {"lgbm.num_leaves": {"low": 4, "high": 31, "integer": True},
               "lgbm.learning_rate": {"low": 0.01, "high": 0.3, "log": True},
               "strategy.quantile": [0.1, 0.2, 0.3]},
}


def test_adaptive_rounds_are_seeded_bounded_and_wait_for_results(tmp_path):
    """Rounds of Optuna proposals: inside the space, never past n_trials, none while a round
    waits for its results, and the same results told in the same order give the same
    proposals in a fresh study (reproducible whichever process asks)."""
    from quant_assets.trials.adaptive import load_study, next_round

    space = SearchSpace.from_dict({**ADAPTIVE_SPACE, "n_trials": 7})

    def objective(spec: TrialSpec) -> float:  # a deterministic stand-in for a trial's Sharpe
        return -abs(spec.lgbm["num_leaves"] - 20) / 10 - abs(math.log(spec.lgbm["learning_rate"] / 0.05))

    def sweep(url: str) -> list[list[TrialSpec]]:
        rounds, results = [], {}
        while True:
            trials = next_round(space, url, results, 3, MONTHS)
            if not trials:
                return rounds
            assert next_round(space, url, results, 3, MONTHS) == []  # the round is waiting
            rounds.append(trials)
            results.update({t.trial_id: objective(t) for t in trials})

    first = sweep(f"sqlite:///{tmp_path / 'a.db'}")
    assert [len(r) for r in first] == [3, 3, 1]
    for spec in (s for r in first for s in r):
        assert 4 <= spec.lgbm["num_leaves"] <= 31 and isinstance(spec.lgbm["num_leaves"], int)
        assert 0.01 <= spec.lgbm["learning_rate"] <= 0.3
        assert spec.strategy["quantile"] in (0.1, 0.2, 0.3)
    assert sweep(f"sqlite:///{tmp_path / 'b.db'}") == first
    study = load_study(space, f"sqlite:///{tmp_path / 'a.db'}")
    assert len(study.trials) == 7 and all(t.value is not None for t in study.trials)
    with pytest.raises(ValueError, match="planned round by round"):
        plan_trials(space, MONTHS)


@pytest.mark.slow
@pytest.mark.xdist_group("sweep")
def test_adaptive_sweep_runs_its_rounds_as_registry_trials(sweep_env, tmp_path):
    """An Optuna sweep through Dagster: each round a batch run, every trial a registry row,
    and the study told each trial's registry Sharpe; a rerun proposes and runs nothing."""
    from quant_assets.cli.sweep import register_sweep, run_sweep
    from quant_assets.trials.adaptive import TRIAL_ID_ATTR, load_study

    settings, resources, instance = sweep_env
    tracking, warehouse = resources["tracking"], resources["io_manager"].warehouse
    space = SearchSpace.from_dict(ADAPTIVE_SPACE)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    run_sweep(space, resources, instance, per_run=3, optuna_storage=url)
    registry = warehouse.read(["sweep_trials"]).frame.filter(pl.col("sweep") == space.name)
    assert registry.height == 6
    assert registry["mlflow_run_id"].n_unique() == 2  # a run per round of three
    assert len(_child_runs(tracking, space.name)) == 2
    study = load_study(space, url)
    told = {t.user_attrs[TRIAL_ID_ATTR]: t.value for t in study.trials}
    assert len(study.trials) == 6
    assert told == dict(zip(registry["trial_id"], registry["sharpe"], strict=True))
    again = register_sweep(instance, warehouse, tracking, space, 3, url)
    assert again.pending == [] and again.added_partitions == []
    assert len(load_study(space, url).trials) == 6


def test_trials_differing_only_in_strategy_share_their_models_bit_for_bit():
    """run_trial's ``fits``: trials of one month that differ only in strategy parameters
    (the monthly sweep's quantiles) train each model once, and give exactly what separate
    fits give."""
    import datetime as dt

    from quant_assets.features import total_return_index
    from quant_assets.models.synthetic import simulated_panel
    from quant_assets.models.walkforward import feature_columns, join_features_labels
    from quant_assets.trials.monthly import MonthlySweepSpace, month_trials
    from quant_assets.trials.trial import run_trial

    panel = simulated_panel(n_instruments=12, start=dt.date(2022, 6, 1), end=dt.date(2023, 2, 28))
    joined = join_features_labels(panel.pit_features, panel.labels)
    cols = feature_columns(panel.pit_features)
    prices = total_return_index(panel.market_bars, panel.corporate_actions)
    specs = month_trials(MonthlySweepSpace().space(5, 11), dt.date(2023, 2, 1))
    assert len(specs) == 4 and len({json.dumps(s.lgbm, sort_keys=True) for s in specs}) == 2
    fits: dict = {}
    shared = [run_trial(joined, cols, panel.pit_features, prices, s, fits) for s in specs]
    assert len(fits) == 2  # one fit per LightGBM config, not per trial
    for spec, result in zip(specs, shared, strict=True):
        alone = run_trial(joined, cols, panel.pit_features, prices, spec)
        assert {m: t.sha256 for m, t in result.models.items()} == {m: t.sha256 for m, t in alone.models.items()}
        assert result.predictions.equals(alone.predictions)
        assert result.daily.equals(alone.daily)
        assert json.dumps(result.metrics, sort_keys=True) == json.dumps(alone.metrics, sort_keys=True)
