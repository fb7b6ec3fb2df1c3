"""The scorer over HTTP: a real uvicorn server on 127.0.0.1 (its own process group, killed
after), the world's registry and warehouse. Scores equal the batch scores of the same
version; bad requests get 4xx naming the row and column; the server follows the alias
(POST /reload at once, the background poll within its TTL)."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import polars as pl
import pytest
from conftest import day_rows
from servers import LOCALHOST, free_port, running_server

from quant_assets.models.lgbm import TrainedModel
from resources import model_registry as registry

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serving")]

REPO = Path(__file__).resolve().parents[2]
DAY = "2023-02-15"


def call(url: str, payload=None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
    request = urllib.request.Request(url, data=data, method="POST" if data is not None or url.endswith("/reload") else "GET",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def scorer(world, tmp_path_factory):
    registry.promote(world.client, world.versions["2023-02"])
    port = free_port()
    env = {**os.environ, "QUANT_HOME": str(world.home), "SCORER_ALIAS_TTL_S": "1",
           "PYTHONWARNINGS": "ignore"}
    log = tmp_path_factory.mktemp("scorer") / "scorer.log"
    with running_server(
        [sys.executable, "-m", "quant_assets.cli.scorer_app", "--port", str(port)],
        log_path=log, env=env, cwd=REPO, ready_url=f"http://{LOCALHOST}:{port}/health", timeout=120,
    ) as server:
        yield f"http://{LOCALHOST}:{port}", server


def _model(world, month: str) -> TrainedModel:
    models = world.warehouse.read(["lgbm_model"]).frame
    return TrainedModel.from_record(models.filter(pl.col("registered_version") == world.versions[month]).row(0, named=True))


def test_scores_equal_the_batch_scores_of_the_version(world, scorer):
    url, _ = scorer
    status, health = call(url + "/health")
    assert status == 200 and health["model_version"] == world.versions["2023-02"]
    features = day_rows(world.warehouse.read(["pit_features"]).frame, DAY)
    cols = health["features"]
    expected = day_rows(world.warehouse.read(["oos_predictions"]).frame, DAY)["score"].to_list()
    rows = features.select(cols).to_dicts()  # missing values are null
    status, body = call(url + "/score", {"rows": rows})
    assert status == 200, body
    assert body["model_version"] == world.versions["2023-02"]
    assert body["scores"] == expected  # JSON floats round-trip exactly
    status, body = call(url + "/score", {"columns": features.select(cols).to_dict(as_series=False)})
    assert status == 200 and body["scores"] == expected
    status, one = call(url + "/score", {"rows": rows[:1]})
    assert one["scores"] == expected[:1]


def test_bad_requests_name_the_problem(world, scorer):
    url, _ = scorer
    cols = call(url + "/health")[1]["features"]
    good = {c: 0.0 for c in cols}
    status, body = call(url + "/score", {"rows": [good, {c: v for c, v in good.items() if c != cols[3]}]})
    assert status == 422 and f"row 1: missing feature columns ['{cols[3]}']" in body["error"]
    status, body = call(url + "/score", {"rows": [{**good, "not_a_feature": 1.0}]})
    assert status == 422 and "unknown columns ['not_a_feature']" in body["error"]
    status, body = call(url + "/score", raw=json.dumps({"rows": [{**good, cols[0]: float("inf")}]}).encode())
    assert status == 422 and f"row 0, column '{cols[0]}': infinite" in body["error"]
    status, body = call(url + "/score", {"rows": [{**good, cols[1]: "1.0"}]})
    assert status == 422 and f"column '{cols[1]}': expected a number or null, got str" in body["error"]
    status, body = call(url + "/score", raw=json.dumps({"rows": [{**good, cols[2]: float("nan")}]}).encode())
    assert status == 200 and body["scores"][0] is not None  # NaN = missing, scored
    status, body = call(url + "/score", raw=b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]


def test_follows_the_alias(world, scorer):
    url, _ = scorer
    features = day_rows(world.warehouse.read(["pit_features"]).frame, DAY)
    jan = _model(world, "2023-01")
    rows = features.select(jan.feature_cols).to_dicts()
    registry.promote(world.client, world.versions["2023-01"])
    status, body = call(url + "/reload")
    assert status == 200 and body["model_version"] == world.versions["2023-01"]
    status, body = call(url + "/score", {"rows": rows})
    assert body["model_version"] == world.versions["2023-01"]
    assert body["scores"] == jan.predict(features).tolist()
    # without /reload: the background poll (TTL 1 s) picks the move up
    registry.promote(world.client, world.versions["2023-02"])
    deadline = time.monotonic() + 20
    while call(url + "/health")[1]["model_version"] != world.versions["2023-02"]:
        assert time.monotonic() < deadline, "the scorer did not follow the alias within 20 s"
        time.sleep(0.2)
