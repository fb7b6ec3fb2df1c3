"""Sweep search spaces: a space of model hyper-parameters and strategy parameters -> trials.

Pure (no Dagster, no MLflow). ``trial.run_trial`` evaluates a trial; ``trials/assets.py`` runs
each trial as a ``sweep_trials`` dynamic partition with an MLflow child run, and
``trial_registry.py`` holds the plan and registry tables.

A search space names dimensions by section: ``lgbm.<LGBMConfig field>`` or
``strategy.<StrategySpec field>``. A dimension is a list of values (grid/choice) or a range
``{low, high, log, integer}``. Sampling: ``grid`` (the product of the value lists),
``random`` (numpy Generator) or ``sobol`` (scrambled Sobol points, scipy.stats.qmc), all
seeded, planned up front; or ``optuna`` (adaptive: Optuna's TPE proposes each round from the
results of the rounds before, ``trials/adaptive.py``). A trial is the base config with the sampled values put in; its id is a hash of the
whole resolved trial (sweep name, months, walk-forward, LightGBM and strategy settings), so
the same trial always gets the same id and a resumed sweep recognises finished trials.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from quant_assets.backtest.strategy import StrategySpec
from quant_assets.lineage import canonical_json
from quant_assets.models.lgbm import LGBMConfig
from quant_assets.models.walkforward import WalkForwardConfig

SECTIONS = {"lgbm": LGBMConfig, "strategy": StrategySpec}
METHODS = ("grid", "random", "sobol", "optuna")
ADAPTIVE = ("optuna",)  # planned round by round from results (trials/adaptive.py)


@dataclass(frozen=True)
class Dimension:
    """One swept parameter: `values` (a choice) or a range [low, high] (log/integer)."""

    name: str
    values: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    def __post_init__(self) -> None:
        section, _, key = self.name.partition(".")
        if section not in SECTIONS or key not in {f.name for f in fields(SECTIONS[section])}:
            allowed = {s: sorted(f.name for f in fields(c)) for s, c in SECTIONS.items()}
            raise ValueError(f"unknown sweep parameter {self.name!r}; use one of {allowed}")
        if self.values is not None:
            if not self.values:
                raise ValueError(f"{self.name}: empty list of values")
            return
        if self.low is None or self.high is None or not self.low <= self.high:
            raise ValueError(f"{self.name}: give values or a range low <= high")
        if self.log and self.low <= 0:
            raise ValueError(f"{self.name}: a log range needs low > 0")

    @classmethod
    def from_spec(cls, name: str, spec: Any) -> Dimension:
        if isinstance(spec, Sequence) and not isinstance(spec, str):
            return cls(name, values=tuple(spec))
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"values", "low", "high", "log", "integer"}
            if unknown:
                raise ValueError(f"{name}: unknown keys {sorted(unknown)}")
            values = spec.get("values")
            return cls(
                name,
                values=tuple(values) if values is not None else None,
                low=spec.get("low"),
                high=spec.get("high"),
                log=bool(spec.get("log", False)),
                integer=bool(spec.get("integer", False)),
            )
        return cls(name, values=(spec,))

    def at(self, u: float) -> Any:
        """The value at position u in [0, 1) of this dimension."""
        if self.values is not None:
            return self.values[min(int(u * len(self.values)), len(self.values) - 1)]
        if self.log:
            value = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + u * (self.high - self.low)
        if self.integer:
            return int(min(max(round(value), math.ceil(self.low)), math.floor(self.high)))
        # 6 significant digits: readable parameters and ids that do not hinge on the last bit
        return float(f"{value:.6g}")


@dataclass(frozen=True)
class SearchSpace:
    """A named sweep: base configuration, dimensions and how to sample them."""

    name: str
    dimensions: tuple[Dimension, ...]
    method: str = "sobol"
    n_trials: int = 16
    seed: int = 0
    months: tuple[str, ...] = ()  # YYYY-MM; empty = every monthly partition
    base_lgbm: dict[str, Any] = field(default_factory=dict)
    base_strategy: dict[str, Any] = field(default_factory=dict)
    walk_forward: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\'\""):
            raise ValueError(f"sweep name {self.name!r} must be non-empty, without / \\ or quotes")
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} must be one of {METHODS}")
        if self.n_trials < 1:
            raise ValueError(f"n_trials={self.n_trials} must be >= 1")
        if self.method == "grid" and any(d.values is None for d in self.dimensions):
            raise ValueError("a grid sweep needs a list of values for every dimension")
        names = [d.name for d in self.dimensions]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate dimensions: {names}")
        for month in self.months:
            dt.date.fromisoformat(month + "-01")
        LGBMConfig(**self.base_lgbm)
        StrategySpec(**self.base_strategy)
        WalkForwardConfig(**self.walk_forward)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        """From YAML/JSON-like data: name, method, n_trials, seed, months, base.{lgbm,
        strategy, walk_forward}, params.{section.field: values | {low, high, log, integer}}."""
        unknown = set(data) - {"name", "method", "n_trials", "seed", "months", "base", "params"}
        if unknown:
            raise ValueError(f"search space: unknown keys {sorted(unknown)}")
        base = dict(data.get("base") or {})
        return cls(
            name=str(data["name"]),
            dimensions=tuple(
                Dimension.from_spec(k, v) for k, v in (data.get("params") or {}).items()
            ),
            method=str(data.get("method", "sobol")),
            n_trials=int(data.get("n_trials", 16)),
            seed=int(data.get("seed", 0)),
            months=tuple(data.get("months") or ()),
            base_lgbm=dict(base.get("lgbm") or {}),
            base_strategy=dict(base.get("strategy") or {}),
            walk_forward=dict(base.get("walk_forward") or {}),
        )

    def points(self) -> list[dict[str, Any]]:
        """The sampled parameter sets, in order (dotted names -> values)."""
        dims = self.dimensions
        if not dims:
            return [{}]
        if self.method == "grid":
            return [dict(zip([d.name for d in dims], combo, strict=True))
                    for combo in itertools.product(*(d.values for d in dims))]
        if self.method == "random":
            units = np.random.default_rng(self.seed).random((self.n_trials, len(dims)))
        else:
            from scipy.stats import qmc

            with warnings.catch_warnings():
                # balance properties want 2^m points; any count is still a valid design
                warnings.simplefilter("ignore", UserWarning)
                units = qmc.Sobol(len(dims), scramble=True, seed=self.seed).random(self.n_trials)
        return [{d.name: d.at(float(u)) for d, u in zip(dims, row, strict=True)} for row in units]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dimensions"] = [asdict(d) for d in self.dimensions]
        return out


@dataclass(frozen=True)
class TrialSpec:
    """One trial, fully resolved: everything its result depends on (besides the data)."""

    sweep: str
    params: dict[str, Any]
    months: tuple[str, ...]
    lgbm: dict[str, Any]
    strategy: dict[str, Any]
    walk_forward: dict[str, Any]

    @property
    def trial_id(self) -> str:
        return "t" + hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return canonical_json(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrialSpec:
        data = json.loads(text)
        data["months"] = tuple(data["months"])
        return cls(**data)

    def lgbm_config(self) -> LGBMConfig:
        return LGBMConfig(**self.lgbm)

    def strategy_spec(self) -> StrategySpec:
        return StrategySpec(**self.strategy)

    def walk_forward_config(self) -> WalkForwardConfig:
        return WalkForwardConfig(**self.walk_forward)

    def month_starts(self) -> list[dt.date]:
        return [dt.date.fromisoformat(m + "-01") for m in self.months]


def trial_of(space: SearchSpace, point: Mapping[str, Any], months: tuple[str, ...]) -> TrialSpec:
    """The trial of `space` at `point` (dotted names -> values): the base configs with the
    point's values put in. An invalid combination fails here, naming the field, not inside a
    trial run."""
    lgbm = {**LGBMConfig().to_dict(), **space.base_lgbm}
    strategy = {**asdict(StrategySpec()), **space.base_strategy}
    walk_forward = {**asdict(WalkForwardConfig()), **space.walk_forward}
    for name, value in point.items():
        section, _, key = name.partition(".")
        (lgbm if section == "lgbm" else strategy)[key] = value
    spec = TrialSpec(space.name, dict(sorted(point.items())), months, lgbm, strategy, walk_forward)
    spec.lgbm_config()
    spec.strategy_spec()
    return spec


def sweep_months(space: SearchSpace, default_months: Sequence[str]) -> tuple[str, ...]:
    months = tuple(space.months or default_months)
    if not months:
        raise ValueError(f"sweep {space.name}: no months to train and backtest")
    return months


def plan_trials(space: SearchSpace, default_months: Sequence[str]) -> list[TrialSpec]:
    """The trials of `space` (distinct ids, in sampling order). `default_months` (YYYY-MM)
    are used when the space names none."""
    if space.method in ADAPTIVE:
        raise ValueError(f"sweep {space.name}: method={space.method!r} is planned round by "
                         "round from results (trials.adaptive.next_round), not up front")
    months = sweep_months(space, default_months)
    trials: dict[str, TrialSpec] = {}
    for point in space.points():
        spec = trial_of(space, point, months)
        trials.setdefault(spec.trial_id, spec)
    return list(trials.values())


DEFAULT_SEARCH_SPACE = {
    "name": "default",
    "method": "sobol",
    "n_trials": 16,
    "seed": 0,
    "base": {"lgbm": {"num_boost_round": 200}},
    "params": {
        "lgbm.learning_rate": {"low": 0.01, "high": 0.2, "log": True},
        "lgbm.num_leaves": {"low": 7, "high": 63, "integer": True},
        "lgbm.min_data_in_leaf": {"low": 20, "high": 400, "log": True, "integer": True},
        "lgbm.feature_fraction": {"low": 0.5, "high": 1.0},
        "strategy.quantile": [0.1, 0.2, 0.3],
    },
}
