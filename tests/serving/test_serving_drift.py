"""PSI and KS (quant_assets.serving.drift) against hand-computed values and known properties."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

from quant_assets.serving.drift import (
    SHARE_FLOOR,
    DriftPolicy,
    bin_shares,
    drift_table,
    drift_verdict,
    ks,
    psi,
    quantile_edges,
)

REF = np.arange(1.0, 11.0)  # 1..10: median 5.5, deciles at 1.9, 2.8, ...


def test_hand_computed_two_bins():
    # edge = median of 1..10 = 5.5; reference shares 0.5/0.5, current 3 of 4 below
    expected = (0.75 - 0.5) * math.log(0.75 / 0.5) + (0.25 - 0.5) * math.log(0.25 / 0.5)
    assert psi(REF, [1.0, 2.0, 3.0, 10.0], bins=2) == pytest.approx(expected, abs=1e-15)
    assert expected == pytest.approx(0.274653, abs=1e-6)


def test_empty_bin_share_is_floored():
    # every current value in the upper bin: the lower share is floored at 1e-4
    expected = (SHARE_FLOOR - 0.5) * math.log(SHARE_FLOOR / 0.5) + (1 - 0.5) * math.log(1 / 0.5)
    assert psi(REF, [7.0, 8.0, 9.0], bins=2) == pytest.approx(expected, abs=1e-15)


def test_bins_are_right_closed_with_open_outer_bins():
    edges = quantile_edges(REF, bins=2)
    assert edges.tolist() == [5.5]
    # 5.5 itself belongs to (-inf, 5.5]; values beyond the reference range land in the outer bins
    assert bin_shares([5.5, -1e9, 1e9, 6.0], edges).tolist() == [0.5, 0.5]
    assert quantile_edges(REF, bins=10).tolist() == pytest.approx(np.quantile(REF, np.arange(1, 10) / 10))


def test_identical_is_zero_and_a_shift_is_large():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(5000)
    assert psi(x, x) == 0.0
    same_law = psi(x, rng.standard_normal(5000))
    assert 0.0 <= same_law < 0.02  # sampling noise only, about (B-1)*(2/n)
    shifted = psi(x, rng.standard_normal(5000) + 1.0)
    assert shifted > 0.25
    assert psi(x, rng.standard_normal(5000) + 2.0) > shifted  # grows with the shift


def test_missing_values_are_dropped_and_bad_arguments_refused():
    assert psi(REF, [1.0, 2.0, 3.0, 10.0, float("nan")], bins=2) == psi(REF, [1.0, 2.0, 3.0, 10.0], bins=2)
    with pytest.raises(ValueError, match="bins"):
        psi(REF, REF, bins=1)
    with pytest.raises(ValueError, match="empty"):
        psi([float("nan")], REF)


def test_ties_merge_edges():
    ref = [0.0] * 50 + [1.0] * 51  # every decile is 0 or 1 (the median is the 51st value)
    assert quantile_edges(ref).tolist() == [0.0, 1.0]
    assert psi(ref, ref) == 0.0


def test_ks_is_scipy_two_sample():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(300), rng.standard_normal(200) + 0.3
    expected = sps.ks_2samp(a, b)
    got = ks(a, b)
    assert (got.statistic, got.pvalue) == (expected.statistic, expected.pvalue)


def test_drift_table_and_verdict():
    rng = np.random.default_rng(2)
    ref = pl.DataFrame({"a": rng.standard_normal(2000), "b": rng.standard_normal(2000),
                        "score": rng.standard_normal(2000), "empty": [None] * 2000},
                       schema_overrides={"empty": pl.Float64})
    cur = pl.DataFrame({"a": rng.standard_normal(500) + 3.0, "b": rng.standard_normal(500),
                        "score": rng.standard_normal(500), "empty": [None] * 500},
                       schema_overrides={"empty": pl.Float64})
    table = drift_table(ref, cur, ["a", "b", "score", "empty"])
    rows = {r["column"]: r for r in table.iter_rows(named=True)}
    assert rows["a"]["psi"] > 1.0 and rows["b"]["psi"] < 0.1
    assert rows["empty"]["psi"] is None and rows["empty"]["missing_current"] == 500
    calm = drift_verdict(table, DriftPolicy(max_features_over=1))
    assert not calm.breach and calm.features_over == ("a",)
    alarmed = drift_verdict(table, DriftPolicy(max_features_over=0))
    assert alarmed.breach and "1 features with PSI > 0.25" in alarmed.reason
    score_shift = drift_table(ref, cur.with_columns(pl.col("score") + 2.0), ["score"])
    verdict = drift_verdict(score_shift)
    assert verdict.breach and verdict.reason.startswith("score PSI")
    with pytest.raises(ValueError, match="missing"):
        drift_table(ref, cur, ["nope"])
