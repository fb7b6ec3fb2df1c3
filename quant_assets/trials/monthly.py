"""The monthly model sweep: a small grid of LightGBM hyper-parameters (and strategy
parameters) evaluated on each new month, part of the monthly flow (the ``model_sweep``
asset), so that the trials a desk tries every month are counted by the validation report's
DSR and PBO without anyone launching a sweep.

Pure (no Dagster, no MLflow). A trial is one point of ``MONTHLY_SPACE`` (``search``'s
search spaces, ``plan_trials``) evaluated on one month exactly as a sweep trial is
(``trial.run_trial``: the month's walk-forward model, purged and embargoed, its
out-of-sample scores and the long-short backtest from an empty book). Its id is a hash of
everything but the month, so the same parameter set keeps its id month after month and its
daily returns line up into one column of the report's trial matrix.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import polars as pl

from quant_assets.lineage import canonical_json
from quant_assets.trials.search import SearchSpace, TrialSpec, plan_trials
from quant_assets.trials.trial import run_trial

TRIAL_PREFIX = "msweep:"  # names a monthly sweep trial in the validation report
# Four trials a month, about a second each on the demo data: the size a desk can afford to
# run unattended every month (a bigger sweep is `python -m quant_assets sweep`).
MONTHLY_SPACE: dict[str, Any] = {
    "name": "monthly",
    "method": "grid",
    "base": {"lgbm": {"num_boost_round": 60, "early_stopping_rounds": 10}},
    "params": {"lgbm.num_leaves": [7, 31], "strategy.quantile": [0.1, 0.2]},
}
COLUMNS = ("date", "trial_id", "params", "net_return")


@dataclass(frozen=True)
class MonthlySweepSpace:
    """The monthly sweep's search space, as JSON (the keys of ``SearchSpace.from_dict``,
    without ``months``: each month is its own)."""

    space_json: str = json.dumps(MONTHLY_SPACE, sort_keys=True)

    def space(self, embargo_days: int, seed: int) -> SearchSpace:
        """The space, with the walk-forward embargo and the model seed of the model assets
        unless it sets its own."""
        data = json.loads(self.space_json)
        base = data.setdefault("base", {})
        base.setdefault("walk_forward", {}).setdefault("embargo_days", embargo_days)
        base.setdefault("lgbm", {}).setdefault("seed", seed)
        return SearchSpace.from_dict(data)


def stable_trial_id(spec: TrialSpec) -> str:
    """The trial's id without its month: the same parameter set has the same id each month."""
    monthless = {k: v for k, v in dataclasses.asdict(spec).items() if k != "months"}
    return TRIAL_PREFIX + hashlib.sha256(canonical_json(monthless).encode()).hexdigest()[:12]


def month_trials(space: SearchSpace, month: dt.date) -> list[TrialSpec]:
    """The space's trials for one month."""
    return plan_trials(space, [f"{month:%Y-%m}"])


def evaluate_month(
    joined: pl.DataFrame,
    feature_cols: list[str],
    features: pl.DataFrame,
    prices: pl.DataFrame,
    space: SearchSpace,
    month: dt.date,
) -> tuple[pl.DataFrame, dict[str, dict[str, float]]]:
    """(rows of every trial's daily returns in ``month``: date, trial_id, params,
    net_return; each trial's metrics by id)."""
    if space.months:
        raise ValueError("the monthly sweep's space names no months: each month is its own")
    parts, metrics = [], {}
    fits: dict = {}  # trials that differ only in strategy parameters share the month's model
    for spec in month_trials(space, month):
        trial_id = stable_trial_id(spec)
        result = run_trial(joined, feature_cols, features, prices, spec, fits)
        metrics[trial_id] = result.metrics
        parts.append(result.daily.select(
            "date",
            pl.lit(trial_id).alias("trial_id"),
            pl.lit(json.dumps(spec.params, sort_keys=True)).alias("params"),
            pl.col("net_return").cast(pl.Float64),
        ))
    return pl.concat(parts), metrics
