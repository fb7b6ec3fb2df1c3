"""How much of the simulator's planted edge the walk-forward LightGBM models learn.

    .venv/bin/python benchmarks/lgbm_edge.py --home "$QUANT_HOME"          # the defaults
    # after `make demo-full` (the README's 0.058): its home, with its range and universe
    QUANT_START_DATE=2022-01-03 QUANT_END_DATE=2024-12-31 QUANT_FIRST_MODEL_MONTH=2023-01 \
      QUANT_N_INSTRUMENTS=100 .venv/bin/python benchmarks/lgbm_edge.py --home .quant/full
    .venv/bin/python benchmarks/lgbm_edge.py --home ... --set learning_rate=0.02 --set num_leaves=7

Reads the features and labels of a finished `make demo` or `make demo-full` (its warehouse under
``--home``; the environment gives its range), fits
every model month of the demo's range with ``LGBMConfig`` (the defaults, or ``--set`` overrides),
and prints, over the months' out-of-sample days:

- the known IC: the mean daily rank IC of the simulator's planted signal
  (``simulator.planted_signal``) against the labels' forward return, the best any model of
  the features can reach;
- the models' mean daily rank IC of their scores against the same labels (the validation
  report's "Mean rank IC") and its ratio to the known IC;
- the rounds early stopping kept and the validation rank IC, per month (min .. max).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant_assets.data.simulator import SimulatorConfig, planted_signal  # noqa: E402
from quant_assets.models.lgbm import LGBMConfig  # noqa: E402
from quant_assets.models.monthly import fit_lgbm_month, predict_lgbm_month  # noqa: E402
from quant_assets.models.walkforward import WalkForwardConfig, feature_columns, join_features_labels  # noqa: E402
from quant_assets.performance import rank_information_coefficient  # noqa: E402
from quant_assets.settings import Settings  # noqa: E402
from quant_assets.warehouse import Warehouse  # noqa: E402


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _months(first: dt.date, last: dt.date) -> list[dt.date]:
    out, month = [], first.replace(day=1)
    while month <= last:
        out.append(month)
        month = (month.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return out


def mean_rank_ic(scores: pl.DataFrame, labels: pl.DataFrame, column: str = "score") -> float:
    joined = scores.join(labels.select("date", "instrument_id", "fwd_return"), on=["date", "instrument_id"])
    return rank_information_coefficient(
        joined["date"].to_physical().to_numpy(), joined[column].to_numpy(), joined["fwd_return"].to_numpy()
    ).mean


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="QUANT_HOME of a finished demo")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="an LGBMConfig field to override (repeatable)")
    parser.add_argument("--months", type=int, default=0, help="only the first N model months (0: all)")
    args = parser.parse_args()

    settings = Settings.from_env()
    overrides = dict(item.split("=", 1) for item in args.set)
    config = dataclasses.replace(LGBMConfig(seed=settings.model_seed), **{k: _value(v) for k, v in overrides.items()})
    walk = WalkForwardConfig(embargo_days=settings.embargo_days)
    warehouse = Warehouse(str(args.home / "warehouse"))
    features = warehouse.read(["pit_features"]).frame
    labels = warehouse.read(["labels"]).frame
    joined = join_features_labels(features, labels)
    cols = feature_columns(features)
    months = _months(settings.first_model_month, labels["date"].max())
    months = months[: args.months] if args.months else months

    t0 = time.perf_counter()
    parts, kept, valid_ic = [], [], []
    for month in months:
        model = fit_lgbm_month(joined, cols, month, walk, config)
        parts.append(predict_lgbm_month(model, features, month))
        kept.append(model.best_iteration)
        valid_ic.append(model.metrics.get("valid_ic_daily_mean", float("nan")))
    fit_s = time.perf_counter() - t0
    scores = pl.concat(parts)
    got = mean_rank_ic(scores, labels)

    planted = planted_signal(SimulatorConfig(
        n_instruments=settings.n_instruments, seed=settings.seed, start=settings.start_date, end=settings.end_date,
    ), horizon=settings.label_horizon)
    oos = planted.join(scores.select("date", "instrument_id"), on=["date", "instrument_id"])
    known = mean_rank_ic(oos, labels, "expected_idio_return")

    changed = {k: getattr(config, k) for k in overrides}
    print(f"config: {changed or 'defaults'}")
    print(f"months {len(months)} ({months[0]:%Y-%m} .. {months[-1]:%Y-%m}), fit+predict {fit_s:.1f}s")
    print(f"known IC (planted signal, same days): {known:.4f}")
    print(f"models' mean rank IC:                 {got:.4f}  ({got / known:.0%} of the known IC)")
    finite = [v for v in valid_ic if np.isfinite(v)]
    spread = f"{min(finite):.3f} .. {max(finite):.3f}" if finite else "n/a (no validation tail)"
    print(f"rounds kept: {min(kept)} .. {max(kept)} (median {statistics.median(kept):g}); "
          f"validation rank IC {spread}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
