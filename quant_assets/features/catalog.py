"""The feature catalogue: which features the platform computes, and their versions.

The catalogue is the built-in library (``library.py``) followed by the features of the
plug-in modules named in ``QUANT_FEATURE_MODULES`` (comma-separated importable modules, in
that order; ``settings.py``). A plug-in module defines its features with the same public
API as the library (``quant_assets.features.Feature``, rules in ``definition.py``) and lists
them in a module-level ``FEATURES`` sequence; a later module may depend on an earlier
module's features, and any module on the library's. Every feature of the catalogue is a
column of ``pit_features``, is covered by the blocking look-ahead check, and enters
``features_code_version()`` (the asset's code version), so a new or changed plug-in
feature marks the materialised partitions stale.

A plug-in is checked when the catalogue is built (``definition.check_feature``): a name
that clashes with the library or another module, a dependency not registered before it,
an expression that reads unknown columns, does not evaluate to a number or reads further
back than its window is rejected with a ``FeatureModuleError`` naming the module and the
feature. Every process that computes features (the code location, each run worker, the
scorer, a notebook) must name the same modules: the version hash makes a mismatch visible.

``active_features()`` builds the catalogue once per process from the code location's
settings; ``use_feature_modules`` (and the ``feature_modules`` context manager) rebuild it
from other modules, e.g. in a notebook or a test.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from quant_assets.features import pit
from quant_assets.features.definition import Feature, _short_hash, check_feature
from quant_assets.features.library import LIBRARY
from quant_assets.settings import get_settings, load_settings, parse_feature_modules

# Extra market days of history to load beyond the longest context (holidays, late bars).
LOOKBACK_MARGIN_DAYS = 5
# Most market days a context period (pit.CONTEXT_PERIOD, a year) can have before D: a
# context reaches back to the period's first day and then a full window further.
PERIOD_MARKET_DAYS = 253
BUILT_IN = "quant_assets.features.library"
# The module-level name a plug-in module lists its features under.
PLUGIN_ATTRIBUTE = "FEATURES"


class FeatureModuleError(ValueError):
    """A plug-in module that cannot join the catalogue (the message names module and feature)."""


def _import(module: str, reload: bool):
    try:
        loaded = importlib.import_module(module)
        return importlib.reload(loaded) if reload else loaded
    except Exception as exc:  # whatever the module raised while loading: name the module
        raise FeatureModuleError(
            f"feature module {module!r} (QUANT_FEATURE_MODULES) failed to import: {type(exc).__name__}: {exc}"
        ) from exc


def plugin_features(module: str, *, reload: bool = False) -> tuple[Feature, ...]:
    """The features a plug-in module lists in ``FEATURES`` (imported, or re-imported)."""
    loaded = _import(module, reload)
    listed = getattr(loaded, PLUGIN_ATTRIBUTE, None)
    if listed is None:
        raise FeatureModuleError(
            f"feature module {module!r} has no {PLUGIN_ATTRIBUTE}: list its features as "
            f"{PLUGIN_ATTRIBUTE} = [Feature(...), ...]"
        )
    if isinstance(listed, Feature) or not isinstance(listed, Sequence | set | frozenset):
        raise FeatureModuleError(
            f"feature module {module!r}: {PLUGIN_ATTRIBUTE} must be a list of Feature, got {type(listed).__name__}"
        )
    out = []
    for position, item in enumerate(listed):
        if not isinstance(item, Feature):
            raise FeatureModuleError(
                f"feature module {module!r}: {PLUGIN_ATTRIBUTE}[{position}] is {item!r}, not a "
                "quant_assets.features.Feature"
            )
        out.append(item)
    return tuple(out)


def build_catalogue(modules: Sequence[str] = (), *, reload: bool = False) -> dict[str, Feature]:
    """name -> Feature: the library, then each module's features in order, each checked
    (``definition.check_feature``) against everything registered before it."""
    return _build(modules, reload)[0]


def _build(modules: Sequence[str], reload: bool) -> tuple[dict[str, Feature], dict[str, str]]:
    out: dict[str, Feature] = {}
    origin: dict[str, str] = {}
    for module, features in [(BUILT_IN, LIBRARY), *((m, plugin_features(m, reload=reload)) for m in modules)]:
        for feature in features:
            if feature.name in origin:
                where = "the built-in library" if origin[feature.name] == BUILT_IN else f"module {origin[feature.name]!r}"
                raise FeatureModuleError(
                    f"feature module {module!r}, feature {feature.name!r}: the name is taken by {where}"
                )
            try:
                check_feature(feature, out)
            except ValueError as exc:
                raise FeatureModuleError(f"feature module {module!r}, feature {feature.name!r}: {exc}") from exc
            out[feature.name] = feature
            origin[feature.name] = module
    return out, origin


_ACTIVE: dict[str, Feature] | None = None
_MODULES: tuple[str, ...] = ()
_ORIGIN: dict[str, str] = {}


def active_features() -> dict[str, Feature]:
    """name -> Feature of every feature the platform computes, in catalogue order: the
    library and the plug-in modules of the code location's settings (QUANT_FEATURE_MODULES)."""
    if _ACTIVE is None:
        use_feature_modules(load_settings().feature_modules)
    return _ACTIVE


def use_feature_modules(modules: Sequence[str] | str | None = None, *, reload: bool = False) -> dict[str, Feature]:
    """Make the library plus `modules` this process's catalogue and return it. `modules`:
    module names or a comma-separated string; None reads QUANT_FEATURE_MODULES now.
    ``reload=True`` re-imports the modules (a plug-in edited in a running notebook).
    Assets built at import (``pit_features``'s code version) keep the catalogue they saw."""
    global _ACTIVE, _MODULES
    if modules is None:
        names = get_settings().feature_modules
    elif isinstance(modules, str):
        names = parse_feature_modules(modules)
    else:
        names = parse_feature_modules(",".join(modules))
    catalogue, origin = _build(names, reload)
    _ACTIVE, _MODULES = catalogue, names
    _ORIGIN.clear()
    _ORIGIN.update(origin)
    return catalogue


@contextmanager
def feature_modules(modules: Sequence[str] | str | None = None, *, reload: bool = False) -> Iterator[dict[str, Feature]]:
    """``use_feature_modules`` for the duration of a block; the previous catalogue after."""
    global _ACTIVE, _MODULES
    previous = (_ACTIVE, _MODULES, dict(_ORIGIN))
    try:
        yield use_feature_modules(modules, reload=reload)
    finally:
        _ACTIVE, _MODULES = previous[0], previous[1]
        _ORIGIN.clear()
        _ORIGIN.update(previous[2])


def active_modules() -> tuple[str, ...]:
    """The plug-in modules of the active catalogue, in order."""
    active_features()
    return _MODULES


def feature_module(name: str) -> str:
    """The module that defines feature `name` (``BUILT_IN`` for the library's)."""
    active_features()
    if name not in _ORIGIN:
        raise KeyError(f"no feature {name!r} in the active catalogue")
    return _ORIGIN[name]


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
