"""Point-in-time features and labels (pure polars; no Dagster, no MLflow).

- `compute_features(universe, market_bars, corporate_actions, fundamentals, dates, config)`:
  one row per (day, instrument of the day's PIT universe), one Float64 column per feature.
- `compute_labels(market_bars, corporate_actions, dates, horizon)`: forward total returns
  over (t0, t1].
- `features_for_scoring(as_of, universe, market_bars, corporate_actions, fundamentals)`:
  one day's features from live inputs, equal to the stored `pit_features` partition.
- `guard.find_leaks`: recompute days from inputs cut at the cutoff (the leak check).
- `active_features()` (name -> Feature), `feature_versions()`, `features_code_version()`,
  `required_lookback_days()`.
- `Feature`: how a feature is defined, for the library and for plug-in modules
  (QUANT_FEATURE_MODULES; `use_feature_modules`, `feature_modules`, `FeatureModuleError`).
"""

from quant_assets.features.catalog import (
    FeatureModuleError,
    active_features,
    feature_modules,
    feature_versions,
    features_code_version,
    required_lookback_days,
    use_feature_modules,
)
from quant_assets.features.definition import Feature
from quant_assets.features.engine import FeatureConfig, compute_features
from quant_assets.features.labels import LABEL_COLUMNS, compute_labels, label_ready
from quant_assets.features.online import features_for_scoring
from quant_assets.features.pit import as_of, total_return_index

__all__ = [
    "LABEL_COLUMNS",
    "Feature",
    "FeatureModuleError",
    "active_features",
    "FeatureConfig",
    "as_of",
    "compute_features",
    "compute_labels",
    "feature_modules",
    "feature_versions",
    "features_code_version",
    "features_for_scoring",
    "label_ready",
    "required_lookback_days",
    "total_return_index",
    "use_feature_modules",
]
