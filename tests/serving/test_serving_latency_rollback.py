"""The latency rollback end to end, with a deliberately slow model version.

Two LightGBM versions trained, logged and registered in a SQLite MLflow registry with their
``lgbm_model`` Delta rows (the benchmark's world, small); the real scorer serves
``champion`` from its command line (``slow_scorer.py``: the scorer, with a version tagged
``DELAY_TAG`` predicting 150 ms slower); client threads keep it busy; the real
``serving_alarm_sensor`` ticks about once a second, scraping the scorer's /metrics over
HTTP. A fast champion under that load stays; the slow one, once promoted, is rolled back
to ``previous_champion`` with the reason on the registry, in the audit trail and in the
alerts, and the scorer follows the alias back to the fast version.
"""

from __future__ import annotations

import datetime as dt
import http.client
import importlib.util
import json
import os
import secrets
import sys
import threading
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, SensorResult, build_sensor_context
from servers import LOCALHOST, free_port, running_server
from slow_scorer import DELAY_TAG

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serving")]

REPO = Path(__file__).resolve().parents[2]
TOKENS = {role: secrets.token_urlsafe(24) for role in ("score", "admin", "metrics")}
DELAY_S = 0.15
POLICY = {"QUANT_LATENCY_BOUND_MS": "100", "QUANT_LATENCY_WINDOW_S": "2.5",
          "QUANT_LATENCY_MIN_REQUESTS": "3", "QUANT_LATENCY_MIN_ROUNDS": "2"}
TICK_S = 1.0


def _build_world():
    spec = importlib.util.spec_from_file_location("scorer_benchmark", REPO / "benchmarks" / "scorer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_world


class Load:
    """``clients`` threads, each on its own keep-alive connection, POSTing a single row to
    /score with ``think_s`` between requests until stopped."""

    def __init__(self, port: int, body: bytes, clients: int = 4, think_s: float = 0.02) -> None:
        self.port, self.body, self.think_s = port, body, think_s
        self.stop = threading.Event()
        self.statuses: dict[int, int] = {}
        self.versions: dict[int, int] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        conn = http.client.HTTPConnection(LOCALHOST, self.port, timeout=30)
        headers = {"Authorization": f"Bearer {TOKENS['score']}", "Content-Type": "application/json"}
        while not self.stop.is_set():
            try:
                conn.request("POST", "/score", self.body, headers)
                response = conn.getresponse()
                data = response.read()
            except OSError as exc:
                with self._lock:
                    self.errors.append(repr(exc))
                conn.close()
                continue
            with self._lock:
                self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
                if response.status == 200:
                    v = json.loads(data)["model_version"]
                    self.versions[v] = self.versions.get(v, 0) + 1
            time.sleep(self.think_s)
        conn.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def _get(port: int, path: str, role: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(LOCALHOST, port, timeout=30)
    conn.request("POST" if path == "/reload" else "GET", path,
                 headers={"Authorization": f"Bearer {TOKENS[role]}"})
    response = conn.getresponse()
    out = response.status, json.loads(response.read())
    conn.close()
    return out


def test_a_slow_champion_is_rolled_back_on_its_served_latency_and_a_fast_one_is_not(
        tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from quant_assets import audit
    from quant_assets.serving import latency
    from quant_assets.settings import Settings
    from quant_assets.warehouse import Warehouse
    from resources import model_registry as registry
    from resources.io_manager import DeltaIOManager
    from resources.tracking import MlflowTracking
    from sensors.monitoring import (
        ALERTS_TABLE,
        LATENCY_SOURCE,
        latency_policy,
        serving_alarm_sensor,
    )

    home = tmp_path / "quant"
    home.mkdir()
    monkeypatch.setenv("QUANT_HOME", str(home))  # build_world sets it; restored after
    features, (slow, fast) = _build_world()(home, n_days=40, n_instruments=30)
    settings = Settings.from_env()
    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    client.set_model_version_tag(registry.MODEL_NAME, str(slow), DELAY_TAG, str(DELAY_S))
    # the slow version was champion before (build_world promoted it); the fast one now
    assert registry.promote(client, fast).previous_version == slow

    port = free_port()
    env = {**os.environ, "SCORER_ALIAS_TTL_S": "0.5", "PYTHONWARNINGS": "ignore",
           **{f"SCORER_{role.upper()}_TOKENS": token for role, token in TOKENS.items()}}
    for name, value in {"QUANT_SCORER_METRICS": f"{LOCALHOST}:{port}",
                        "SCORER_METRICS_TOKENS": TOKENS["metrics"], **POLICY}.items():
        monkeypatch.setenv(name, value)
    resources = {"tracking": MlflowTracking(tracking_uri=settings.mlflow_uri),
                 "io_manager": DeltaIOManager(root=settings.warehouse_uri)}
    body = json.dumps({"rows": [{c: 0.1 * i for i, c in enumerate(features)}]}).encode()

    with DagsterInstance.ephemeral() as instance, running_server(
        [sys.executable, str(REPO / "tests" / "serving" / "slow_scorer.py"), "--port", str(port)],
        log_path=tmp_path / "scorer.log", env=env, cwd=REPO,
        ready_url=f"http://{LOCALHOST}:{port}/health", timeout=120,
    ) as server:
        cursor: list[str | None] = [None]

        def tick() -> None:
            ctx = build_sensor_context(instance=instance, cursor=cursor[0], resources=resources)
            result = serving_alarm_sensor(ctx)
            cursor[0] = result.cursor if isinstance(result, SensorResult) else ctx.cursor

        def run_ticks(champion: int, n: int) -> int:
            """Tick every TICK_S under load until champion moves or n ticks; the ticks run."""
            tick()  # the baseline scrape of this phase
            for i in range(1, n + 1):
                time.sleep(TICK_S)
                tick()
                if registry.alias_version(client) != champion:
                    return i
            return n

        # 1. the fast champion under load: judged (enough traffic, window after its
        # promotion), not rolled back
        assert _get(port, "/health", "score")[1]["model_version"] == fast
        with Load(port, body) as fast_load:
            run_ticks(fast, 6)
        assert registry.alias_version(client) == fast, server.tail()
        promoted = registry.promoted_at(fast, root=settings.warehouse_uri).timestamp()
        scrapes = latency.loads(json.dumps(json.loads(cursor[0])[LATENCY_SOURCE]))
        policy = latency_policy()
        verdict = latency.judge_latency(scrapes, fast, promoted, scrapes[-1].at, policy.bound_s,
                                        policy.window_s, policy.quantile, policy.min_requests,
                                        policy.min_rounds)
        assert not verdict.breach and verdict.rounds >= policy.min_rounds, verdict
        assert not Warehouse(settings.warehouse_uri).exists(ALERTS_TABLE)
        assert set(fast_load.statuses) == {200} and not fast_load.errors, (fast_load.statuses,
                                                                          fast_load.errors)

        # 2. the slow version promoted under the same load: rolled back to the fast one
        promotion = registry.promote(client, slow, reason="test: a slow candidate")
        assert promotion.previous_version == fast
        assert _get(port, "/reload", "admin")[1]["model_version"] == slow
        with Load(port, body) as slow_load:
            ticks = run_ticks(slow, 10)
        assert registry.alias_version(client) == fast, f"no rollback after {ticks} ticks:\n{server.tail()}"
        assert slow_load.versions.get(slow, 0) > 0 and not slow_load.errors, slow_load.errors
        deadline = time.monotonic() + 20  # the scorer's alias poll serves the fast one again
        while _get(port, "/health", "score")[1]["model_version"] != fast:
            assert time.monotonic() < deadline, server.tail()
            time.sleep(0.2)

    reason = client.get_model_version(registry.MODEL_NAME, str(slow)).tags[registry.ROLLBACK_REASON_TAG]
    assert reason.startswith(f"scorer latency: v{slow} p99 ~"), reason
    assert "above 100 ms for 2.5 s since its promotion" in reason
    assert client.get_model_version(registry.MODEL_NAME, str(slow)).tags[registry.ROLLBACK_TO_TAG] == str(fast)
    assert registry.alias_version(client, registry.PREVIOUS_CHAMPION) is None
    rollback = audit.read(settings.warehouse_uri, action="rollback", obj=registry.MODEL_NAME)
    assert rollback.height == 1 and rollback["model_version"][0] == str(fast)
    assert rollback["reason"][0] == reason
    assert json.loads(rollback["tags"][0])["previous_version"] == str(slow)
    alerts = Warehouse(settings.warehouse_uri).read(ALERTS_TABLE).frame
    assert alerts["source"].to_list() == [LATENCY_SOURCE]
    assert alerts["action"].to_list() == [f"rolled back champion v{slow} -> v{fast}"]
    assert alerts["raised_at"][0] > dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
