"""Placement policy (deploy/pools.yaml -> pools and dagster-k8s/config tags): validation of bad
policies, placement of the real code location, GPU/CPU split, policy edits that move one
asset, and pool limits on a real Dagster instance."""

import copy
import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from dagster import (
    AssetExecutionContext,
    AssetOut,
    AssetSpec,
    Config,
    DagsterInstance,
    Definitions,
    Output,
    RetryPolicy,
    asset,
    graph_asset,
    load_asset_checks_from_modules,
    load_assets_from_modules,
    materialize,
    multi_asset,
    multiprocess_executor,
    op,
)
from dagster._core.execution.api import create_execution_plan
from dagster._core.instance.config import PoolGranularity
from dagster_k8s import k8s_job_executor

from quant_assets.placement.apply import (
    K8S_CONFIG_TAG,
    apply_placement,
    configure_local_instance,
    executor_for,
    k8s_config_for,
    local_pool_limits,
)
from quant_assets.placement.kubernetes import K8S_VERSION
from quant_assets.placement.policy import (
    DEFAULT_POLICY_PATH,
    POOL_LABEL,
    PolicyError,
    load_policy,
    parse_policy,
)

GROUPS = {"market_data", "features", "models", "backtest", "sweeps", "validation"}
# Assets named in ARCHITECTURE.md's contracts that are not written yet: a key rule may name
# them before they exist; any other key a rule names must be a real asset (catches typos).
PLANNED_ASSETS = {
    "seq_model", "sweep_trials", "strategy_grid", "champion_model", "daily_scores",
    "drift_report",
}


# --------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def raw_policy() -> dict:
    return yaml.safe_load(DEFAULT_POLICY_PATH.read_text())


@pytest.fixture(scope="module")
def policy():
    return load_policy()


@pytest.fixture(scope="module")
def stages():
    from quant_assets.definitions import STAGES

    return STAGES


@pytest.fixture(scope="module")
def real_assets(stages):
    return load_assets_from_modules(stages)


def _edited(raw: dict, edit) -> dict:
    data = copy.deepcopy(raw)
    edit(data)
    return data


def _placement(placed) -> dict[str, tuple[str, dict]]:
    """asset key -> (pool, parsed dagster-k8s/config tag)."""
    return {
        spec.key.to_user_string(): (a.op.pool, json.loads(a.op.tags[K8S_CONFIG_TAG]))
        for a in placed
        for spec in a.specs
    }


# ---------------------------------------------------------------------- the shipped policy


def test_shipped_policy_has_the_pools_rules_and_prices(policy):
    assert {"cpu", "cpu-highmem", "gpu"} <= set(policy.pools)
    assert policy.default == "cpu"
    for pool in policy.pools.values():
        assert pool.local_limit >= 1
        assert pool.k8s["resources"]["requests"]["cpu"]
        assert pool.hourly_price() > 0
    gpu = policy.pools["gpu"]
    assert gpu.gpus == 1 and gpu.price.per_gpu_hour > 0
    assert policy.pools["cpu"].gpus == 0 and policy.pools["cpu-highmem"].gpus == 0
    assert local_pool_limits(policy) == {n: p.local_limit for n, p in policy.pools.items()}


def test_shipped_pool_settings_validate_against_the_kubernetes_schema(policy):
    """Each pool's settings as a Pod validate strictly with the OpenAPI schema of the targeted
    Kubernetes version (a second, independent check of what load_policy accepted)."""
    for name, pool in policy.pools.items():
        pod = _pod_from_k8s_block(name, pool.k8s)
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def _pod_from_k8s_block(name: str, k8s: dict) -> dict:
    container_fields = {"image", "imagePullPolicy", "resources", "env", "envFrom"}
    container = {"name": "dagster", "image": "quant-assets:0.1.0"}
    container.update({k: v for k, v in k8s.items() if k in container_fields})
    spec = {k: v for k, v in k8s.items() if k not in container_fields}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"pool-{name}"},
        "spec": {"containers": [container], **spec},
    }


def test_rules_name_only_real_or_planned_assets(policy, real_assets):
    real = {s.key.to_user_string() for a in real_assets for s in a.specs}
    for rule in policy.rules:
        for key in rule.keys:
            if not any(ch in key for ch in "*?["):
                assert key in real | PLANNED_ASSETS, f"{rule.describe()} names unknown {key!r}"
        for group in rule.groups:
            assert group in GROUPS | {"serving"}, f"{rule.describe()} names unknown group"
    # the rules no current asset matches are the ones for the (future) sequence model
    unmatched = policy.unmatched_rules([s for a in real_assets for s in a.specs])
    assert all(r.pool == "gpu" for r in unmatched)


# ------------------------------------------------------------------------ bad policies


def _node(data, path):
    for part in path:
        data = data[part]
    return data


def _set(*path_and_value):
    *path, value = path_and_value
    return lambda d: _node(d, path[:-1]).__setitem__(path[-1], value)


def _rename(*path_and_key):
    *path, new_key = path_and_key

    def edit(d):
        parent = _node(d, path[:-1])
        parent[new_key] = parent.pop(path[-1])

    return edit


def _delete(*path):
    return lambda d: _node(d, path[:-1]).__delitem__(path[-1])


BAD_POLICIES = [
    pytest.param(
        _set('rules', 1, 'pool', "cpu-hignmem"),
        ["rules[1]: unknown pool 'cpu-hignmem'", "did you mean 'cpu-highmem'"],
        id="unknown-pool-in-rule",
    ),
    pytest.param(
        _delete('rules', 0, 'pool'), ["rules[0]: has no pool"], id="rule-without-pool",
    ),
    pytest.param(
        _set('rules', 2, {"pool": "cpu"}), ["rules[2]: names no keys, groups or kinds"],
        id="rule-without-selector",
    ),
    pytest.param(
        _set('rules', 2, {"key": ["lgbm_model"], "pool": "cpu"}),
        ["rules[2]: key: unknown field (did you mean 'keys'?)"],
        id="rule-misspelled-selector",
    ),
    pytest.param(_set('default', "cpux"), ["default: unknown pool 'cpux'"], id="unknown-default"),
    pytest.param(
        _set('pools', 'cpu', 'k8s', 'resources', 'limits', 'memory', "4 GB"),
        ["pool 'cpu': k8s.resources.limits.memory: '4 GB' is not a Kubernetes quantity"],
        id="quantity-with-space",
    ),
    pytest.param(
        _set('pools', 'cpu-highmem', 'k8s', 'resources', 'requests', 'memory', "48GB"),
        ["pool 'cpu-highmem': k8s.resources.requests.memory: '48GB' is not a Kubernetes quantity"],
        id="quantity-bad-suffix",
    ),
    pytest.param(
        _rename('pools', 'gpu', 'k8s', 'nodeSelector', "nodeSelectr"),
        ["pool 'gpu': k8s.nodeSelectr: unknown or unsupported field", "did you mean 'nodeSelector'"],
        id="misspelled-nodeSelector",
    ),
    pytest.param(
        _rename('pools', 'gpu', 'k8s', 'tolerations', 0, 'effect', "efect"),
        ["pool 'gpu': k8s.tolerations[0].efect: unknown field of Toleration",
         "did you mean 'effect'"],
        id="misspelled-toleration-field",
    ),
    pytest.param(
        _set('pools', 'gpu', 'k8s', 'tolerations', 0, 'effect', "NoSchedul"),
        ["pool 'gpu': k8s.tolerations[0].effect: 'NoSchedul' is not one of",
         "did you mean 'NoSchedule'"],
        id="bad-toleration-effect",
    ),
    pytest.param(
        _set('pools', 'gpu', 'k8s', 'nodeSelector', 'nvidia.com/gpu.present', True),
        ["pool 'gpu': k8s.nodeSelector.", "expected str, got True (quote it in YAML)"],
        id="unquoted-bool-label",
    ),
    pytest.param(
        _rename('pools', 'cpu', 'k8s', 'resources', 'requests', 'memory', "memroy"),
        ["pool 'cpu': k8s.resources.requests.memroy: unknown resource name",
         "did you mean 'memory'"],
        id="misspelled-resource-name",
    ),
    pytest.param(
        _rename('pools', 'cpu', 'k8s', 'resources', 'limits', "limts"),
        ["pool 'cpu': k8s.resources.limts: unknown field of ResourceRequirements",
         "did you mean 'limits'"],
        id="misspelled-limits",
    ),
    pytest.param(
        _set('pools', 'gpu', 'k8s', 'resources', 'requests', 'nvidia.com/gpu', "2"),
        ["pool 'gpu': k8s.resources.requests.nvidia.com/gpu: extended resource request must "
         "equal its limit"],
        id="gpu-request-not-limit",
    ),
    pytest.param(
        _set('pools', 'cpu', 'k8s', 'resources', 'requests', 'cpu', "16"),
        ["pool 'cpu': k8s.resources.requests.cpu: request 16 exceeds the limit 4"],
        id="request-above-limit",
    ),
    pytest.param(
        _delete('pools', 'cpu', 'k8s', 'resources'), ["pool 'cpu': k8s.resources: required"],
        id="no-resources",
    ),
    pytest.param(
        _set('pools', 'gpu', 'k8s', 'affinity', {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpresions": [{"key": "a", "operator": "In", "values": ["b"]}]}]}}}),
        ["pool 'gpu': k8s.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
         ".nodeSelectorTerms[0].matchExpresions: unknown field of NodeSelectorTerm",
         "did you mean 'matchExpressions'"],
        id="misspelled-nested-affinity",
    ),
    pytest.param(
        _set('pools', 'cpu', 'local_limit', 0), ["pool 'cpu': local_limit must be an integer >= 1"],
        id="bad-local-limit",
    ),
    pytest.param(
        _rename('pools', 'cpu', 'local_limit', "local_limt"),
        ["pool 'cpu': local_limt: unknown field (did you mean 'local_limit'?)"],
        id="misspelled-pool-field",
    ),
    pytest.param(
        _delete('pools', 'gpu', 'price'), ["pool 'gpu': price must be a mapping"], id="no-price",
    ),
    pytest.param(
        _set('pools', 'gpu', 'price', 'per_gpu_hour', "2.5$"),
        ["pool 'gpu': price.per_gpu_hour must be a number >= 0"], id="bad-price",
    ),
    pytest.param(
        _rename('pools', 'gpu', "GPU_pool"), ["pool 'GPU_pool': a pool name must be a DNS label"],
        id="bad-pool-name",
    ),
    pytest.param(
        _rename('rules', "rule"), ["rule: unknown field (did you mean 'rules'?)"],
        id="misspelled-top-level",
    ),
]


@pytest.mark.parametrize(("edit", "expected"), BAD_POLICIES)
def test_bad_policy_fails_naming_the_place_and_field(raw_policy, edit, expected):
    data = _edited(raw_policy, edit)
    with pytest.raises(PolicyError) as info:
        parse_policy(data, source="pools.yaml")
    message = str(info.value)
    assert message.startswith("pools.yaml: ")
    for part in expected:
        assert part in message, f"{part!r} not in:\n{message}"


def test_every_problem_is_reported_at_once(raw_policy):
    def edit(d):
        d["pools"]["cpu"]["k8s"]["resources"]["limits"]["memory"] = "4 GB"
        d["pools"]["gpu"]["k8s"]["nodeSelectr"] = d["pools"]["gpu"]["k8s"].pop("nodeSelector")
        d["rules"][0]["pool"] = "tpu"

    with pytest.raises(PolicyError) as info:
        parse_policy(_edited(raw_policy, edit))
    assert len(info.value.errors) == 3
    assert "3 problems" in str(info.value)


@pytest.mark.parametrize(
    "edit",
    [
        _rename('pools', 'gpu', 'k8s', 'tolerations', 0, 'effect', "efect"),
        _set('pools', 'gpu', 'k8s', 'affinity', {"nodeAfinity": {}}),
        _set('pools', 'cpu', 'k8s', 'env', [{"name": "A", "valu": "1"}]),
    ],
    ids=["toleration", "affinity", "env"],
)
def test_the_kubernetes_schema_agrees_with_the_field_check(raw_policy, edit):
    """What load_policy rejects as a misspelled field, the strict OpenAPI schema rejects too."""
    data = _edited(raw_policy, edit)
    with pytest.raises(PolicyError):
        parse_policy(data)
    name = next(n for n in data["pools"] if data["pools"][n] != raw_policy["pools"][n])
    pod = _pod_from_k8s_block(name, data["pools"][name]["k8s"])
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_unreadable_and_invalid_files_raise_policy_error(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")
    bad = tmp_path / "pools.yaml"
    bad.write_text("pools: [unclosed\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(PolicyError, match="expected a mapping at the top level"):
        load_policy(bad)


# ------------------------------------------------------------------------- rule resolution


def _tiny_policy(rules, default=None) -> dict:
    pool = {
        "local_limit": 1,
        "price": {"per_core_hour": 0.01, "per_gpu_hour": 0.0},
        "k8s": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
    }
    data = {"pools": {"a": pool, "b": copy.deepcopy(pool), "c": copy.deepcopy(pool)},
            "rules": rules}
    if default:
        data["default"] = default
    return data


def test_key_rules_win_over_group_rules_and_first_match_wins():
    policy = parse_policy(
        _tiny_policy(
            [
                {"groups": ["models"], "pool": "a"},
                {"kinds": ["pytorch"], "pool": "b"},
                {"keys": ["seq_*"], "pool": "c"},  # a key rule, listed last, still wins
                {"keys": ["seq_model"], "pool": "a"},  # shadowed by the glob above
                {"groups": ["models"], "kinds": ["pytorch"], "pool": "b"},  # shadowed
            ]
        )
    )
    assert policy.pool_for(AssetSpec("seq_model", group_name="models")) == "c"
    assert policy.pool_for(AssetSpec("lgbm_model", group_name="models")) == "a"
    assert policy.pool_for(AssetSpec("x", group_name="other", kinds={"pytorch"})) == "b"
    assert policy.pool_for(AssetSpec(["nested", "seq_x"], group_name="models")) == "a"
    specs = [AssetSpec("seq_model", group_name="models"), AssetSpec("m", group_name="models")]
    assert [r.index for r in policy.unmatched_rules(specs)] == [1, 3, 4]


def test_unplaced_asset_without_default_names_the_asset():
    policy = parse_policy(_tiny_policy([{"groups": ["models"], "pool": "a"}]))
    with pytest.raises(PolicyError, match=r"asset 'orphan' \(group 'misc'.*no default pool"):
        policy.pool_for(AssetSpec("orphan", group_name="misc"))

    @asset(group_name="misc")
    def orphan():
        return 1

    with pytest.raises(PolicyError, match="asset 'orphan'"):
        apply_placement([orphan], policy)
    with_default = parse_policy(_tiny_policy([{"groups": ["models"], "pool": "a"}], default="b"))
    assert with_default.pool_for(AssetSpec("orphan", group_name="misc")) == "b"


def test_unknown_pool_lookup_is_a_policy_error(policy):
    with pytest.raises(PolicyError, match="unknown pool 'tpu'"):
        k8s_config_for(policy, "tpu")


# ---------------------------------------------------------------- the real code location


@pytest.fixture(scope="module")
def placed(real_assets, policy):
    return apply_placement(real_assets, policy)


def test_every_real_asset_gets_a_pool_and_the_k8s_tag(real_assets, placed, policy):
    keys = {s.key for a in real_assets for s in a.specs}
    assert len(keys) >= 10
    assert {s.group_name for a in real_assets for s in a.specs} <= GROUPS | {"serving"}
    for a in placed:
        for spec in a.specs:
            pool = policy.pool_for(spec)
            assert a.op.pool == pool
            assert spec.tags[POOL_LABEL] == pool
            assert json.loads(a.op.tags[K8S_CONFIG_TAG]) == k8s_config_for(policy, pool)
    pools = {k: p for k, (p, _) in _placement(placed).items()}
    assert pools["pit_features"] == "cpu-highmem"
    assert pools["lgbm_model"] == "cpu"
    assert pools["backtest"] == "cpu"
    assert pools["labels"] == "cpu"
    assert pools["market_bars"] == "cpu"


def test_placement_keeps_everything_else(real_assets, placed):
    for before, after in zip(real_assets, placed, strict=True):
        assert before.keys == after.keys
        assert before.check_keys == after.check_keys
        assert before.partitions_def == after.partitions_def
        assert before.backfill_policy == after.backfill_policy
        assert before.code_versions_by_key == after.code_versions_by_key
        assert before.group_names_by_key == after.group_names_by_key
        assert before.asset_deps == after.asset_deps
        assert before.op.name == after.op.name
        assert before.op.retry_policy == after.op.retry_policy
        assert before.op.required_resource_keys == after.op.required_resource_keys
        assert before.op.config_schema is after.op.config_schema
        assert before.op.compute_fn is after.op.compute_fn
        assert [i.name for i in before.op.input_defs] == [i.name for i in after.op.input_defs]
        assert before.op.pool is None  # the code sets no pools: pools.yaml decides
    # applying the same policy again changes nothing
    assert _placement(apply_placement(placed, load_policy())) == _placement(placed)


def test_real_definitions_load_with_the_pools_on_every_step(stages, placed, policy):
    from quant_assets import jobs
    from quant_assets.settings import load_settings
    from resources import build_resources

    all_jobs = jobs.ALL_JOBS
    defs = Definitions(
        assets=placed,
        asset_checks=load_asset_checks_from_modules(stages),
        jobs=all_jobs,
        resources=build_resources(load_settings()),
        executor=executor_for("local"),
    )
    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    by_op = {a.op.name: a for a in placed}
    seen = set()
    for job in all_jobs:
        plan = create_execution_plan(defs.resolve_job_def(job.name))
        for step in plan.steps:
            assets_def = by_op[step.key]
            pool = policy.pool_for(next(iter(assets_def.specs)))
            # what the executors read: the step's pool and its dagster-k8s/config tag
            assert step.pool == pool
            assert json.loads(step.tags[K8S_CONFIG_TAG]) == k8s_config_for(policy, pool)
            for key in assets_def.keys:
                assert graph.get(key).pools == {pool}
            seen |= assets_def.keys
    assert seen == set(graph.materializable_asset_keys)


# -------------------------------------------------------------------------- GPU vs CPU


def _gpu_assets():
    @asset(group_name="models", kinds={"pytorch"})
    def seq_model():
        return 1

    @asset(group_name="serving", kinds={"pytorch"}, deps=[seq_model])
    def daily_scores():
        return 1

    return [seq_model, daily_scores]


def test_gpu_assets_get_gpus_gpu_nodes_and_tolerations_cpu_assets_do_not(real_assets, policy):
    placed = _placement(apply_placement([*real_assets, *_gpu_assets()], policy))
    gpu_assets = {k for k, (pool, _) in placed.items() if pool == "gpu"}
    assert gpu_assets == {"seq_model", "seq_predictions", "daily_scores"}
    for key, (pool, config) in placed.items():
        limits = config["container_config"]["resources"]["limits"]
        pod = config.get("pod_spec_config", {})
        selector = pod.get("node_selector", {})
        tolerations = pod.get("tolerations", [])
        assert selector.get("quant-assets/pool") == pool
        assert config["pod_template_spec_metadata"]["labels"] == {POOL_LABEL: pool}
        if key in gpu_assets:
            assert limits["nvidia.com/gpu"] == "1"
            assert selector["nvidia.com/gpu.present"] == "true"
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
                tolerations
            )
            assert config["container_config"]["image"] == policy.pools["gpu"].image
        else:
            assert not any("gpu" in k for k in limits)
            assert not any("gpu" in k for k in config["container_config"]["resources"]["requests"])
            assert not any("nvidia" in k for k in selector)
            assert not any("gpu" in t.get("key", "") or t.get("value") == "gpu"
                           for t in tolerations)
            assert "image" not in config["container_config"]


def test_a_policy_edit_moves_only_that_asset(raw_policy, real_assets):
    before = _placement(apply_placement(real_assets, parse_policy(raw_policy)))
    assert before["backtest"][0] == "cpu"

    def move_backtest(d):
        d["rules"].insert(0, {"keys": ["backtest"], "pool": "cpu-highmem"})

    after = _placement(apply_placement(real_assets, parse_policy(_edited(raw_policy, move_backtest))))
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"backtest"}
    assert after["backtest"][0] == "cpu-highmem"
    assert after["backtest"][1] == after["pit_features"][1]

    # editing a pool changes the assets of that pool and nothing else
    def bigger_highmem(d):
        d["pools"]["cpu-highmem"]["k8s"]["resources"]["limits"]["memory"] = "64Gi"

    edited = _placement(apply_placement(real_assets, parse_policy(_edited(raw_policy, bigger_highmem))))
    changed = {k for k in before if before[k] != edited[k]}
    assert changed == {k for k, (pool, _) in before.items() if pool == "cpu-highmem"}


# ------------------------------------------------------------ code that fights the policy


def test_conflicts_between_code_and_policy_are_errors(policy):
    @asset(group_name="models", pool="special")
    def pooled_in_code():
        return 1

    with pytest.raises(PolicyError, match="code sets pool 'special'.*places it in 'cpu'"):
        apply_placement([pooled_in_code], policy)

    @asset(group_name="models", op_tags={K8S_CONFIG_TAG: {"container_config": {"image": "x"}}})
    def tagged_in_code():
        return 1

    with pytest.raises(PolicyError, match="code sets a dagster-k8s/config op tag"):
        apply_placement([tagged_in_code], policy)

    @multi_asset(outs={"seq_model": AssetOut(group_name="models"),
                       "lgbm_model": AssetOut(group_name="models")})
    def both_models():
        yield Output(1, "seq_model")
        yield Output(2, "lgbm_model")

    with pytest.raises(PolicyError, match="computed by one op .*different pools"):
        apply_placement([both_models], policy)

    @op
    def inner():
        return 1

    @graph_asset(group_name="models")
    def graph_backed():
        return inner()

    with pytest.raises(PolicyError, match="graph-backed"):
        apply_placement([graph_backed], policy)


def test_non_executable_definitions_pass_through(policy):
    spec = AssetSpec("external_prices", group_name="market_data")
    out = apply_placement([spec], policy)
    assert out == [spec]


# ------------------------------------------------------ running placed assets locally


class _Cfg(Config):
    factor: int = 2


def test_placed_asset_still_runs_with_its_config_and_retry_policy(tmp_path, policy):
    @asset(group_name="backtest", retry_policy=RetryPolicy(max_retries=1), code_version="v1")
    def scaled(context: AssetExecutionContext, config: _Cfg):
        return 21 * config.factor

    (placed,) = apply_placement([scaled], policy)
    assert placed.op.retry_policy == RetryPolicy(max_retries=1)
    home = tmp_path / "dagster"
    limits = configure_local_instance(home, policy)
    with DagsterInstance.from_config(str(home)) as instance:
        result = materialize([placed], instance=instance,
                             run_config={"ops": {"scaled": {"config": {"factor": 3}}}})
        assert result.success
        assert result.output_for_node("scaled") == 63
        info = instance.event_log_storage.get_concurrency_info("cpu")
        assert info.slot_count == limits["cpu"]
        assert info.active_slot_count == 0  # the step's slot was claimed and released


def test_pool_limits_are_applied_to_a_real_instance(tmp_path, policy):
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    limits = configure_local_instance(home, policy)
    assert limits == local_pool_limits(policy)

    cfg = yaml.safe_load((home / "dagster.yaml").read_text())
    assert cfg["telemetry"] == {"enabled": False}  # the rest of the file is kept
    assert cfg["concurrency"]["pools"]["granularity"] == "op"

    with DagsterInstance.from_config(str(home)) as instance:
        pool_config = instance.get_concurrency_config().pool_config
        assert pool_config.pool_granularity == PoolGranularity.OP
        stored = {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()}
        assert stored == limits

    # re-applying an edited policy updates the limits in place
    raw = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    raw["pools"]["gpu"]["local_limit"] = 3
    configure_local_instance(home, parse_policy(raw))
    with DagsterInstance.from_config(str(home)) as instance:
        stored = {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()}
        assert stored["gpu"] == 3 and stored["cpu"] == limits["cpu"]


def test_concurrency_config_merge_keeps_a_valid_instance_config(tmp_path, policy):
    from quant_assets.placement.apply import write_local_concurrency_config

    home = tmp_path / "legacy"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "concurrency:\n  default_op_concurrency_limit: 5\n"
        "run_queue:\n  dequeue_interval_seconds: 2\n"
    )
    configure_local_instance(home, policy)
    cfg = yaml.safe_load((home / "dagster.yaml").read_text())
    assert cfg["concurrency"] == {"pools": {"default_limit": 5, "granularity": "op"}}
    assert cfg["run_queue"] == {"dequeue_interval_seconds": 2}
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 5

    bad = tmp_path / "conflict"
    bad.mkdir()
    (bad / "dagster.yaml").write_text("run_queue:\n  max_concurrent_runs: 3\n")
    with pytest.raises(PolicyError, match="run_queue.max_concurrent_runs cannot be combined"):
        write_local_concurrency_config(bad)


# -------------------------------------------------------------------------- executors


def test_executor_for_each_environment(placed):
    local = executor_for("local")
    assert local.name == multiprocess_executor.name
    assert executor_for("local", max_concurrent=None) is multiprocess_executor
    assert executor_for("k8s") is k8s_job_executor
    with pytest.raises(ValueError, match="'docker'"):
        executor_for("docker")
    # a k8s code location loads (the executor is only instantiated when a run starts)
    from quant_assets.settings import load_settings
    from resources import build_resources

    Definitions.validate_loadable(
        Definitions(assets=placed, resources=build_resources(load_settings()), executor=executor_for("k8s"))
    )


def test_default_policy_path_is_the_deploy_file():
    assert DEFAULT_POLICY_PATH == Path(__file__).resolve().parents[1] / "deploy" / "pools.yaml"


_POOL_LIMIT_MODULE = '''
import json, os, time
from pathlib import Path

from dagster import Definitions, asset, define_asset_job, multiprocess_executor

from quant_assets.placement.apply import apply_placement
from quant_assets.placement.policy import parse_policy

LOG = Path(os.environ["PLACEMENT_TEST_LOG"])
POLICY = parse_policy(json.loads(os.environ["PLACEMENT_TEST_POLICY"]))


def _work(name):
    start = time.time()
    time.sleep(0.2)
    with LOG.open("a") as f:
        f.write(json.dumps([name, start, time.time()]) + "\\n")
    return 1


@asset(group_name="backtest")
def first():
    return _work("first")


@asset(group_name="backtest")
def second():
    return _work("second")


defs = Definitions(
    assets=apply_placement([first, second], POLICY),
    jobs=[define_asset_job("both", selection=["first", "second"])],
    executor=multiprocess_executor.configured({"max_concurrent": 4}),
)
both = defs.resolve_job_def("both")


def get_job():
    return both
'''


def test_multiprocess_executor_honours_local_pool_limits(tmp_path, raw_policy, monkeypatch):
    """Two independent steps of a pool with local_limit 1, under an executor that allows 4
    processes: the second step is blocked by the pool's limit and they run one at a time."""
    from dagster import execute_job
    from dagster._core.definitions.reconstruct import ReconstructableJob

    data = copy.deepcopy(raw_policy)
    data["pools"]["cpu"]["local_limit"] = 1
    module = tmp_path / "pool_limit_job.py"
    module.write_text(_POOL_LIMIT_MODULE)
    log = tmp_path / "steps.log"
    monkeypatch.setenv("PLACEMENT_TEST_LOG", str(log))
    monkeypatch.setenv("PLACEMENT_TEST_POLICY", json.dumps(data))
    home = tmp_path / "dagster"
    configure_local_instance(home, parse_policy(data))
    with DagsterInstance.from_config(str(home)) as instance:
        job = ReconstructableJob.for_file(str(module), "get_job")
        with execute_job(job, instance=instance) as result:
            assert result.success
            blocked = [
                e for e in result.all_events
                if (e.message or "").startswith("Step blocked by limit for pool cpu")
            ]
        assert len(blocked) == 1
        assert instance.event_log_storage.get_concurrency_info("cpu").active_slot_count == 0
    (a, a_start, a_end), (b, b_start, b_end) = sorted(
        json.loads(line) for line in log.read_text().splitlines()
    )
    assert {a, b} == {"first", "second"}
    assert a_end <= b_start or b_end <= a_start, "steps of a pool limited to 1 overlapped"
