"""The real scorer (``quant_assets.cli.scorer_app.main``) with deliberately slow versions:
a registered version tagged ``DELAY_TAG`` (seconds) predicts that much slower, as a model
that is too big or too deep for its latency budget would. Everything else is the scorer
as deployed: MLflow registry, warehouse, tokens, HTTP, metrics, alias polling.

    python tests/serving/slow_scorer.py --port 8080   # the scorer's own arguments

Also ``SlowPredict``, the slow predict itself, for in-process tests.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

DELAY_TAG = "quant.test.predict_delay_s"


class SlowPredict:
    """``predict`` plus ``delay_s`` of sleep, blocking the caller as slow CPU work would."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], delay_s: float) -> None:
        self.predict, self.delay_s = predict, delay_s

    def __call__(self, X: np.ndarray) -> np.ndarray:
        time.sleep(self.delay_s)
        return self.predict(X)


def main(argv: list[str] | None = None) -> None:
    from mlflow import MlflowClient

    from quant_assets.cli import scorer_app

    real_loaders = scorer_app.registry_loaders

    def registry_loaders(tracking_uri: str, warehouse_uri: str, alias: str, name: str):
        resolve_version, load = real_loaders(tracking_uri, warehouse_uri, alias, name)
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

        def load_maybe_slow(version: int):
            model = load(version)
            delay = client.get_model_version(name, str(version)).tags.get(DELAY_TAG)
            return replace(model, predict=SlowPredict(model.predict, float(delay))) if delay else model

        return resolve_version, load_maybe_slow

    scorer_app.registry_loaders = registry_loaders  # app_from_settings looks it up at call time
    scorer_app.main(argv)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main()
