"""The feature catalogue: which features the platform computes, and their versions.

The built-in library (``library.py``) in catalogue order; ``feature_versions`` and
``features_code_version`` (the ``pit_features`` code version, which marks materialised
partitions stale when a definition changes) are computed from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from quant_assets.features import pit
from quant_assets.features.definition import Feature, _short_hash, build_catalog
from quant_assets.features.library import LIBRARY

# Extra market days of history to load beyond the longest context (holidays, late bars).
LOOKBACK_MARGIN_DAYS = 5
# Most market days a context period (pit.CONTEXT_PERIOD, a year) can have before D: a
# context reaches back to the period's first day and then a full window further.
PERIOD_MARKET_DAYS = 253



_ACTIVE: dict[str, Feature] | None = None


def active_features() -> dict[str, Feature]:
    """name -> Feature of every feature the platform computes, in catalogue order."""
    global _ACTIVE
    if _ACTIVE is None:
        _ACTIVE = build_catalog(LIBRARY)
    return _ACTIVE


def feature_versions() -> dict[str, str]:
    """name -> version of every registered feature, in registry order."""
    return {name: f.version for name, f in active_features().items()}


def features_code_version() -> str:
    """One hash of every feature version and of the PIT engine's code (the asset code_version)."""
    # the engine's own code counts: a change to how features are evaluated restales them
    engine = [Path(pit.__file__).read_text(), Path(__file__).with_name("engine.py").read_text()]
    return _short_hash([*(f"{n}={v}" for n, v in feature_versions().items()), *engine])


def max_window(features: Iterable[Feature] | None = None) -> int:
    return max(f.window for f in (features if features is not None else active_features().values()))


def context_before() -> int:
    """Market days before the first day of D's context period in D's context: the longest window of the
    whole registry minus D's row (the same for every subset, so a subset's values are
    bit-identical to the full run's)."""
    return max_window() - 1


def required_lookback_days() -> int:
    """Trading days of bars before the first as-of day that the features need."""
    return context_before() + PERIOD_MARKET_DAYS + LOOKBACK_MARGIN_DAYS
