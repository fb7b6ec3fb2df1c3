"""Alias moves in a real MLflow registry (temporary SQLite store): the one promote."""

import pytest
from mlflow.tracking import MlflowClient

from resources.model_registry import CHAMPION, PREVIOUS_CHAMPION, RegistryError, promote

NAME = "quant-assets-lgbm"


def test_promote_keeps_previous_champion_and_is_idempotent(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(RegistryError, match="does not exist"):
        promote(client, 1, NAME)
    client.create_registered_model(NAME)
    for _ in range(3):
        client.create_model_version(NAME, source=tmp_path.as_uri())

    def aliases():
        return {k: int(v) for k, v in client.get_registered_model(NAME).aliases.items()}

    first = promote(client, 1, NAME)
    assert (first.previous_version, first.changed) == (None, True)
    assert aliases() == {CHAMPION: 1}
    second = promote(client, 3, NAME)
    assert (second.previous_version, second.changed) == (1, True)
    assert aliases() == {CHAMPION: 3, PREVIOUS_CHAMPION: 1}
    again = promote(client, 3, NAME)  # a rerun of the same promotion changes nothing
    assert not again.changed and aliases() == {CHAMPION: 3, PREVIOUS_CHAMPION: 1}
    with pytest.raises(RegistryError, match="v9 does not exist"):
        promote(client, 9, NAME)
    assert aliases() == {CHAMPION: 3, PREVIOUS_CHAMPION: 1}
