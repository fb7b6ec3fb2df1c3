"""Strict checks of a pool's Kubernetes settings against the Kubernetes python client's models
(field names, value types, the quantity grammar, enums), as the API server would apply them.

No Dagster here: ``placement.policy`` calls these while parsing ``deploy/pools.yaml``.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import kubernetes.client

# The Kubernetes version the deployment (Helm chart values) targets; the tests validate every
# step Job against this version's OpenAPI schema.
K8S_VERSION = "1.30.0"
# Kubernetes resource.Quantity grammar (apimachinery/pkg/api/resource/quantity.go).
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")
# Resource names a container may request without a domain prefix.
_STANDARD_RESOURCES = ("cpu", "memory", "ephemeral-storage")
_HUGEPAGES = re.compile(r"^hugepages-\S+$")

# Fields a pool's ``k8s`` block may set: YAML (camelCase) name -> (where, model class).
CONTAINER_FIELDS = ("image", "imagePullPolicy", "resources", "env", "envFrom")
POD_FIELDS = (
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


def _check_k8s(k8s: Mapping[str, Any], where: str, errors: list[str]) -> dict[str, Any]:
    """Strict check of a pool's Kubernetes settings; returns them with quantities as strings."""
    out: dict[str, Any] = {}
    allowed = CONTAINER_FIELDS + POD_FIELDS
    for key, value in k8s.items():
        path = f"{where}.{key}"
        if key not in allowed:
            errors.append(
                f"{path}: unknown or unsupported field{_suggest(key, allowed)} "
                f"(supported: {', '.join(allowed)})"
            )
            continue
        if key in CONTAINER_FIELDS:
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


def _suggest(word: Any, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type(value: Any) -> str:
    return type(value).__name__


