"""The scorer's authentication, limits and metrics over real HTTP (uvicorn on 127.0.0.1 in
a thread of the test process), with real LightGBM boosters served by an in-memory version
table instead of MLflow (the MLflow path is tests/serving/test_serving_scorer_app.py).

Also the latency verdict on the app's own metrics: a deliberately slow version (a model
whose predict sleeps) crosses the p99 bound, the fast one does not."""

from __future__ import annotations

import http.client
import json
import secrets
import threading
import time
from dataclasses import replace

import lightgbm as lgb
import numpy as np
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from servers import LOCALHOST, free_port
from slow_scorer import SlowPredict

from quant_assets.cli.scorer_app import Limits, LoadedModel, ModelHolder, create_app
from quant_assets.serving import latency
from quant_assets.serving.auth import AuthConfigError, Tokens

FEATURES = ["feat_a", "feat_b", "feat_c"]
PROMOTED_AT = 1_700_000_000.0


def _token() -> str:
    return secrets.token_urlsafe(24)


def _booster(seed: int) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((400, len(FEATURES)))
    y = X[:, 0] + 0.5 * X[:, 1] + 0.1 * rng.standard_normal(400)
    params = {"objective": "regression", "num_leaves": 7, "verbose": -1, "num_threads": 1,
              "seed": seed, "deterministic": True}
    return lgb.train(params, lgb.Dataset(X, y, feature_name=FEATURES), num_boost_round=20)


class Registry:
    """Versions and an alias in memory (what ModelHolder asks MLflow for in production)."""

    def __init__(self) -> None:
        self.models = {
            1: LoadedModel(1, "a" * 64, FEATURES, _booster(1), 1, promoted_at=PROMOTED_AT),
            2: LoadedModel(2, "b" * 64, FEATURES, _booster(2), 1, promoted_at=PROMOTED_AT + 60),
        }
        self.champion = 1
        self.loads: list[int] = []

    def resolve(self) -> int:
        return self.champion

    def load(self, version: int) -> LoadedModel:
        self.loads.append(version)
        return replace(self.models[version], loaded_at=time.time())


class Served:
    def __init__(self, app, port: int) -> None:
        self.port = port
        self.server = uvicorn.Server(uvicorn.Config(app, host=LOCALHOST, port=port,
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            assert self.thread.is_alive(), "uvicorn exited"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def call(self, method: str, path: str, body: bytes | None = None, token: str | None = None,
             headers: dict | None = None) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(LOCALHOST, self.port, timeout=30)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=body, headers=hdrs)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, dict(response.getheaders()), data


def _rows(n: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return json.dumps({"rows": [dict(zip(FEATURES, r.tolist(), strict=True))
                                for r in rng.standard_normal((n, len(FEATURES)))]}).encode()


@pytest.fixture
def tokens(monkeypatch):
    t = {"score": [_token(), _token()], "admin": [_token()], "metrics": [_token()]}
    env = {"SCORER_SCORE_TOKENS": ",".join(t["score"]), "SCORER_ADMIN_TOKENS": t["admin"][0],
           "SCORER_METRICS_TOKENS": t["metrics"][0]}
    return t, Tokens(env)


@pytest.fixture
def scorer(tokens):
    t, toks = tokens
    registry = Registry()
    holder = ModelHolder(registry.resolve, registry.load)
    app = create_app(holder, toks, Limits(max_body_bytes=64 * 1024, max_rows=100), alias_ttl_s=0)
    with Served(app, free_port()) as served:
        yield served, t, registry


def _metrics(served: Served, token: str) -> dict:
    status, _, body = served.call("GET", "/metrics", token=token)
    assert status == 200, body
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def _sample(families, family: str, name: str, **labels) -> float:
    values = [s.value for s in families[family].samples
              if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(values) == 1, (family, name, labels, values)
    return values[0]


# ---------------------------------------------------------------------------------------------
# authentication


def _leaks_nothing(body: bytes) -> None:
    text = body.decode()
    for secret_detail in ("a" * 64, "b" * 64, *FEATURES, "model_version", "version 1", "sha256"):
        assert secret_detail not in text, (secret_detail, text)


def test_health_is_open_and_says_only_ok_without_a_token(scorer):
    served, t, _ = scorer
    status, _, body = served.call("GET", "/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, _, body = served.call("GET", "/health", token=t["admin"][0])
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, _, body = served.call("GET", "/health", token=t["score"][1])
    assert status == 200 and json.loads(body)["model_version"] == 1
    assert json.loads(body)["features"] == FEATURES


def test_score_needs_a_score_token(scorer):
    served, t, _ = scorer
    status, headers, body = served.call("POST", "/score", _rows(1))
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert "bearer token" in json.loads(body)["error"]
    _leaks_nothing(body)
    status, _, body = served.call("POST", "/score", _rows(1), headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert status == 401
    _leaks_nothing(body)
    for wrong in (_token(), t["admin"][0], t["metrics"][0], t["score"][0][:-1], t["score"][0] + "x"):
        status, headers, body = served.call("POST", "/score", _rows(1), token=wrong)
        assert status == 403, wrong
        assert "www-authenticate" not in headers
        _leaks_nothing(body)
    for right in t["score"]:  # either of the two score tokens (rotation)
        status, _, body = served.call("POST", "/score", _rows(2), token=right)
        assert status == 200 and json.loads(body)["model_version"] == 1
        assert len(json.loads(body)["scores"]) == 2
    # refused before the body is parsed: no JSON error for an anonymous caller
    status, _, body = served.call("POST", "/score", b"{not json")
    assert status == 401


def test_reload_needs_the_admin_token(scorer):
    served, t, registry = scorer
    registry.champion = 2
    for token, expected in ((None, 401), (t["score"][0], 403), (t["metrics"][0], 403)):
        status, _, body = served.call("POST", "/reload", token=token)
        assert status == expected
        _leaks_nothing(body)
    assert registry.loads == [1]  # the refused reloads did not touch the registry
    status, _, body = served.call("POST", "/reload", token=t["admin"][0])
    assert status == 200 and json.loads(body) == {"model_version": 2, "changed": True}
    status, _, body = served.call("POST", "/score", _rows(1), token=t["score"][0])
    assert json.loads(body)["model_version"] == 2


def test_metrics_need_the_metrics_token(scorer):
    served, t, _ = scorer
    assert served.call("GET", "/metrics")[0] == 401
    for wrong in (t["score"][0], t["admin"][0]):
        status, _, body = served.call("GET", "/metrics", token=wrong)
        assert status == 403
        _leaks_nothing(body)


def test_token_comparison_looks_at_every_token(monkeypatch):
    """No early exit: the time taken does not say which token matched."""
    from quant_assets.serving import auth

    calls = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append(b) or real(a, b))
    tokens = (_token(), _token(), _token())
    assert auth.token_matches(tokens[0], tokens)
    assert len(calls) == 3
    assert not auth.token_matches(_token(), tokens) and len(calls) == 6


def test_token_configuration_errors_name_the_variable_not_the_token():
    good = {"SCORER_SCORE_TOKENS": _token(), "SCORER_ADMIN_TOKENS": _token(),
            "SCORER_METRICS_TOKENS": _token()}
    Tokens(good)
    with pytest.raises(AuthConfigError, match="SCORER_ADMIN_TOKENS or SCORER_ADMIN_TOKENS_FILE"):
        Tokens({**good, "SCORER_ADMIN_TOKENS": ""})
    short = "tooshort"
    with pytest.raises(AuthConfigError, match="shorter than 16") as err:
        Tokens({**good, "SCORER_SCORE_TOKENS": f"{_token()}, {short}"})
    assert short not in str(err.value)
    with pytest.raises(AuthConfigError, match="shared by the score and admin roles"):
        Tokens({**good, "SCORER_ADMIN_TOKENS": good["SCORER_SCORE_TOKENS"]})


def test_token_file_is_reread_when_the_secret_rotates(tmp_path):
    path = tmp_path / "score-tokens"
    old, new = _token(), _token()
    path.write_text(f"# clients of the desk\n{old}\n")
    env = {"SCORER_SCORE_TOKENS_FILE": str(path), "SCORER_ADMIN_TOKENS": _token(),
           "SCORER_METRICS_TOKENS": _token()}
    tokens = Tokens(env)
    registry = Registry()
    app = create_app(ModelHolder(registry.resolve, registry.load), tokens, alias_ttl_s=0.1)
    with Served(app, free_port()) as served:
        assert served.call("POST", "/score", _rows(1), token=old)[0] == 200
        path.write_text(f"{new}\n")
        deadline = time.monotonic() + 20
        while served.call("POST", "/score", _rows(1), token=new)[0] != 200:
            assert time.monotonic() < deadline, "the rotated token file was not re-read"
            time.sleep(0.1)
        assert served.call("POST", "/score", _rows(1), token=old)[0] == 403
        # a rotation that would give the admin token scoring rights is refused
        path.write_text(f"{new}\n{env['SCORER_ADMIN_TOKENS']}\n")
        time.sleep(0.5)
        assert served.call("POST", "/score", _rows(1), token=env["SCORER_ADMIN_TOKENS"])[0] == 403
        assert served.call("POST", "/score", _rows(1), token=new)[0] == 200


# ---------------------------------------------------------------------------------------------
# limits


def test_body_and_row_limits(scorer):
    served, t, _ = scorer
    token = t["score"][0]
    status, _, body = served.call("POST", "/score", _rows(100), token=token)
    assert status == 200 and len(json.loads(body)["scores"]) == 100
    status, _, body = served.call("POST", "/score", _rows(101), token=token)
    assert status == 413 and "101 rows exceed the limit of 100" in json.loads(body)["error"]
    big = _rows(1000)  # ~80 kB > 64 KiB
    status, _, body = served.call("POST", "/score", big, token=token)
    assert status == 413
    assert json.loads(body)["error"].startswith("request body exceeds the limit of 65536 bytes")
    # a chunked body has no Content-Length: refused while it is read
    conn = http.client.HTTPConnection(LOCALHOST, served.port, timeout=30)
    conn.request("POST", "/score", body=iter([big[i:i + 8192] for i in range(0, len(big), 8192)]),
                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                 encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and b"exceeds the limit" in response.read()
    conn.close()
    status, _, body = served.call("POST", "/score", b"[1, 2]", token=token)
    assert status == 400
    status, _, body = served.call("POST", "/score", json.dumps({"rows": [{"feat_a": 1}]}).encode(), token=token)
    assert status == 422 and "missing feature columns" in json.loads(body)["error"]


# ---------------------------------------------------------------------------------------------
# metrics


def test_metrics_content(scorer):
    served, t, registry = scorer
    token = t["score"][0]
    for n in (1, 5, 10):
        assert served.call("POST", "/score", _rows(n), token=token)[0] == 200
    served.call("POST", "/score", _rows(1))  # 401
    served.call("POST", "/score", _rows(1), token=_token())  # 403
    served.call("POST", "/score", b"{", token=token)  # 400
    served.call("POST", "/score", _rows(101), token=token)  # 413 rows
    served.call("GET", "/nowhere")  # 404, route "other"
    m = _metrics(served, t["metrics"][0])
    hist = latency.REQUEST_SECONDS
    assert _sample(m, hist, hist + "_count", route="/score", status="200", model_version="1") == 3
    assert _sample(m, hist, hist + "_count", route="/score", status="401", model_version="1") == 1
    assert _sample(m, hist, hist + "_count", route="/score", status="413", model_version="1") == 1
    assert _sample(m, hist, hist + "_count", route="other", status="404", model_version="1") == 1
    edges = sorted(float(s.labels["le"]) for s in m[hist].samples
                   if s.name == hist + "_bucket" and s.labels["route"] == "/score"
                   and s.labels["status"] == "200")
    assert edges == [*latency.LATENCY_BUCKETS, float("inf")]
    assert _sample(m, "quant_scorer_rows_scored", "quant_scorer_rows_scored_total", model_version="1") == 16
    errors = {s.labels["kind"]: s.value for s in m["quant_scorer_errors"].samples
              if s.name == "quant_scorer_errors_total"}
    assert errors["auth_missing"] == 1 and errors["auth_invalid"] == 1
    assert errors["bad_json"] == 1 and errors["too_many_rows"] == 1
    assert errors["reload_failed"] == 0 and errors["internal"] == 0  # exported from the start
    assert _sample(m, latency.MODEL_VERSION_GAUGE, latency.MODEL_VERSION_GAUGE) == 1
    assert _sample(m, "quant_scorer_model_info", "quant_scorer_model_info",
                   model_version="1", model_sha256="a" * 64) == 1
    promoted = _sample(m, "quant_scorer_model_promoted_timestamp_seconds",
                       "quant_scorer_model_promoted_timestamp_seconds")
    assert promoted == PROMOTED_AT
    age = _sample(m, "quant_scorer_model_age_seconds", "quant_scorer_model_age_seconds")
    assert abs(age - (time.time() - PROMOTED_AT)) < 60
    assert "process_start_time_seconds" in m
    # after an alias move the served version, its info and its promotion time follow
    registry.champion = 2
    assert served.call("POST", "/reload", token=t["admin"][0])[0] == 200
    m = _metrics(served, t["metrics"][0])
    assert _sample(m, latency.MODEL_VERSION_GAUGE, latency.MODEL_VERSION_GAUGE) == 2
    infos = [s.labels["model_version"] for s in m["quant_scorer_model_info"].samples]
    assert infos == ["2"]
    assert _sample(m, "quant_scorer_model_promoted_timestamp_seconds",
                   "quant_scorer_model_promoted_timestamp_seconds") == PROMOTED_AT + 60
    # the parser the monitor uses reads the same numbers
    scrape = latency.parse_metrics(served.call("GET", "/metrics", token=t["metrics"][0])[2].decode(),
                                   "pod", time.time())
    assert scrape.served_version == 2 and scrape.score_latency[1].total == 3
    assert 2 not in scrape.score_latency


# ---------------------------------------------------------------------------------------------
# the latency verdict on a deliberately slow version


def test_a_slow_version_crosses_the_p99_bound(tokens):
    t, toks = tokens
    registry = Registry()
    registry.models[3] = replace(registry.models[2], version=3,
                                 predict=SlowPredict(registry.models[2].predict, 0.012))
    holder = ModelHolder(registry.resolve, registry.load)
    app = create_app(holder, toks, alias_ttl_s=0)
    bound_s, body = 0.01, _rows(1)
    with Served(app, free_port()) as served:

        def rounds(version: int, promoted_at: float, n_rounds: int = 3, n: int = 20) -> list:
            """Scrape, then ``n`` requests and a scrape per round, like the sensor's ticks."""
            scrapes = [latency.parse_metrics(
                served.call("GET", "/metrics", token=t["metrics"][0])[2].decode(), "pod", promoted_at)]
            for i in range(n_rounds):
                for _ in range(n):
                    status, _, out = served.call("POST", "/score", body, token=t["score"][0])
                    assert status == 200 and json.loads(out)["model_version"] == version
                scrapes.append(latency.parse_metrics(
                    served.call("GET", "/metrics", token=t["metrics"][0])[2].decode(),
                    "pod", promoted_at + 10.0 * (i + 1)))
            return scrapes

        fast = rounds(1, PROMOTED_AT)
        verdict = latency.judge_latency(fast, 1, PROMOTED_AT, PROMOTED_AT + 30, bound_s, 30,
                                        min_requests=20, min_rounds=3)
        # the fast version's requests are counted; whether a busy machine pushed its p99
        # over the bound is not asserted (no timed assertions in tests)
        assert verdict.requests == 60 and verdict.rounds == 3, verdict

        registry.champion = 3
        assert served.call("POST", "/reload", token=t["admin"][0])[0] == 200
        promoted = PROMOTED_AT + 1000
        slow = rounds(3, promoted)
        verdict = latency.judge_latency([*fast, *slow], 3, promoted, promoted + 30, bound_s, 30,
                                        min_requests=20, min_rounds=3)
        assert verdict.breach, verdict
        # only v3's requests, each of which slept 12 ms (a lower bound, whatever the load)
        assert verdict.requests == 60 and verdict.share_over == 1.0
        assert verdict.p99_s > bound_s
        assert "v3 p99" in verdict.reason and "above 10 ms for 30 s since its promotion" in verdict.reason


def test_promotion_time_comes_from_the_audit_trail(tmp_path):
    """registry.promoted_at: the last promote/rollback row that moved `champion` to the
    version (what the scorer's age metric and the latency monitor's window start from)."""
    import datetime as dt

    from quant_assets import audit
    from resources import model_registry as registry

    root = str(tmp_path / "warehouse")
    name = registry.MODEL_NAME
    t = [dt.datetime(2024, 3, 1, 12, i, tzinfo=dt.UTC) for i in range(5)]
    audit.record([
        audit.AuditEvent("promote", "model", name, model_version="3", time=t[0],
                         tags={"alias": "champion", "previous_version": ""}, actor="ci"),
        audit.AuditEvent("promote", "model", name, model_version="4", time=t[1],
                         tags={"alias": "champion", "previous_version": "3"}, actor="ci"),
        audit.AuditEvent("rollback", "model", name, model_version="3", time=t[2], reason="drift",
                         tags={"alias": "champion", "previous_version": "4"}, actor="sensor"),
        audit.AuditEvent("promote", "model", name, model_version="3", time=t[3],
                         tags={"alias": "challenger"}, actor="ci"),
        audit.AuditEvent("serve", "model", name, model_version="4", time=t[4], actor="scorer"),
        audit.AuditEvent("promote", "model", "another-model", model_version="4", time=t[4],
                         tags={"alias": "champion"}, actor="ci"),
    ], root=root)
    assert registry.promoted_at(3, root=root) == t[2]  # the rollback moved champion back
    assert registry.promoted_at(4, root=root) == t[1]
    assert registry.promoted_at(3, alias="challenger", root=root) == t[3]
    assert registry.promoted_at(5, root=root) is None
