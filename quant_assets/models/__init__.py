"""Walk-forward models: pure splits (walkforward), LightGBM (lgbm), the GRU (seq), one model
month end to end (monthly), sweeps (sweep: search spaces and trials; sweeps: their Dagster
partitions, MLflow runs and best-trial bundle), a simulated panel (synthetic); assets.py
wires them as lgbm_model, seq_model, oos_predictions and sweep_trials/trial_returns."""

from quant_assets.models.lgbm import LGBMConfig, TrainedModel, predictions_hash, train_lgbm
from quant_assets.models.walkforward import (
    WalkForwardConfig,
    first_trading_day,
    join_features_labels,
    month_rows,
    select_training_rows,
    training_cutoff,
)

__all__ = [
    "LGBMConfig",
    "TrainedModel",
    "WalkForwardConfig",
    "first_trading_day",
    "join_features_labels",
    "month_rows",
    "predictions_hash",
    "select_training_rows",
    "train_lgbm",
    "training_cutoff",
]
