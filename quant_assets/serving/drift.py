"""Distribution drift of features and scores: Population Stability Index and two-sample KS.

Pure: numpy, scipy and polars only (no Dagster, no MLflow).

PSI conventions (``psi``)
-------------------------
* Bin edges are the reference quantiles at k/B for k = 1..B-1 (numpy's default linear
  interpolation), B = ``bins`` (default 10). Repeated edges (a feature with heavy ties)
  are merged, so such a feature gets fewer, never empty-by-construction, bins.
* The outer bins are open: (-inf, e_1] and (e_{B-1}, +inf). Every bin is right-closed,
  (e_{k-1}, e_k], so a value equal to an edge falls in the bin that ends at that edge.
* Shares are counts / n of each sample; a share below 1e-4 (an empty bin, typically) is
  floored at 1e-4 so that the logarithm is finite. Shares are not renormalised after the
  floor (the usual industry convention; the floor's effect is at most B * 1e-4).
* PSI = sum_k (current_k - reference_k) * ln(current_k / reference_k).
* Missing values (null or NaN) are dropped from both samples before binning; their counts
  are reported separately by ``drift_table``. +-inf are ordinary values (outer bins).

Rules of thumb: PSI < 0.1 stable, 0.1..0.25 moderate shift, > 0.25 a large shift. Under no
drift the expected PSI is about (B - 1) * (1/n_reference + 1/n_current), so a single day of
30 names is too small a sample for 10 bins; ``drift_table`` callers pool a few days.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

DEFAULT_BINS = 10
SHARE_FLOOR = 1e-4


def _finite_sample(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr[~np.isnan(arr)]


def quantile_edges(reference, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Inner bin edges: the reference quantiles at k/bins, k = 1..bins-1, deduplicated."""
    if int(bins) != bins or bins < 2:
        raise ValueError(f"bins={bins} must be an integer >= 2")
    ref = _finite_sample(reference, "reference")
    if ref.size == 0:
        raise ValueError("reference sample is empty (after dropping missing values)")
    probs = np.arange(1, int(bins)) / int(bins)
    return np.unique(np.quantile(ref, probs))


def bin_shares(values, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each right-closed bin (-inf, e1], (e1, e2], ..., (e_last, inf)."""
    arr = _finite_sample(values, "values")
    if arr.size == 0:
        raise ValueError("sample is empty (after dropping missing values)")
    # side="left": index i with edges[i-1] < x <= edges[i], i.e. right-closed bins
    idx = np.searchsorted(edges, arr, side="left")
    counts = np.bincount(idx, minlength=edges.size + 1)
    return counts / arr.size


def psi(reference, current, bins: int = DEFAULT_BINS) -> float:
    """Population Stability Index of ``current`` against ``reference`` (see the module
    docstring for the binning, the 1e-4 floor and missing values)."""
    edges = quantile_edges(reference, bins)
    ref = np.maximum(bin_shares(reference, edges), SHARE_FLOOR)
    cur = np.maximum(bin_shares(current, edges), SHARE_FLOOR)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


@dataclass(frozen=True)
class KSResult:
    statistic: float
    pvalue: float


def ks(reference, current) -> KSResult:
    """Two-sample Kolmogorov-Smirnov statistic and p-value (scipy.stats.ks_2samp, two-sided,
    method 'auto'), missing values dropped."""
    from scipy import stats as sps
    ref = _finite_sample(reference, "reference")
    cur = _finite_sample(current, "current")
    if ref.size == 0 or cur.size == 0:
        raise ValueError("ks needs non-empty samples (after dropping missing values)")
    result = sps.ks_2samp(ref, cur)
    return KSResult(float(result.statistic), float(result.pvalue))


def _column_values(frame: pl.DataFrame, column: str) -> np.ndarray:
    return frame.get_column(column).cast(pl.Float64).fill_null(float("nan")).to_numpy()


def drift_table(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    columns: Sequence[str],
    bins: int = DEFAULT_BINS,
) -> pl.DataFrame:
    """One row per column: psi, ks_statistic, ks_pvalue and the sample sizes.

    A column with no usable value on either side gets null statistics (it is reported,
    not silently dropped), so the caller sees which features could not be measured.
    """
    missing = [c for c in columns if c not in reference.columns or c not in current.columns]
    if missing:
        raise ValueError(f"drift_table: columns {missing} are missing from a sample")
    rows = []
    for column in columns:
        ref = _column_values(reference, column)
        cur = _column_values(current, column)
        n_ref, n_cur = int(np.sum(~np.isnan(ref))), int(np.sum(~np.isnan(cur)))
        value = ks_stat = ks_p = None
        if n_ref and n_cur:
            value = psi(ref, cur, bins)
            result = ks(ref, cur)
            ks_stat, ks_p = result.statistic, result.pvalue
        rows.append(
            {
                "column": column,
                "psi": value,
                "ks_statistic": ks_stat,
                "ks_pvalue": ks_p,
                "n_reference": n_ref,
                "n_current": n_cur,
                "missing_reference": int(ref.size - n_ref),
                "missing_current": int(cur.size - n_cur),
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "column": pl.String,
            "psi": pl.Float64,
            "ks_statistic": pl.Float64,
            "ks_pvalue": pl.Float64,
            "n_reference": pl.Int64,
            "n_current": pl.Int64,
            "missing_reference": pl.Int64,
            "missing_current": pl.Int64,
        },
    )


@dataclass(frozen=True)
class DriftPolicy:
    """The one drift policy: how the reference is binned and when drift is a breach. The
    ``drift_report`` asset judges each day with it (its run config is this dataclass) and
    records the verdict in its rows; the serving alarm acts on that recorded verdict."""

    bins: int = DEFAULT_BINS
    psi_threshold: float = 0.25
    max_features_over: int = 3

    def __post_init__(self) -> None:
        if int(self.bins) != self.bins or self.bins < 2:
            raise ValueError(f"bins={self.bins} must be an integer >= 2")
        if not (math.isfinite(self.psi_threshold) and self.psi_threshold > 0):
            raise ValueError(f"psi_threshold={self.psi_threshold} must be > 0")
        if self.max_features_over < 0:
            raise ValueError(f"max_features_over={self.max_features_over} must be >= 0")


@dataclass(frozen=True)
class DriftVerdict:
    breach: bool
    reason: str
    score_psi: float
    features_over: tuple[str, ...]


def drift_verdict(
    table: pl.DataFrame,
    policy: DriftPolicy = DriftPolicy(),
    score_column: str = "score",
) -> DriftVerdict:
    """Breach when the score PSI exceeds ``policy.psi_threshold``, or when more than
    ``policy.max_features_over`` features do."""
    psi_threshold, max_features_over = policy.psi_threshold, policy.max_features_over
    by_column = {r["column"]: r["psi"] for r in table.iter_rows(named=True)}
    score_psi = by_column.get(score_column)
    score_psi = math.nan if score_psi is None else float(score_psi)
    over = tuple(
        sorted(c for c, v in by_column.items() if c != score_column and v is not None and v > psi_threshold)
    )
    reasons = []
    if score_psi > psi_threshold:
        reasons.append(f"score PSI {score_psi:.3f} > {psi_threshold}")
    if len(over) > max_features_over:
        reasons.append(
            f"{len(over)} features with PSI > {psi_threshold} (more than {max_features_over}): "
            + ", ".join(over[:10])
        )
    return DriftVerdict(bool(reasons), "; ".join(reasons), score_psi, over)


def with_verdict(table: pl.DataFrame, policy: DriftPolicy = DriftPolicy()) -> tuple[pl.DataFrame, DriftVerdict]:
    """``table`` with the day's verdict under ``policy`` on every row (the columns the
    serving alarm acts on: breach, verdict, psi_threshold, max_features_over)."""
    verdict = drift_verdict(table, policy)
    return table.with_columns(
        psi_threshold=pl.lit(policy.psi_threshold, dtype=pl.Float64),
        max_features_over=pl.lit(policy.max_features_over, dtype=pl.Int64),
        breach=pl.lit(verdict.breach, dtype=pl.Boolean),
        verdict=pl.lit(verdict.reason, dtype=pl.Utf8),
    ), verdict
