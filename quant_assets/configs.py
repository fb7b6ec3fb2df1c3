"""Dagster run config built from the pure configuration dataclasses, never a hand copy.

A stage's settings are a frozen dataclass of its pure core (``StrategySpec``, ``LGBMConfig``,
``GridSpec``, ...): the single place their fields, types, defaults and validation live.
``config_class`` derives the Dagster ``Config`` (what the launchpad and run config show) from
one or more of them, so a field added to a dataclass is configurable with no other edit, and
``to(Dataclass)`` turns the run config back into the validated dataclass.

Dagster config has lists, not tuples: a tuple field is a list in the config and a tuple
again in the dataclass. Environment-driven defaults (``QUANT_EMBARGO_DAYS``,
``QUANT_MODEL_SEED``) are passed as ``defaults``; they replace a dataclass default, they do
not copy a field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

import pydantic
from dagster import Config

__all__ = ["DataclassConfig", "config_class"]


def _config_type(tp: Any) -> Any:
    """The Dagster-config form of a dataclass field type (tuples become lists)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is tuple:
        item = args[0] if args and (len(args) == 2 and args[1] is Ellipsis or len(set(args)) == 1) else Any
        return list[_config_type(item)]
    if origin in (types.UnionType, typing.Union):
        return typing.Union[tuple(_config_type(a) for a in args)]  # noqa: UP007 - built from a tuple
    if origin is typing.Literal:
        return str if all(isinstance(a, str) for a in args) else tp
    return tp


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return ...
    return list(value) if isinstance(value, tuple) else value


class DataclassConfig(Config):
    """Base of the derived configs: ``to(Dataclass)`` builds one of its dataclasses."""

    def to(self, dataclass_type: type) -> Any:
        """The ``dataclass_type`` instance of this config's values (its fields only)."""
        hints = typing.get_type_hints(dataclass_type)
        values = {}
        for field in dataclasses.fields(dataclass_type):
            if not field.init:
                continue
            value = getattr(self, field.name)
            if typing.get_origin(hints[field.name]) is tuple and isinstance(value, list):
                value = tuple(value)
            values[field.name] = value
        return dataclass_type(**values)


def config_class(
    name: str,
    *dataclass_types: type,
    defaults: Mapping[str, Any] | None = None,
    extra: Mapping[str, tuple[Any, Any]] | None = None,
    doc: str | None = None,
) -> type[DataclassConfig]:
    """A ``Config`` subclass with every init field of ``dataclass_types`` (a name shared by
    two dataclasses is one field; the first default wins), ``defaults`` replacing defaults,
    and ``extra`` fields (name -> (type, default)) that belong to no dataclass."""
    fields: dict[str, tuple[Any, Any]] = {}
    for dataclass_type in dataclass_types:
        hints = typing.get_type_hints(dataclass_type)
        for field in dataclasses.fields(dataclass_type):
            if not field.init or field.name in fields:
                continue
            fields[field.name] = (_config_type(hints[field.name]), _default_of(field))
    for key, value in (defaults or {}).items():
        if key not in fields:
            raise ValueError(f"{name}: default for unknown field {key!r}")
        fields[key] = (fields[key][0], value)
    for key, (tp, default) in (extra or {}).items():
        if key in fields:
            raise ValueError(f"{name}: extra field {key!r} is already a dataclass field")
        fields[key] = (tp, default)
    model = pydantic.create_model(name, __base__=DataclassConfig, __module__=__name__, **fields)
    model.__doc__ = doc or f"Run config of {', '.join(d.__name__ for d in dataclass_types)}."
    return model
