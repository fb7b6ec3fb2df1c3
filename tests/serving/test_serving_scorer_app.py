"""The scorer over HTTP: a real uvicorn server on 127.0.0.1 (its own process group, killed
after), the world's registry and warehouse. Scores equal the batch scores of the same
version; bad requests get 4xx naming the row and column; the server follows the alias
(POST /reload at once, the background poll within its TTL); tokens are required (the
cases in detail: test_serving_scorer_auth.py); every load is a `serve` audit row by the
service account."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import polars as pl
import pytest
from conftest import day_rows
from servers import LOCALHOST, free_port, running_server

from quant_assets import audit
from quant_assets.models.lgbm import TrainedModel
from resources import model_registry as registry

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serving")]

REPO = Path(__file__).resolve().parents[2]
DAY = "2023-02-15"
TOKENS = {role: secrets.token_urlsafe(24) for role in ("score", "admin", "metrics")}
ACTOR = "system:serviceaccount:quant:quant-scorer"  # what the chart's downward API gives


def call(url: str, payload=None, raw: bytes | None = None, role: str | None = "score") -> tuple[int, dict]:
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
    headers = {"Content-Type": "application/json"}
    role = "admin" if url.endswith("/reload") and role == "score" else role
    if role is not None:
        headers["Authorization"] = f"Bearer {TOKENS[role]}"
    request = urllib.request.Request(url, data=data, method="POST" if data is not None or url.endswith("/reload") else "GET",
                                     headers=headers)
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
           "PYTHONWARNINGS": "ignore", "QUANT_AUDIT_ACTOR": ACTOR,
           **{f"SCORER_{role.upper()}_TOKENS": token for role, token in TOKENS.items()}}
    log = tmp_path_factory.mktemp("scorer") / "scorer.log"
    started = dt.datetime.now(dt.UTC)
    with running_server(
        [sys.executable, "-m", "quant_assets.cli.scorer_app", "--port", str(port)],
        log_path=log, env=env, cwd=REPO, ready_url=f"http://{LOCALHOST}:{port}/health", timeout=120,
    ) as server:
        yield f"http://{LOCALHOST}:{port}", server, started


def _model(world, month: str) -> TrainedModel:
    models = world.warehouse.read(["lgbm_model"]).frame
    return TrainedModel.from_record(models.filter(pl.col("registered_version") == world.versions[month]).row(0, named=True))


def test_scores_equal_the_batch_scores_of_the_version(world, scorer):
    url, *_ = scorer
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
    url, *_ = scorer
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
    url, *_ = scorer
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


def test_tokens_are_required_and_loads_are_audited(world, scorer):
    url, _, started = scorer
    cols = call(url + "/health")[1]["features"]
    assert call(url + "/health", role=None) == (200, {"status": "ok"})
    body = {"rows": [{c: 0.0 for c in cols}]}
    status, answer = call(url + "/score", body, role=None)
    assert status == 401 and set(answer) == {"error"}
    status, answer = call(url + "/score", body, role="admin")
    assert status == 403 and "model" not in json.dumps(answer)
    assert call(url + "/reload", role=None)[0] == 401
    assert call(url + "/reload", role="metrics")[0] == 403
    # every load since the start: a `serve` row by the scorer's service account
    served = audit.read(world.settings.warehouse_uri, action="serve", since=started,
                        obj=registry.MODEL_NAME)
    assert served.height >= 1
    assert set(served["actor"]) == {ACTOR}
    assert served["model_version"][0] == str(world.versions["2023-02"])
    tags = json.loads(served["tags"][0])
    assert tags["alias"] == registry.CHAMPION and len(tags["model_sha256"]) == 64
    # the served version's age counts from its promotion in the audit trail of the
    # scorer's warehouse; the test's promotions are recorded in the test process's own
    # warehouse, so here it falls back to the load time
    request = urllib.request.Request(url + "/metrics",
                                     headers={"Authorization": f"Bearer {TOKENS['metrics']}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()

    def gauge(name: str) -> float:
        return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))

    served_now = int(gauge("quant_scorer_model_version"))
    assert registry.promoted_at(served_now, root=world.settings.warehouse_uri) is None
    assert gauge("quant_scorer_model_promoted_timestamp_seconds") == gauge(
        "quant_scorer_model_loaded_timestamp_seconds")
