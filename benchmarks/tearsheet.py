"""Render time of the validation tear sheet at the demo's size, against the tear sheet before
the quantstats/Qlib sections (the baseline, loaded from git), side by side in one run.

    .venv/bin/python benchmarks/tearsheet.py               # 5 repeats
    .venv/bin/python benchmarks/tearsheet.py --repeats 9 --baseline-rev 0f9c619

Synthetic input of the demo's shape (774 trading days, 93 instruments: ~72k predictions), a
kernel backtest with legs, the market factor as benchmark. Prints the median and min of each
variant (alternating, so both see the same machine load), the ratio new / baseline, and the
1-minute load average (above the core count every timing is inflated). "analyses only" is
the new page's computations without drawing (validation.analysis + stats).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quant_assets.backtest.portfolio import CostModel, backtest_frame, run_backtest  # noqa: E402
from quant_assets.validation import analysis, regimes  # noqa: E402
from quant_assets.validation import tearsheet as new  # noqa: E402
from quant_assets.validation.benchmark import Benchmark  # noqa: E402
from quant_assets.validation.gate import evaluate_gate  # noqa: E402
from quant_assets.validation.report import summarise  # noqa: E402

DAYS, NAMES = 774, 93


def _baseline_module(rev: str):
    src = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:quant_assets/validation/tearsheet.py"],
        check=True, capture_output=True, text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "tearsheet_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("tearsheet_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _inputs():
    rng = np.random.default_rng(0)
    days = pl.date_range(dt.date(2022, 1, 3), dt.date(2026, 1, 1), "1d", eager=True)
    dates = days.filter(days.dt.weekday() <= 5)[:DAYS]
    ids = [f"S{i:03d}" for i in range(NAMES)]
    market = rng.normal(0.0003, 0.009, DAYS)
    scores = rng.normal(size=(DAYS, NAMES))
    ret = market[:, None] + rng.normal(0, 0.015, (DAYS, NAMES))
    ret[2:] += 0.0008 * scores[:-2]
    prices = 100 * np.cumprod(1 + ret, axis=0)
    ranks = scores.argsort(axis=1).argsort(axis=1)
    k = NAMES // 5
    decided = np.where(ranks >= NAMES - k, 0.5 / k, np.where(ranks < k, -0.5 / k, 0.0))
    targets = np.vstack([np.zeros((1, NAMES)), decided[:-1]])
    res = run_backtest(prices, targets, np.ones_like(prices, dtype=bool), CostModel(1.0, 2.0))

    def long(m, name):
        return pl.DataFrame(
            {"date": np.repeat(dates.to_numpy(), NAMES), "instrument_id": ids * DAYS, name: m.ravel()}
        ).with_columns(pl.col("date").cast(pl.Date))

    asset_returns = regimes.instrument_returns(long(prices, "close"), "close")
    legs = analysis.leg_returns(long(targets, "weight"), asset_returns)
    bt = backtest_frame(res, dates).join(legs, on="date", how="left").with_columns(
        pl.col("long_return").fill_null(0.0), pl.col("short_return").fill_null(0.0),
        n_long=pl.lit(k), n_short=pl.lit(k),
    )
    r = bt["net_return"].to_numpy()
    bench = Benchmark("market factor", pl.DataFrame({"date": dates, "return": market}), "market")
    preds = long(scores, "score")
    fwd = analysis.forward_returns(preds, asset_returns, 2)
    trials = {"main": r, **{f"v{i}": rng.normal(0.0002, 0.01, DAYS) for i in range(5)}}
    s = summarise(r, bt["turnover"].to_numpy(), trials, fwd["date"].to_physical().to_numpy(),
                  fwd["score"].to_numpy(), fwd["fwd_return"].to_numpy(), n_bootstrap=500,
                  benchmark=bench.aligned(dates), benchmark_name=bench.name)
    gate = evaluate_gate(s.metrics)
    daily = bt.select("date", pl.col("net_return").alias("return"))
    state = regimes.regime_labels(regimes.market_state(long(prices, "close")))
    common = {
        "metrics": {**s.metrics, **gate.metrics()},
        "monthly_ic": new.monthly_ic(s.rank_ic.dates, s.rank_ic.values),
        "bootstrap_max_drawdown": s.bootstrap.max_drawdown,
        "regimes": regimes.regime_performance(daily, state),
        "stress": regimes.stress_table({"strategy": daily}),
        "stress_source": "none",
        "gate": gate,
    }
    baseline_daily = daily.with_columns(benchmark=pl.Series(market))
    new_inputs = new.TearSheetInputs(
        daily=daily, benchmark=bench, backtest=bt, predictions=preds, asset_returns=asset_returns,
        trial_sharpes=s.trial_sharpes, **common,
    )
    return baseline_daily, common, new_inputs


def _analyses(inputs) -> None:
    """The new page's computations without the drawing."""
    analysis.quantile_returns(inputs.predictions, inputs.asset_returns, new.N_QUANTILES, 2)
    analysis.ic_decay(inputs.predictions, inputs.asset_returns, new.IC_DECAY_LAGS)
    analysis.score_autocorrelation(inputs.predictions)
    analysis.legs(inputs.backtest)
    analysis.drawdown_periods(inputs.daily["date"], inputs.daily["return"].to_numpy())
    analysis.cost_attribution(inputs.backtest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-rev", default="0f9c619")
    args = parser.parse_args()
    base = _baseline_module(args.baseline_rev)
    baseline_daily, common, new_inputs = _inputs()
    base_inputs = base.TearSheetInputs(daily=baseline_daily, **common)
    runs = {
        f"baseline ({args.baseline_rev}, 8 figures)": lambda: base.render_tearsheet(base_inputs),
        f"new ({len(new.FIGURES)} figures)": lambda: new.render_tearsheet(new_inputs),
        "new: analyses only": lambda: _analyses(new_inputs),
    }
    for fn in runs.values():  # warm-up: imports, numba, font cache
        fn()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    print(f"{DAYS} days x {NAMES} instruments, {args.repeats} repeats, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    for name, ts in times.items():
        print(f"  {name:<34} median {statistics.median(ts):6.3f} s   min {min(ts):6.3f} s")
    names = list(times)
    print(f"  ratio new / baseline (medians)      {statistics.median(times[names[1]]) / statistics.median(times[names[0]]):.2f}")


if __name__ == "__main__":
    main()
