"""Point-in-time features and labels (pure polars; no Dagster, no MLflow).

- `compute_features(universe, market_bars, corporate_actions, fundamentals, dates, config)`:
  one row per (day, instrument of the day's PIT universe), one Float64 column per feature.
- `compute_labels(market_bars, corporate_actions, dates, horizon)`: forward total returns
  over (t0, t1].
- `FEATURES` (name -> Feature), `feature_versions()`, `features_code_version()`,
  `required_lookback_days()`.
"""

from quant_assets.features.labels import LABEL_COLUMNS, compute_labels, label_ready
from quant_assets.features.pit import as_of, total_return_index
from quant_assets.features.registry import (
    Feature,
    FeatureConfig,
    compute_features,
    feature_versions,
    features_code_version,
    required_lookback_days,
)
from quant_assets.features.registry import _features as _registry

FEATURES = _registry()

__all__ = [
    "FEATURES",
    "LABEL_COLUMNS",
    "Feature",
    "FeatureConfig",
    "as_of",
    "compute_features",
    "compute_labels",
    "feature_versions",
    "features_code_version",
    "label_ready",
    "required_lookback_days",
    "total_return_index",
]
