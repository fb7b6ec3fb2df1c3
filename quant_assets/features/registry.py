"""The feature registry and the point-in-time feature engine.

A `Feature` is a named polars expression with a version: a short sha256 of its definition
(the source of its builder and of the package helpers the builder calls, its parameters,
its window and kind), so editing a definition changes its version and the asset's code
version. Names, families and descriptions are documentation and do not enter the version.

Two kinds of feature
--------------------
- "series": evaluated on ONE instrument's PIT-adjusted history as of D (`pit.pit_panel`
  columns date, open, high, low, close, volume, ret, market_ret; rows sorted by date,
  the last row is D, missing bars are null rows). The feature is the expression's last
  value, so time-series expressions (`rolling_mean(20, min_samples=20)`) and window
  reductions (`tail(20).arg_max()`) both work. `window` = market days it reads, D included.
- "snapshot": evaluated on the cross-section of D, one row per instrument of D's universe,
  columns date, instrument_id, sector, close and volume (as traded on D), the
  PIT fundamentals of `pit.fundamentals_as_of`, and every feature computed before it in
  registry order (`depends_on` names those it needs). Cross-sectional operations use
  `.over("date")` or `.over(["date", "sector"])`.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import inspect
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from quant_assets.calendar import DEFAULT_CUTOFF
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
# Extra market days of history to load beyond the longest window (holidays, late bars).
LOOKBACK_MARGIN_DAYS = 5


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


def __getattr__(name: str) -> Any:
    # FEATURES is built from library.py, which imports Feature from here: resolve lazily.
    if name == "FEATURES":
        return _features()
    raise AttributeError(name)


_REGISTRY: dict[str, Feature] | None = None


def _features() -> dict[str, Feature]:
    global _REGISTRY
    if _REGISTRY is None:
        from quant_assets.features.library import LIBRARY

        _REGISTRY = build_registry(LIBRARY)
    return _REGISTRY


def build_registry(features: Iterable[Feature]) -> dict[str, Feature]:
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


def feature_versions() -> dict[str, str]:
    """name -> version of every registered feature, in registry order."""
    return {name: f.version for name, f in _features().items()}


def features_code_version() -> str:
    """One hash of every feature version and of the PIT engine's code (the asset code_version)."""
    engine = [Path(pit.__file__).read_text(), Path(__file__).read_text()]
    return _short_hash([*(f"{n}={v}" for n, v in feature_versions().items()), *engine])


def max_window(features: Iterable[Feature] | None = None) -> int:
    return max(f.window for f in (features if features is not None else _features().values()))


def required_lookback_days() -> int:
    """Trading days of bars before the first as-of day that the features need."""
    return max_window() + LOOKBACK_MARGIN_DAYS


# --------------------------------------------------------------------------- the engine


@dataclass(frozen=True)
class FeatureConfig:
    cutoff_time: dt.time = DEFAULT_CUTOFF
    features: tuple[str, ...] | None = None  # a subset of FEATURES (default: all)
    batch_days: int = 64  # as-of days evaluated together (bounds memory)
    max_fundamental_age_days: int = pit.FUNDAMENTAL_MAX_AGE_DAYS


def _with_dependencies(registry: dict[str, Feature], names: Sequence[str]) -> list[Feature]:
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ValueError(f"unknown features: {unknown}")
    needed: set[str] = set()
    stack = list(names)
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack.extend(registry[name].depends_on)
    return [f for n, f in registry.items() if n in needed]


def _finite(name: str) -> pl.Expr:
    # inf/NaN (a zero denominator) becomes null: one kind of missing value downstream
    x = pl.col(name).cast(pl.Float64)
    return pl.when(x.is_finite()).then(x).alias(name)


def _output_schema(names: Sequence[str]) -> dict[str, pl.DataType]:
    return {"date": pl.Date(), "instrument_id": pl.String(), **{n: pl.Float64() for n in names}}


def compute_features(
    universe: pl.DataFrame,
    market_bars: pl.DataFrame,
    corporate_actions: pl.DataFrame,
    fundamentals: pl.DataFrame,
    dates: Iterable[dt.date] | pl.Series,
    config: FeatureConfig | None = None,
) -> pl.DataFrame:
    """Point-in-time features of each as-of day in `dates`.

    One row per (D, instrument of D's PIT universe): columns `date` (D), `instrument_id`,
    then one Float64 column per selected feature in registry order; sorted by (date,
    instrument_id). A feature of D reads only rows with knowledge_time <= cutoff(D); rows
    published later (and bars after D) are ignored. Not enough history gives null.
    The history window is the same for every subset, so a subset's values are bit-identical
    to the full run's.
    """
    cfg = config or FeatureConfig()
    registry = _features()
    selected = list(cfg.features) if cfg.features is not None else list(registry)
    needed = _with_dependencies(registry, selected)
    selected = [n for n in registry if n in set(selected)]
    days = pit.as_date_frame(dates)["as_of"]
    if days.is_empty():
        return pl.DataFrame(schema=_output_schema(selected))
    # rows published after the last cutoff can never be read: drop them once, up front
    last_cutoff = pl.lit(days.max()).pipe(pit.cutoff_expr, cfg.cutoff_time)
    bars, actions, funds = (
        pit.with_utc(t, "knowledge_time").filter(pl.col("knowledge_time") <= last_cutoff)
        for t in (market_bars, corporate_actions, fundamentals)
    )
    lookback = max_window(registry.values())
    step = max(1, cfg.batch_days)
    # one batch at a time bounds memory: a batch's panel is days x instruments x lookback rows
    bars = bars.collect(engine=pit.ENGINE)
    batches = []
    for i in range(0, len(days), step):
        batch = days[i : i + step]
        # Bars dated before the oldest market day of the batch's windows are never read;
        # dropping them keeps each batch's joins proportional to its window, not to the
        # whole history (a 10-year run was quadratic in its length). Exact: the market
        # days of every window are unchanged (all dates on and after the cut are kept).
        window_days = pit.market_days_as_of(bars.lazy(), batch, lookback=lookback, cutoff_time=cfg.cutoff_time)
        first = window_days.select(pl.col("date").min()).collect(engine=pit.ENGINE).item()
        batch_bars = bars.lazy() if first is None else bars.lazy().filter(pl.col("date") >= first)
        plan = _batch_plan(universe, batch_bars, actions, funds, batch, needed, lookback, cfg)
        batches.append(plan.collect(engine=pit.ENGINE))
    out = pl.concat(batches, how="vertical")
    return out.select("date", "instrument_id", *selected).sort("date", "instrument_id")


def _snapshot_levels(features: list[Feature]) -> list[list[Feature]]:
    """Snapshot features in dependency levels: each level reads only earlier columns."""
    level: dict[str, int] = {}
    for f in features:
        level[f.name] = 1 + max((level.get(d, 0) for d in f.depends_on), default=0)
    out: dict[int, list[Feature]] = {}
    for f in features:
        out.setdefault(level[f.name], []).append(f)
    return [out[k] for k in sorted(out)]


def _batch_plan(
    universe: pl.DataFrame,
    bars: pl.LazyFrame,
    actions: pl.LazyFrame,
    funds: pl.LazyFrame,
    days: pl.Series,
    needed: list[Feature],
    lookback: int,
    cfg: FeatureConfig,
) -> pl.LazyFrame:
    """The lazy plan of one batch of as-of days (collected together with the others)."""
    group = ["as_of", "instrument_id"]
    members = pit.pit_universe(universe.lazy(), bars, days, cutoff_time=cfg.cutoff_time)
    panel = pit.pit_panel(bars, actions, days, universe=universe, lookback=lookback, cutoff_time=cfg.cutoff_time)
    panel = panel.join(members.select(group), on=group, how="semi")
    series = [f for f in needed if f.kind == "series"]
    # each series feature is its expression's last value on the instrument's window
    frame = (
        panel.sort([*group, "date"])
        .group_by(group, maintain_order=True)
        .agg(pl.col("close").last(), pl.col("volume").last(), *(f.build().last() for f in series))
        .with_columns(_finite(f.name) for f in series)
    )
    fundamentals = pit.fundamentals_as_of(
        funds, actions, days, cutoff_time=cfg.cutoff_time, max_age_days=cfg.max_fundamental_age_days
    )
    frame = (
        members.join(frame, on=group, how="left")
        .join(fundamentals, on=group, how="left")
        .rename({"as_of": "date"})
        .sort("date", "instrument_id")
    )
    for level in _snapshot_levels([f for f in needed if f.kind == "snapshot"]):
        frame = frame.with_columns(f.build() for f in level).with_columns(_finite(f.name) for f in level)
    names = [f.name for f in needed]
    return frame.select("date", "instrument_id", *names).cast(_output_schema(names))
