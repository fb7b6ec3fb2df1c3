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

Checks at registration (``check_feature``, run by ``build_catalog`` on the library and on
every plug-in feature, ``catalog.py``): the name is a plain column name that no input takes;
the expression reads only its kind's inputs (a snapshot reads an earlier feature only when
it names it in ``depends_on``); it resolves on those inputs to a number; and a series
feature's value at D is the same given `window` market days of history as given more (a
feature that reads further back than it declares would change with the length of its
context, i.e. with D's place in the context year).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import inspect
import re
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
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
# Columns of one instrument's point-in-time context, what a series expression reads.
SERIES_INPUTS: tuple[str, ...] = (
    "date", "open", "high", "low", "close", "volume", "traded_close", "traded_volume", "ret", "market_ret",
)
# The engine's own columns next to the inputs; a feature taking one of these names would
# overwrite it before other features read it.
_ENGINE_COLUMNS = ("as_of", "_context")
RESERVED_NAMES = frozenset((*SNAPSHOT_INPUTS, *SERIES_INPUTS, *_ENGINE_COLUMNS))
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

# --------------------------------------------------------------------------- versions


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _top_package(module: str | None) -> str:
    return (module or "").split(".", 1)[0]


def _fingerprint(fn: Callable[..., Any], seen: set[int], packages: frozenset[str] | None = None) -> list[str]:
    """Source of `fn` plus, recursively, of the functions and constants it uses from this
    package or from the builder's own top-level package (a plug-in's helpers count as
    its definition: editing one changes the feature's version)."""
    fn = inspect.unwrap(fn)
    if packages is None:
        packages = frozenset({"quant_assets", _top_package(getattr(fn, "__module__", None))})
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
        if inspect.isfunction(obj) and _top_package(obj.__module__) in packages:
            parts += _fingerprint(obj, seen, packages)
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
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                f"feature name {self.name!r} must start with a letter and hold only letters, "
                "digits and underscores (it becomes a column)"
            )
        # plug-in conveniences: params as a mapping, depends_on as any sequence of names
        if isinstance(self.params, Mapping):
            object.__setattr__(self, "params", tuple(self.params.items()))
        if isinstance(self.depends_on, str):
            object.__setattr__(self, "depends_on", (self.depends_on,))
        object.__setattr__(self, "depends_on", tuple(self.depends_on))
        object.__setattr__(self, "params", tuple(tuple(p) for p in self.params))
        if (self.expr_builder is None) == (self.expr is None):
            raise ValueError(f"feature {self.name!r}: give exactly one of expr_builder or expr")
        if self.kind not in KINDS:
            raise ValueError(f"feature {self.name!r}: kind must be one of {KINDS}")
        if not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 1:
            raise ValueError(f"feature {self.name!r}: window must be an integer >= 1, got {self.window!r}")
        if self.name in RESERVED_NAMES:
            raise ValueError(f"feature {self.name!r} shadows an input column")
        if self.expr is not None and not isinstance(self.expr, pl.Expr):
            raise ValueError(f"feature {self.name!r}: expr must be a polars expression, got {type(self.expr).__name__}")
        if self.expr_builder is not None and not callable(self.expr_builder):
            raise ValueError(f"feature {self.name!r}: expr_builder must be a function returning a polars expression")
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
    """name -> Feature in the given order, after `check_feature` on each."""
    out: dict[str, Feature] = {}
    for feature in features:
        check_feature(feature, out)
        out[feature.name] = feature
    return out


# --------------------------------------------------------------------------- checks


def check_feature(feature: Feature, registered: Mapping[str, Feature]) -> None:
    """Raise ValueError (naming the feature and the rule) unless `feature` can join a
    catalogue holding `registered` (module docstring: the checks at registration)."""
    if not isinstance(feature, Feature):
        raise ValueError(f"{feature!r} is not a Feature (quant_assets.features.Feature)")
    name = feature.name
    if name in registered:
        raise ValueError(f"duplicate feature name {name!r}")
    for dep in feature.depends_on:
        if dep not in registered:
            raise ValueError(f"feature {name!r} depends on {dep!r}, not registered before it")
    if feature.expr_builder is not None:
        try:
            built = feature.expr_builder(**dict(feature.params))
        except Exception as exc:  # a builder that raises is a bad definition, whatever it raised
            raise ValueError(f"feature {name!r}: its builder failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(built, pl.Expr):
            raise ValueError(f"feature {name!r}: its builder returned {type(built).__name__}, not a polars expression")
    expr = feature.build()
    schema = _input_schema(feature, registered)
    unknown = sorted(set(expr.meta.root_names()) - set(schema))
    if unknown:
        if feature.kind == "series":
            hint = f"a series feature reads one instrument's context: {', '.join(SERIES_INPUTS)}"
        else:
            hint = "a snapshot feature reads the day's cross-section and the features named in depends_on"
        raise ValueError(f"feature {name!r} reads unknown column(s) {unknown}: {hint}")
    try:
        frame = pl.LazyFrame(schema={**schema, "_context": pl.Int64()})
        dtype = frame.select(_evaluated(feature, expr)).collect_schema()[name]
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"feature {name!r} does not evaluate on its inputs: {first}") from exc
    if not (dtype.is_numeric() or dtype == pl.Boolean):
        raise ValueError(f"feature {name!r} evaluates to {dtype}, not a number")
    if feature.kind == "series":
        _check_window(feature, expr)


def _input_schema(feature: Feature, registered: Mapping[str, Feature]) -> dict[str, pl.DataType]:
    if feature.kind == "series":
        return {c: (pl.Date() if c == "date" else pl.Float64()) for c in SERIES_INPUTS}
    text = {"date": pl.Date(), "instrument_id": pl.String(), "sector": pl.String()}
    schema = {c: text.get(c, pl.Float64()) for c in SNAPSHOT_INPUTS}
    schema.update({dep: pl.Float64() for dep in feature.depends_on})
    return schema


def _evaluated(feature: Feature, expr: pl.Expr) -> pl.Expr:
    # as the engine evaluates it: a series expression per context
    return expr.over("_context") if feature.kind == "series" else expr


# Extra market days of history given to a series expression to test its declared window.
_WINDOW_PROBE_EXTRA = 40
# Relative tolerance of that comparison: sliding-window kernels accumulate rounding
# differently from different starting rows (a shorter history is not bit-identical).
_WINDOW_PROBE_RTOL = 1e-7


def _probe_bars(rows: int, seed: int = 0) -> pl.DataFrame:
    """`rows` plausible market days of one instrument: positive prices with high >= open,
    close >= low, volumes and the market's return."""
    rng = np.random.default_rng(seed)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, rows)))
    open_ = close * np.exp(rng.normal(0.0, 0.01, rows))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.01, rows)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.01, rows)))
    volume = np.exp(rng.normal(13.0, 0.5, rows))
    return pl.DataFrame({
        "date": [dt.date(2001, 1, 1) + dt.timedelta(days=k) for k in range(rows)],
        "open": open_, "high": high, "low": low, "close": close, "volume": volume,
        "traded_close": close * 2.0, "traded_volume": volume / 2.0, "market_ret": rng.normal(0.0, 0.01, rows),
    })


def _probe_context(bars: pl.DataFrame) -> pl.DataFrame:
    """The bars as the engine's context of their last day: a leading null row, returns
    within the context (the first day has none, nor has the market then)."""
    ret = pl.col("close") / pl.col("close").shift(1) - 1.0
    frame = bars.with_columns(ret.alias("ret"), pl.when(ret.is_not_null()).then(pl.col("market_ret")).alias("market_ret"))
    frame = frame.select(SERIES_INPUTS)
    return pl.concat([frame.clear(1), frame]).with_columns(pl.lit(0).alias("_context"))


@functools.lru_cache(maxsize=64)
def _probe_pair(window: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    # frames are immutable: one pair per window length serves every feature of that window
    bars = _probe_bars(window + _WINDOW_PROBE_EXTRA)
    return _probe_context(bars), _probe_context(bars.tail(window))


def _check_window(feature: Feature, expr: pl.Expr) -> None:
    """The value at the last row given `window` days must equal the value given more."""
    long, short = _probe_pair(feature.window)
    try:
        values = [
            frame.select(_evaluated(feature, expr).cast(pl.Float64)).to_series()[-1]
            for frame in (long, short)
        ]
    except Exception as exc:
        raise ValueError(f"feature {feature.name!r} fails on a sample context: {type(exc).__name__}: {exc}") from exc
    want, got = (np.nan if v is None else float(v) for v in values)
    same = (np.isnan(got) and np.isnan(want)) or bool(np.isclose(got, want, rtol=_WINDOW_PROBE_RTOL, atol=1e-12))
    if not same:
        raise ValueError(
            f"feature {feature.name!r} reads more than its window={feature.window} market days: "
            f"its value at D given {feature.window} market day(s) of history ({got!r}) differs from its "
            f"value given {feature.window + _WINDOW_PROBE_EXTRA} ({want!r}); declare the market days it reads, "
            "D included (e.g. 21 for a 20-day return)"
        )
