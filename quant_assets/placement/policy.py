"""The placement policy: pools and the rules that place assets in them (``deploy/pools.yaml``).

Pure: YAML in, frozen dataclasses out (no Dagster). ``placement.apply`` turns the policy into
Dagster pools and ``dagster-k8s/config`` tags; ``placement.kubernetes`` checks the pools'
Kubernetes settings strictly.

The policy names pools (``cpu``, ``cpu-highmem``, ``gpu``, ...), each with its Kubernetes
settings (resources, nodeSelector, tolerations, optionally an image), a local concurrency
limit and a price, and maps assets to pools with rules.

Rules are checked in two tiers: rules that name ``keys`` first, then rules that name only
``groups`` and/or ``kinds``; within a tier the first matching rule wins; ``default`` (a pool)
applies when nothing matches. Within one rule the selectors that are present must all match;
``keys`` are asset keys as user strings (``a/b``) or shell globs (``seq_*``). An asset is
anything with ``key`` (``.to_user_string()``), ``group_name`` and ``kinds``, such as a Dagster
``AssetSpec``.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import yaml

from quant_assets.placement.kubernetes import (
    _check_k8s,
    _parse_quantity,
    _suggest,
    _type,
)


class AssetSpec(Protocol):
    """What placement reads of an asset (a Dagster ``AssetSpec`` has these)."""

    key: Any  # .to_user_string()
    group_name: str | None
    kinds: set[str]


__all__ = [
    "DEFAULT_POLICY_PATH",
    "POOL_LABEL",
    "PlacementPolicy",
    "PolicyError",
    "Pool",
    "Price",
    "Rule",
    "load_policy",
    "parse_policy",
]

DEFAULT_POLICY_PATH = Path(__file__).resolve().parents[2] / "deploy" / "pools.yaml"
# Asset tag, Job label and Pod label naming the pool (selection, cost attribution).
POOL_LABEL = "quant-assets/pool"

# A pool name is a Dagster pool, a Kubernetes label value and a node label value: a DNS label.
_POOL_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
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


def _unknown_keys(data: Mapping, allowed: Sequence[str], where: str, errors: list[str]) -> None:
    for key in data:
        if key not in allowed:
            errors.append(
                f"{where}{key}: unknown field{_suggest(str(key), allowed)} "
                f"(expected: {', '.join(allowed)})"
            )


