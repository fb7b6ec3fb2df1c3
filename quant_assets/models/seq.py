"""A small GRU over each instrument's recent feature history, trained like `lgbm`.

Pure: polars, numpy and torch only (no Dagster, no MLflow).

Inputs mirror `lgbm.train_lgbm`: a joined features+labels frame (`date`, `instrument_id`,
Float64 feature columns, `t0`, `t1`, the target) -- see `walkforward.join_features_labels`.

Sequences. The sample of (instrument, day D) is the last `seq_len` rows of that instrument's
feature rows up to and including D, in date order (rows, not calendar days: a missing bar is
skipped, not zero-filled). Every row of the input frame serves as history, also rows whose
target is null; only rows with a finite target are samples. Each feature is standardised with
the mean/std of the *fit* rows (the training set after the validation tail and the purge are
taken out), which are stored in the model and reused at prediction time; a missing value
(null, NaN or +-inf) becomes 0 after standardisation, i.e. the training mean. A sample with
fewer than `seq_len` history rows is left-padded with all-zero steps. The model input has one
channel more than there are features, the *presence flag*: 1.0 on a real row, 0.0 on a
padding step, so the network can tell padding from a row at the training mean; the number of
real steps of a sample (its length) is the sum of that channel. The last step is always day D
itself, and the GRU's output there feeds a linear head that predicts the target.

The sequences are never materialised as one (samples, seq_len, features) array: the
standardised rows are held once (plus one all-zero padding row) and each sample is a row of
`seq_len` indices into them, built vectorised with numpy; a batch is one gather.

Training (`train_seq`):

1. drops rows whose target is null/NaN from the samples and sorts them by (date, instrument_id);
2. splits them with `lgbm.split_purged`: the last `valid_fraction` of the distinct dates are
   the validation set, and a fit row whose label interval reaches into it
   (`t1 >= first validation date`) is purged;
3. fits with AdamW on mean squared error, shuffling with a seeded numpy Generator each epoch,
   and keeps the weights of the epoch with the lowest validation loss (early stopping with
   `early_stopping_patience` epochs).

Determinism. Training and prediction run inside `_deterministic`, which forks torch's global
RNG (the caller's RNG state is untouched) and seeds it from `config.seed`, turns on
`torch.use_deterministic_algorithms(True)` and fixes `torch.set_num_threads(num_threads)`,
restoring all of these afterwards. On the CPU equal inputs and config give byte-identical
`state_bytes` (sha256) and predictions, whatever the row order of the input frame. On CUDA the
same switches are set, plus `CUBLAS_WORKSPACE_CONFIG=:4096:8` (when unset), cuDNN's
deterministic mode and `warn_only=True` (an op without a deterministic CUDA kernel warns
instead of failing); results are reproducible in practice on one GPU model and driver, but
bit-identity is only promised on the CPU.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import io
import json
import math
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

if TYPE_CHECKING:  # torch is imported where a function needs it: importing it takes ~1.5 s, and
    # every process that loads the code location (a run, a step, a code server) imports this
    import torch
    from torch import nn

from quant_assets.calendar import shift_trading_days
from quant_assets.models.lgbm import split_purged
from quant_assets.performance import rank_correlation, rank_information_coefficient

KEYS = ("date", "instrument_id")
DEVICES = ("auto", "cpu", "cuda")
_PREDICT_BATCH = 4096
_CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"


@dataclass(frozen=True)
class SeqConfig:
    """The GRU's settings. The defaults are small (seconds per month on a CPU): a sequence
    model that earns a GPU is a config change (``seq_model``'s run config)."""

    seq_len: int = 10
    hidden: int = 16
    layers: int = 1
    dropout: float = 0.0
    lr: float = 3e-3
    weight_decay: float = 1e-4
    epochs: int = 3
    batch_size: int = 512
    valid_fraction: float = 0.2
    early_stopping_patience: int = 2
    target: str = "fwd_return_rank"
    seed: int = 11
    # "auto": CUDA when the step's pod has a GPU (the gpu pool), else CPU
    device: str = "auto"
    num_threads: int = 1
    max_train_samples: int | None = 20000

    def __post_init__(self) -> None:
        if self.seq_len < 1:
            raise ValueError(f"seq_len={self.seq_len} must be >= 1")
        if self.hidden < 1:
            raise ValueError(f"hidden={self.hidden} must be >= 1")
        if self.layers < 1:
            raise ValueError(f"layers={self.layers} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if not (math.isfinite(self.lr) and self.lr > 0.0):
            raise ValueError(f"lr={self.lr} must be > 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0.0):
            raise ValueError(f"weight_decay={self.weight_decay} must be >= 0")
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction={self.valid_fraction} must be in [0, 1)")
        if self.early_stopping_patience < 1:
            raise ValueError(f"early_stopping_patience={self.early_stopping_patience} must be >= 1")
        if self.device not in DEVICES:
            raise ValueError(f"device={self.device!r} must be one of {DEVICES}")
        if self.num_threads < 1:
            raise ValueError(f"num_threads={self.num_threads} must be >= 1 (fixed for determinism)")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"max_train_samples={self.max_train_samples} must be >= 1 or None")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without CUDA is a ValueError."""
    import torch
    if device not in DEVICES:
        raise ValueError(f"device={device!r} must be one of {DEVICES}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but torch.cuda.is_available() is False")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def history_start(first_date: dt.date, seq_len: int) -> dt.date:
    """First trading day whose features `predict` needs to score `first_date` with full
    histories: `seq_len - 1` trading days before it (for instruments that trade every day)."""
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 1")
    return shift_trading_days(first_date, -(seq_len - 1))


_SEQNET_LOCK = threading.Lock()


def _seqnet_class() -> type:
    """The `SeqNet` class, defined on first use (it subclasses torch's nn.Module). It is
    this module's `SeqNet` attribute from then on, so pickles (MLflow's logged GRU) name
    and find it as `quant_assets.models.seq.SeqNet`."""
    with _SEQNET_LOCK:  # one class, even when two threads build their first net at once
        if "SeqNet" not in globals():
            globals()["SeqNet"] = _define_seqnet()
    return globals()["SeqNet"]


def _define_seqnet() -> type:
    from torch import nn

    class SeqNet(nn.Module):
        """GRU over (batch, seq_len, n_features + 1) -> linear head on the last step -> (batch,)."""

        __qualname__ = "SeqNet"  # as if defined at the top of the module

        def __init__(self, n_features: int, hidden: int, layers: int, dropout: float) -> None:
            super().__init__()
            self.gru = nn.GRU(
                input_size=n_features + 1,  # + presence flag
                hidden_size=hidden,
                num_layers=layers,
                dropout=dropout if layers > 1 else 0.0,
                batch_first=True,
            )
            self.head = nn.Linear(hidden, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.gru(x)
            return self.head(out[:, -1, :]).squeeze(-1)

    return SeqNet


def __getattr__(name: str) -> Any:
    if name == "SeqNet":  # `from quant_assets.models.seq import SeqNet`, unpickling
        return _seqnet_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build_net(config: SeqConfig, n_features: int) -> nn.Module:
    return _seqnet_class()(n_features, config.hidden, config.layers, config.dropout)


@contextlib.contextmanager
def _deterministic(config: SeqConfig, device: torch.device) -> Iterator[None]:
    """Seeded, deterministic, fixed-thread torch for the block; everything restored after."""
    import torch
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    cuda = device.type == "cuda"
    prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    prev_cublas = os.environ.get(_CUBLAS_ENV)
    fork_devices = []
    if cuda:
        fork_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    try:
        if cuda:
            if prev_cublas is None:
                os.environ[_CUBLAS_ENV] = ":4096:8"
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        torch.set_num_threads(config.num_threads)
        torch.use_deterministic_algorithms(True, warn_only=cuda)
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(config.seed)
            yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.set_num_threads(prev_threads)
        if cuda:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn
            if prev_cublas is None:
                os.environ.pop(_CUBLAS_ENV, None)


def _check_frame(frame: pl.DataFrame, feature_cols: list[str], extra: list[str], what: str) -> None:
    if not feature_cols:
        raise ValueError("feature_cols is empty")
    if len(set(feature_cols)) != len(feature_cols):
        raise ValueError(f"feature_cols has duplicates: {feature_cols}")
    needed = [*KEYS, *feature_cols, *extra]
    missing = [c for c in dict.fromkeys(needed) if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} is missing columns {missing}")
    if frame.height == 0:
        raise ValueError(f"{what} is empty")
    if frame.select(pl.struct(list(KEYS)).is_duplicated().any()).item():
        raise ValueError(f"{what} has duplicate (date, instrument_id) rows")


def _history_order(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows sorted by (instrument_id, date) with `_row` (index in that order) and `_pos`
    (0-based position within the instrument's history)."""
    return (
        frame.with_columns(pl.col("instrument_id").cast(pl.Utf8))
        .sort(["instrument_id", "date"])
        .with_row_index("_row")
        .with_columns(_pos=pl.int_range(pl.len(), dtype=pl.Int64).over("instrument_id"))
    )


def _raw_features(hist: pl.DataFrame, feature_cols: list[str]) -> np.ndarray:
    return (
        hist.select(pl.col(c).cast(pl.Float64).fill_null(float("nan")) for c in feature_cols)
        .to_numpy()
        .astype(np.float64, copy=False)
        .reshape(hist.height, len(feature_cols))
    )


def _fit_stats(raw_fit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean/std (ddof=0) over the finite values; mean 0 / std 1 where undefined."""
    finite = np.isfinite(raw_fit)
    count = finite.sum(axis=0)
    vals = np.where(finite, raw_fit, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, vals.sum(axis=0) / np.maximum(count, 1), 0.0)
        dev = np.where(finite, raw_fit - mean, 0.0)
        std = np.sqrt((dev**2).sum(axis=0) / np.maximum(count, 1))
    std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
    return mean.astype(np.float64), std.astype(np.float64)


def _padded_inputs(raw: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(n_rows + 1, n_features + 1) float32: standardised features (missing -> 0) and the
    presence flag 1.0; the extra last row is the all-zero padding step."""
    z = (raw - mean) / std
    z = np.where(np.isfinite(z), z, 0.0)
    out = np.zeros((raw.shape[0] + 1, raw.shape[1] + 1), dtype=np.float32)
    out[:-1, :-1] = z
    out[:-1, -1] = 1.0
    return out


def _sequence_index(rows: np.ndarray, pos: np.ndarray, seq_len: int, pad_row: int) -> np.ndarray:
    """(n_samples, seq_len) int64 indices into the padded inputs: step k of sample (row r at
    position p of its instrument) is row r - (seq_len - 1) + k, or `pad_row` where that would
    reach before the instrument's first row (left padding)."""
    offsets = np.arange(-(seq_len - 1), 1, dtype=np.int64)
    idx = rows.astype(np.int64)[:, None] + offsets[None, :]
    inside = offsets[None, :] >= -pos.astype(np.int64)[:, None]
    return np.where(inside, idx, np.int64(pad_row))


def _predict_batches(
    net: nn.Module, inputs: torch.Tensor, index: torch.Tensor, batch: int
) -> torch.Tensor:
    import torch
    net.eval()
    outs = []
    with torch.no_grad():
        for s in range(0, index.shape[0], batch):
            outs.append(net(inputs[index[s : s + batch]]))
    if not outs:
        return torch.empty(0, dtype=torch.float32, device=inputs.device)
    return torch.cat(outs)


def _state_bytes(net: nn.Module) -> bytes:
    import torch
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


@dataclass(frozen=True)
class TrainedSeqModel:
    """A trained `SeqNet`: weights as `torch.save` bytes plus everything needed to score."""

    state_bytes: bytes
    sha256: str
    config: SeqConfig
    feature_cols: list[str]
    feature_mean: tuple[float, ...]
    feature_std: tuple[float, ...]
    metrics: dict[str, Any]
    train_start: dt.date
    train_end: dt.date
    valid_start: dt.date | None = None
    # per epoch ("train_loss", "valid_loss"), for the tracking run's learning curve; not part
    # of the stored record
    curves: dict[str, list[float]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def history_rows(self) -> int:
        """Rows of history before a scored day that a full-length sequence needs."""
        return self.config.seq_len - 1

    def module(self) -> nn.Module:
        """A fresh `SeqNet` on the CPU, in eval mode, with the stored weights."""
        import torch
        net = _build_net(self.config, len(self.feature_cols))
        state = torch.load(io.BytesIO(self.state_bytes), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        net.eval()
        return net

    @cached_property
    def _module(self) -> nn.Module:
        return self.module()

    def predict(
        self,
        history_frame: pl.DataFrame,
        dates: Iterable[dt.date] | pl.Series | None = None,
    ) -> pl.DataFrame:
        """Scores of every instrument with a row on each of `dates` (all dates when None).

        `history_frame` holds `date`, `instrument_id` and the feature columns for the scored
        dates *and* the `seq_len - 1` rows before them per instrument (see `history_start`);
        with less history a sample is left-padded exactly as in training. Runs on the CPU.
        Returns (date, instrument_id, score Float64) sorted by (date, instrument_id).
        """
        import torch
        schema = {"date": pl.Date, "instrument_id": pl.Utf8, "score": pl.Float64}
        _check_frame(history_frame, self.feature_cols, [], "history frame")
        hist = _history_order(history_frame)
        if dates is not None:
            wanted = pl.Series("date", list(dates), dtype=pl.Date).unique()
            targets = hist.filter(pl.col("date").is_in(wanted.implode()))
        else:
            targets = hist
        targets = targets.sort(list(KEYS))
        if targets.height == 0:
            return pl.DataFrame(schema=schema)
        mean = np.asarray(self.feature_mean, dtype=np.float64)
        std = np.asarray(self.feature_std, dtype=np.float64)
        inputs = torch.from_numpy(_padded_inputs(_raw_features(hist, self.feature_cols), mean, std))
        index = torch.from_numpy(
            _sequence_index(
                targets["_row"].to_numpy(),
                targets["_pos"].to_numpy(),
                self.config.seq_len,
                hist.height,
            )
        )
        # one batch per day: a CPU GEMM's rounding depends on the batch's shape, so a day
        # scored alone (serving) must meet the same batch as in the month's predictions
        days = targets["date"].to_numpy()
        bounds = np.flatnonzero(np.r_[True, days[1:] != days[:-1], True])
        with _deterministic(self.config, torch.device("cpu")):
            scores = torch.cat([
                _predict_batches(self._module, inputs, index[a:b], _PREDICT_BATCH)
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            ])
        return pl.DataFrame(
            {
                "date": targets["date"],
                "instrument_id": targets["instrument_id"].cast(pl.Utf8),
                "score": scores.numpy().astype(np.float64),
            },
            schema=schema,
        )

    def to_record(self) -> dict[str, Any]:
        """A flat, JSON-friendly record (e.g. one row of the `seq_model` Delta table); the
        weights are base64 text in `state_b64`."""
        return {
            "state_b64": base64.b64encode(self.state_bytes).decode("ascii"),
            "sha256": self.sha256,
            "feature_cols": json.dumps(list(self.feature_cols)),
            "feature_mean": json.dumps(list(self.feature_mean)),
            "feature_std": json.dumps(list(self.feature_std)),
            "metrics": json.dumps(self.metrics, sort_keys=True),
            "train_start": self.train_start,
            "train_end": self.train_end,
            "valid_start": self.valid_start,
            "config": json.dumps(self.config.to_dict(), sort_keys=True),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TrainedSeqModel:
        """Inverse of `to_record`; verifies the weights against their sha256 and that they
        load into the network the config describes."""
        raw = record["state_b64"]
        state_bytes = (
            bytes(raw)
            if isinstance(raw, bytes | bytearray)
            else base64.b64decode(raw, validate=True)
        )
        digest = hashlib.sha256(state_bytes).hexdigest()
        if digest != record["sha256"]:
            raise ValueError(f"state sha256 {digest} != recorded {record['sha256']}")

        def _date(v: Any) -> dt.date | None:
            return dt.date.fromisoformat(v) if isinstance(v, str) else v

        feature_cols = list(json.loads(record["feature_cols"]))
        mean = tuple(float(v) for v in json.loads(record["feature_mean"]))
        std = tuple(float(v) for v in json.loads(record["feature_std"]))
        if not len(feature_cols) == len(mean) == len(std):
            raise ValueError(
                f"record has {len(feature_cols)} feature_cols but {len(mean)} means "
                f"and {len(std)} stds"
            )
        model = cls(
            state_bytes=state_bytes,
            sha256=digest,
            config=SeqConfig(**json.loads(record["config"])),
            feature_cols=feature_cols,
            feature_mean=mean,
            feature_std=std,
            metrics=json.loads(record["metrics"]),
            train_start=_date(record["train_start"]),
            train_end=_date(record["train_end"]),
            valid_start=_date(record.get("valid_start")),
        )
        try:
            model.module()
        except RuntimeError as err:  # load_state_dict: missing keys / shape mismatch
            raise ValueError(f"stored weights do not fit the recorded config: {err}") from err
        return model


def train_seq(
    train: pl.DataFrame, feature_cols: list[str], config: SeqConfig | None = None
) -> TrainedSeqModel:
    """Fit a `SeqNet` on `train` (features + label columns); see the module docstring."""
    import torch
    from torch import nn
    config = config or SeqConfig()
    feature_cols = list(feature_cols)
    _check_frame(train, feature_cols, ["t0", "t1", config.target], "training frame")
    device = resolve_device(config.device)

    hist = _history_order(train)
    target = pl.col(config.target).cast(pl.Float64)
    clean = hist.filter(target.is_not_null() & target.is_finite()).sort(list(KEYS))
    if clean.height == 0:
        raise ValueError(f"training frame has no rows with a finite {config.target!r}")
    fit, valid, n_purged, valid_start = split_purged(clean, config.valid_fraction)
    if fit.height == 0:
        raise ValueError("no training rows left after dropping null targets and purging")

    raw = _raw_features(hist, feature_cols)
    mean, std = _fit_stats(raw[fit["_row"].to_numpy()])
    pad_row = hist.height

    def _index(part: pl.DataFrame) -> np.ndarray:
        return _sequence_index(
            part["_row"].to_numpy(), part["_pos"].to_numpy(), config.seq_len, pad_row
        )

    rng = np.random.default_rng(config.seed)
    n_available = fit.height
    if config.max_train_samples is not None and fit.height > config.max_train_samples:
        keep = np.sort(rng.choice(fit.height, size=config.max_train_samples, replace=False))
        fit = fit[keep]

    with _deterministic(config, device):
        inputs = torch.from_numpy(_padded_inputs(raw, mean, std)).to(device)
        fit_index = torch.from_numpy(_index(fit)).to(device)
        y_fit_np = fit.get_column(config.target).cast(pl.Float64).to_numpy()
        y_fit = torch.from_numpy(y_fit_np.astype(np.float32)).to(device)
        has_valid = valid.height > 0
        if has_valid:
            valid_index = torch.from_numpy(_index(valid)).to(device)
            y_val_np = valid.get_column(config.target).cast(pl.Float64).to_numpy()
            y_val = torch.from_numpy(y_val_np.astype(np.float32)).to(device)

        net = _build_net(config, len(feature_cols)).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        best_loss, best_epoch, best_state, stale, epochs_run = math.inf, 0, None, 0, 0
        curves: dict[str, list[float]] = {"train_loss": [], **({"valid_loss": []} if has_valid else {})}
        for epoch in range(1, config.epochs + 1):
            net.train()
            perm = torch.from_numpy(rng.permutation(fit.height)).to(device)
            seen = torch.zeros((), device=device)  # summed on the device: one sync per epoch
            for s in range(0, fit.height, config.batch_size):
                b = perm[s : s + config.batch_size]
                loss = nn.functional.mse_loss(net(inputs[fit_index[b]]), y_fit[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
                seen += loss.detach() * b.numel()
            curves["train_loss"].append(float(seen) / max(fit.height, 1))
            epochs_run = epoch
            if not has_valid:
                best_epoch = epoch
                continue
            pred = _predict_batches(net, inputs, valid_index, _PREDICT_BATCH)
            val_loss = float(nn.functional.mse_loss(pred, y_val))
            curves["valid_loss"].append(val_loss)
            if val_loss < best_loss:
                best_loss, best_epoch, stale = val_loss, epoch, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                stale += 1
                if stale >= config.early_stopping_patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)

        state_bytes = _state_bytes(net)
        pred_fit = _predict_batches(net, inputs, fit_index, _PREDICT_BATCH).cpu().numpy()
        metrics: dict[str, Any] = {
            "train_loss": float(np.mean((pred_fit.astype(np.float64) - y_fit_np) ** 2)),
            "n_train": float(fit.height),
            "n_train_available": float(n_available),
            "n_purged": float(n_purged),
            "n_valid": float(valid.height),
            "best_epoch": float(best_epoch),
            "epochs_run": float(epochs_run),
            "device": device.type,
        }
        if has_valid:
            pred_val = _predict_batches(net, inputs, valid_index, _PREDICT_BATCH).cpu().numpy()
            pred_val = pred_val.astype(np.float64)
            metrics["valid_loss"] = float(np.mean((pred_val - y_val_np) ** 2))
            metrics["valid_ic"] = rank_correlation(pred_val, y_val_np)
            metrics["valid_ic_daily_mean"] = rank_information_coefficient(
                valid.get_column("date").to_physical().to_numpy(), pred_val, y_val_np
            ).mean

    used_dates = clean.get_column("date")
    return TrainedSeqModel(
        state_bytes=state_bytes,
        sha256=hashlib.sha256(state_bytes).hexdigest(),
        config=config,
        feature_cols=feature_cols,
        feature_mean=tuple(float(v) for v in mean),
        feature_std=tuple(float(v) for v in std),
        metrics=metrics,
        train_start=used_dates.min(),
        train_end=used_dates.max(),
        valid_start=valid_start,
        curves=curves,
    )
