"""Registry side of promotion: move the MLflow alias ``champion`` to a model version and keep
the one it replaces as ``previous_champion`` (what the serving rollback moves back to).

The alias move itself is ``serving.registry.promote`` (one implementation for promotion and
rollback to agree on); this adds what the gate's caller needs: the version must exist, and a
record of what changed. Takes an ``MlflowClient`` so it works against any tracking URI.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from quant_assets.serving import registry
from quant_assets.serving.registry import CHAMPION, PREVIOUS_CHAMPION

__all__ = ["CHAMPION", "PREVIOUS_CHAMPION", "Promotion", "promote"]


@dataclass(frozen=True)
class Promotion:
    model_name: str
    version: int
    previous_version: int | None  # the champion before this promotion (None: first one)
    changed: bool  # False when ``version`` already was the champion


def promote(client: MlflowClient, model_name: str, version: int) -> Promotion:
    """Make ``version`` the champion. The previous champion (if another version) becomes
    ``previous_champion``; promoting the current champion again changes nothing."""
    try:
        client.get_registered_model(model_name)
    except MlflowException as exc:
        raise ValueError(f"registered model {model_name!r} does not exist in the MLflow registry") from exc
    try:
        client.get_model_version(model_name, str(int(version)))
    except MlflowException as exc:
        raise ValueError(f"model version {model_name!r} v{version} does not exist in the registry") from exc
    before = registry.alias_version(client, CHAMPION, model_name)
    registry.promote(client, int(version), model_name)
    changed = before != int(version)
    previous = before if changed else registry.alias_version(client, PREVIOUS_CHAMPION, model_name)
    return Promotion(model_name, int(version), previous, changed)
