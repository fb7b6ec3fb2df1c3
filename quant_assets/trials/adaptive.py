"""Adaptive sweeps (``method: optuna``): Optuna's TPE proposes each round of trials from the
results of the rounds before it.

The trials are still ordinary sweep trials: each proposal becomes a ``TrialSpec`` (its id the
hash of the resolved trial), planned, run by ``sweep_trials`` and recorded in the trial
registry; the study only remembers which Optuna trial proposed which trial id (a user
attribute) and is told each trial's Sharpe ratio from the registry. Its storage is a
database of the platform (``Settings.optuna_storage``: SQLite under QUANT_HOME locally, a
Postgres schema in a deployment), so a resumed sweep continues the same study.

Reproducible: the sampler of the n-th proposal is seeded from (the space's seed, n), so the
same results told in the same order give the same proposals, whichever process asks.

Pure (optuna and the search space; no Dagster, no MLflow).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from quant_assets.trials.search import SearchSpace, TrialSpec, sweep_months, trial_of

TRIAL_ID_ATTR = "quant_trial_id"


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """Optuna's distribution of each dimension: a choice, or an (integer, log) range."""
    out: dict[str, BaseDistribution] = {}
    for dim in space.dimensions:
        if dim.values is not None:
            out[dim.name] = CategoricalDistribution(dim.values)
        elif dim.integer:
            out[dim.name] = IntDistribution(int(math.ceil(dim.low)), int(math.floor(dim.high)), log=dim.log)
        else:
            out[dim.name] = FloatDistribution(float(dim.low), float(dim.high), log=dim.log)
    return out


def _seed(seed: int, number: int) -> int:
    digest = hashlib.sha256(f"{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _rounded(space: SearchSpace, params: Mapping[str, object]) -> dict[str, object]:
    """Float proposals to 6 significant digits, as the planned methods give them (readable
    parameters, ids that do not hinge on the last bit)."""
    out = {}
    for dim in space.dimensions:
        value = params[dim.name]
        if dim.values is None and not dim.integer:
            value = float(f"{float(value):.6g}")
        out[dim.name] = value
    return out


def load_study(space: SearchSpace, storage_url: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happened
    return optuna.create_study(study_name=space.name, storage=storage_url, direction="maximize",
                               load_if_exists=True)


def next_round(
    space: SearchSpace,
    storage_url: str,
    results: Mapping[str, float],
    size: int,
    default_months: Sequence[str],
) -> list[TrialSpec]:
    """Tell the study the Sharpe ratio of every proposed trial that has a result (`results`:
    trial id -> Sharpe; non-finite -> a failed Optuna trial), then, if no proposal is still
    waiting for its result, propose up to `size` new trials (never past ``n_trials``).
    Returns the new trials (none while a round is running or once the sweep is complete);
    a proposal equal to an earlier trial is told that trial's result at once."""
    if space.method != "optuna":
        raise ValueError(f"sweep {space.name}: method={space.method!r} is not adaptive")
    if size < 1:
        raise ValueError(f"round size {size} must be >= 1")
    months = sweep_months(space, default_months)
    study = load_study(space, storage_url)
    waiting = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = trial.user_attrs.get(TRIAL_ID_ATTR)
        if trial_id in results:
            _tell(study, trial.number, results[trial_id])
        else:
            waiting += 1
    if waiting:
        return []
    dists = distributions(space)
    proposed: dict[str, TrialSpec] = {}
    while len(study.trials) < space.n_trials and len(proposed) < size:
        number = len(study.trials)
        study.sampler = optuna.samplers.TPESampler(seed=_seed(space.seed, number))
        trial = study.ask(dists)
        spec = trial_of(space, _rounded(space, trial.params), months)
        trial.set_user_attr(TRIAL_ID_ATTR, spec.trial_id)
        if spec.trial_id in results:  # proposed before and run: its result is known
            _tell(study, trial.number, results[spec.trial_id])
        else:
            proposed.setdefault(spec.trial_id, spec)
    return list(proposed.values())


def _tell(study: optuna.Study, number: int, sharpe: float) -> None:
    if math.isfinite(sharpe):
        study.tell(number, sharpe)
    else:
        study.tell(number, state=TrialState.FAIL)
