"""How a feature is defined: the public API of the built-in library and of plug-ins.

A `Feature` is a named polars expression with a version: a short sha256 of its definition
(the source of its builder and of the package helpers the builder calls, its parameters,
its window and kind), so editing a definition changes its version and the asset's code
version. Names, families and descriptions are documentation and do not enter the version.

Two kinds of feature
--------------------
- "series": evaluated on ONE instrument's PIT-adjusted context as of D (`pit.pit_panel`
  columns date, open, high, low, close, volume, traded_close, traded_volume, ret,
  market_ret; rows sorted by date: a null row, then the context's market days, the last
  row is D, missing bars are null rows). The feature of D is the expression's value at D's
  row, so expressions must be causal: rolling statistics (`rolling_mean(20,
  min_samples=20)`), positive shifts and element-wise arithmetic, never a look at later rows
  (`shift(-1)`, `reverse`, whole-column reductions); the leak check catches one that does.
  `window` = market days it reads, D included (at most `before + 1`: every context has at
  least that many rows). The leading null row makes every context carry a missing value,
  so polars evaluates a context with the same (null-aware) kernels whatever follows D.
- "snapshot": evaluated on the cross-section of D, one row per instrument of D's universe,
  columns date, instrument_id, sector, close and volume (as traded on D), the
  PIT fundamentals of `pit.fundamentals_as_of`, and every feature computed before it in
  registry order (`depends_on` names those it needs). Cross-sectional operations use
  `.over("date")` or `.over(["date", "sector"])`.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from quant_assets.features import pit

KINDS = ("series", "snapshot")
# Columns a snapshot expression can read besides features; no feature may take these names.
SNAPSHOT_INPUTS: tuple[str, ...] = (
    "date",
    "instrument_id",
    "sector",
    "close",
    "volume",
    *pit.FUNDAMENTAL_FIELDS,
    *(f"{f}_year_ago" for f in pit.FUNDAMENTAL_FIELDS),
    *(f"{f}_ttm" for f in pit.FLOW_FIELDS),
)

# --------------------------------------------------------------------------- versions


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _fingerprint(fn: Callable[..., Any], seen: set[int]) -> list[str]:
    """Source of `fn` plus, recursively, of the package functions and constants it uses."""
    fn = inspect.unwrap(fn)
    if id(fn) in seen:
        return []
    seen.add(id(fn))
    try:
        parts = [inspect.getsource(fn)]
    except (OSError, TypeError):  # no source file (e.g. built with exec): use the bytecode
        parts = [fn.__code__.co_code.hex(), repr(fn.__code__.co_consts)]
    for cell in fn.__closure__ or ():
        parts.append(repr(cell.cell_contents))
    for name in sorted(_code_names(fn.__code__)):
        obj = fn.__globals__.get(name)
        if inspect.isfunction(obj) and obj.__module__.startswith("quant_assets"):
            parts += _fingerprint(obj, seen)
        elif isinstance(obj, int | float | str | bool | tuple | frozenset):
            parts.append(f"{name}={obj!r}")
    return parts


def _short_hash(parts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class Feature:
    """One feature: give `expr_builder` (called with `params`) or a ready `expr`."""

    name: str
    family: str
    description: str
    window: int
    expr_builder: Callable[..., pl.Expr] | None = field(default=None, compare=False)
    params: tuple[tuple[str, Any], ...] = field(default=(), compare=False)
    expr: pl.Expr | None = field(default=None, compare=False)
    kind: str = "series"
    depends_on: tuple[str, ...] = ()
    version: str = field(init=False)

    def __post_init__(self) -> None:
        if (self.expr_builder is None) == (self.expr is None):
            raise ValueError(f"feature {self.name!r}: give exactly one of expr_builder or expr")
        if self.kind not in KINDS:
            raise ValueError(f"feature {self.name!r}: kind must be one of {KINDS}")
        if self.window < 1:
            raise ValueError(f"feature {self.name!r}: window must be >= 1")
        if self.name in SNAPSHOT_INPUTS:
            raise ValueError(f"feature {self.name!r} shadows an input column")
        if self.expr is not None:
            definition = [self.expr.meta.serialize(format="json")]
        else:
            definition = _fingerprint(self.expr_builder, set())
        object.__setattr__(
            self,
            "version",
            _short_hash([self.kind, str(self.window), repr(self.params), repr(self.depends_on), *definition]),
        )

    def build(self) -> pl.Expr:
        """The expression, aliased to the feature's name."""
        return _built(self)


@functools.lru_cache(maxsize=4096)
def _built(feature: Feature) -> pl.Expr:
    # expressions are immutable: build each feature's once per process
    expr = feature.expr if feature.expr is not None else feature.expr_builder(**dict(feature.params))
    return expr.alias(feature.name)


def build_catalog(features: Iterable[Feature]) -> dict[str, Feature]:
    """name -> Feature in the given order, after checking names and dependencies."""
    out: dict[str, Feature] = {}
    for feature in features:
        if feature.name in out:
            raise ValueError(f"duplicate feature name {feature.name!r}")
        for dep in feature.depends_on:
            if dep not in out:
                raise ValueError(f"feature {feature.name!r} depends on {dep!r}, not registered before it")
        out[feature.name] = feature
    return out
