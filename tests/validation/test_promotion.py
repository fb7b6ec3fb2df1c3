"""Alias moves in a real MLflow registry (temporary SQLite store)."""

import pytest
from mlflow.tracking import MlflowClient

from quant_assets.validation.promotion import CHAMPION, PREVIOUS_CHAMPION, promote

NAME = "quant-assets-lgbm"


def test_promote_keeps_previous_champion_and_is_idempotent(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(ValueError, match="does not exist"):
        promote(client, NAME, 1)
    client.create_registered_model(NAME)
    for _ in range(3):
        client.create_model_version(NAME, source=tmp_path.as_uri())

    def aliases():
        return {k: int(v) for k, v in client.get_registered_model(NAME).aliases.items()}

    first = promote(client, NAME, 1)
    assert (first.previous_version, first.changed) == (None, True)
    assert aliases() == {CHAMPION: 1}
    second = promote(client, NAME, 3)
    assert (second.previous_version, second.changed) == (1, True)
    assert aliases() == {CHAMPION: 3, PREVIOUS_CHAMPION: 1}
    again = promote(client, NAME, 3)  # a rerun of the same promotion changes nothing
    assert not again.changed and aliases() == {CHAMPION: 3, PREVIOUS_CHAMPION: 1}
    with pytest.raises(ValueError, match="v9 does not exist"):
        promote(client, NAME, 9)
    assert aliases() == {CHAMPION: 3, PREVIOUS_CHAMPION: 1}
