"""The feature registry and the point-in-time feature engine.

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

from quant_assets.calendar import DEFAULT_CUTOFF, Cutoff
from quant_assets.data.reference import universe_changes
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
# Extra market days of history to load beyond the longest context (holidays, late bars).
LOOKBACK_MARGIN_DAYS = 5
# Most market days a context period (pit.CONTEXT_PERIOD, a year) can have before D: a
# context reaches back to the period's first day and then a full window further.
PERIOD_MARKET_DAYS = 253


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


def context_before() -> int:
    """Market days before the first day of D's context period in D's context: the longest window of the
    whole registry minus D's row (the same for every subset, so a subset's values are
    bit-identical to the full run's)."""
    return max_window() - 1


def required_lookback_days() -> int:
    """Trading days of bars before the first as-of day that the features need."""
    return context_before() + PERIOD_MARKET_DAYS + LOOKBACK_MARGIN_DAYS


# --------------------------------------------------------------------------- the engine


@dataclass(frozen=True)
class FeatureConfig:
    cutoff_time: Cutoff = DEFAULT_CUTOFF
    features: tuple[str, ...] | None = None  # a subset of FEATURES (default: all)
    batch_days: int = 260  # as-of days evaluated together, within one context period (bounds memory)
    max_fundamental_age_days: int = pit.FUNDAMENTAL_MAX_AGE_DAYS
    # Rows of these instruments only (default: all). The market return and the
    # cross-sectional features still read every instrument, so the rows are bit-identical to
    # the full run's; only the other instruments' series features are skipped.
    instruments: tuple[str, ...] | None = None


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
    The result of a day does not depend on which other days are asked for with it, nor on
    the feature subset: bit-identical to computing the day alone.
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
    before = context_before()
    step = max(1, cfg.batch_days)
    # one batch at a time bounds memory: a batch's panel is months x instruments x context
    bars = bars.collect(engine=pit.ENGINE)
    actions = actions.collect(engine=pit.ENGINE)
    late = _late_rows(bars, actions, cfg.cutoff_time, universe)
    batches = []
    # batches never straddle a context period: a period's days share one view
    by_period = days.to_frame().group_by(pl.col("as_of").dt.truncate(pit.CONTEXT_PERIOD).alias("_period"),
                                         maintain_order=True)
    for period_days in by_period.agg("as_of")["as_of"]:
        for i in range(0, len(period_days), step):
            batches.append(_batch(universe, bars, actions, funds, late, period_days[i : i + step], needed, before, cfg))
    out = pl.concat(batches, how="vertical")
    return out.select("date", "instrument_id", *selected).sort("date", "instrument_id")


def _batch(
    universe: pl.DataFrame,
    bars: pl.DataFrame,
    actions: pl.DataFrame,
    funds: pl.LazyFrame,
    late: pl.DataFrame,
    batch: pl.Series,
    needed: list[Feature],
    before: int,
    cfg: FeatureConfig,
) -> pl.DataFrame:
    serve = _views(batch, late, cfg.cutoff_time)
    # Bars dated before the oldest market day of the batch's contexts are never read;
    # dropping them keeps each batch's joins proportional to its contexts, not to the
    # whole history. Exact: the market days of every context are unchanged.
    context = pit.context_days(bars.lazy(), serve["as_of"].unique(), before=before, cutoff_time=cfg.cutoff_time)
    first = context.select(pl.col("date").min()).collect(engine=pit.ENGINE).item()
    batch_bars = bars.lazy() if first is None else bars.lazy().filter(pl.col("date") >= first)
    plan = _batch_plan(universe, batch_bars, actions.lazy(), funds, serve, needed, before, cfg)
    return plan.collect(engine=pit.ENGINE)


def _late_rows(
    bars: pl.DataFrame, actions: pl.DataFrame, cutoff_time: Cutoff, universe: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Row versions published after the cutoff of the day they are about (a late or
    corrected bar, an action announced after its ex_date, a universe version changing a
    listing from `ref` on): `ref` (that day) and `knowledge_time`. Only these can make D's
    view differ from a later day's."""
    frames = [
        frame.lazy()
        .filter(pl.col("knowledge_time") > pl.col(ref).pipe(pit.cutoff_expr, cutoff_time))
        .select(pl.col(ref).alias("ref"), pl.col("knowledge_time").cast(pit.UTC_TIME))
        for frame, ref in ((bars, "date"), (actions, "ex_date"))
    ]
    if universe is not None and "knowledge_time" in universe.columns:
        changes = universe_changes(pit.with_utc(universe, "knowledge_time").collect())
        frames.append(
            changes.lazy().filter(pl.col("knowledge_time") > pl.col("ref").pipe(pit.cutoff_expr, cutoff_time))
        )
    return pl.concat(frames).collect(engine=pit.ENGINE)


def _views(days: pl.Series, late: pl.DataFrame, cutoff_time: Cutoff) -> pl.DataFrame:
    """Which view computes each day: columns date (D) and as_of (the day V whose context,
    as of V, is evaluated for D's row).

    V is the last day of the batch in D's context period: the context of D as of D is the
    prefix of V's up to D (pit.py), unless a row about a day <= D was published after
    cutoff(D) and by cutoff(V); such a day is its own view.
    """
    period = pl.col("date").dt.truncate(pit.CONTEXT_PERIOD)
    serve = (
        pl.DataFrame({"date": days})
        .with_columns(pl.col("date").max().over(period).alias("as_of"), pl.col("date").min().over(period).alias("_first"))
    )
    cut = functools.partial(pit.cutoff_expr, cutoff_time=cutoff_time)
    if late.height:
        blocks = serve.select("as_of", "_first").unique()
        hits = late.join_where(
            blocks,
            pl.col("knowledge_time") <= cut("as_of"),
            pl.col("knowledge_time") > cut("_first"),
        )
        revised = (
            hits.join(serve.select("date", "as_of"), on="as_of")
            .filter((pl.col("ref") <= pl.col("date")) & (pl.col("knowledge_time") > cut("date")))
            .select("date")
            .unique()
        )
        own = pl.col("date").is_in(revised["date"].implode())
        serve = serve.with_columns(pl.when(own).then(pl.col("date")).otherwise(pl.col("as_of")).alias("as_of"))
    return serve.select("date", "as_of")


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
    serve: pl.DataFrame,
    needed: list[Feature],
    before: int,
    cfg: FeatureConfig,
) -> pl.LazyFrame:
    """The lazy plan of one batch of as-of days (`serve`: each day and its view)."""
    group = ["as_of", "instrument_id"]
    days = serve["date"]
    members = pit.pit_universe(universe.lazy(), bars, days, cutoff_time=cfg.cutoff_time).rename({"as_of": "date"})
    panel = pit.pit_panel(bars, actions, serve["as_of"].unique(), universe=universe, before=before,
                          cutoff_time=cfg.cutoff_time)
    # a null row ahead of every context (registry doc: the same kernels whatever follows D)
    lead = panel.select(group).unique().with_columns(pl.lit(None, dtype=pl.Date).alias("date"))
    panel = pl.concat([lead, panel], how="diagonal_relaxed").sort([*group, "date"], nulls_last=False)
    # one sorted integer key per context: polars then evaluates window expressions on
    # contiguous slices (2-3x less overhead per context than hashing two key columns)
    starts = pl.any_horizontal(pl.col(c) != pl.col(c).shift(1) for c in group).fill_null(True)
    panel = panel.with_columns(starts.cum_sum().set_sorted().alias("_context"))
    series = [f for f in needed if f.kind == "series"]
    # each series feature is its expression's value at D's row of D's view
    if cfg.instruments is None:
        evaluated = panel.with_columns(_built(f).over("_context").alias(f.name) for f in series)
    else:
        # the series that snapshot features read across instruments, for every instrument;
        # the rest for the asked instruments only
        wanted = pl.col("instrument_id").is_in(list(cfg.instruments))
        shared = _cross_sectional_inputs(needed)
        evaluated = panel.with_columns(_built(f).over("_context").alias(f.name) for f in series if f.name in shared)
        evaluated = pl.concat(
            [
                evaluated.filter(wanted).with_columns(
                    _built(f).over("_context").alias(f.name) for f in series if f.name not in shared
                ),
                evaluated.filter(~wanted),
            ],
            how="diagonal_relaxed",
        )
    frame = (
        evaluated.join(serve.lazy(), on=["as_of", "date"], how="semi")
        .select(
            "date", "instrument_id",
            pl.col("traded_close").alias("close"), pl.col("traded_volume").alias("volume"),
            *(_finite(f.name) for f in series),
        )
    )
    fundamentals = pit.fundamentals_as_of(
        funds, actions, days, cutoff_time=cfg.cutoff_time, max_age_days=cfg.max_fundamental_age_days
    ).rename({"as_of": "date"})
    key = ["date", "instrument_id"]
    frame = (
        members.join(frame, on=key, how="left")
        .join(fundamentals, on=key, how="left")
        .sort("date", "instrument_id")
    )
    for level in _snapshot_levels([f for f in needed if f.kind == "snapshot"]):
        frame = frame.with_columns(f.build() for f in level).with_columns(_finite(f.name) for f in level)
    names = [f.name for f in needed]
    out = frame.select("date", "instrument_id", *names).cast(_output_schema(names))
    return out if cfg.instruments is None else out.filter(pl.col("instrument_id").is_in(list(cfg.instruments)))


def _cross_sectional_inputs(features: list[Feature]) -> set[str]:
    """Names of the features that snapshot features read (directly or through others)."""
    registry = {f.name: f for f in features}
    out: set[str] = set()
    stack = [d for f in features if f.kind == "snapshot" for d in f.depends_on]
    while stack:
        name = stack.pop()
        if name not in out:
            out.add(name)
            stack.extend(registry[name].depends_on)
    return out
