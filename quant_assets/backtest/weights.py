"""Target-weight builders: scores (T x N) -> target weights (T x N) for ``run_backtest``.

Conventions
-----------
* Rows are days, columns instruments. A name is *eligible* on a row when it is tradable and
  its score is finite; other names get weight 0.
* Names are ordered per row by (score, column index) ascending: among equal scores the
  higher column index ranks higher. This total order makes selection deterministic and the
  long and short sides disjoint.
* Weights are signed fractions of equity: longs > 0, shorts < 0.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["long_short_quantile"]

_SCHEMES = ("equal", "score")
# Guards floor(quantile * n) against representation error (0.29 * 100 = 28.999...).
_QUANTILE_EPS = 1e-9


def _check_positive(name: str, value: object) -> float:
    if not (isinstance(value, numbers.Real) and np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _fill_side(raw: np.ndarray, budget: np.ndarray, cap: float | None) -> np.ndarray:
    """Scale non-negative ``raw`` rows to sum to ``budget``, no entry above ``cap``.

    Water-filling: names whose proportional share exceeds the cap are pinned at the cap and
    the rest of the budget is shared by the others in proportion to ``raw``; repeated until
    no share exceeds the cap (at most N rounds; each round pins at least one more name).
    """
    if cap is None:
        total = raw.sum(axis=1)
        scale = np.divide(budget, total, out=np.zeros_like(total), where=total > 0)
        return raw * scale[:, None]
    pinned = np.zeros(raw.shape, dtype=bool)
    while True:
        free_raw = np.where(pinned, 0.0, raw)
        free_mass = free_raw.sum(axis=1)
        left = np.maximum(budget - cap * pinned.sum(axis=1), 0.0)
        scale = np.divide(left, free_mass, out=np.zeros_like(free_mass), where=free_mass > 0)
        weights = np.where(pinned, cap, free_raw * scale[:, None])
        newly_pinned = ~pinned & (weights > cap)
        if not newly_pinned.any():
            return weights
        pinned |= newly_pinned


def long_short_quantile(
    scores: np.ndarray,
    tradable: np.ndarray,
    quantile: float = 0.2,
    scheme: str = "equal",
    gross: float = 1.0,
    max_weight: float | None = None,
) -> np.ndarray:
    """Dollar-neutral quantile portfolio: long the top, short the bottom of each row.

    With ``n`` eligible names on a row, each side holds ``k = min(max(1, floor(quantile * n)),
    n // 2)`` names (the top ``k`` and bottom ``k`` in the (score, column) order); rows with
    fewer than 2 eligible names are all zero. Each side has gross ``gross / 2``:

    * ``scheme="equal"``: equal weights within a side.
    * ``scheme="score"``: within a side, proportional to the distance of the score from the
      row's median eligible score (longs are at or above it, shorts at or below). A side
      whose distances are all zero falls back to equal weights.

    ``max_weight`` caps each name's absolute weight: shares above the cap are pinned at it
    and the excess is redistributed within the side in proportion to the scheme's raw
    weights (water-filling). If the cap cannot hold ``gross / 2`` on a side (too few names
    with a positive raw weight), both sides get the same smaller gross,
    ``min(gross / 2, max_weight * names_long, max_weight * names_short)``, so the book stays
    dollar-neutral.
    """
    score_matrix = np.asarray(scores)
    if score_matrix.ndim != 2:
        raise ValueError(f"scores must be a 2-D (days x instruments) array, got {score_matrix.shape}")
    if not np.issubdtype(score_matrix.dtype, np.number):
        raise TypeError(f"scores must be numeric, got dtype {score_matrix.dtype}")
    score_matrix = score_matrix.astype(np.float64, copy=False)
    tradable_matrix = np.asarray(tradable)
    if tradable_matrix.shape != score_matrix.shape:
        raise ValueError(
            f"tradable has shape {tradable_matrix.shape}, expected {score_matrix.shape} "
            "(the shape of scores)"
        )
    if tradable_matrix.dtype != np.bool_:
        raise TypeError(f"tradable must be a boolean array, got dtype {tradable_matrix.dtype}")
    if not (isinstance(quantile, numbers.Real) and 0 < quantile <= 0.5):
        raise ValueError(f"quantile must be in (0, 0.5], got {quantile!r}")
    if scheme not in _SCHEMES:
        raise ValueError(f"scheme must be one of {_SCHEMES}, got {scheme!r}")
    gross = _check_positive("gross", gross)
    cap = None if max_weight is None else _check_positive("max_weight", max_weight)

    n_rows, n_cols = score_matrix.shape
    eligible = tradable_matrix & np.isfinite(score_matrix)
    keyed = np.where(eligible, score_matrix, np.nan)
    # Stable sort: ascending score, ties by column index, NaN (ineligible) last.
    order = np.argsort(keyed, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(n_cols), order.shape), axis=1)

    n_eligible = eligible.sum(axis=1)
    k = np.floor(quantile * n_eligible + _QUANTILE_EPS).astype(np.int64)
    k = np.minimum(np.maximum(k, 1), n_eligible // 2)  # n_eligible < 2 -> k = 0
    short = eligible & (rank < k[:, None])
    long = eligible & (rank >= (n_eligible - k)[:, None])

    if scheme == "equal":
        raw_long = long.astype(np.float64)
        raw_short = short.astype(np.float64)
    else:
        median = np.zeros(n_rows)
        has_names = k > 0
        if has_names.any():
            median[has_names] = np.nanmedian(keyed[has_names], axis=1)
        raw_long = np.where(long, np.maximum(keyed - median[:, None], 0.0), 0.0)
        raw_short = np.where(short, np.maximum(median[:, None] - keyed, 0.0), 0.0)
        raw_long = np.where((raw_long.sum(axis=1) == 0)[:, None], long, raw_long)
        raw_short = np.where((raw_short.sum(axis=1) == 0)[:, None], short, raw_short)

    budget = np.where(k > 0, gross / 2.0, 0.0)
    if cap is not None:
        capacity_long = cap * (raw_long > 0).sum(axis=1)
        capacity_short = cap * (raw_short > 0).sum(axis=1)
        budget = np.minimum(budget, np.minimum(capacity_long, capacity_short))

    return _fill_side(raw_long, budget, cap) - _fill_side(raw_short, budget, cap)
