from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import polars as pl
import pytest

from quant_assets.models.diagnostics import importance_png, learning_curve_png
from quant_assets.models.lgbm import (
    LGBMConfig,
    TrainedModel,
    feature_importance,
    predictions_hash,
    split_purged,
    train_lgbm,
)
from quant_assets.models.walkforward import (
    WalkForwardConfig,
    join_features_labels,
    month_rows,
    select_training_rows,
)

FEATURES = ["f_signal", "f_noise1", "f_noise2", "f_noise3"]
MONTH = dt.date(2022, 7, 1)
CONFIG = LGBMConfig(num_boost_round=120, min_data_in_leaf=50)


@pytest.fixture(scope="module")
def train_frame(frames):
    features, labels = frames
    return select_training_rows(
        join_features_labels(features, labels), MONTH, WalkForwardConfig(embargo_days=5)
    )


@pytest.fixture(scope="module")
def trained(train_frame) -> TrainedModel:
    return train_lgbm(train_frame, FEATURES, CONFIG)


def test_purge_drops_fit_rows_overlapping_validation(train_frame, trained):
    clean = train_frame.sort(["date", "instrument_id"])
    fit, valid, n_purged, valid_start = split_purged(clean, CONFIG.valid_fraction)
    assert valid_start == trained.valid_start
    assert valid["date"].min() == valid_start
    # no fit row's label interval (t0, t1] overlaps the validation period
    assert fit["t1"].max() < valid_start
    assert fit["date"].max() < valid_start
    # horizon 5: the last 5 dates before validation are purged
    assert n_purged == 5 * 40
    assert trained.metrics["n_purged"] == n_purged
    assert trained.metrics["n_train"] + n_purged + trained.metrics["n_valid"] == clean.height
    n_dates = clean["date"].n_unique()
    assert valid["date"].n_unique() == int(np.ceil(n_dates * CONFIG.valid_fraction))


def test_training_is_deterministic(train_frame, trained, frames):
    shuffled = train_frame.sample(fraction=1.0, shuffle=True, seed=3)
    again = train_lgbm(shuffled, FEATURES, CONFIG)
    assert again.model_str == trained.model_str
    assert again.sha256 == trained.sha256
    assert again.best_iteration == trained.best_iteration
    features, _ = frames
    oos = month_rows(features, MONTH)
    p1, p2 = trained.predict(oos), again.predict(oos)
    assert p1.dtype == np.float64 and p1.shape == (oos.height,)
    assert np.array_equal(p1, p2)
    h1 = predictions_hash(oos.select("date", "instrument_id").with_columns(score=p1))
    h2 = predictions_hash(oos.select("date", "instrument_id").with_columns(score=p2))
    assert h1 == h2


def test_signal_gives_positive_validation_ic(trained):
    assert 0 < trained.best_iteration <= CONFIG.num_boost_round
    assert trained.metrics["valid_ic"] > 0.1
    assert trained.metrics["valid_ic_daily_mean"] > 0.1
    assert np.isfinite(trained.metrics["valid_l2"]) and np.isfinite(trained.metrics["train_l2"])


def test_out_of_sample_ic_is_positive(trained, frames):
    features, labels = frames
    oos = join_features_labels(month_rows(features, MONTH), labels)
    score = trained.predict(oos)
    ic = np.corrcoef(np.argsort(np.argsort(score)), oos["fwd_return_rank"].to_numpy())[0, 1]
    assert ic > 0.1


def test_model_string_and_record_round_trip(trained, frames):
    features, _ = frames
    oos = month_rows(features, MONTH)
    assert trained.booster().current_iteration() == trained.best_iteration
    back = TrainedModel.from_record(trained.to_record())
    assert back == trained
    assert np.array_equal(back.predict(oos), trained.predict(oos))
    bad = trained.to_record() | {"model_str": trained.model_str + " "}
    with pytest.raises(ValueError, match="sha256"):
        TrainedModel.from_record(bad)


def test_booster_predictor_gives_the_bits_of_booster_predict(trained, frames):
    """The scorer's predictor (single rows on LightGBM's fast path) against the batch
    prediction, bit for bit, on real rows, missing values and extreme values."""
    features, _ = frames
    X = month_rows(features, MONTH).select(FEATURES).to_numpy().astype(np.float64)
    rng = np.random.default_rng(3)
    X = np.vstack([X[:300], rng.standard_normal((200, len(FEATURES))) * 1e3])
    X[rng.random(X.shape) < 0.15] = np.nan
    expected = trained.booster().predict(X, num_threads=trained.config.num_threads)
    predictor = trained.predictor()
    rows = np.concatenate([predictor(X[i:i + 1]) for i in range(len(X))])
    assert rows.view(np.int64).tolist() == expected.view(np.int64).tolist()
    assert predictor(X).view(np.int64).tolist() == expected.view(np.int64).tolist()
    assert predictor(X[:, ::-1][:1, ::-1]).tolist() == expected[:1].tolist()  # not contiguous
    with pytest.raises(ValueError, match="float64 row of 4 features"):
        predictor(X[:1, :3])


def test_different_seed_changes_model(train_frame, trained):
    other = train_lgbm(train_frame, FEATURES, dataclasses.replace(CONFIG, seed=12))
    assert other.sha256 != trained.sha256


def test_as_params_seeds_and_determinism():
    params = LGBMConfig(seed=3).as_params()
    assert params["deterministic"] is True and params["num_threads"] == 1
    for key in ("seed", "bagging_seed", "feature_fraction_seed", "data_random_seed"):
        assert isinstance(params[key], int)
    with pytest.raises(ValueError):
        LGBMConfig(valid_fraction=1.0)


def test_no_validation_trains_full_rounds(train_frame):
    model = train_lgbm(
        train_frame, FEATURES, dataclasses.replace(CONFIG, valid_fraction=0.0, num_boost_round=20)
    )
    assert model.best_iteration == 20
    assert model.metrics["n_valid"] == 0 and "valid_ic" not in model.metrics


def test_bad_inputs(train_frame):
    with pytest.raises(ValueError, match="missing"):
        train_lgbm(train_frame.drop("t1"), FEATURES, CONFIG)
    with pytest.raises(ValueError, match="duplicate"):
        train_lgbm(pl.concat([train_frame, train_frame.head(1)]), FEATURES, CONFIG)


def test_predictions_hash_is_order_free_and_content_sensitive():
    frame = pl.DataFrame(
        {
            "date": [dt.date(2023, 1, 3), dt.date(2023, 1, 3), dt.date(2023, 1, 4)],
            "instrument_id": ["B", "A", "A"],
            "score": [0.5, -1.0, float("nan")],
        }
    )
    h = predictions_hash(frame)
    assert h == predictions_hash(frame.reverse())
    assert h == predictions_hash(frame.with_columns(extra=pl.lit(1)))
    assert h != predictions_hash(frame.with_columns(score=pl.Series([0.5, -1.0, 0.0])))
    assert h != predictions_hash(frame.with_columns(instrument_id=pl.Series(["B", "A", "C"])))
    assert h != predictions_hash(frame.head(2))


@pytest.mark.parametrize("metric", ["l2", "rank_ic"])
def test_learning_curves_and_importance(train_frame, metric):
    """Per-round curves of the fit (training and validation l2; validation rank IC when early
    stopping follows it) and split-gain importance: the planted feature leads. Stopping on the
    rank IC keeps the round of the best validation rank IC, deterministically."""
    config = dataclasses.replace(CONFIG, early_stopping_metric=metric)
    model = train_lgbm(train_frame, FEATURES, config)
    rounds = len(model.curves["valid_l2"])
    assert len(model.curves["train_l2"]) == rounds >= model.best_iteration
    assert model.curves["train_l2"][-1] < model.curves["train_l2"][0]  # the fit learns
    if metric == "rank_ic":
        ic = model.curves["valid_rank_ic"]
        assert "train_rank_ic" not in model.curves  # not computed per round (cost)
        assert int(np.argmax(ic)) + 1 == model.best_iteration
        assert train_lgbm(train_frame, FEATURES, config).model_str == model.model_str
    importance = feature_importance(model)
    assert importance["feature"][0] == "f_signal"
    assert importance["gain_share"].sum() == pytest.approx(1.0)
    for png in (learning_curve_png(model.curves, model.best_iteration, "t"), importance_png(importance, "t")):
        assert png.startswith(b"\x89PNG")
    assert TrainedModel.from_record(model.to_record()).curves == {}  # not stored with the model


def test_learning_curves_are_the_l2_of_each_rounds_scores(train_frame):
    """The curves read each round from LightGBM's own l2 metric (the training set's by a
    callback, not as a validation set) are the l2 of the model cut at that round: checked
    against numpy on the stored trees' predictions, for the fit and the validation rows."""
    model = train_lgbm(train_frame, FEATURES, CONFIG)
    fit, valid, _, _ = split_purged(
        train_frame.filter(pl.col(CONFIG.target).is_not_null()).sort("date", "instrument_id"), CONFIG.valid_fraction)
    booster = model.booster()
    for rows, curve in ((fit, model.curves["train_l2"]), (valid, model.curves["valid_l2"])):
        X, y = rows.select(FEATURES).to_numpy(), rows[CONFIG.target].to_numpy()
        for k in sorted({1, model.best_iteration // 2 or 1, model.best_iteration}):
            l2 = float(np.mean((booster.predict(X, num_iteration=k) - y) ** 2))
            # not to the last bit: the stored model's leaf values are printed decimals
            assert curve[k - 1] == pytest.approx(l2, rel=1e-6), k


def test_rank_ic_scorer_matches_the_rank_ic():
    from quant_assets.performance import RankICScorer, rank_information_coefficient

    rng = np.random.default_rng(5)
    dates = rng.integers(0, 30, 2000)
    labels = rng.standard_normal(2000)
    labels[::97] = np.nan
    scorer = RankICScorer(dates, labels)
    for scores in (rng.standard_normal(2000), np.round(rng.standard_normal(2000), 1)):  # ties too
        assert scorer(scores) == pytest.approx(rank_information_coefficient(dates, scores, labels).mean, abs=1e-12)


def test_unknown_stopping_metric_is_refused():
    with pytest.raises(ValueError, match="early_stopping_metric"):
        LGBMConfig(early_stopping_metric="auc")


def test_leaf_size_is_capped_by_the_fit_set(train_frame):
    """A small fit set still gets splits: min_data_in_leaf is capped at what the leaves of a
    tree can hold, and the cap is in the metrics."""
    small = train_frame.filter(pl.col("date") >= pl.col("date").max() - dt.timedelta(days=120))
    model = train_lgbm(small, FEATURES, LGBMConfig())
    assert model.metrics["min_data_in_leaf"] < LGBMConfig().min_data_in_leaf
    assert np.unique(model.predict(small)).size > 1
