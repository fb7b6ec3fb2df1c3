"""Purged cross-validation for labels that span time: purged K-fold, combinatorial purged K-fold
(CPCV) and purged walk-forward splits (Lopez de Prado, *Advances in Financial Machine Learning*,
chapters 7 and 12).

Pure core: numpy only. No Dagster, no MLflow, no polars/pandas (any 1-D array-like is accepted).

Conventions
-----------
* Row ``i`` carries the label interval ``(t0[i], t1[i]]`` (half-open). ``t0`` and ``t1`` may be
  ints, floats, ``datetime64``, ``datetime.date``/``datetime`` objects or anything else numpy can
  sort; rows must be sorted by ``t0`` (ties allowed) and ``t1 >= t0``. NaN/NaT/None, unsorted
  rows, ``t1 < t0``, a length mismatch or too few rows for the requested splits raise
  ``ValueError``.
* Overlap of ``(a, b]`` and ``(c, d]`` is ``a < d and c < b``. A zero-length interval
  (``t0 == t1``) is allowed and goes through the same formula, so it conflicts with ``(c, d]``
  iff ``c < t0 < d``.
* Test sets are contiguous blocks of rows: ``np.array_split(np.arange(n), n_splits)`` for
  ``PurgedKFold``, the same with ``n_groups`` groups for CPCV (a split's test set is the union of
  its test groups), and the last ``n_splits * test_size`` rows for ``WalkForward``.
* Training set of a split = every non-test row whose interval overlaps no test interval of that
  split (*purge*, on both sides of each test block), minus the ``embargo`` rows that immediately
  follow each contiguous block of test rows, in row order (*embargo*: serial correlation leaks
  from a test block into the rows right after it). Adjacent CPCV test groups form one block.
  The embargo is counted in rows, not time, as the spec fixes; with many instruments per day,
  pass ``embargo = days * rows_per_day`` if a time embargo is meant.
* ``split(t0, t1)`` validates eagerly (errors raise at the call, not at the first ``next``) and
  returns an iterator of ``(train_idx, test_idx)``, both ascending ``int64`` arrays. A training set
  may come out empty when labels are long relative to the data; callers decide what that means.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations
from numbers import Integral

import numpy as np

__all__ = [
    "CombinatorialPurgedKFold",
    "PurgedKFold",
    "WalkForward",
    "purged_train_indices",
]

Split = tuple[np.ndarray, np.ndarray]


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int) -> int:
    # bool is an Integral, but True as a fold count is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _has_missing(x: np.ndarray) -> bool:
    if x.dtype.kind in "fc":
        return bool(np.isnan(x).any())
    if x.dtype.kind in "mM":
        return bool(np.isnat(x).any())
    if x.dtype.kind == "O":
        # NaN and NaT (float or pandas) are the values unequal to themselves.
        return any(v is None or v != v for v in x)
    return False


# dtype kinds whose values compare meaningfully with each other.
_KIND_FAMILY = {"b": "n", "i": "n", "u": "n", "f": "n", "U": "s", "S": "s"}


def _interval_codes(t0: object, t1: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate the label intervals and return them as integer ranks.

    The bounds are replaced by their rank in the sorted set of all bounds (equal values share a
    rank). Ranks preserve ``<`` and ``==``, so every overlap decision is unchanged, and one
    integer code path then serves ints, floats, datetime64 of mixed units, date objects and
    strings alike.
    """
    a = np.asarray(t0)
    b = np.asarray(t1)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"t0 and t1 must be 1-D, got shapes {a.shape} and {b.shape}")
    if len(a) != len(b):
        raise ValueError(f"t0 and t1 must have the same length, got {len(a)} and {len(b)}")
    for name, x in (("t0", a), ("t1", b)):
        if _has_missing(x):
            raise ValueError(f"{name} contains missing values (NaN/NaT/None)")
    kinds = {
        _KIND_FAMILY.get(a.dtype.kind, a.dtype.kind),
        _KIND_FAMILY.get(b.dtype.kind, b.dtype.kind),
    }
    # np.concatenate would silently coerce, e.g. ints to strings that then sort as text; object
    # arrays are left to their elements' own comparisons.
    if len(kinds) > 1 and "O" not in kinds:
        raise ValueError(f"t0 ({a.dtype}) and t1 ({b.dtype}) are not comparable types")
    try:
        _, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"t0 ({a.dtype}) and t1 ({b.dtype}) must hold mutually comparable values: {exc}"
        ) from exc
    inverse = inverse.reshape(-1).astype(np.int64, copy=False)
    c0, c1 = inverse[: len(a)], inverse[len(a) :]
    unsorted = np.flatnonzero(c0[1:] < c0[:-1])
    if unsorted.size:
        i = int(unsorted[0]) + 1
        raise ValueError(f"rows must be sorted by t0; t0[{i}]={a[i]!r} < t0[{i - 1}]={a[i - 1]!r}")
    reversed_ = np.flatnonzero(c1 < c0)
    if reversed_.size:
        i = int(reversed_[0])
        raise ValueError(f"t1 must be >= t0; row {i} has t0={a[i]!r}, t1={b[i]!r}")
    return c0, c1


def _check_rows(n_rows: int, needed: int, what: str) -> None:
    if n_rows < needed:
        raise ValueError(f"{what} needs at least {needed} rows, got {n_rows}")


# --------------------------------------------------------------------------------------------
# Purge + embargo
# --------------------------------------------------------------------------------------------


def _overlaps_test(c0: np.ndarray, c1: np.ndarray, test_idx: np.ndarray) -> np.ndarray:
    """Boolean mask over all rows: does row i's interval overlap any test interval?

    Vectorised instead of the O(n_rows * n_test) pairwise test: the test intervals, already
    sorted by start because rows are, are merged into disjoint runs (C_j, D_j] with both C and D
    nondecreasing. Row (a, b] overlaps some run iff the first run with D_j > a exists and starts
    before b (later runs start no earlier). A test interval is merged into the current run only
    when it starts strictly before the run's end; that keeps the merged test exactly equivalent to
    the pairwise formula, zero-length intervals included.
    """
    c = c0[test_idx]
    d = c1[test_idx]
    d_run = np.maximum.accumulate(d)
    starts = np.ones(len(c), dtype=bool)
    starts[1:] = c[1:] >= d_run[:-1]
    first = np.flatnonzero(starts)
    last = np.append(first[1:] - 1, len(c) - 1)
    run_c, run_d = c[first], d_run[last]
    j = np.searchsorted(run_d, c0, side="right")
    found = j < len(run_d)
    return found & (run_c[np.minimum(j, len(run_d) - 1)] < c1)


def _train_from_codes(
    c0: np.ndarray, c1: np.ndarray, test_idx: np.ndarray, embargo: int, stop: int | None = None
) -> np.ndarray:
    """Training rows for one split; ``stop`` limits candidates to rows ``< stop`` (walk-forward)."""
    n = len(c0)
    keep = np.ones(n, dtype=bool)
    if stop is not None:
        keep[stop:] = False
    if test_idx.size == 0:
        return np.flatnonzero(keep)
    keep[test_idx] = False
    keep &= ~_overlaps_test(c0, c1, test_idx)
    if embargo:
        # Ends of contiguous test blocks: a test row whose successor row is not a test row.
        block_ends = test_idx[np.append(np.diff(test_idx) != 1, True)]
        for end in block_ends:
            keep[end + 1 : end + 1 + embargo] = False
    return np.flatnonzero(keep)


def purged_train_indices(t0: object, t1: object, test_idx: object, embargo: int = 0) -> np.ndarray:
    """Training rows for an arbitrary test set: all rows not in ``test_idx``, whose interval
    overlaps no test interval, and not among the ``embargo`` rows after each contiguous block of
    test rows. Same conventions as the splitters (see the module docstring)."""
    embargo = _check_int("embargo", embargo, 0)
    c0, c1 = _interval_codes(t0, t1)
    idx = np.asarray(test_idx)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise ValueError(f"test_idx must be a 1-D integer array, got {idx.dtype} {idx.shape}")
    idx = np.unique(idx.astype(np.int64, copy=False))
    if idx.size and (idx[0] < 0 or idx[-1] >= len(c0)):
        raise ValueError(f"test_idx must lie in [0, {len(c0)}), got {idx[0]}..{idx[-1]}")
    return _train_from_codes(c0, c1, idx, embargo)


# --------------------------------------------------------------------------------------------
# Splitters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgedKFold:
    """K-fold with contiguous, unshuffled test folds; training rows purged and embargoed
    (AFML 7.4). With non-overlapping labels and ``embargo=0`` the splits equal
    ``sklearn.model_selection.KFold(n_splits)``."""

    n_splits: int
    embargo: int = 0

    def __post_init__(self) -> None:
        _check_int("n_splits", self.n_splits, 2)
        _check_int("embargo", self.embargo, 0)

    def get_n_splits(self, t0: object = None, t1: object = None) -> int:
        return self.n_splits

    def split(self, t0: object, t1: object) -> Iterator[Split]:
        c0, c1 = _interval_codes(t0, t1)
        _check_rows(len(c0), self.n_splits, f"PurgedKFold(n_splits={self.n_splits})")
        folds = np.array_split(np.arange(len(c0), dtype=np.int64), self.n_splits)
        return ((_train_from_codes(c0, c1, f, self.embargo), f) for f in folds)


@dataclass(frozen=True)
class CombinatorialPurgedKFold:
    """Combinatorial purged cross-validation (AFML 12.4).

    Rows are cut into ``n_groups`` contiguous groups; each of the C(n_groups, n_test_groups)
    splits tests on one combination of groups (``itertools.combinations`` order, see
    ``test_groups``) and trains on the purged, embargoed rest. Each group is tested in
    C(n_groups - 1, n_test_groups - 1) = ``n_paths`` splits, so the out-of-sample predictions
    assemble into ``n_paths`` full backtest paths (``paths`` / ``backtest_paths``).
    """

    n_groups: int
    n_test_groups: int
    embargo: int = 0

    def __post_init__(self) -> None:
        _check_int("n_groups", self.n_groups, 2)
        _check_int("n_test_groups", self.n_test_groups, 1)
        _check_int("embargo", self.embargo, 0)
        if self.n_test_groups >= self.n_groups:
            raise ValueError(
                f"n_test_groups={self.n_test_groups} must be < n_groups={self.n_groups} "
                "(otherwise nothing is left to train on)"
            )

    @property
    def test_groups(self) -> list[tuple[int, ...]]:
        """Test groups of each split, in split order."""
        return list(combinations(range(self.n_groups), self.n_test_groups))

    @property
    def n_paths(self) -> int:
        """C(N, k) * k / N, which is the integer C(N-1, k-1)."""
        return math.comb(self.n_groups - 1, self.n_test_groups - 1)

    def get_n_splits(self, t0: object = None, t1: object = None) -> int:
        return math.comb(self.n_groups, self.n_test_groups)

    def paths(self) -> np.ndarray:
        """``(n_paths, n_groups)`` int array: entry ``[p, g]`` is the split whose predictions for
        group ``g`` belong to backtest path ``p``.

        Standard assembly (AFML figure 12.1): the splits that test group ``g``, in split order,
        go to paths 0, 1, ..., n_paths - 1.
        """
        out = np.empty((self.n_paths, self.n_groups), dtype=np.int64)
        seen = np.zeros(self.n_groups, dtype=np.int64)
        for s, groups in enumerate(self.test_groups):
            for g in groups:
                out[seen[g], g] = s
                seen[g] += 1
        return out

    def backtest_paths(self, n_rows: int) -> np.ndarray:
        """``(n_paths, n_rows)`` int array: entry ``[p, i]`` is the split whose prediction for
        row ``i`` belongs to path ``p`` (``paths()`` expanded over each group's rows)."""
        n_rows = _check_int("n_rows", n_rows, 0)
        _check_rows(n_rows, self.n_groups, f"CombinatorialPurgedKFold(n_groups={self.n_groups})")
        sizes = [len(g) for g in np.array_split(np.arange(n_rows), self.n_groups)]
        return np.repeat(self.paths(), sizes, axis=1)

    def split(self, t0: object, t1: object) -> Iterator[Split]:
        c0, c1 = _interval_codes(t0, t1)
        _check_rows(len(c0), self.n_groups, f"CombinatorialPurgedKFold(n_groups={self.n_groups})")
        groups = np.array_split(np.arange(len(c0), dtype=np.int64), self.n_groups)

        def gen() -> Iterator[Split]:
            for combo in self.test_groups:
                test = np.concatenate([groups[g] for g in combo])
                yield _train_from_codes(c0, c1, test, self.embargo), test

        return gen()


@dataclass(frozen=True)
class WalkForward:
    """Expanding-window walk-forward: ``n_splits`` consecutive test blocks of ``test_size`` rows
    at the end of the data, each trained on all earlier rows, purged of labels that overlap the
    test block. With non-overlapping labels the splits equal
    ``sklearn.model_selection.TimeSeriesSplit(n_splits, test_size=test_size)``.

    ``embargo`` is accepted for a uniform interface and follows the common rule (rows *after*
    the test block), so it never changes a walk-forward split: nothing after the test block is
    trained on anyway. Leakage from the training tail into the test block is what the purge
    removes.
    """

    n_splits: int
    test_size: int
    embargo: int = 0

    def __post_init__(self) -> None:
        _check_int("n_splits", self.n_splits, 1)
        _check_int("test_size", self.test_size, 1)
        _check_int("embargo", self.embargo, 0)

    def get_n_splits(self, t0: object = None, t1: object = None) -> int:
        return self.n_splits

    def split(self, t0: object, t1: object) -> Iterator[Split]:
        c0, c1 = _interval_codes(t0, t1)
        n = len(c0)
        # One row before the first test block is the least that leaves something to train on.
        _check_rows(
            n,
            self.n_splits * self.test_size + 1,
            f"WalkForward(n_splits={self.n_splits}, test_size={self.test_size})",
        )
        first = n - self.n_splits * self.test_size

        def gen() -> Iterator[Split]:
            for k in range(self.n_splits):
                start = first + k * self.test_size
                test = np.arange(start, start + self.test_size, dtype=np.int64)
                yield _train_from_codes(c0, c1, test, self.embargo, stop=start), test

        return gen()
