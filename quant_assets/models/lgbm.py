"""Deterministic LightGBM training with early stopping on a purged validation tail.

Pure: polars, numpy and lightgbm only (no Dagster, no MLflow).

The training frame holds the feature columns and the label columns (`t0`, `t1`, the target)
joined on (date, instrument_id) -- see `walkforward.join_features_labels`. `train_lgbm`:

1. drops rows whose target is null/NaN and sorts by (date, instrument_id);
2. takes the last `valid_fraction` of the distinct training dates as the validation set;
3. purges: a row before the validation period whose label interval (t0, t1] reaches into it
   (`t1 >= first validation date`) is dropped from the fit set, so no fitted label shares
   returns with a validation label;
4. fits with early stopping on the validation set's mean daily rank IC (``early_stopping_metric``
   "rank_ic", what the strategy trades on; "l2" is LightGBM's own), with every source of
   randomness seeded and threading fixed, so that equal inputs give a byte-identical model
   string;
5. keeps the learning curves (per boosting round: training and validation l2, validation rank
   IC) and the split-gain feature importance for the tracking run (``feature_importance``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime as dt
import hashlib
import json
import math
import threading
import weakref
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from quant_assets.performance import RankICScorer, rank_correlation, rank_information_coefficient

if TYPE_CHECKING:  # imported where used: with scikit-learn ~0.4 s at every load of the code location
    import lightgbm as lgb

KEYS = ("date", "instrument_id")
STOPPING_METRICS = ("l2", "rank_ic")


@dataclass(frozen=True)
class LGBMConfig:
    """Defaults for a weak cross-sectional edge (the simulator's rank IC is about 0.06 at best):
    small trees on large leaves and a slow rate, so that a round cannot fit the noise of a few
    hundred rows, and early stopping on the validation rank IC with a long patience, since its
    l2 barely moves. Measured by benchmarks/lgbm_edge.py: on the demo the earlier defaults (15
    leaves of >= 100 rows, rate 0.05, l2 with patience 30) kept 1-22 rounds and reached a
    mean rank IC of 0.008; these reach 0.031 of the planted signal's 0.058."""

    objective: str = "regression"
    learning_rate: float = 0.02
    num_leaves: int = 3
    min_data_in_leaf: int = 2000
    feature_fraction: float = 0.5
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    num_boost_round: int = 500
    early_stopping_rounds: int = 100
    early_stopping_metric: str = "rank_ic"
    valid_fraction: float = 0.2
    target: str = "fwd_return_rank"
    seed: int = 11
    num_threads: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction={self.valid_fraction} must be in [0, 1)")
        if self.num_boost_round < 1:
            raise ValueError(f"num_boost_round={self.num_boost_round} must be >= 1")
        if self.num_threads < 1:
            raise ValueError(f"num_threads={self.num_threads} must be >= 1 (fixed for determinism)")
        if self.early_stopping_metric not in STOPPING_METRICS:
            raise ValueError(f"early_stopping_metric={self.early_stopping_metric!r} must be one of "
                             f"{STOPPING_METRICS}")

    def as_params(self) -> dict[str, Any]:
        """LightGBM parameters (booster + dataset), every seed derived from `seed`."""
        return {
            "objective": self.objective,
            # LightGBM's own l2 (on its score buffers) is the learning curves' loss; "rank_ic"
            # is train_lgbm's feval, and early stopping follows the configured one of the two
            "metric": "l2",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "lambda_l2": self.lambda_l2,
            "seed": self.seed,
            "bagging_seed": self.seed + 1,
            "feature_fraction_seed": self.seed + 2,
            "data_random_seed": self.seed + 3,
            "extra_seed": self.seed + 4,
            "drop_seed": self.seed + 5,
            "objective_seed": self.seed + 6,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": self.num_threads,
            "verbosity": -1,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _feature_matrix(frame: pl.DataFrame, feature_cols: list[str]) -> np.ndarray:
    missing = [c for c in feature_cols if c not in frame.columns]
    if missing:
        raise ValueError(f"frame is missing feature columns {missing}")
    if frame.height == 0:
        return np.empty((0, len(feature_cols)), dtype=np.float64)
    # nulls become NaN: LightGBM treats NaN as missing
    return (
        frame.select(pl.col(c).cast(pl.Float64).fill_null(float("nan")) for c in feature_cols)
        .to_numpy()
        .astype(np.float64, copy=False)
    )


@dataclass(frozen=True)
class TrainedModel:
    model_str: str
    sha256: str
    best_iteration: int
    feature_cols: list[str]
    metrics: dict[str, float]
    train_start: dt.date
    train_end: dt.date
    config: LGBMConfig
    valid_start: dt.date | None = None
    # per boosting round ("train_l2", "valid_l2", "valid_rank_ic"), for the tracking run's
    # learning curves; not part of the stored record (a model read back has none)
    curves: dict[str, list[float]] = field(default_factory=dict, compare=False, repr=False)

    def booster(self) -> lgb.Booster:
        """A fresh lightgbm.Booster rebuilt from `model_str`."""
        import lightgbm as lgb
        return lgb.Booster(model_str=self.model_str)

    @cached_property
    def _booster(self) -> lgb.Booster:
        return self.booster()

    def predict(self, features: pl.DataFrame) -> np.ndarray:
        """Scores (float64) for the rows of `features`, in the frame's row order."""
        X = _feature_matrix(features, self.feature_cols)
        if X.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        return np.asarray(
            self._booster.predict(X, num_threads=self.config.num_threads), dtype=np.float64
        )

    def to_record(self) -> dict[str, Any]:
        """A flat, JSON-friendly record (e.g. one row of the `lgbm_model` Delta table)."""
        return {
            "model_str": self.model_str,
            "sha256": self.sha256,
            "best_iteration": self.best_iteration,
            "feature_cols": json.dumps(list(self.feature_cols)),
            "metrics": json.dumps(self.metrics, sort_keys=True),
            "train_start": self.train_start,
            "train_end": self.train_end,
            "valid_start": self.valid_start,
            "config": json.dumps(self.config.to_dict(), sort_keys=True),
        }

    def predictor(self) -> BoosterPredictor:
        """A fresh booster behind a ``BoosterPredictor`` (the scorer's request path)."""
        return BoosterPredictor(self.booster(), self.config.num_threads)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TrainedModel:
        """Inverse of `to_record`; verifies the model string against its sha256."""
        model_str = record["model_str"]
        digest = hashlib.sha256(model_str.encode()).hexdigest()
        if digest != record["sha256"]:
            raise ValueError(f"model_str sha256 {digest} != recorded {record['sha256']}")

        def _date(v: Any) -> dt.date | None:
            return dt.date.fromisoformat(v) if isinstance(v, str) else v

        return cls(
            model_str=model_str,
            sha256=digest,
            best_iteration=int(record["best_iteration"]),
            feature_cols=list(json.loads(record["feature_cols"])),
            metrics=json.loads(record["metrics"]),
            train_start=_date(record["train_start"]),
            train_end=_date(record["train_end"]),
            valid_start=_date(record.get("valid_start")),
            config=LGBMConfig(**json.loads(record["config"])),
        )


class BoosterPredictor:
    """``booster.predict(X, num_threads=n)`` for a float64 matrix (the call
    ``TrainedModel.predict`` makes), made cheap for the scorer's single-row requests.

    ``Booster.predict`` spends ~15 us of Python and C set-up per call (a predictor object,
    a deep copy of the parameters, their string, a fresh C++ predictor), three times the
    prediction of a row. A single row here goes through LightGBM's own single-row fast path,
    set up once: the same parameters, the same iterations and the same per-row tree walk,
    so the same bits (tests/models/test_lgbm.py compares them). Batches, where the set-up
    is noise, go through ``Booster.predict`` itself. Single-output models only.
    """

    def __init__(self, booster: lgb.Booster, num_threads: int) -> None:
        from lightgbm.basic import _LIB, _c_str, _param_dict_to_str, _safe_call

        if booster.num_model_per_iteration() != 1:
            raise ValueError("BoosterPredictor serves single-output models only")
        self.booster, self.num_threads = booster, num_threads
        self.num_feature = booster.num_feature()
        self._lib, self._safe_call = _LIB, _safe_call
        self._fast = ctypes.c_void_p()
        # what Booster.predict passes: start 0, the booster's best iteration, normal
        # prediction, its parameter string
        _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle, ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(booster.best_iteration),
            ctypes.c_int(1), ctypes.c_int32(self.num_feature),  # 1: float64 rows
            _c_str(_param_dict_to_str({"num_threads": num_threads})), ctypes.byref(self._fast)))
        weakref.finalize(self, _LIB.LGBM_FastConfigFree, self._fast)
        self._out_len = ctypes.c_int64(0)
        self._out_len_ref = ctypes.byref(self._out_len)
        self._lock = threading.Lock()  # the fast path's buffers are per predictor

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """Scores (float64) of the rows of ``X`` (n x num_feature)."""
        if X.shape[0] != 1:
            return self.booster.predict(X, num_threads=self.num_threads)
        if X.shape[1] != self.num_feature or X.dtype != np.float64:
            raise ValueError(f"expected a float64 row of {self.num_feature} features, got "
                             f"{X.dtype} {X.shape}")
        row = np.ascontiguousarray(X)
        out = np.empty(1, dtype=np.float64)
        # raw addresses: numpy's ctypes.data_as costs more than the prediction's C call
        with self._lock:
            self._safe_call(self._lib.LGBM_BoosterPredictForMatSingleRowFast(
                self._fast, ctypes.c_void_p(row.ctypes.data), self._out_len_ref,
                ctypes.c_void_p(out.ctypes.data)))
        return out


def split_purged(
    train: pl.DataFrame, valid_fraction: float
) -> tuple[pl.DataFrame, pl.DataFrame, int, dt.date | None]:
    """(fit, valid, n_purged, valid_start) for a frame sorted by (date, instrument_id).

    valid = rows on the last `valid_fraction` of distinct dates; fit = earlier rows whose
    label interval ends before the first validation date (t1 < valid_start).
    """
    if valid_fraction <= 0.0:
        return train, train.clear(), 0, None
    dates = train.get_column("date").unique().sort()
    if dates.len() < 2:
        raise ValueError(
            f"need at least 2 distinct training dates for a validation tail, got {dates.len()}"
        )
    n_valid = min(dates.len() - 1, max(1, math.ceil(dates.len() * valid_fraction)))
    valid_start = dates[dates.len() - n_valid]
    before = train.filter(pl.col("date") < valid_start)
    valid = train.filter(pl.col("date") >= valid_start)
    fit = before.filter(pl.col("t1") < valid_start)
    return fit, valid, before.height - fit.height, valid_start


def train_lgbm(
    train: pl.DataFrame, feature_cols: list[str], config: LGBMConfig | None = None
) -> TrainedModel:
    """Fit a LightGBM model on `train` (features + label columns); see the module docstring."""
    import lightgbm as lgb
    config = config or LGBMConfig()
    feature_cols = list(feature_cols)
    if not feature_cols:
        raise ValueError("feature_cols is empty")
    needed = [*KEYS, "t0", "t1", config.target]
    missing = [c for c in needed if c not in train.columns]
    if missing:
        raise ValueError(f"training frame is missing columns {missing}")
    clean = train.filter(
        pl.col(config.target).is_not_null() & pl.col(config.target).cast(pl.Float64).is_finite()
    ).sort(list(KEYS))
    if clean.select(pl.struct(list(KEYS)).is_duplicated().any()).item():
        raise ValueError("training frame has duplicate (date, instrument_id) rows")
    fit, valid, n_purged, valid_start = split_purged(clean, config.valid_fraction)
    if fit.height == 0:
        raise ValueError("no training rows left after dropping null targets and purging")

    params = config.as_params()
    # a leaf size the fit set can hold: on a small universe min_data_in_leaf=2000 would allow
    # no split at all (a constant model); capped so that every leaf of a tree can exist
    params["min_data_in_leaf"] = min(config.min_data_in_leaf, max(1, fit.height // (2 * config.num_leaves)))
    X_fit = _feature_matrix(fit, feature_cols)
    y_fit = fit.get_column(config.target).cast(pl.Float64).to_numpy()
    dtrain = lgb.Dataset(X_fit, label=y_fit, feature_name=feature_cols, free_raw_data=False)
    # The training set's learning curve is its l2, read each round by a callback rather than
    # by listing the training set among the validation sets: a feval runs on every listed set,
    # and LightGBM copies a set's scores out for it row by row (two small allocations a row),
    # which on the training set cost a third of the boosting round itself. The model does not
    # depend on what is evaluated: the same rounds, the same trees.
    train_l2: list[float] = []
    history: dict[str, dict[str, list[float]]] = {}  # record_evaluation's: the validation set
    callbacks = [_record_training_l2(train_l2)]
    valid_sets, valid_names, feval = None, None, None
    X_val = y_val = None
    if valid.height > 0:
        X_val = _feature_matrix(valid, feature_cols)
        y_val = valid.get_column(config.target).cast(pl.Float64).to_numpy()
        dvalid = lgb.Dataset(X_val, label=y_val, reference=dtrain, free_raw_data=False)
        valid_sets, valid_names = [dvalid], ["valid"]
        callbacks += [lgb.record_evaluation(history),
                      _early_stopping_on(config.early_stopping_metric, config.early_stopping_rounds)]
        if config.early_stopping_metric == "rank_ic":
            feval = _rank_ic_eval(valid.get_column("date").to_physical().to_numpy(), y_val)
    booster = lgb.train(
        params,
        dtrain,
        num_boost_round=config.num_boost_round,
        valid_sets=valid_sets,
        valid_names=valid_names,
        feval=feval,
        callbacks=callbacks,
    )
    best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
    curves = {f"{name}_{metric}": [float(v) for v in values]
              for name, by_metric in {"train": {"l2": train_l2}, **history}.items()
              for metric, values in by_metric.items() if all(math.isfinite(v) for v in values)}
    model_str = booster.model_to_string(num_iteration=best)
    # Predict with the model rebuilt from the string: exactly what is stored and served.
    final = lgb.Booster(model_str=model_str)

    pred_fit = final.predict(X_fit, num_threads=config.num_threads)
    metrics: dict[str, float] = {
        "train_l2": float(np.mean((pred_fit - y_fit) ** 2)),
        "n_train": float(fit.height),
        "n_purged": float(n_purged),
        "n_valid": float(valid.height),
        "best_iteration": float(best),
        "min_data_in_leaf": float(params["min_data_in_leaf"]),
    }
    if X_val is not None:
        pred_val = final.predict(X_val, num_threads=config.num_threads)
        metrics["valid_l2"] = float(np.mean((pred_val - y_val) ** 2))
        metrics["valid_ic"] = rank_correlation(pred_val, y_val)
        metrics["valid_ic_daily_mean"] = rank_information_coefficient(
            valid.get_column("date").to_physical().to_numpy(), pred_val, y_val
        ).mean

    used_dates = clean.get_column("date")
    return TrainedModel(
        model_str=model_str,
        sha256=hashlib.sha256(model_str.encode()).hexdigest(),
        best_iteration=int(best),
        feature_cols=feature_cols,
        metrics=metrics,
        train_start=used_dates.min(),
        train_end=used_dates.max(),
        config=config,
        valid_start=valid_start,
        curves=curves,
    )


def _rank_ic_eval(dates: np.ndarray, labels: np.ndarray):
    """A LightGBM feval of the validation set (the only set evaluated with it): its mean daily
    rank IC, higher is better (-1 when no day has one)."""
    score = RankICScorer(dates, labels)

    def feval(preds: np.ndarray, data: lgb.Dataset):
        ic = score(preds)
        return "rank_ic", ic if math.isfinite(ic) else -1.0, True

    return feval


def _record_training_l2(into: list[float]):
    """A callback: the training set's l2 after each round (LightGBM's own metric, computed on
    its training scores in place; no feval, no copy of the scores)."""
    def callback(env) -> None:
        into.extend(result[2] for result in env.model.eval_train() if result[1] == "l2")

    callback.order = 10  # before early stopping (30), which ends training by raising
    return callback


def _early_stopping_on(metric: str, rounds: int):
    """LightGBM's early stopping, on the validation set's ``metric`` alone. Its
    ``first_metric_only`` follows the first metric evaluated, which is LightGBM's own l2
    (built-in metrics come before a feval's): it is shown the one metric it should follow."""
    import lightgbm as lgb

    stop = lgb.early_stopping(rounds, first_metric_only=True, verbose=False)

    def callback(env) -> None:
        stop(dataclasses.replace(env, evaluation_result_list=[r for r in env.evaluation_result_list
                                                               if r[1] == metric]))

    callback.order = stop.order
    return callback


def feature_importance(model: TrainedModel) -> pl.DataFrame:
    """Split-gain and split-count importance of each feature in the stored model (the trees up
    to the best iteration), largest gain first, with each feature's share of the total gain."""
    booster = model._booster
    gain = booster.feature_importance("gain").astype(np.float64)
    total = float(gain.sum())
    return pl.DataFrame({
        "feature": list(booster.feature_name()),
        "gain": gain,
        "splits": booster.feature_importance("split").astype(np.int64),
        "gain_share": gain / total if total > 0 else np.zeros_like(gain),
    }).sort(["gain", "feature"], descending=[True, False])


def _column_bytes(series: pl.Series) -> tuple[str, bytes]:
    mask = series.is_null().to_numpy().astype(np.uint8).tobytes()
    dtype = series.dtype
    if dtype == pl.Utf8 or dtype == pl.Categorical or dtype == pl.Enum:
        values = "\x1f".join(v if v is not None else "" for v in series.cast(pl.Utf8).to_list())
        return "str", mask + values.encode()
    if dtype.is_temporal():
        phys = series.to_physical().cast(pl.Int64).fill_null(0).to_numpy()
        return f"time:{dtype.__class__.__name__}", mask + phys.astype("<i8").tobytes()
    if dtype.is_numeric() or dtype == pl.Boolean:
        arr = series.cast(pl.Float64).fill_null(0.0).to_numpy().astype("<f8")
        arr = np.where(np.isnan(arr), np.nan, arr)  # one canonical NaN bit pattern
        return "f64", mask + arr.tobytes()
    raise TypeError(f"cannot hash column {series.name!r} of dtype {dtype}")


def predictions_hash(
    frame: pl.DataFrame, columns: tuple[str, ...] = ("date", "instrument_id", "score")
) -> str:
    """sha256 of the (date, instrument_id, score) content of `frame`, row order ignored.

    Hand-written over raw column bytes instead of polars' `hash_rows` or Arrow IPC bytes:
    those are not promised to be stable across library versions, this is.
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"frame is missing columns {missing}")
    sort_by = [c for c in KEYS if c in columns] or list(columns)
    canon = frame.select(columns).sort(sort_by)
    h = hashlib.sha256()
    h.update(f"rows={canon.height};".encode())
    for name in columns:
        col = canon.get_column(name)
        kind, payload = _column_bytes(col)
        h.update(f"{name}:{kind}:{len(payload)};".encode())
        h.update(payload)
    return h.hexdigest()
