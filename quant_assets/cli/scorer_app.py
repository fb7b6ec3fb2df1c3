"""The low-latency scorer: a small Starlette (ASGI) app over the registry's `champion`.

    SCORER_SCORE_TOKENS=... SCORER_ADMIN_TOKENS=... SCORER_METRICS_TOKENS=... \\
        python -m quant_assets serve --host 127.0.0.1 --port 8080

* Loads the model behind the alias once at start-up (MLflow registry -> version -> its run
  -> the ``lgbm_model`` Delta row; see ``serving.served``). No champion, no start. Every
  load is a ``serve`` row of the audit trail (actor: the pod's service account, see
  ``audit.current_actor``); a load whose audit row cannot be written does not serve.
* Authentication (``serving.auth``): three roles with their own bearer tokens (score,
  admin, metrics), from ``SCORER_<ROLE>_TOKENS`` or a mounted file ``..._TOKENS_FILE``
  (re-read when it changes). Missing token: 401; wrong token: 403; neither names a model.
* ``POST /score`` (score token): a batch of feature rows, row-wise ``{"rows": [{...}, ...]}``
  or columnar ``{"columns": {...}}``, validated by ``serving.scoring.rows_to_matrix``
  (missing/extra columns, non-numbers, +-inf: 422 naming the row and column; malformed
  JSON: 400). Limits: a body over ``SCORER_MAX_BODY_BYTES`` (default 32 MiB, refused from
  its Content-Length before it is read) or more rows than ``SCORER_MAX_ROWS`` (default
  10 000): 413 saying the limit. null and NaN mean missing (LightGBM's native handling).
  Answers ``{"model_version": v, "model_sha256": ..., "scores": [...]}``.
* Alias moves: a background task re-reads the alias every ``alias_ttl_s`` seconds
  (``SCORER_ALIAS_TTL_S``, default 5) and swaps the model when it changed;
  ``POST /reload`` (admin token) does the same at once. Neither is on the request path: a
  request never waits for MLflow, it uses whichever model was current when it started.
* ``GET /health``: open (probes): ``{"status": "ok"}``; with a score token also the served
  version, its sha256 and feature columns.
* ``GET /metrics`` (metrics token): Prometheus text. ``quant_scorer_request_duration_seconds``
  (histogram by route, status and the model version that answered; buckets
  ``serving.latency.LATENCY_BUCKETS``), ``quant_scorer_rows_scored_total``,
  ``quant_scorer_errors_total{kind}``, ``quant_scorer_model_version``,
  ``quant_scorer_model_info{model_version,model_sha256}``,
  ``quant_scorer_model_promoted_timestamp_seconds`` (from the audit trail; the load time
  when the trail has no promotion), ``quant_scorer_model_age_seconds`` (since then),
  ``quant_scorer_model_loads_total{outcome}`` and the process metrics. /metrics needs a
  token because it names the served version and the error rates, which the auth rules
  keep from anonymous callers; Prometheus sends it with ``authorization.credentials_file``.

One uvicorn worker per process, by design: the scorer is CPU-bound and single-threaded per
request (LightGBM with the model's own thread count, 1), a pod is given one core, and the
HorizontalPodAutoscaler adds pods; so the metrics live in this process and Prometheus'
multiprocess mode is not needed (start-up refuses PROMETHEUS_MULTIPROC_DIR, which would
silently split them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from quant_assets.models.lgbm import BoosterPredictor
from quant_assets.serving.auth import Tokens
from quant_assets.serving.latency import LATENCY_BUCKETS, MODEL_VERSION_GAUGE, REQUEST_SECONDS
from quant_assets.serving.scoring import MAX_ROWS, PayloadError, parse_json, rows_to_matrix

log = logging.getLogger("quant_assets.serving.scorer")
DEFAULT_ALIAS_TTL_S = 5.0
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
ROUTES = ("/score", "/reload", "/health", "/metrics")
ERROR_KINDS = ("auth_missing", "auth_invalid", "body_too_large", "bad_json", "bad_request",
               "invalid_payload", "too_many_rows", "reload_failed", "internal")


@dataclass(frozen=True)
class LoadedModel:
    version: int
    sha256: str
    feature_cols: list[str]
    booster: lgb.Booster
    num_threads: int
    # Unix time the alias moved to this version (None: unknown, the load time is used)
    promoted_at: float | None = None
    loaded_at: float = field(default_factory=time.time)
    # scores of a float64 matrix; default: the booster's own (``BoosterPredictor``)
    predict: Callable[[np.ndarray], np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.predict is None:
            object.__setattr__(self, "predict", BoosterPredictor(self.booster, self.num_threads))


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_rows: int = MAX_ROWS

    @classmethod
    def from_env(cls, env=None) -> Limits:
        env = os.environ if env is None else env
        return cls(int(env.get("SCORER_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)),
                   int(env.get("SCORER_MAX_ROWS", MAX_ROWS)))


class ModelHolder:
    """The current model, swapped atomically (one reference assignment) on reload."""

    def __init__(self, resolve_version: Callable[[], int | None],
                 load: Callable[[int], LoadedModel],
                 on_swap: Callable[[LoadedModel], None] | None = None) -> None:
        self._resolve_version = resolve_version
        self._load = load
        self._lock = threading.Lock()  # one reload at a time; requests never take it
        self.on_swap = on_swap
        version = resolve_version()
        if version is None:
            raise RuntimeError("the model alias is not set: promote a version before serving")
        self.current = load(version)
        self.checked_at = time.monotonic()

    def refresh(self) -> tuple[int, bool]:
        """Re-read the alias; load and swap when it moved. Returns (version, changed)."""
        with self._lock:
            version = self._resolve_version()
            self.checked_at = time.monotonic()
            if version is None:
                # an unset alias is an operator's mistake; keep serving what we have
                log.warning("alias unset; keeping version %s", self.current.version)
                return self.current.version, False
            if version == self.current.version:
                return version, False
            self.current = self._load(version)
            if self.on_swap is not None:
                self.on_swap(self.current)
            log.warning("scorer now serves version %s", version)
            return version, True


def registry_loaders(tracking_uri: str, warehouse_uri: str, alias: str, name: str):
    """(resolve_version, load) over the MLflow registry and the Delta warehouse; ``load``
    records a ``serve`` audit row before it returns the model."""
    from mlflow import MlflowClient

    from quant_assets import audit
    from quant_assets.serving.served import served_model, table_history
    from quant_assets.warehouse import Warehouse
    from resources import model_registry as registry

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    warehouse = Warehouse(warehouse_uri)

    def resolve_version() -> int | None:
        return registry.alias_version(client, alias, name)

    def load(version: int) -> LoadedModel:
        info = registry.version_info(client, version, name)
        served = served_model(
            info.version, info.run_id, info.model_sha256, warehouse.read(["lgbm_model"]).frame,
            history=table_history(warehouse, "lgbm_model"),
        )
        model = served.model
        promoted = registry.promoted_at(version, name, alias, root=warehouse_uri)
        audit.record(audit.AuditEvent(
            "serve", "model", name, model_version=str(int(version)),
            reason=f"scorer loaded '{alias}'",
            tags={"alias": alias, "model_sha256": model.sha256, "host": socket.gethostname(),
                  "pid": str(os.getpid())},
        ), root=warehouse_uri)
        return LoadedModel(version, model.sha256, list(model.feature_cols), model.booster(),
                           model.config.num_threads,
                           promoted.timestamp() if promoted is not None else None)

    return resolve_version, load


class ScorerMetrics:
    """The scorer's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # process_start_time_seconds: restarts, for the monitor
        self.requests = Histogram(
            REQUEST_SECONDS, "Time from the request's arrival to its last response byte handed "
            "to the server, by route, status and the model version that answered.",
            ("route", "status", "model_version"), buckets=LATENCY_BUCKETS, registry=r)
        self.rows = Counter("quant_scorer_rows_scored", "Feature rows scored.",
                            ("model_version",), registry=r)
        self.errors = Counter("quant_scorer_errors", "Refused or failed requests by kind.",
                              ("kind",), registry=r)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)  # exported at 0 from the start: rates need a baseline
        self.loads = Counter("quant_scorer_model_loads", "Model loads by outcome.",
                             ("outcome",), registry=r)
        self.version = Gauge(MODEL_VERSION_GAUGE, "The registry version served now.", registry=r)
        self.info = Gauge("quant_scorer_model_info", "1 for the model served now.",
                          ("model_version", "model_sha256"), registry=r)
        self.promoted = Gauge("quant_scorer_model_promoted_timestamp_seconds",
                              "When the alias moved to the served version (Unix time; the load "
                              "time if the audit trail has no promotion).", registry=r)
        self.loaded = Gauge("quant_scorer_model_loaded_timestamp_seconds",
                            "When this process loaded the served version (Unix time).", registry=r)
        self.age = Gauge("quant_scorer_model_age_seconds",
                         "Seconds since the served version was promoted.", registry=r)
        self._promoted_at = time.time()
        self.age.set_function(lambda: time.time() - self._promoted_at)
        self._info_labels: tuple[str, str] | None = None
        # labelled children by label values: ``labels()`` takes a lock and validates its
        # arguments on every call, a few microseconds of each request
        self._observe: dict[tuple[str, int, int], Callable[[float], None]] = {}
        self._scored: dict[int, Callable[[float], None]] = {}

    def observe_request(self, route: str, status: int, version: int, seconds: float) -> None:
        key = (route, status, version)
        observe = self._observe.get(key)
        if observe is None:
            observe = self._observe[key] = self.requests.labels(route, str(status), str(version)).observe
        observe(seconds)

    def scored(self, version: int, rows: int) -> None:
        inc = self._scored.get(version)
        if inc is None:
            inc = self._scored[version] = self.rows.labels(str(version)).inc
        inc(rows)

    def serving(self, model: LoadedModel) -> None:
        if self._info_labels is not None:
            self.info.remove(*self._info_labels)
        self._info_labels = (str(model.version), model.sha256)
        self.info.labels(*self._info_labels).set(1)
        self.version.set(model.version)
        self._promoted_at = model.promoted_at if model.promoted_at is not None else model.loaded_at
        self.promoted.set(self._promoted_at)
        self.loaded.set(model.loaded_at)
        self.loads.labels("ok").inc()


class _Timed:
    """ASGI middleware: every HTTP request into the latency histogram. The route label is
    the path for the app's routes and "other" for anything else (bounded cardinality)."""

    def __init__(self, app, metrics: ScorerMetrics, holder: ModelHolder) -> None:
        self.app, self.metrics, self.holder = app, metrics, holder

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            self.metrics.errors.labels("internal").inc()
            raise
        finally:
            path = scope["path"]
            version = scope.get("state", {}).get("model_version", self.holder.current.version)
            self.metrics.observe_request(path if path in ROUTES else "other", status, version,
                                         time.perf_counter() - start)


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused past ``limit`` bytes: from Content-Length before reading, and
    while reading (a chunked body has no length). Straight from the ASGI messages: a
    single-message body (every small request) is returned as it came, without the async
    generator of ``Request.stream``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        if not message.get("more_body", False):
            return chunk if not chunks else b"".join([*chunks, chunk])
        chunks.append(chunk)


def create_app(holder: ModelHolder, tokens: Tokens, limits: Limits | None = None,
               alias_ttl_s: float = DEFAULT_ALIAS_TTL_S,
               metrics: ScorerMetrics | None = None) -> Starlette:
    limits = limits or Limits()
    metrics = metrics or ScorerMetrics()
    metrics.serving(holder.current)
    previous_on_swap = holder.on_swap

    def on_swap(model: LoadedModel) -> None:
        if previous_on_swap is not None:
            previous_on_swap(model)
        metrics.serving(model)

    holder.on_swap = on_swap

    def error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
        metrics.errors.labels(kind).inc()
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def denied(role: str, request: Request) -> JSONResponse | None:
        refusal = tokens.check(role, request.headers.get("authorization"))
        if refusal is None:
            return None
        headers = {"WWW-Authenticate": 'Bearer realm="quant-scorer"'} if refusal.status == 401 else None
        return error(refusal.status, refusal.message, refusal.kind, headers)

    async def score(request: Request) -> Response:
        if (refusal := denied("score", request)) is not None:
            return refusal
        model = holder.current  # one model for the whole request, whatever reloads meanwhile
        request.state.model_version = model.version
        try:
            body = await _read_body(request, limits.max_body_bytes)
        except _TooLarge:
            return error(413, f"request body exceeds the limit of {limits.max_body_bytes} bytes; "
                              f"send at most {limits.max_rows} rows per request",
                         "body_too_large")
        try:
            payload = parse_json(body)
        except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            return error(400, f"body is not valid JSON: {exc}", "bad_json")
        try:
            X = rows_to_matrix(payload, model.feature_cols, max_rows=limits.max_rows)
        except PayloadError as exc:
            kind = {413: "too_many_rows", 400: "bad_request"}.get(exc.status, "invalid_payload")
            return error(exc.status, str(exc), kind)
        scores = model.predict(X)
        metrics.scored(model.version, len(scores))
        # orjson writes float64 as the shortest text that reads back to the same bits (as
        # repr does) and NaN as null (a NaN score cannot come out of finite/NaN inputs)
        return Response(orjson.dumps({"model_version": model.version,
                                      "model_sha256": model.sha256, "scores": scores},
                                     option=orjson.OPT_SERIALIZE_NUMPY),
                        media_type="application/json")

    async def reload(request: Request) -> Response:
        if (refusal := denied("admin", request)) is not None:
            return refusal
        try:
            version, changed = await asyncio.to_thread(holder.refresh)
        except Exception as exc:  # the old model keeps serving; say why the new one did not load
            metrics.loads.labels("failed").inc()
            return error(503, f"reload failed, still serving version {holder.current.version}: "
                              f"{exc}", "reload_failed")
        return JSONResponse({"model_version": version, "changed": changed})

    async def health(request: Request) -> Response:
        # open for the probes; the model's details only for a caller with a score token
        if tokens.check("score", request.headers.get("authorization")) is not None:
            return JSONResponse({"status": "ok"})
        model = holder.current
        return JSONResponse({"status": "ok", "model_version": model.version,
                             "model_sha256": model.sha256, "features": model.feature_cols})

    async def metrics_endpoint(request: Request) -> Response:
        if (refusal := denied("metrics", request)) is not None:
            return refusal
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def poll_once() -> None:
        try:
            changed = tokens.refresh()
            if changed:
                log.warning("token files re-read: %s", ", ".join(changed))
        except Exception:  # a half-written Secret: keep the tokens we have, say so
            log.exception("token refresh failed; keeping the current tokens")
        try:
            holder.refresh()
        except Exception:  # keep polling: the registry may be briefly unreachable
            metrics.loads.labels("failed").inc()
            log.exception("alias poll failed; still serving version %s", holder.current.version)

    async def poll_alias() -> None:
        while True:
            await asyncio.sleep(alias_ttl_s)
            await asyncio.to_thread(poll_once)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette):
        task = asyncio.create_task(poll_alias()) if alias_ttl_s > 0 else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    return Starlette(
        routes=[
            Route("/score", score, methods=["POST"]),
            Route("/reload", reload, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        middleware=[Middleware(_Timed, metrics=metrics, holder=holder)],
        lifespan=lifespan,
    )


def app_from_settings() -> Starlette:
    """The app for the configured MLflow registry and warehouse (QUANT_* variables),
    serving ``SCORER_ALIAS`` (default champion) of ``quant-assets-lgbm``."""
    from quant_assets.settings import get_settings
    from resources.model_registry import CHAMPION, MODEL_NAME

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        raise RuntimeError("PROMETHEUS_MULTIPROC_DIR is set, but the scorer runs one worker per "
                           "process and keeps its metrics in memory: unset it")
    tokens = Tokens()  # before any load: no tokens, no start
    settings = get_settings()
    resolve_version, load = registry_loaders(
        settings.mlflow_uri, settings.warehouse_uri,
        os.environ.get("SCORER_ALIAS", CHAMPION), MODEL_NAME,
    )
    ttl = float(os.environ.get("SCORER_ALIAS_TTL_S", DEFAULT_ALIAS_TTL_S))
    return create_app(ModelHolder(resolve_version, load), tokens, Limits.from_env(),
                      alias_ttl_s=ttl)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    app = app_from_settings()
    # start-up's objects (MLflow, polars, the model) leave the collector's generations: a
    # full collection under load then walks only what requests left, not ~1e6 objects
    gc.collect()
    gc.freeze()
    # one worker (see the module docstring); SIGTERM drains in-flight requests for up to
    # 20 s, inside the pod's terminationGracePeriodSeconds
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                access_log=False, workers=1, timeout_graceful_shutdown=20)


if __name__ == "__main__":
    main()
