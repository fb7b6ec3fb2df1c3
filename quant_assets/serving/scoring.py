"""Scoring with a registered model: the daily batch and the request payloads of the scorer.

Pure: numpy, polars, orjson and the model core (no Dagster, no MLflow).

``score_frame`` goes through ``TrainedModel.predict`` exactly as ``oos_predictions`` does
(features cast to Float64, nulls as NaN, the same booster string and thread count), and
LightGBM scores each row independently of the others, so a day scored here equals that
day's out-of-sample prediction by the same model bit for bit.

``rows_to_matrix`` validates a scorer request. Accepted payloads:

* row-wise: ``{"rows": [{"feat_a": 1.0, "feat_b": null, ...}, ...]}``
* columnar: ``{"columns": {"feat_a": [1.0, ...], "feat_b": [null, ...]}}``

Every feature of the model must be present and nothing else; a value is a JSON number
(booleans are refused) or null. null and NaN (sent as the Python/JS literal ``NaN``) mean
missing, which LightGBM handles natively; +-inf (or ``Infinity``) is refused, because a
tree would route it as an ordinary extreme value without anyone noticing. ``parse_json``
reads a request body as ``json.loads`` does, faster.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import polars as pl

from quant_assets.models.lgbm import TrainedModel

SCORE_COLUMNS = ("date", "instrument_id", "score", "model_version", "model_sha256")
MAX_ROWS = 10_000


def score_frame(features: pl.DataFrame, model: TrainedModel, model_version: int) -> pl.DataFrame:
    """Scores of the rows of ``features`` (date, instrument_id, feature columns), sorted by
    (date, instrument_id), with the model version and its sha256 on every row."""
    missing = [c for c in ("date", "instrument_id", *model.feature_cols) if c not in features.columns]
    if missing:
        raise ValueError(f"cannot score: features lack columns {missing}")
    rows = features.sort("date", "instrument_id")
    return rows.select("date", "instrument_id").with_columns(
        score=pl.Series(model.predict(rows), dtype=pl.Float64),
        model_version=pl.lit(int(model_version), dtype=pl.Int64),
        model_sha256=pl.lit(model.sha256),
    )


class PayloadError(ValueError):
    """A request the scorer refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def parse_json(body: bytes) -> Any:
    """``json.loads(body)``: through orjson (a single-row request of ~80 floats decodes ~5x
    faster), and through ``json.loads`` itself whatever orjson refuses (the NaN and Infinity
    literals, integers beyond 64 bits that do not fit a float64, lone surrogates, invalid
    UTF-8), so the bodies accepted, their values and the errors raised are json's: both
    parse numbers with correct rounding, so a value is the same float64 either way."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


# JSON numbers and null as json.loads returns them; bool is deliberately absent (it is an
# int subclass, and a boolean feature value is a client bug, not a 1.0)
_NUMERIC = frozenset({float, int, type(None)})


def _value(v: Any, column: str, row: int) -> float:
    if type(v) not in _NUMERIC:
        raise PayloadError(
            f"row {row}, column {column!r}: expected a number or null, got "
            f"{type(v).__name__} {v!r}"
        )
    return math.nan if v is None else float(v)


def _to_matrix(values: Sequence[Sequence[Any]], columns: Sequence[str], rows_first: bool) -> np.ndarray:
    """float64 matrix of checked values (None -> NaN); +-inf refused. The fast path collects
    the set of value types in C (map/set); the slow path only runs to name the culprit."""
    types: set[type] = set()
    for vals in values:
        types.update(map(type, vals))
    if not types <= _NUMERIC:
        for a, vals in enumerate(values):
            for b, v in enumerate(vals):
                row, col = (a, b) if rows_first else (b, a)
                _value(v, columns[col], row)
    try:
        out = np.array(values, dtype=np.float64)  # None -> NaN
    except OverflowError as exc:  # an integer beyond float64, e.g. 10**400
        raise PayloadError(f"a value does not fit a float64: {exc}") from exc
    if not rows_first:
        out = np.ascontiguousarray(out.T)
    inf = np.isinf(out)
    if inf.any():
        row, col = (int(i) for i in np.argwhere(inf)[0])
        raise PayloadError(f"row {row}, column {columns[col]!r}: infinite values are not allowed")
    return out


def _check_columns(present: Sequence[str], feature_cols: Sequence[str], where: str) -> None:
    missing = [c for c in feature_cols if c not in present]
    extra = sorted(c for c in present if c not in set(feature_cols))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing feature columns {missing}")
        if extra:
            parts.append(f"unknown columns {extra}")
        raise PayloadError(f"{where}: " + "; ".join(parts))


def rows_to_matrix(payload: Any, feature_cols: Sequence[str], max_rows: int = MAX_ROWS) -> np.ndarray:
    """Validated float64 matrix (n_rows x n_features, model column order) of a request."""
    if not isinstance(payload, Mapping):
        raise PayloadError("body must be a JSON object with 'rows' or 'columns'", 400)
    keys = set(payload)
    if keys == {"rows"}:
        rows = payload["rows"]
        if not isinstance(rows, list) or not rows:
            raise PayloadError("'rows' must be a non-empty list of objects")
        if len(rows) > max_rows:
            raise PayloadError(f"{len(rows)} rows exceed the limit of {max_rows}", 413)
        values = []
        wanted = set(feature_cols)
        # one C call per row, in model order (itemgetter of one key returns no tuple)
        pick = (operator.itemgetter(*feature_cols) if len(feature_cols) > 1
                else lambda row: (row[feature_cols[0]],))
        for i, row in enumerate(rows):
            if type(row) is not dict or row.keys() != wanted:  # C-level set comparison
                if not isinstance(row, Mapping):
                    raise PayloadError(f"row {i}: expected an object, got {type(row).__name__}")
                if len(row) != len(feature_cols) or any(c not in row for c in feature_cols):
                    _check_columns(list(row), feature_cols, f"row {i}")
            values.append(pick(row))
        return _to_matrix(values, feature_cols, rows_first=True)
    if keys == {"columns"}:
        columns = payload["columns"]
        if not isinstance(columns, Mapping) or not columns:
            raise PayloadError("'columns' must be a non-empty object of column -> list")
        _check_columns(list(columns), feature_cols, "columns")
        lengths = {c: len(v) if isinstance(v, list) else -1 for c, v in columns.items()}
        bad = [c for c, n in lengths.items() if n < 0]
        if bad:
            raise PayloadError(f"columns {sorted(bad)}: expected lists of values")
        n = lengths[feature_cols[0]]
        uneven = sorted(c for c, m in lengths.items() if m != n)
        if uneven:
            raise PayloadError(f"columns {uneven} differ in length from {feature_cols[0]!r} ({n})")
        if n == 0:
            raise PayloadError("columns hold no rows")
        if n > max_rows:
            raise PayloadError(f"{n} rows exceed the limit of {max_rows}", 413)
        return _to_matrix([columns[c] for c in feature_cols], feature_cols, rows_first=False)
    raise PayloadError(
        f"body must have exactly one of 'rows' or 'columns', got keys {sorted(keys)}", 400
    )
