"""Placement: where every asset runs, read from ``deploy/pools.yaml``.

The policy names pools (``cpu``, ``cpu-highmem``, ``gpu``, ...), each with its Kubernetes
settings (resources, nodeSelector, tolerations, optionally an image), a local concurrency
limit and a price, and maps assets to pools with rules. At load time ``apply_placement``
gives every asset's op

- its Dagster ``pool`` (the instance enforces per-pool concurrency; locally the limits of
  ``local_pool_limits`` are set on the instance by ``configure_local_instance``), and
- its ``dagster-k8s/config`` op tag, which ``k8s_job_executor`` turns into the step's
  Kubernetes Job (requests/limits, nodeSelector, tolerations, image, pool labels).

Rules are checked in two tiers: rules that name ``keys`` first, then rules that name only
``groups`` and/or ``kinds``; within a tier the first matching rule wins; ``default`` (a pool)
applies when nothing matches. Within one rule the selectors that are present must all match;
``keys`` are asset keys as user strings (``a/b``) or shell globs (``seq_*``).

Integration in ``definitions.py``::

    from quant_assets.placement import apply_placement, executor_for, load_policy
    assets = apply_placement(load_assets_from_modules(STAGES), load_policy())
    executor = executor_for(SETTINGS.env)

The Kubernetes settings are written in Kubernetes (camelCase) form and checked strictly
against the Kubernetes python client's models (field names, value types, quantity grammar,
enums); the tag value is in the snake_case form dagster-k8s expects.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
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
    multiprocess_executor,
)
from dagster._core.storage.tags import GLOBAL_CONCURRENCY_TAG
from dagster_k8s.job import USER_DEFINED_K8S_CONFIG_KEY
from dagster_k8s.models import k8s_snake_case_dict

__all__ = [
    "DEFAULT_POLICY_PATH",
    "K8S_CONFIG_TAG",
    "K8S_VERSION",
    "POOL_LABEL",
    "PlacementPolicy",
    "PolicyError",
    "Pool",
    "Price",
    "Rule",
    "apply_placement",
    "apply_pool_limits",
    "configure_local_instance",
    "executor_for",
    "load_policy",
    "local_pool_limits",
    "parse_policy",
    "write_local_concurrency_config",
]

DEFAULT_POLICY_PATH = Path(__file__).resolve().parent.parent / "deploy" / "pools.yaml"
# The Kubernetes version the deployment (Helm chart values) targets; the tests validate every
# step Job against this version's OpenAPI schema.
K8S_VERSION = "1.30.0"
K8S_CONFIG_TAG = USER_DEFINED_K8S_CONFIG_KEY  # "dagster-k8s/config"
# Asset tag, Job label and Pod label naming the pool (selection, cost attribution).
POOL_LABEL = "quant-assets/pool"

# A pool name is a Dagster pool, a Kubernetes label value and a node label value: a DNS label.
_POOL_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Kubernetes resource.Quantity grammar (apimachinery/pkg/api/resource/quantity.go).
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")
# Resource names a container may request without a domain prefix.
_STANDARD_RESOURCES = ("cpu", "memory", "ephemeral-storage")
_HUGEPAGES = re.compile(r"^hugepages-\S+$")

# Fields a pool's ``k8s`` block may set: YAML (camelCase) name -> (where, model class).
_CONTAINER_FIELDS = ("image", "imagePullPolicy", "resources", "env", "envFrom")
_POD_FIELDS = (
    "nodeSelector",
    "tolerations",
    "affinity",
    "priorityClassName",
    "runtimeClassName",
    "schedulerName",
    "topologySpreadConstraints",
)
_ENUMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("V1Container", "imagePullPolicy"): ("Always", "IfNotPresent", "Never"),
    ("V1Toleration", "operator"): ("Exists", "Equal"),
    ("V1Toleration", "effect"): ("NoSchedule", "PreferNoSchedule", "NoExecute"),
}

_TOP_LEVEL = ("version", "default", "pools", "rules")
_POOL_KEYS = ("description", "local_limit", "price", "k8s")
_PRICE_KEYS = ("per_core_hour", "per_gpu_hour", "currency")
_RULE_KEYS = ("keys", "groups", "kinds", "pool", "note")


class PolicyError(ValueError):
    """A placement policy that cannot be used; ``errors`` lists every problem found."""

    def __init__(self, errors: str | Sequence[str], source: str | None = None):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        self.source = source
        head = f"{source}: " if source else ""
        if len(self.errors) == 1:
            message = head + self.errors[0]
        else:
            message = f"{head}{len(self.errors)} problems:\n" + "\n".join(
                f"  - {e}" for e in self.errors
            )
        super().__init__(message)


# ---------------------------------------------------------------------------------------------
# Policy model


@dataclass(frozen=True)
class Price:
    """What an hour of a pool's step costs, for cost reporting."""

    per_core_hour: float
    per_gpu_hour: float
    currency: str = "USD"


@dataclass(frozen=True)
class Pool:
    name: str
    local_limit: int
    price: Price
    # Kubernetes settings in Kubernetes (camelCase) form, validated; quantities as strings.
    k8s: Mapping[str, Any]
    description: str = ""

    @property
    def image(self) -> str | None:
        return self.k8s.get("image")

    @property
    def requests(self) -> Mapping[str, str]:
        return self.k8s.get("resources", {}).get("requests", {})

    @property
    def limits(self) -> Mapping[str, str]:
        return self.k8s.get("resources", {}).get("limits", {})

    @property
    def cores(self) -> Decimal:
        """CPU cores a step reserves (its request, else its limit)."""
        value = self.requests.get("cpu", self.limits.get("cpu", "0"))
        return _parse_quantity(value)

    @property
    def gpus(self) -> int:
        """GPUs a step reserves (any ``<vendor>/gpu`` extended resource)."""
        merged = {**self.requests, **self.limits}
        return sum(int(_parse_quantity(v)) for k, v in merged.items() if k.endswith("/gpu"))

    def hourly_price(self) -> float:
        """Price of one step-hour on this pool: cores x per_core_hour + GPUs x per_gpu_hour."""
        return float(self.cores) * self.price.per_core_hour + self.gpus * self.price.per_gpu_hour


@dataclass(frozen=True)
class Rule:
    index: int  # position in the file, 0-based
    pool: str
    keys: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    note: str = ""

    @property
    def is_key_rule(self) -> bool:
        return bool(self.keys)

    def matches(self, spec: AssetSpec) -> bool:
        if self.keys:
            key = spec.key.to_user_string()
            if not any(fnmatch.fnmatchcase(key, pattern) for pattern in self.keys):
                return False
        if self.groups and spec.group_name not in self.groups:
            return False
        if self.kinds and not set(self.kinds) & set(spec.kinds):
            return False
        return True

    def describe(self) -> str:
        parts = [
            f"{name}={list(values)}"
            for name, values in (("keys", self.keys), ("groups", self.groups), ("kinds", self.kinds))
            if values
        ]
        return f"rules[{self.index}] ({', '.join(parts)} -> {self.pool})"


@dataclass(frozen=True)
class PlacementPolicy:
    pools: Mapping[str, Pool]
    rules: tuple[Rule, ...]
    default: str | None = None
    source: str = "<policy>"
    _ordered: tuple[Rule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ordered = tuple(r for r in self.rules if r.is_key_rule) + tuple(
            r for r in self.rules if not r.is_key_rule
        )
        object.__setattr__(self, "_ordered", ordered)

    def rule_for(self, spec: AssetSpec) -> Rule | None:
        """The rule that places ``spec`` (key rules first, then the others; first match)."""
        return next((rule for rule in self._ordered if rule.matches(spec)), None)

    def pool_for(self, spec: AssetSpec) -> str:
        """The pool of an asset; PolicyError naming the asset when nothing places it."""
        rule = self.rule_for(spec)
        if rule is not None:
            return rule.pool
        if self.default is not None:
            return self.default
        raise PolicyError(
            f"asset '{spec.key.to_user_string()}' (group {spec.group_name!r}, kinds "
            f"{sorted(spec.kinds)}) matches no rule and the policy has no default pool",
            self.source,
        )

    def pool(self, name: str) -> Pool:
        try:
            return self.pools[name]
        except KeyError:
            raise PolicyError(
                f"unknown pool {name!r}; pools: {sorted(self.pools)}", self.source
            ) from None

    def k8s_config_for(self, pool: str) -> dict[str, Any]:
        """The ``dagster-k8s/config`` value of a step on ``pool`` (snake_case, as dagster-k8s
        expects): container resources and image, pod nodeSelector/tolerations/..., and the
        pool label on the Job and its Pod."""
        p = self.pool(pool)
        container = {k: copy.deepcopy(v) for k, v in p.k8s.items() if k in _CONTAINER_FIELDS}
        pod = {k: copy.deepcopy(v) for k, v in p.k8s.items() if k in _POD_FIELDS}
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

    def k8s_tag_for(self, pool: str) -> str:
        """The op tag value (JSON) for ``pool``."""
        return json.dumps(self.k8s_config_for(pool), sort_keys=True)

    def unmatched_rules(self, specs: Iterable[AssetSpec]) -> list[Rule]:
        """Rules that place none of ``specs`` (shadowed, for future assets, or misspelled)."""
        used = {id(self.rule_for(spec)) for spec in specs}
        return [rule for rule in self.rules if id(rule) not in used]


# ---------------------------------------------------------------------------------------------
# Loading and validation


def load_policy(path: str | Path | None = None) -> PlacementPolicy:
    """Read and validate a policy file (default: ``deploy/pools.yaml`` of this checkout)."""
    path = Path(path) if path is not None else DEFAULT_POLICY_PATH
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"cannot read the placement policy: {exc}", str(path)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"not valid YAML: {exc}", str(path)) from exc
    return parse_policy(data, source=str(path))


def parse_policy(data: Any, source: str = "<policy>") -> PlacementPolicy:
    """Validate a policy given as plain data (the parsed YAML); PolicyError lists every problem."""
    errors: list[str] = []
    if not isinstance(data, Mapping):
        raise PolicyError(f"expected a mapping at the top level, got {_type(data)}", source)
    _unknown_keys(data, _TOP_LEVEL, "", errors)
    version = data.get("version", 1)
    if version != 1:
        errors.append(f"version: {version!r} is not supported (expected 1)")

    pools: dict[str, Pool] = {}
    raw_pools = data.get("pools")
    if not isinstance(raw_pools, Mapping) or not raw_pools:
        errors.append("pools: expected a non-empty mapping of pool name -> settings")
        raw_pools = {}
    for name, raw in raw_pools.items():
        pool = _parse_pool(name, raw, errors)
        if pool is not None:
            pools[name] = pool

    default = data.get("default")
    if default is not None and default not in raw_pools:
        errors.append(f"default: unknown pool {default!r}{_suggest(default, raw_pools)}")

    rules: list[Rule] = []
    raw_rules = data.get("rules", [])
    if not isinstance(raw_rules, list):
        errors.append(f"rules: expected a list, got {_type(raw_rules)}")
        raw_rules = []
    for index, raw in enumerate(raw_rules):
        rule = _parse_rule(index, raw, raw_pools, errors)
        if rule is not None:
            rules.append(rule)

    if errors:
        raise PolicyError(errors, source)
    return PlacementPolicy(pools=pools, rules=tuple(rules), default=default, source=source)


def _parse_pool(name: Any, raw: Any, errors: list[str]) -> Pool | None:
    where = f"pool {name!r}"
    n_errors = len(errors)
    if not isinstance(name, str) or not _POOL_NAME.match(name) or len(name) > 63:
        errors.append(
            f"{where}: a pool name must be a DNS label (lowercase letters, digits and '-', "
            "at most 63 characters)"
        )
    if not isinstance(raw, Mapping):
        errors.append(f"{where}: expected a mapping of settings, got {_type(raw)}")
        return None
    _unknown_keys(raw, _POOL_KEYS, f"{where}: ", errors)

    local_limit = raw.get("local_limit")
    if isinstance(local_limit, bool) or not isinstance(local_limit, int) or local_limit < 1:
        errors.append(f"{where}: local_limit must be an integer >= 1, got {local_limit!r}")

    price = Price(0.0, 0.0)
    raw_price = raw.get("price")
    if not isinstance(raw_price, Mapping):
        errors.append(f"{where}: price must be a mapping with per_core_hour and per_gpu_hour")
    else:
        _unknown_keys(raw_price, _PRICE_KEYS, f"{where}: price.", errors)
        values = {}
        for key in ("per_core_hour", "per_gpu_hour"):
            value = raw_price.get(key)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                errors.append(f"{where}: price.{key} must be a number >= 0, got {value!r}")
                value = 0.0
            values[key] = float(value)
        currency = raw_price.get("currency", "USD")
        if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
            errors.append(f"{where}: price.currency must be an ISO 4217 code, got {currency!r}")
            currency = "USD"
        price = Price(values["per_core_hour"], values["per_gpu_hour"], currency)

    description = raw.get("description", "")
    if not isinstance(description, str):
        errors.append(f"{where}: description must be a string")

    k8s = raw.get("k8s")
    if not isinstance(k8s, Mapping):
        errors.append(f"{where}: k8s must be a mapping of Kubernetes settings, got {_type(k8s)}")
        k8s = {}
    else:
        k8s = _check_k8s(k8s, f"{where}: k8s", errors)

    if len(errors) > n_errors:
        return None
    return Pool(
        name=name,
        local_limit=local_limit,
        price=price,
        k8s=k8s,
        description=description,
    )


def _parse_rule(index: int, raw: Any, pools: Mapping[str, Any], errors: list[str]) -> Rule | None:
    where = f"rules[{index}]"
    if not isinstance(raw, Mapping):
        errors.append(f"{where}: expected a mapping with a selector and a pool, got {_type(raw)}")
        return None
    n_errors = len(errors)
    _unknown_keys(raw, _RULE_KEYS, f"{where}: ", errors)
    selectors = {}
    for name in ("keys", "groups", "kinds"):
        value = raw.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(
            isinstance(v, str) and v for v in value
        ):
            errors.append(f"{where}: {name} must be a non-empty string or list of strings")
            continue
        selectors[name] = tuple(value)
    if not selectors and len(errors) == n_errors:
        errors.append(f"{where}: names no keys, groups or kinds, so it matches nothing")
    pool = raw.get("pool")
    if pool is None:
        errors.append(f"{where}: has no pool (every rule maps its assets to one pool)")
    elif pool not in pools:
        errors.append(f"{where}: unknown pool {pool!r}{_suggest(pool, pools)}")
    note = raw.get("note", "")
    if len(errors) > n_errors:
        return None
    return Rule(index=index, pool=pool, note=str(note), **selectors)


def _check_k8s(k8s: Mapping[str, Any], where: str, errors: list[str]) -> dict[str, Any]:
    """Strict check of a pool's Kubernetes settings; returns them with quantities as strings."""
    out: dict[str, Any] = {}
    allowed = _CONTAINER_FIELDS + _POD_FIELDS
    for key, value in k8s.items():
        path = f"{where}.{key}"
        if key not in allowed:
            errors.append(
                f"{path}: unknown or unsupported field{_suggest(key, allowed)} "
                f"(supported: {', '.join(allowed)})"
            )
            continue
        if key in _CONTAINER_FIELDS:
            klass = kubernetes.client.V1Container
        else:
            klass = kubernetes.client.V1PodSpec
        attr = _camel_to_snake(klass)[key]
        if key == "resources":
            out[key] = _check_resources(value, path, errors)
        else:
            _check_value(value, klass.openapi_types[attr], path, errors)
            _check_enum(klass, key, value, path, errors)
            out[key] = copy.deepcopy(value)
    image = out.get("image")
    if "image" in out and (not isinstance(image, str) or not image or re.search(r"\s", image)):
        errors.append(f"{where}.image: must be a non-empty image reference without spaces")
    if "resources" not in out:
        errors.append(f"{where}.resources: required (requests.cpu and requests.memory at least)")
    return out


def _check_resources(value: Any, path: str, errors: list[str]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        errors.append(f"{path}: expected a mapping (ResourceRequirements), got {_type(value)}")
        return {}
    out: dict[str, Any] = {}
    klass = kubernetes.client.V1ResourceRequirements
    fields = _camel_to_snake(klass)
    parsed: dict[str, dict[str, Decimal]] = {"requests": {}, "limits": {}}
    for key, sub in value.items():
        if key not in fields:
            errors.append(f"{path}.{key}: unknown field of ResourceRequirements{_suggest(key, fields)}")
            continue
        if key == "claims":
            _check_value(sub, klass.openapi_types["claims"], f"{path}.claims", errors)
            out[key] = copy.deepcopy(sub)
            continue
        if not isinstance(sub, Mapping):
            errors.append(f"{path}.{key}: expected a mapping of resource name -> quantity")
            continue
        out[key] = {}
        for name, quantity in sub.items():
            qpath = f"{path}.{key}.{name}"
            if not isinstance(name, str) or not (
                name in _STANDARD_RESOURCES or _HUGEPAGES.match(name) or "/" in name
            ):
                errors.append(
                    f"{qpath}: unknown resource name{_suggest(str(name), _STANDARD_RESOURCES)} "
                    "(standard: cpu, memory, ephemeral-storage, hugepages-<size>; extended "
                    "resources need a domain, e.g. nvidia.com/gpu)"
                )
                continue
            if isinstance(quantity, str):
                text = quantity
            elif isinstance(quantity, int | float) and not isinstance(quantity, bool):
                text = str(quantity)  # YAML `cpu: 2`; the tag carries it as "2"
            else:
                text = None
            if text is None or not _QUANTITY.match(text):
                errors.append(
                    f"{qpath}: {quantity!r} is not a Kubernetes quantity "
                    "(e.g. 500m, 2, 4Gi, 512Mi; no spaces, binary suffixes Ki/Mi/Gi/..., "
                    "decimal k/M/G/...)"
                )
                continue
            amount = _parse_quantity(text)
            if amount < 0:
                errors.append(f"{qpath}: {quantity!r} must not be negative")
                continue
            if "/" in name and amount != amount.to_integral_value():
                errors.append(f"{qpath}: extended resource {name} must be a whole number")
                continue
            out[key][name] = text
            parsed[key][name] = amount
    requests, limits = parsed["requests"], parsed["limits"]
    for name, amount in requests.items():
        if name in limits and limits[name] < amount:
            errors.append(
                f"{path}.requests.{name}: request {out['requests'][name]} exceeds the limit "
                f"{out['limits'][name]}"
            )
        if "/" in name and name not in limits:
            errors.append(
                f"{path}.limits.{name}: extended resource {name} must be set in limits "
                "(requests, if given, must equal limits)"
            )
        elif "/" in name and limits[name] != amount:
            errors.append(
                f"{path}.requests.{name}: extended resource request must equal its limit"
            )
    for name in ("cpu", "memory"):
        if name not in requests and name not in limits:
            errors.append(f"{path}.requests.{name}: required (for scheduling and cost reporting)")
    return out


def _check_value(value: Any, attr_type: str, path: str, errors: list[str]) -> None:
    """``value`` against a kubernetes client openapi type, recursively; unknown fields fail."""
    if attr_type.startswith("list["):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {_type(value)}")
            return
        inner = attr_type[5:-1]
        for i, item in enumerate(value):
            _check_value(item, inner, f"{path}[{i}]", errors)
        return
    if attr_type.startswith(("dict(", "dict[")):
        if not isinstance(value, Mapping):
            errors.append(f"{path}: expected a mapping, got {_type(value)}")
            return
        inner = re.split(r",\s*", attr_type[5:-1], maxsplit=1)[1]
        for k, v in value.items():
            if not isinstance(k, str):
                errors.append(f"{path}: key {k!r} must be a string")
            _check_value(v, inner, f"{path}.{k}", errors)
        return
    primitive = {"str": str, "int": int, "bool": bool, "float": (int, float)}
    if attr_type in primitive:
        ok = isinstance(value, primitive[attr_type]) and not (
            attr_type != "bool" and isinstance(value, bool)
        )
        if not ok:
            hint = " (quote it in YAML)" if attr_type == "str" else ""
            errors.append(f"{path}: expected {attr_type}, got {value!r}{hint}")
        return
    if attr_type in ("object", "date", "datetime"):
        return
    klass = getattr(kubernetes.client, attr_type)
    kind = attr_type.removeprefix("V1").removeprefix("Core")
    if not isinstance(value, Mapping):
        errors.append(f"{path}: expected a mapping ({kind}), got {_type(value)}")
        return
    fields = _camel_to_snake(klass)
    for key, sub in value.items():
        if key not in fields:
            errors.append(f"{path}.{key}: unknown field of {kind}{_suggest(key, fields)}")
            continue
        _check_value(sub, klass.openapi_types[fields[key]], f"{path}.{key}", errors)
        _check_enum(klass, key, sub, f"{path}.{key}", errors)
    if klass is kubernetes.client.V1Toleration:
        if value.get("operator") == "Exists" and value.get("value"):
            errors.append(f"{path}.value: must be empty when operator is Exists")
        if "tolerationSeconds" in value and value.get("effect") != "NoExecute":
            errors.append(f"{path}.tolerationSeconds: only valid with effect NoExecute")
        if not value.get("key") and value.get("operator", "Equal") != "Exists":
            errors.append(f"{path}.operator: must be Exists when key is empty")


def _check_enum(klass: type, key: str, value: Any, path: str, errors: list[str]) -> None:
    allowed = _ENUMS.get((klass.__name__, key))
    if allowed and isinstance(value, str) and value not in allowed:
        errors.append(f"{path}: {value!r} is not one of {list(allowed)}{_suggest(value, allowed)}")


def _camel_to_snake(klass: type) -> dict[str, str]:
    return {camel: snake for snake, camel in klass.attribute_map.items()}


def _parse_quantity(value: str | int | float) -> Decimal:
    from kubernetes.utils import parse_quantity

    return Decimal(parse_quantity(value))


def _unknown_keys(data: Mapping, allowed: Sequence[str], where: str, errors: list[str]) -> None:
    for key in data:
        if key not in allowed:
            errors.append(
                f"{where}{key}: unknown field{_suggest(str(key), allowed)} "
                f"(expected: {', '.join(allowed)})"
            )


def _suggest(word: Any, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type(value: Any) -> str:
    return type(value).__name__


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
    tag = policy.k8s_tag_for(pool)
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


def executor_for(env: str, *, max_concurrent: int | None = 2) -> ExecutorDefinition:
    """``local``: the multiprocess executor (``max_concurrent`` processes; pool limits from the
    instance). ``k8s``: dagster-k8s ``k8s_job_executor``, one Job per step whose resources,
    nodeSelector, tolerations and image (where the pool sets one) come from the step's
    ``dagster-k8s/config`` tag; namespace, service account and env come from the Helm
    chart's run launcher or the run config."""
    if env == "local":
        if max_concurrent is None:
            return multiprocess_executor
        return multiprocess_executor.configured({"max_concurrent": max_concurrent})
    if env == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(f"unknown environment {env!r}: expected 'local' or 'k8s'")
