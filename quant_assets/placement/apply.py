"""The placement policy applied to Dagster: every asset's op gets its ``pool`` and its
``dagster-k8s/config`` tag, local instances get the pools' concurrency limits, and the
executor follows QUANT_ENV.

At load time ``apply_placement`` gives every asset's op

- its Dagster ``pool`` (the instance enforces per-pool concurrency; locally the limits of
  ``local_pool_limits`` are set on the instance by ``configure_local_instance``), and
- its ``dagster-k8s/config`` op tag, which ``k8s_job_executor`` turns into the step's
  Kubernetes Job (requests/limits, nodeSelector, tolerations, image, pool labels).

The tag value is in the snake_case form dagster-k8s expects.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kubernetes.client
import yaml
from dagster import (
    AssetsDefinition,
    AssetSpec,
    DagsterInstance,
    ExecutorDefinition,
    In,
    OpDefinition,
    Out,
    SourceAsset,
    in_process_executor,
    multiprocess_executor,
)
from dagster._core.storage.tags import GLOBAL_CONCURRENCY_TAG
from dagster_k8s.job import USER_DEFINED_K8S_CONFIG_KEY
from dagster_k8s.models import k8s_snake_case_dict

from quant_assets.placement.kubernetes import CONTAINER_FIELDS, POD_FIELDS
from quant_assets.placement.policy import POOL_LABEL, PlacementPolicy, PolicyError

K8S_CONFIG_TAG = USER_DEFINED_K8S_CONFIG_KEY  # "dagster-k8s/config"


def k8s_config_for(policy: PlacementPolicy, pool: str) -> dict[str, Any]:
    """The ``dagster-k8s/config`` value of a step on ``pool`` (snake_case, as dagster-k8s
    expects): container resources and image, pod nodeSelector/tolerations/..., and the
    pool label on the Job and its Pod."""
    p = policy.pool(pool)
    container = {k: copy.deepcopy(v) for k, v in p.k8s.items() if k in CONTAINER_FIELDS}
    pod = {k: copy.deepcopy(v) for k, v in p.k8s.items() if k in POD_FIELDS}
    config: dict[str, Any] = {}
    if container:
        config["container_config"] = dict(
            k8s_snake_case_dict(kubernetes.client.V1Container, container)
        )
    if pod:
        config["pod_spec_config"] = dict(k8s_snake_case_dict(kubernetes.client.V1PodSpec, pod))
    config["pod_template_spec_metadata"] = {"labels": {POOL_LABEL: pool}}
    config["job_metadata"] = {"labels": {POOL_LABEL: pool}}
    return config


def k8s_tag_for(policy: PlacementPolicy, pool: str) -> str:
    """The op tag value (JSON) for ``pool``."""
    return json.dumps(k8s_config_for(policy, pool), sort_keys=True)


# ---------------------------------------------------------------------------------------------
# Applying the policy to asset definitions


def apply_placement(assets: Iterable[Any], policy: PlacementPolicy) -> list[Any]:
    """Every executable asset definition with its op's ``pool``, its ``dagster-k8s/config`` op
    tag and a ``quant-assets/pool`` asset tag from ``policy``; source assets, plain AssetSpecs
    and other non-executable definitions pass through unchanged (they never run a step).

    Raises PolicyError when an asset matches no rule and there is no default, when one op
    computes assets placed in different pools, when the code sets a pool or a
    ``dagster-k8s/config`` tag that disagrees with the policy (pools.yaml is the one place
    that decides), and for graph-backed assets (their inner ops are not placed)."""
    placed = []
    for item in assets:
        if isinstance(item, AssetsDefinition) and item.is_executable and item.keys:
            placed.append(_place(item, policy))
        elif isinstance(item, AssetsDefinition | SourceAsset | AssetSpec):
            placed.append(item)
        else:
            raise PolicyError(
                f"cannot place {type(item).__name__} {item!r}: expected asset definitions",
                policy.source,
            )
    return placed


def _place(assets_def: AssetsDefinition, policy: PlacementPolicy) -> AssetsDefinition:
    specs = list(assets_def.specs)
    pools = {spec.key.to_user_string(): policy.pool_for(spec) for spec in specs}
    names = ", ".join(pools)
    distinct = sorted(set(pools.values()))
    if len(distinct) > 1:
        raise PolicyError(
            f"assets {names} are computed by one op ('{assets_def.node_def.name}') but placed in "
            f"different pools {pools}; place them together",
            policy.source,
        )
    pool = distinct[0]
    node_def = assets_def.node_def
    if not isinstance(node_def, OpDefinition):
        raise PolicyError(
            f"asset {names} is graph-backed; placement sets pools on op-backed assets only",
            policy.source,
        )
    tag = k8s_tag_for(policy, pool)
    code_pool = node_def.pool or node_def.tags.get(GLOBAL_CONCURRENCY_TAG)
    if code_pool and code_pool != pool:
        raise PolicyError(
            f"asset {names}: its code sets pool {code_pool!r} but the policy places it in "
            f"{pool!r}; remove the pool from the code (pools.yaml decides)",
            policy.source,
        )
    code_tag = node_def.tags.get(K8S_CONFIG_TAG)
    if code_tag is not None and json.loads(code_tag) != json.loads(tag):
        raise PolicyError(
            f"asset {names}: its code sets a {K8S_CONFIG_TAG} op tag; Kubernetes settings "
            "belong to the pool in pools.yaml",
            policy.source,
        )
    # Dagster has no public way to set the pool or op tags of a built AssetsDefinition
    # (map_asset_specs/with_attributes change asset specs only): rebuild its op the way
    # OpDefinition.with_replaced_properties does, with the pool and the tag added.
    op = OpDefinition.dagster_internal_init(
        name=node_def.name,
        ins={d.name: In.from_definition(d) for d in node_def.input_defs},
        outs={d.name: Out.from_definition(d) for d in node_def.output_defs},
        compute_fn=node_def.compute_fn,
        config_schema=node_def.config_schema,
        description=node_def.description,
        tags={**node_def.tags, K8S_CONFIG_TAG: tag},
        required_resource_keys=node_def.required_resource_keys,
        code_version=node_def._version,  # noqa: SLF001 - as with_replaced_properties does
        retry_policy=node_def.retry_policy,
        version=None,
        pool=pool,
    )
    new_specs = [spec.merge_attributes(tags={POOL_LABEL: pool}) for spec in specs]
    return assets_def.__class__.dagster_internal_init(
        **{**assets_def.get_attributes_dict(), "node_def": op, "specs": new_specs}
    )


# ---------------------------------------------------------------------------------------------
# Local concurrency limits and executors


def local_pool_limits(policy: PlacementPolicy) -> dict[str, int]:
    """Pool -> how many steps of that pool may run at once on a local instance."""
    return {name: pool.local_limit for name, pool in policy.pools.items()}


def write_local_concurrency_config(
    dagster_home: str | Path, *, default_limit: int | None = None
) -> Path:
    """Merge ``concurrency: pools: {granularity: op}`` (and ``default_limit`` if given) into
    ``<dagster_home>/dagster.yaml``, keeping everything else in the file.

    Dagster 1.13's instance config has no per-pool limits (only ``default_limit``,
    ``granularity`` and ``op_granularity_run_buffer``); the limits themselves live in the
    instance's storage (``apply_pool_limits``). Op granularity makes the executor claim a
    slot of the step's pool before each step."""
    home = Path(dagster_home)
    home.mkdir(parents=True, exist_ok=True)
    cfg_path = home / "dagster.yaml"
    cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else None
    cfg = cfg or {}
    if not isinstance(cfg, dict):
        raise PolicyError(f"{cfg_path} is not a mapping")
    concurrency = cfg.get("concurrency") or {}
    run_queue = cfg.get("run_queue") or {}
    # dagster refuses these run_queue fields next to a `concurrency` section
    conflicting = [
        k for k in ("max_concurrent_runs", "tag_concurrency_limits", "op_concurrency_slot_buffer")
        if run_queue.get(k) is not None
    ]
    if conflicting:
        raise PolicyError(
            f"{cfg_path}: run_queue.{conflicting[0]} cannot be combined with `concurrency: "
            "pools:`; move it under `concurrency: runs:` first"
        )
    pools = concurrency.get("pools") or {}
    # the legacy key is incompatible with `pools`; it becomes pools.default_limit
    legacy_default = concurrency.pop("default_op_concurrency_limit", None)
    if legacy_default is not None:
        pools.setdefault("default_limit", legacy_default)
    pools["granularity"] = "op"
    if default_limit is not None:
        pools["default_limit"] = default_limit
    concurrency["pools"] = pools
    cfg["concurrency"] = concurrency
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg_path


def apply_pool_limits(instance: DagsterInstance, policy: PlacementPolicy) -> dict[str, int]:
    """Set every pool's local limit on ``instance`` (what ``dagster instance concurrency set
    <pool> <limit>`` does) and return them."""
    limits = local_pool_limits(policy)
    for pool, limit in limits.items():
        instance.event_log_storage.set_concurrency_slots(pool, limit)
    return limits


def configure_local_instance(dagster_home: str | Path, policy: PlacementPolicy) -> dict[str, int]:
    """Make the local instance at ``dagster_home`` enforce the policy's pool limits: op
    granularity in its dagster.yaml, then the limits in its storage."""
    write_local_concurrency_config(dagster_home)
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        return apply_pool_limits(instance, policy)


def executor_for(env: str, *, max_concurrent: int | None = 2, local: str = "multiprocess") -> ExecutorDefinition:
    """``local``: the multiprocess executor (``max_concurrent`` processes; pool limits from the
    instance), or with ``local="in_process"`` (QUANT_LOCAL_EXECUTOR) the in-process executor:
    the steps run in the run's own process, which has imported the code location once (a
    process per step imports it again: seconds a step). ``k8s``: dagster-k8s ``k8s_job_executor``, one Job per step whose resources,
    nodeSelector, tolerations and image (where the pool sets one) come from the step's
    ``dagster-k8s/config`` tag; namespace, service account and env come from the Helm
    chart's run launcher or the run config."""
    if env == "local":
        if local == "in_process":
            return in_process_executor
        if max_concurrent is None:
            return multiprocess_executor
        return multiprocess_executor.configured({"max_concurrent": max_concurrent})
    if env == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(f"unknown environment {env!r}: expected 'local' or 'k8s'")
