"""Plug-in feature modules for the feature tests, activated the public way: their folder on
sys.path, QUANT_FEATURE_MODULES naming them, and the catalogue rebuilt from it
(``catalog.feature_modules``; the previous catalogue is back after the test)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest

from quant_assets.features import catalog

PLUGIN_FIXTURES = Path(__file__).parent / "plugin_fixtures"


@pytest.fixture
def plugins(monkeypatch):
    """``plugins("desk_features, leaky_snapshot")`` -> the active catalogue with them."""
    monkeypatch.syspath_prepend(str(PLUGIN_FIXTURES))
    with ExitStack() as stack:

        def activate(modules: str, *, reload: bool = False):
            monkeypatch.setenv("QUANT_FEATURE_MODULES", modules)
            return stack.enter_context(catalog.feature_modules(reload=reload))

        yield activate
