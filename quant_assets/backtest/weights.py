"""Target-weight builders: scores (T x N) -> target weights (T x N) for ``run_backtest``.

Conventions
-----------
* Rows are days, columns instruments. A name is *eligible* on a row when it is tradable and
  its score is finite; other names get weight 0.
* Names are ordered per row by (score, column index) ascending: among equal scores the
  higher column index ranks higher. This total order makes selection deterministic and the
  long and short sides disjoint.
* Weights are signed fractions of equity: longs > 0, shorts < 0.

Builders: ``long_short_quantile`` (one cross-section, optional net exposure),
``sector_neutral_quantile`` (the same within each sector, every sector net zero) and
``beta_neutral`` (adjusts a book to zero beta, keeping its names), with ``trailing_betas``,
the point-in-time beta estimate it uses.
"""

from __future__ import annotations

import numbers

import numpy as np

from quant_assets.backtest import nb
from quant_assets.backtest.portfolio import kernel_input

__all__ = [
    "beta_neutral",
    "equal_weight_market",
    "long_short_quantile",
    "sector_neutral_quantile",
    "trailing_betas",
]

_SCHEMES = ("equal", "score")
# Guards floor(quantile * n) against representation error (0.29 * 100 = 28.999...).
_QUANTILE_EPS = 1e-9


def _check_positive(name: str, value: object) -> float:
    if not (isinstance(value, numbers.Real) and np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _row_sums(matrix: np.ndarray) -> np.ndarray:
    # Not ndarray.sum: numpy's pairwise summation groups the terms by their column
    # position, so zero columns of names held at other times would change the rounding and
    # a month-by-month run would differ in the last bits from one run over all months.
    return nb.row_sums_nb(kernel_input(matrix, np.float64))


def _fill_side(raw: np.ndarray, budget: np.ndarray, cap: float | None) -> np.ndarray:
    """Scale non-negative ``raw`` rows to sum to ``budget``, no entry above ``cap``.

    Water-filling: names whose proportional share exceeds the cap are pinned at the cap and
    the rest of the budget is shared by the others in proportion to ``raw``; repeated until
    no share exceeds the cap (at most N rounds; each round pins at least one more name).
    """
    if cap is None:
        total = _row_sums(raw)
        scale = np.divide(budget, total, out=np.zeros_like(total), where=total > 0)
        return raw * scale[:, None]
    pinned = np.zeros(raw.shape, dtype=bool)
    while True:
        free_raw = np.where(pinned, 0.0, raw)
        free_mass = _row_sums(free_raw)
        left = np.maximum(budget - cap * pinned.sum(axis=1), 0.0)
        scale = np.divide(left, free_mass, out=np.zeros_like(free_mass), where=free_mass > 0)
        weights = np.where(pinned, cap, free_raw * scale[:, None])
        newly_pinned = ~pinned & (weights > cap)
        if not newly_pinned.any():
            return weights
        pinned |= newly_pinned


def _check_scores(scores, tradable) -> tuple[np.ndarray, np.ndarray]:
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
    return score_matrix, tradable_matrix


def _check_options(quantile, scheme, gross, max_weight) -> tuple[float, float | None]:
    if not (isinstance(quantile, numbers.Real) and 0 < quantile <= 0.5):
        raise ValueError(f"quantile must be in (0, 0.5], got {quantile!r}")
    if scheme not in _SCHEMES:
        raise ValueError(f"scheme must be one of {_SCHEMES}, got {scheme!r}")
    gross = _check_positive("gross", gross)
    cap = None if max_weight is None else _check_positive("max_weight", max_weight)
    return gross, cap


def _sides(
    score_matrix: np.ndarray, eligible: np.ndarray, quantile: float, scheme: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw (unscaled, >= 0) long and short weights of the quantile selection among the
    ``eligible`` names of each row, and the names per side ``k`` (T,)."""
    n_rows, n_cols = score_matrix.shape
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
    return raw_long, raw_short, k


def long_short_quantile(
    scores: np.ndarray,
    tradable: np.ndarray,
    quantile: float = 0.2,
    scheme: str = "equal",
    gross: float = 1.0,
    max_weight: float | None = None,
    net: float = 0.0,
) -> np.ndarray:
    """Quantile portfolio: long the top, short the bottom of each row.

    With ``n`` eligible names on a row, each side holds ``k = min(max(1, floor(quantile * n)),
    n // 2)`` names (the top ``k`` and bottom ``k`` in the (score, column) order); rows with
    fewer than 2 eligible names are all zero. The long side has gross ``(gross + net) / 2``
    and the short side ``(gross - net) / 2``, so the book's gross is ``gross`` and its net
    exposure ``net`` (default 0: dollar-neutral; ``|net| <= gross``):

    * ``scheme="equal"``: equal weights within a side.
    * ``scheme="score"``: within a side, proportional to the distance of the score from the
      row's median eligible score (longs are at or above it, shorts at or below). A side
      whose distances are all zero falls back to equal weights.

    ``max_weight`` caps each name's absolute weight: shares above the cap are pinned at it
    and the excess is redistributed within the side in proportion to the scheme's raw
    weights (water-filling). If the cap cannot hold a side's gross (too few names with a
    positive raw weight), both sides shrink by the same factor, the largest that fits, so
    the ratio of net to gross is kept (dollar-neutral: both get
    ``min(gross / 2, max_weight * names_long, max_weight * names_short)``).
    """
    score_matrix, tradable_matrix = _check_scores(scores, tradable)
    gross, cap = _check_options(quantile, scheme, gross, max_weight)
    if not (isinstance(net, numbers.Real) and np.isfinite(net) and abs(net) <= gross):
        raise ValueError(f"net must be a finite number with |net| <= gross={gross}, got {net!r}")

    eligible = tradable_matrix & np.isfinite(score_matrix)
    raw_long, raw_short, k = _sides(score_matrix, eligible, quantile, scheme)

    if net == 0.0:
        budget = np.where(k > 0, gross / 2.0, 0.0)
        if cap is not None:
            capacity_long = cap * (raw_long > 0).sum(axis=1)
            capacity_short = cap * (raw_short > 0).sum(axis=1)
            budget = np.minimum(budget, np.minimum(capacity_long, capacity_short))
        return _fill_side(raw_long, budget, cap) - _fill_side(raw_short, budget, cap)

    budget_long = np.where(k > 0, (gross + net) / 2.0, 0.0)
    budget_short = np.where(k > 0, (gross - net) / 2.0, 0.0)
    if cap is not None:
        shrink = np.ones(len(k))
        for budget, raw in ((budget_long, raw_long), (budget_short, raw_short)):
            capacity = cap * (raw > 0).sum(axis=1)
            ratio = np.divide(capacity, budget, out=np.ones_like(budget), where=budget > 0)
            shrink = np.minimum(shrink, ratio)
        budget_long = budget_long * shrink
        budget_short = budget_short * shrink
    return _fill_side(raw_long, budget_long, cap) - _fill_side(raw_short, budget_short, cap)


def _sector_codes(sectors, shape: tuple[int, int]) -> np.ndarray:
    codes = np.asarray(sectors)
    if not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"sectors must be integer codes (-1: none), got dtype {codes.dtype}")
    if codes.shape not in (shape, shape[1:]):
        raise ValueError(
            f"sectors has shape {codes.shape}, expected {shape[1:]} (one per instrument) or "
            f"{shape} (per day)"
        )
    if (codes < -1).any():
        raise ValueError("sectors codes must be >= 0, or -1 for a name without a sector")
    return np.broadcast_to(codes.astype(np.int64, copy=False), shape)


def sector_neutral_quantile(
    scores: np.ndarray,
    tradable: np.ndarray,
    sectors: np.ndarray,
    quantile: float = 0.2,
    scheme: str = "equal",
    gross: float = 1.0,
    max_weight: float | None = None,
    min_names: int = 2,
) -> np.ndarray:
    """Sector-neutral quantile portfolio: ``long_short_quantile`` within each sector.

    ``sectors`` are integer codes per instrument (N,) or per day and instrument (T, N);
    -1 marks a name without a sector, which is never held. In each sector with at least
    ``min_names`` (>= 2) eligible names on a row, ``k_s`` names per side are chosen by the
    rule of ``long_short_quantile`` applied to the sector's names alone, and weighted by
    the scheme (``"score"``: distance from the sector's median score). A sector with fewer
    eligible names holds nothing that day, and its share goes to the other sectors.

    Each sector's side has gross ``(gross / 2) * k_s / K`` with ``K`` the total names per
    side of the row: with ``scheme="equal"`` every held name has the same absolute weight
    ``gross / (2 K)``, as in the unconstrained book. The longs and shorts of a sector have
    the same gross, so every sector's net exposure is zero (up to rounding, ~1e-17).
    ``max_weight`` is applied per sector side as in ``long_short_quantile``; a sector whose
    cap binds shrinks both its sides (the book's gross is then below ``gross``).
    """
    score_matrix, tradable_matrix = _check_scores(scores, tradable)
    gross, cap = _check_options(quantile, scheme, gross, max_weight)
    if not (isinstance(min_names, numbers.Integral) and min_names >= 2):
        raise ValueError(f"min_names must be an integer >= 2, got {min_names!r}")
    codes = _sector_codes(sectors, score_matrix.shape)

    eligible = tradable_matrix & np.isfinite(score_matrix)
    static = np.ndim(sectors) == 1
    books = []
    for code in np.unique(codes[codes >= 0]):
        if static:
            # one sector's columns only: the same result (column order kept, zero columns
            # are no-ops) for a fraction of the work
            columns = np.flatnonzero(codes[0] == code)
            in_sector = eligible[:, columns]
            sector_scores = score_matrix[:, columns]
        else:
            columns = slice(None)
            in_sector = eligible & (codes == code)
            sector_scores = score_matrix
        in_sector = in_sector & (in_sector.sum(axis=1) >= min_names)[:, None]
        books.append((columns, *_sides(sector_scores, in_sector, quantile, scheme)))
    weights = np.zeros(score_matrix.shape)
    if not books:
        return weights
    total_k = np.sum([k for *_, k in books], axis=0)
    for columns, raw_long, raw_short, k in books:
        budget = np.divide(
            (gross / 2.0) * k, total_k, out=np.zeros(len(k)), where=total_k > 0
        )
        if cap is not None:
            capacity_long = cap * (raw_long > 0).sum(axis=1)
            capacity_short = cap * (raw_short > 0).sum(axis=1)
            budget = np.minimum(budget, np.minimum(capacity_long, capacity_short))
        weights[:, columns] += _fill_side(raw_long, budget, cap) - _fill_side(raw_short, budget, cap)
    return weights


def equal_weight_market(returns: np.ndarray) -> np.ndarray:
    """(T,) equal-weight market return: the mean of each row's finite returns (NaN if none).

    The same definition as the validation report's benchmark (every instrument with a
    return that day, equally weighted), summed in column order over finite entries only.
    """
    matrix = np.asarray(returns, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"returns must be a 2-D (days x instruments) array, got {matrix.shape}")
    return nb.equal_weight_market_nb(kernel_input(matrix))


def trailing_betas(
    returns: np.ndarray,
    market: np.ndarray,
    window: int = 60,
    min_obs: int = 40,
    first_row: int = 0,
) -> np.ndarray:
    """Point-in-time market betas: row t uses only the returns of rows ``[t - window, t)``.

    Estimator: the OLS slope ``cov(r_i, m) / var(m)`` of name i's daily returns on the
    market's over the days of the window where both are finite (sample moments; the
    normalisation cancels), with at least ``min_obs`` such days, else NaN (also when the
    market does not vary). The window ends strictly before t, so a beta decided at close t
    uses nothing from day t on: not even day t's return. ``returns`` (D, N) and ``market``
    (D,) are simple daily returns, NaN where missing; returns rows
    ``[first_row, D)`` as a (D - first_row, N) array.
    """
    matrix = np.asarray(returns, dtype=np.float64)
    market_vector = np.asarray(market, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"returns must be a 2-D (days x instruments) array, got {matrix.shape}")
    if market_vector.shape != matrix.shape[:1]:
        raise ValueError(f"market has shape {market_vector.shape}, expected {matrix.shape[:1]}")
    if not (isinstance(window, numbers.Integral) and window >= 2):
        raise ValueError(f"window must be an integer >= 2, got {window!r}")
    if not (isinstance(min_obs, numbers.Integral) and 2 <= min_obs <= window):
        raise ValueError(f"min_obs must be an integer in [2, window={window}], got {min_obs!r}")
    if not (isinstance(first_row, numbers.Integral) and 0 <= first_row <= matrix.shape[0]):
        raise ValueError(f"first_row must be in [0, {matrix.shape[0]}], got {first_row!r}")
    if np.isinf(matrix).any() or np.isinf(market_vector).any():
        raise ValueError("returns and market must not contain +-inf")
    return nb.trailing_betas_nb(
        kernel_input(matrix), kernel_input(market_vector), int(first_row),
        int(window), int(min_obs),
    )


def beta_neutral(
    weights: np.ndarray, betas: np.ndarray, sectors: np.ndarray | None = None
) -> np.ndarray:
    """Adjust each row's book to zero beta (``sum_i w_i * beta_i = 0``), keeping its names.

    On the names a row holds, the smallest change (least squares) is made that zeroes the
    beta and keeps the book dollar-neutral, or, with ``sectors`` (codes as in
    ``sector_neutral_quantile``), every sector net-neutral; the book is then rescaled to
    its gross before the change. Weights move by a few percent typically; a name's sign
    may flip when the constraints demand it, and ``max_weight`` caps of the input may be
    exceeded. A row whose names cannot carry the constraints (as many independent
    constraints as names, e.g. one long and one short with different betas) is left flat.
    Every held name needs a finite beta.
    """
    matrix = np.asarray(weights, dtype=np.float64)
    beta_matrix = np.asarray(betas, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"weights must be a 2-D (days x instruments) array, got {matrix.shape}")
    if beta_matrix.shape != matrix.shape:
        raise ValueError(f"betas has shape {beta_matrix.shape}, expected {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("weights must be finite")
    missing = (matrix != 0.0) & ~np.isfinite(beta_matrix)
    if missing.any():
        rows, cols = np.nonzero(missing)
        raise ValueError(
            "beta_neutral: held names need a finite beta; missing at (row, column) "
            f"{list(zip(rows[:5].tolist(), cols[:5].tolist(), strict=True))}"
        )
    if sectors is None:
        codes = np.zeros(matrix.shape, dtype=np.int64)  # one group: the book's net
        n_groups = 1
    else:
        codes = _sector_codes(sectors, matrix.shape)
        held_without = (matrix != 0.0) & (codes < 0)
        if held_without.any():
            raise ValueError("beta_neutral: a held name has no sector (code -1)")
        n_groups = int(codes.max()) + 1 if codes.size else 0
    return nb.neutralize_rows_nb(
        kernel_input(matrix), kernel_input(np.nan_to_num(beta_matrix)),
        kernel_input(codes), n_groups,
    )
