from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import io
import json

import numpy as np
import polars as pl
import pytest
import torch

import quant_assets.models.seq as seq_mod
from quant_assets.calendar import shift_trading_days, trading_days
from quant_assets.models.lgbm import predictions_hash, split_purged
from quant_assets.models.seq import (
    SeqConfig,
    TrainedSeqModel,
    history_start,
    resolve_device,
    train_seq,
)

FEATURES = ["f_signal", "f_noise"]
HORIZON = 5
N_INSTRUMENTS = 24
CONFIG = SeqConfig(
    seq_len=6,
    hidden=16,
    epochs=6,
    batch_size=128,
    lr=1e-2,
    weight_decay=0.0,
    early_stopping_patience=3,
    device="cpu",
)


def temporal_frame(
    start: dt.date = dt.date(2022, 1, 3),
    end: dt.date = dt.date(2022, 8, 31),
    n_instruments: int = N_INSTRUMENTS,
    seed: int = 0,
) -> pl.DataFrame:
    """A joined features+labels frame whose target depends on the *last three days* of
    `f_signal`: fwd_return = s[D] + s[D-1] + s[D-2] + noise, so one day's features see
    only a third of it."""
    rng = np.random.default_rng(seed)
    days = trading_days(start, end)
    n_days = len(days)
    sig = rng.standard_normal((n_days, n_instruments))
    noise = rng.standard_normal((n_days, n_instruments))
    noise[rng.random((n_days, n_instruments)) < 0.05] = np.nan  # missing values
    lagged = sig.copy()
    lagged[1:] += sig[:-1]
    lagged[2:] += sig[:-2]
    fwd = lagged + 0.8 * rng.standard_normal((n_days, n_instruments))
    ids = [f"I{i:03d}" for i in range(n_instruments)]
    t1 = {d: shift_trading_days(d, HORIZON) for d in days}
    return (
        pl.DataFrame(
            {
                "date": np.repeat(np.array(days, dtype="datetime64[D]"), n_instruments),
                "instrument_id": np.tile(np.array(ids), n_days),
                "f_signal": sig.ravel(),
                "f_noise": noise.ravel(),
                "fwd_return": fwd.ravel(),
            },
            schema_overrides={"date": pl.Date},
        )
        .with_columns(pl.col("f_noise").fill_nan(None))
        .with_columns(
            t0=pl.col("date"),
            t1=pl.col("date").replace_strict(t1, return_dtype=pl.Date),
            fwd_return_demeaned=pl.col("fwd_return") - pl.col("fwd_return").mean().over("date"),
            fwd_return_rank=(
                (pl.col("fwd_return").rank().over("date") - 1)
                / (pl.col("fwd_return").count().over("date") - 1)
            ),
        )
        .sort("date", "instrument_id")
    )


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    return temporal_frame()


@pytest.fixture(scope="module")
def trained(frame) -> TrainedSeqModel:
    return train_seq(frame, FEATURES, CONFIG)


def _score_dates(frame: pl.DataFrame, n: int = 3) -> list[dt.date]:
    return frame["date"].unique().sort().to_list()[-n:]


def test_config_defaults_and_to_dict():
    cfg = SeqConfig()
    d = cfg.to_dict()
    assert d["seq_len"] == 10 and d["hidden"] == 16 and d["layers"] == 1
    assert d["target"] == "fwd_return_rank" and d["seed"] == 11 and d["device"] == "auto"
    assert d["max_train_samples"] == 20000
    assert SeqConfig(**json.loads(json.dumps(d))) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seq_len = 5  # type: ignore[misc]


def test_training_is_deterministic_and_row_order_free(frame, trained):
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=3)
    again = train_seq(shuffled, FEATURES, CONFIG)
    assert again.state_bytes == trained.state_bytes
    assert again.sha256 == trained.sha256 == hashlib.sha256(trained.state_bytes).hexdigest()
    assert again.metrics == trained.metrics
    assert again.feature_mean == trained.feature_mean
    assert again.feature_std == trained.feature_std
    # what is stored is what torch.save writes for the rebuilt module
    buf = io.BytesIO()
    torch.save(dict(trained.module().state_dict()), buf)
    assert hashlib.sha256(buf.getvalue()).hexdigest() == trained.sha256

    dates = _score_dates(frame)
    p1 = trained.predict(frame, dates)
    p2 = again.predict(shuffled, dates)
    assert p1.schema == pl.Schema({"date": pl.Date, "instrument_id": pl.Utf8, "score": pl.Float64})
    assert p1.height == len(dates) * N_INSTRUMENTS
    assert p1.equals(p2)
    assert predictions_hash(p1) == predictions_hash(p2)
    # a different seed gives different weights
    other = train_seq(frame, FEATURES, dataclasses.replace(CONFIG, seed=12, epochs=1))
    assert other.sha256 != trained.sha256


def test_torch_global_state_is_restored(frame):
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    rng_state = torch.get_rng_state()
    model = train_seq(frame, FEATURES, dataclasses.replace(CONFIG, epochs=1, num_threads=1))
    model.predict(frame, _score_dates(frame, 1))
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == det
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_temporal_signal_gives_positive_validation_ic(frame, trained):
    m = trained.metrics
    assert m["device"] == "cpu"
    assert 1 <= m["best_epoch"] <= m["epochs_run"] <= CONFIG.epochs
    assert m["valid_ic"] > 0.3
    assert m["valid_ic_daily_mean"] > 0.3
    assert np.isfinite(m["valid_loss"]) and np.isfinite(m["train_loss"])
    # the history matters: the target is a 3-day sum, a 1-day model cannot see most of it
    one_day = train_seq(frame, FEATURES, dataclasses.replace(CONFIG, seq_len=1))
    assert m["valid_ic"] > one_day.metrics["valid_ic"] + 0.1
    # scores of later, unseen data carry the signal too
    future = temporal_frame(dt.date(2022, 9, 1), dt.date(2022, 10, 31), seed=1)
    scored = trained.predict(future, future["date"].unique().sort()[CONFIG.seq_len :])
    joined = scored.join(future, on=["date", "instrument_id"])
    ic = joined.select(pl.corr("score", "fwd_return_rank", method="spearman")).item()
    assert ic > 0.3


def test_purge_drops_fit_rows_overlapping_validation(frame, trained, monkeypatch):
    seen = {}

    def spy(train, valid_fraction):
        out = split_purged(train, valid_fraction)
        seen["split"] = out
        return out

    monkeypatch.setattr(seq_mod, "split_purged", spy)
    model = train_seq(frame, FEATURES, dataclasses.replace(CONFIG, epochs=1))
    fit, valid, n_purged, valid_start = seen["split"]
    assert valid_start == model.valid_start == trained.valid_start
    assert valid["date"].min() == valid_start
    assert fit["t1"].max() < valid_start  # no fitted label reaches into validation
    assert fit["date"].max() < valid_start
    assert n_purged == HORIZON * N_INSTRUMENTS
    m = trained.metrics
    assert m["n_purged"] == n_purged
    assert m["n_train"] == fit.height and m["n_valid"] == valid.height
    assert m["n_train"] + m["n_purged"] + m["n_valid"] == frame.height
    n_dates = frame["date"].n_unique()
    assert valid["date"].n_unique() == int(np.ceil(n_dates * CONFIG.valid_fraction))
    assert trained.train_start == frame["date"].min()
    assert trained.train_end == frame["date"].max()


def test_standardisation_uses_fit_rows_only(frame, trained):
    clean = frame.sort("date", "instrument_id")
    fit, _, _, valid_start = split_purged(clean, CONFIG.valid_fraction)
    x = fit.select(pl.col(FEATURES).cast(pl.Float64).fill_null(float("nan"))).to_numpy()
    np.testing.assert_allclose(trained.feature_mean, np.nanmean(x, axis=0), rtol=1e-12)
    np.testing.assert_allclose(trained.feature_std, np.nanstd(x, axis=0), rtol=1e-12)
    # shifting the features of the validation and purged rows changes neither statistic
    shifted = frame.with_columns(
        pl.when(pl.col("t1") >= valid_start)
        .then(pl.col(FEATURES) + 100.0)
        .otherwise(pl.col(FEATURES))
    )
    model = train_seq(shifted, FEATURES, dataclasses.replace(CONFIG, epochs=1))
    assert model.feature_mean == trained.feature_mean
    assert model.feature_std == trained.feature_std
    assert max(abs(v) for v in model.feature_mean) < 1.0


def test_sequence_index_left_pads_short_histories():
    # rows 0..2 are instrument A (positions 0..2), rows 3..4 instrument B; pad row is 5
    idx = seq_mod._sequence_index(
        np.array([0, 1, 2, 3, 4]), np.array([0, 1, 2, 0, 1]), seq_len=4, pad_row=5
    )
    expected = [
        [5, 5, 5, 0],
        [5, 5, 0, 1],
        [5, 0, 1, 2],
        [5, 5, 5, 3],
        [5, 5, 3, 4],
    ]
    assert idx.tolist() == expected
    assert seq_mod._sequence_index(np.array([7]), np.array([9]), 1, 99).tolist() == [[7]]
    inputs = seq_mod._padded_inputs(
        np.array([[1.0, np.nan], [3.0, np.inf]]), np.array([2.0, 0.0]), np.array([1.0, 1.0])
    )
    assert inputs.dtype == np.float32
    # standardised, missing -> 0, presence flag last, all-zero padding row last
    assert inputs.tolist() == [[-1.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]


def test_predict_uses_only_the_last_seq_len_rows_and_pads(frame, trained):
    day = _score_dates(frame, 1)[0]
    full = trained.predict(frame, [day])
    dates = frame["date"].unique().sort()
    keep_from = dates[dates.len() - CONFIG.seq_len]
    exact = frame.filter(pl.col("date") >= keep_from)
    assert trained.predict(exact, [day]).equals(full)

    # two rows of history: left-padded with zero steps whose presence flag is 0
    short = frame.filter(pl.col("date") >= dates[dates.len() - 2])
    got = trained.predict(short, [day]).sort("instrument_id")
    assert not got["score"].equals(full["score"])
    rows = short.sort("instrument_id", "date")
    raw = rows.select(pl.col(FEATURES).fill_null(float("nan"))).to_numpy()
    z = (raw - np.array(trained.feature_mean)) / np.array(trained.feature_std)
    z = np.where(np.isfinite(z), z, 0.0).reshape(N_INSTRUMENTS, 2, len(FEATURES))
    x = np.zeros((N_INSTRUMENTS, CONFIG.seq_len, len(FEATURES) + 1), dtype=np.float32)
    x[:, -2:, :-1] = z
    x[:, -2:, -1] = 1.0
    with torch.no_grad():
        manual = trained.module()(torch.from_numpy(x)).numpy().astype(np.float64)
    np.testing.assert_allclose(got["score"].to_numpy(), manual, rtol=1e-5, atol=1e-6)

    # an instrument that lists late trains and scores with padded histories
    late = frame.filter((pl.col("instrument_id") != "I000") | (pl.col("date") >= dates[-40]))
    model = train_seq(late, FEATURES, dataclasses.replace(CONFIG, epochs=1, seq_len=30))
    scored = model.predict(late, [dates[-38]])
    assert "I000" in scored["instrument_id"].to_list()
    assert scored["score"].is_finite().all()


def test_predict_edges(frame, trained):
    assert trained.history_rows == CONFIG.seq_len - 1
    all_dates = trained.predict(frame.filter(pl.col("date") >= _score_dates(frame, 2)[0]))
    assert all_dates.height == 2 * N_INSTRUMENTS
    assert all_dates["date"].is_sorted()
    none = trained.predict(frame, [dt.date(1999, 1, 4)])
    assert none.height == 0 and none.columns == ["date", "instrument_id", "score"]
    with pytest.raises(ValueError, match="missing columns"):
        trained.predict(frame.drop("f_noise"), [frame["date"].max()])
    with pytest.raises(ValueError, match="empty"):
        trained.predict(frame.clear(), [frame["date"].max()])
    # six sessions ending 2022-09-12 reach back over Labor Day (2022-09-05) to 2022-09-02
    assert history_start(dt.date(2022, 9, 12), 6) == dt.date(2022, 9, 2)
    assert history_start(dt.date(2022, 9, 12), 1) == dt.date(2022, 9, 12)


def test_cpu_fallback_without_cuda(frame, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="cuda"):
        resolve_device("cuda")
    small = frame.filter(pl.col("date") >= frame["date"].unique().sort()[-30])
    model = train_seq(small, FEATURES, dataclasses.replace(CONFIG, device="auto", epochs=1))
    assert model.metrics["device"] == "cpu"
    with pytest.raises(ValueError, match="cuda"):
        train_seq(small, FEATURES, dataclasses.replace(CONFIG, device="cuda", epochs=1))


def test_max_train_samples_and_no_validation(frame):
    cfg = dataclasses.replace(CONFIG, epochs=2, max_train_samples=500)
    a, b = train_seq(frame, FEATURES, cfg), train_seq(frame, FEATURES, cfg)
    assert a.metrics["n_train"] == 500 and a.metrics["n_train_available"] > 500
    assert a.sha256 == b.sha256
    deep = dataclasses.replace(cfg, layers=2, dropout=0.2)  # dropout draws from the seeded RNG
    assert train_seq(frame, FEATURES, deep).sha256 == train_seq(frame, FEATURES, deep).sha256
    no_valid = train_seq(frame, FEATURES, dataclasses.replace(cfg, valid_fraction=0.0))
    assert no_valid.valid_start is None
    assert no_valid.metrics["n_valid"] == 0 and no_valid.metrics["n_purged"] == 0
    assert no_valid.metrics["best_epoch"] == 2 and "valid_ic" not in no_valid.metrics


def test_record_round_trip_and_tamper_detection(frame, trained):
    rec = trained.to_record()
    assert isinstance(rec["state_b64"], str)
    json.dumps({k: v for k, v in rec.items() if not isinstance(v, dt.date)})
    back = TrainedSeqModel.from_record(rec)
    assert back == trained
    day = _score_dates(frame, 1)
    assert back.predict(frame, day).equals(trained.predict(frame, day))
    # dates may come back as ISO strings (JSON / some table readers)
    as_text = {
        **rec,
        "train_start": rec["train_start"].isoformat(),
        "train_end": rec["train_end"].isoformat(),
        "valid_start": rec["valid_start"].isoformat(),
    }
    assert TrainedSeqModel.from_record(as_text) == trained
    # raw bytes are accepted in place of base64 text
    assert TrainedSeqModel.from_record({**rec, "state_b64": trained.state_bytes}) == trained

    tampered = bytearray(trained.state_bytes)
    tampered[len(tampered) // 2] ^= 0x01
    with pytest.raises(ValueError, match="sha256"):
        TrainedSeqModel.from_record({**rec, "state_b64": base64.b64encode(tampered).decode()})
    with pytest.raises(ValueError, match="sha256"):
        TrainedSeqModel.from_record({**rec, "sha256": "0" * 64})
    with pytest.raises(ValueError, match="feature_cols"):
        TrainedSeqModel.from_record({**rec, "feature_mean": json.dumps([0.0])})
    wrong_shape = json.dumps({**trained.config.to_dict(), "hidden": 8}, sort_keys=True)
    with pytest.raises(ValueError, match="do not fit"):
        TrainedSeqModel.from_record({**rec, "config": wrong_shape})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seq_len": 0}, "seq_len"),
        ({"hidden": 0}, "hidden"),
        ({"layers": 0}, "layers"),
        ({"dropout": 1.0}, "dropout"),
        ({"lr": 0.0}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"valid_fraction": 1.0}, "valid_fraction"),
        ({"early_stopping_patience": 0}, "early_stopping_patience"),
        ({"device": "tpu"}, "device"),
        ({"num_threads": 0}, "num_threads"),
        ({"max_train_samples": 0}, "max_train_samples"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SeqConfig(**kwargs)


def test_bad_training_frames(frame):
    cfg = dataclasses.replace(CONFIG, epochs=1)
    with pytest.raises(ValueError, match=r"missing columns \['f_noise'\]"):
        train_seq(frame.drop("f_noise"), FEATURES, cfg)
    with pytest.raises(ValueError, match=r"missing columns \['t1'\]"):
        train_seq(frame.drop("t1"), FEATURES, cfg)
    with pytest.raises(ValueError, match="fwd_return_rank"):
        train_seq(frame.drop("fwd_return_rank"), FEATURES, cfg)
    with pytest.raises(ValueError, match="empty"):
        train_seq(frame.clear(), FEATURES, cfg)
    with pytest.raises(ValueError, match="feature_cols is empty"):
        train_seq(frame, [], cfg)
    with pytest.raises(ValueError, match="duplicate"):
        train_seq(pl.concat([frame, frame.head(1)]), FEATURES, cfg)
    with pytest.raises(ValueError, match="finite"):
        train_seq(frame.with_columns(fwd_return_rank=None), FEATURES, cfg)
    with pytest.raises(ValueError, match="2 distinct"):
        train_seq(frame.filter(pl.col("date") == frame["date"].min()), FEATURES, cfg)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_and_cpu_scoring(frame):
    small = frame.filter(pl.col("date") >= frame["date"].unique().sort()[-60])
    cfg = dataclasses.replace(CONFIG, device="cuda", epochs=2)
    model = train_seq(small, FEATURES, cfg)
    assert model.metrics["device"] == "cuda"
    assert all(v.device.type == "cpu" for v in model.module().state_dict().values())
    scored = model.predict(small, _score_dates(small, 1))
    assert scored.height == N_INSTRUMENTS and scored["score"].is_finite().all()
    rec = TrainedSeqModel.from_record(model.to_record())
    assert rec.sha256 == model.sha256


def test_learning_curve_per_epoch(trained):
    """A training and a validation loss per epoch run (the tracking run's learning curve)."""
    epochs = int(trained.metrics["epochs_run"])
    assert len(trained.curves["train_loss"]) == len(trained.curves["valid_loss"]) == epochs
    assert min(trained.curves["valid_loss"]) == pytest.approx(trained.metrics["valid_loss"], rel=1e-5)
