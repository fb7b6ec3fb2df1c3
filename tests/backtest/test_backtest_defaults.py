"""The default StrategySpec reproduces, bit for bit, the outputs of the code before the
portfolio-construction options existed.

The digests below were computed with the code of commit 0f9c619 (before the options were
added) on the seeded inputs of this file; a change in any float of the old columns, in the
end state or in the kernel's outputs changes them.

The default book (equal weights, no cap) is bit-identical in general: its row sums are sums
of ones. Score-scheme books with three or more names a side may differ from the old code by
~1e-17, since their row sums are now taken in column order (``weights._row_sums``, so that a
month's book does not depend on the names of other months); the score-scheme cases below
keep two names a side and so pin them too.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import numpy as np
import polars as pl
import pytest

from quant_assets.backtest import CostModel, run_backtest
from quant_assets.backtest.strategy import StrategySpec, StrategyState, run_long_short

# the columns of the daily frame before borrow_cost existed
OLD_COLUMNS = (
    "date", "gross_return", "cost", "net_return", "turnover", "gross_exposure",
    "net_exposure", "equity", "n_long", "n_short",
)
RESULT_SERIES = ("gross_return", "cost", "net_return", "turnover", "gross_exposure",
                 "net_exposure", "equity")


def market(seed: int, n_days: int = 150, n_names: int = 14):
    """Seeded prices with late listings, delistings and gaps, and scores with NaNs."""
    rng = np.random.default_rng(seed)
    days = pl.date_range(dt.date(2022, 1, 3), dt.date(2022, 12, 30), "1d", eager=True)
    days = days.filter(days.dt.weekday() <= 5).head(n_days)
    rows, preds = [], []
    for j in range(n_names):
        name = f"N{j:02d}"
        start = int(rng.integers(0, 25))
        stop = n_days - int(rng.integers(0, 40)) * (j % 4 == 0)
        price = 20.0 * np.cumprod(1 + rng.normal(0.0003, 0.02, n_days))
        for t, d in enumerate(days):
            if start <= t < stop and rng.random() > 0.02:
                rows.append((d, name, float(price[t]), float(rng.uniform(1e5, 1e7))))
            score = float(rng.normal())
            if rng.random() > 0.05:
                preds.append((d, name, score))
    prices = pl.DataFrame(
        rows, schema=["date", "instrument_id", "tr_close", "dollar_volume"], orient="row"
    )
    scores = pl.DataFrame(preds, schema=["date", "instrument_id", "score"], orient="row")
    return prices, scores


SPECS = {
    "default": {},
    "same_day_score": {"execution_lag": 0, "scheme": "score"},
    "capped": {"quantile": 0.3, "gross": 2.0, "max_weight": 0.15, "commission_bps": 3.0},
    "score_capped": {"scheme": "score", "max_weight": 0.12, "half_spread_bps": 10.0},
}


def digest_frame(frame: pl.DataFrame, columns=OLD_COLUMNS) -> str:
    h = hashlib.sha256()
    for name in columns:
        series = frame.get_column(name)
        if series.dtype == pl.Date:
            series = series.cast(pl.Int32)
        h.update(name.encode())
        h.update(np.ascontiguousarray(series.to_numpy()).tobytes())
    return h.hexdigest()


def digest_state(state: StrategyState) -> str:
    return hashlib.sha256(state.to_json().encode()).hexdigest()


def monthly(scores, prices, spec):
    parts, state = [], None
    for month in range(1, 13):
        in_month = pl.col("date").dt.month() == month
        if prices.filter(in_month).is_empty():
            continue
        daily, state = run_long_short(scores.filter(in_month), prices.filter(in_month), spec, state)
        state = StrategyState.from_json(state.to_json())
        parts.append(daily)
    return pl.concat(parts), state


def kernel_digest(seed: int) -> str:
    rng = np.random.default_rng(seed)
    n_rows, n = 60, 9
    # cumprod, not exp: exact IEEE products, the same on every CPU
    prices = 30.0 * np.cumprod(1.0 + rng.normal(0, 0.02, (n_rows, n)), axis=0)
    prices[rng.random((n_rows, n)) < 0.05] = np.nan
    prices[45:, 2] = np.nan
    tradable = np.isfinite(prices) & (rng.random((n_rows, n)) > 0.1)
    targets = rng.uniform(-0.3, 0.3, (n_rows, n))
    volume = rng.uniform(1e3, 1e5, (n_rows, n))
    result = run_backtest(
        prices, targets, tradable, CostModel(1.0, 2.0, impact_coef=0.05), volume,
        initial_equity=1e6, contributions=True,
    )
    h = hashlib.sha256()
    for name in RESULT_SERIES:
        h.update(getattr(result, name).tobytes())
    h.update(result.contributions.tobytes())
    h.update(result.end_state.weights.tobytes())
    h.update(result.end_state.last_prices.tobytes())
    h.update(np.float64(result.end_state.equity).tobytes())
    return h.hexdigest()


# (spec, seed) -> (daily frame, end state), computed at 0f9c619
EXPECTED: dict[tuple[str, int], tuple[str, str]] = {
    ('default', 1): (
        'd75d6fd5cb08eaec8350083cd1b8a40f45f1c96189570dc9ab4926513acc1826',
        '52b25a022add773f5eb6aa0f4fba851735cb98587286b23512dd715a73c45da7',
    ),
    ('default', 2): (
        'b1041ba66d68e242f398ed5ad9b23013d9581632b269a2d686f75a0d1bd0e7a0',
        '22de4259c274f799631eb1c5f75506a189484bba7968d7401d8720f2944305b8',
    ),
    ('default', 3): (
        '0f9498683ccc6085883699b7897b82f6451c4b41c4f7e35ae164172805eb5532',
        'f22086ab90804b7c10349cd46fd42cf1767a86d7d2a8155776a62fe207773dd3',
    ),
    ('same_day_score', 1): (
        '9287989fc1a2672b11a08f73e0cf81e2daff53ec44519b5715df5080dbfb2efc',
        'cb0f17721064d92e802ad3ac313fa5bb058bd5c040d47647cfdecf3c6ba732a7',
    ),
    ('same_day_score', 2): (
        'be45bfe0c75bc68482b33cb4b5d12956445a2f27784ca2ef8a27c3153ed920ca',
        'd9dce44a9e4820eced13968ef59a5ff5161c63f0b4d18c0def3b30c223adec9e',
    ),
    ('same_day_score', 3): (
        '50a427b92ac32bea9ca5bbdc9f25acca48f6a525a27c0c80315e7cb06caf05ec',
        '5bb0fb3e95c82272b958d03aca40164d6113c13823f4ce3591c46f4c6d1ea831',
    ),
    ('capped', 1): (
        '8c90407d6163a98663e611d3b5d52ac165603f76022a079212fdc440484fcc2f',
        'bcdfaba2f85eef42b1a547a387a29d871a073d77c7b9dece0c0a3e5fd62f3788',
    ),
    ('capped', 2): (
        '89346bb4b1246a62be267185797a8783e40be2f1b7dbbad7f0ae5def860e4254',
        'ea0675e66aa8f6798cd6e3bafbeaa2f93f941043e12ac2afed299d0162372c67',
    ),
    ('capped', 3): (
        '250a5ee6f0f2a661e89248b3fc5529e081618e0ffcef70353889b77cd164b642',
        '7c05ca7de3e125354014138491b9b74035fa33d7784c85b79608bb0108c0eb1b',
    ),
    ('score_capped', 1): (
        'acf1c3764a45997ad5cf71bfb48c98e4f51e3e27d7682f537293705d283c7408',
        '2551bf0af19371d6ef1c53566d759e9b0ce172fa1bb3d2b5c0e43d1e5388dbf1',
    ),
    ('score_capped', 2): (
        '19dbcce5352d0dc16df84dcfa6e5ac854c369454535bc2489d0b2328e203dd00',
        '91cc36d37602f88132769126091b530362969ba162eefbd26f87c5488b759c5b',
    ),
    ('score_capped', 3): (
        'bb917d00ff5cf54c1eca46082174966045bb94483e13a59310edfdfc716a9dc7',
        '7af906c972ef25ab264739f6f8cdc199def3c026d1c527fc49891a71060aa722',
    ),
}
EXPECTED_KERNEL: dict[int, str] = {
    5: '76a60a48a2c055a5900af7acdcc311e79dfd66e6db7370f56eeb831befae0305',
    6: 'e1054bf4937d8cd126abcdf7709117dfeaa40c19e36ccab4913eb38e3a404db5',
}


@pytest.mark.parametrize(("name", "seed"), sorted(EXPECTED))
def test_default_options_reproduce_the_old_outputs(name, seed):
    prices, scores = market(seed)
    spec = StrategySpec(**SPECS[name])
    whole, state = run_long_short(scores, prices.select("date", "instrument_id", "tr_close"), spec)
    chained, _ = monthly(scores, prices.select("date", "instrument_id", "tr_close"), spec)
    assert (digest_frame(whole), digest_state(state)) == EXPECTED[(name, seed)]
    assert digest_frame(chained) == EXPECTED[(name, seed)][0]
    # the one new column is all zeros when no borrow cost is configured
    assert whole.columns == [*OLD_COLUMNS[:3], "borrow_cost", *OLD_COLUMNS[3:]]
    assert (whole["borrow_cost"] == 0.0).all()


@pytest.mark.parametrize("seed", sorted(EXPECTED_KERNEL))
def test_default_kernel_reproduces_the_old_outputs(seed):
    assert kernel_digest(seed) == EXPECTED_KERNEL[seed]
