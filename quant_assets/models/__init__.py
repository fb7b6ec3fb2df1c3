"""Walk-forward model training: pure splits (walkforward) and LightGBM (lgbm)."""

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
