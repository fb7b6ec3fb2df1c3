"""The low-latency scorer: a small Starlette (ASGI) app over the registry's `champion`.

    python -m quant_assets.cli.scorer_app --host 127.0.0.1 --port 8080

* Loads the model behind the alias once at start-up (MLflow registry -> version -> its run
  -> the ``lgbm_model`` Delta row; see ``serving.served``). No champion, no start.
* ``POST /score``: a batch of feature rows, row-wise ``{"rows": [{...}, ...]}`` or columnar
  ``{"columns": {...}}``, validated by ``serving.scoring.rows_to_matrix`` (missing/extra
  columns, non-numbers, +-inf: 422 naming the row and column; malformed JSON: 400; too
  many rows: 413). null and NaN mean missing (LightGBM's native handling). Answers
  ``{"model_version": v, "model_sha256": ..., "scores": [...]}``.
* Alias moves: a background task re-reads the alias every ``alias_ttl_s`` seconds
  (``SCORER_ALIAS_TTL_S``, default 5) and swaps the model when it changed;
  ``POST /reload`` does the same at once. Neither is on the request path: a request never
  waits for MLflow, it uses whichever model was current when it started.
* ``GET /health``: the served version, its sha256 and feature columns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import lightgbm as lgb
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from quant_assets.serving.scoring import PayloadError, rows_to_matrix

log = logging.getLogger("quant_assets.serving.scorer")
DEFAULT_ALIAS_TTL_S = 5.0


@dataclass(frozen=True)
class LoadedModel:
    version: int
    sha256: str
    feature_cols: list[str]
    booster: lgb.Booster
    num_threads: int


class ModelHolder:
    """The current model, swapped atomically (one reference assignment) on reload."""

    def __init__(self, resolve_version: Callable[[], int | None],
                 load: Callable[[int], LoadedModel]) -> None:
        self._resolve_version = resolve_version
        self._load = load
        self._lock = threading.Lock()  # one reload at a time; requests never take it
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
            log.warning("scorer now serves version %s", version)
            return version, True


def registry_loaders(tracking_uri: str, warehouse_uri: str, alias: str, name: str):
    """(resolve_version, load) over the MLflow registry and the Delta warehouse."""
    from mlflow import MlflowClient

    from quant_assets.serving.served import served_model
    from quant_assets.warehouse import Warehouse
    from resources import model_registry as registry

    client = MlflowClient(tracking_uri=tracking_uri)
    warehouse = Warehouse(warehouse_uri)

    def resolve_version() -> int | None:
        return registry.alias_version(client, alias, name)

    def load(version: int) -> LoadedModel:
        info = registry.version_info(client, version, name)
        served = served_model(
            info.version, info.run_id, info.model_sha256, warehouse.read(["lgbm_model"]).frame
        )
        model = served.model
        return LoadedModel(version, model.sha256, list(model.feature_cols), model.booster(),
                           model.config.num_threads)

    return resolve_version, load


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(holder: ModelHolder, alias_ttl_s: float = DEFAULT_ALIAS_TTL_S) -> Starlette:
    async def score(request: Request) -> Response:
        model = holder.current  # one model for the whole request, whatever reloads meanwhile
        body = await request.body()
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(400, f"body is not valid JSON: {exc}")
        try:
            X = rows_to_matrix(payload, model.feature_cols)
        except PayloadError as exc:
            return _error(exc.status, str(exc))
        scores = model.booster.predict(X, num_threads=model.num_threads)
        return JSONResponse(
            {"model_version": model.version, "model_sha256": model.sha256,
             # repr-exact floats; a NaN score cannot come out of finite/NaN inputs
             "scores": [None if math.isnan(s) else float(s) for s in scores.tolist()]}
        )

    async def reload(_: Request) -> Response:
        try:
            version, changed = await asyncio.to_thread(holder.refresh)
        except Exception as exc:  # the old model keeps serving; say why the new one did not load
            return _error(503, f"reload failed, still serving version {holder.current.version}: {exc}")
        return JSONResponse({"model_version": version, "changed": changed})

    async def health(_: Request) -> Response:
        model = holder.current
        return JSONResponse({"status": "ok", "model_version": model.version,
                             "model_sha256": model.sha256, "features": model.feature_cols})

    async def poll_alias() -> None:
        while True:
            await asyncio.sleep(alias_ttl_s)
            try:
                await asyncio.to_thread(holder.refresh)
            except Exception:  # keep polling: the registry may be briefly unreachable
                log.exception("alias poll failed; still serving version %s", holder.current.version)

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
        ],
        lifespan=lifespan,
    )


def app_from_settings() -> Starlette:
    """The app for the configured MLflow registry and warehouse (QUANT_* variables),
    serving ``SCORER_ALIAS`` (default champion) of ``quant-assets-lgbm``."""
    from quant_assets.settings import get_settings
    from resources.model_registry import CHAMPION, MODEL_NAME

    settings = get_settings()
    resolve_version, load = registry_loaders(
        settings.mlflow_uri, settings.warehouse_uri,
        os.environ.get("SCORER_ALIAS", CHAMPION), MODEL_NAME,
    )
    ttl = float(os.environ.get("SCORER_ALIAS_TTL_S", DEFAULT_ALIAS_TTL_S))
    return create_app(ModelHolder(resolve_version, load), alias_ttl_s=ttl)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uvicorn.run(app_from_settings(), host=args.host, port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
