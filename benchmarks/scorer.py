"""The scorer (``quant_assets.cli.scorer_app``) under concurrent load on 127.0.0.1.

    .venv/bin/python benchmarks/scorer.py             # 5 s per case
    .venv/bin/python benchmarks/scorer.py --quick     # 2 s per case
    .venv/bin/python benchmarks/scorer.py --quick --scorer-repo ../old-checkout  # A/B

Self-contained: in a temporary QUANT_HOME it trains two LightGBM models with the default
training configuration on synthetic rows that have the real feature columns (so the tree
count and the request width are those of production), logs and registers them through
``MlflowTracking.log_lgbm_model`` (SQLite MLflow) as versions 1 and 2, writes their
``lgbm_model`` Delta rows and promotes version 1 to ``champion``. The scorer runs from its
command line (one uvicorn worker, as in a pod; uvloop + httptools) with bearer tokens.

Load generator: a separate process (spawned) running ``--clients`` asyncio (uvloop)
keep-alive connections that write pre-encoded requests and read responses by
Content-Length, nothing else (no HTTP library: its per-request cost would be charged to
the server's core). On a machine with two or more cores the scorer is pinned to one core
and the load generator to another, so neither steals the other's CPU; the CPU each used
is printed per case. Each case runs ``--seconds`` after ``--warmup`` untimed seconds;
latency is from writing a request to its last response byte; throughput counts timed
requests only.

Cases: POST /score with 1 row and 500 rows (row-wise JSON) at 1, 8 and 32 clients, and the
baseline GET /health (open, no model: the HTTP floor of the same server) at the same
client counts; the ratio of medians says what scoring adds. "CPU ms/req" is the scorer's
own CPU time per request (from /proc), which contention from other processes does not
inflate the way it inflates wall-clock latency. Then the swap: 8 clients scoring single
rows while, a third of the way in, ``champion`` moves to version 2 (``registry.promote``)
and POST /reload (admin token) swaps the model, and the load goes on for half a case
after the reload answered; every request must succeed (exit status 1 otherwise) and both
versions must have answered. Target on 2 cores: single-row p99 <= 5 ms with 8 clients.

``--scorer-repo`` runs the scorer from another checkout (same world, same load generator):
run it alternately against the old and the new code to compare them on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import math
import multiprocessing as mp
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HOST = "127.0.0.1"
_CONTENT_LENGTH = re.compile(rb"content-length: *(\d+)", re.I)
_VERSION = re.compile(rb'"model_version":(\d+)')


# -- the world -----------------------------------------------------------------------------


def build_world(home: Path, n_days: int = 150, n_instruments: int = 100) -> tuple[list[str], list[int]]:
    """Train, log and register two models under ``home``, promote the first; returns the
    feature columns and the two registered versions."""
    os.environ["QUANT_HOME"] = str(home)
    import polars as pl
    from mlflow import MlflowClient

    from quant_assets.calendar import shift_trading_days, trading_days
    from quant_assets.features import active_features
    from quant_assets.models.lgbm import LGBMConfig, train_lgbm
    from quant_assets.settings import Settings
    from quant_assets.warehouse import Warehouse
    from resources import model_registry as registry
    from resources.tracking import MlflowTracking

    settings = Settings.from_env()
    features = sorted(active_features())
    days = trading_days(dt.date(2022, 1, 3), dt.date(2022, 12, 30))[:n_days]
    tracking = MlflowTracking(tracking_uri=settings.mlflow_uri,
                              artifact_location=settings.mlflow_artifacts)
    rows, versions = [], []
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        n = len(days) * n_instruments
        X = rng.standard_normal((n, len(features)))
        y = 0.2 * X[:, seed] + rng.standard_normal(n)
        frame = pl.DataFrame({name: X[:, j] for j, name in enumerate(features)}).with_columns(
            date=pl.Series(np.repeat(np.array(days, dtype="datetime64[D]"), n_instruments)).cast(pl.Date),
            instrument_id=pl.Series(np.tile([f"I{i:03d}" for i in range(n_instruments)], len(days))),
            fwd_return_rank=pl.Series(y).rank() / n,
        )
        t1 = {d: shift_trading_days(d, 5) for d in days}
        frame = frame.with_columns(
            t0=pl.col("date"), t1=pl.col("date").replace_strict(t1, return_dtype=pl.Date)
        )
        trained = train_lgbm(frame, features, LGBMConfig())
        with tracking.run(f"benchmark model {seed}", {"purpose": "scorer benchmark"}) as run:
            _, version = tracking.log_lgbm_model(trained, registry.MODEL_NAME)
        rows.append({"date": dt.date(2023, 1 + seed, 1), **trained.to_record(),
                     "mlflow_run_id": run.info.run_id, "model_uri": "",
                     "registered_version": version, "config_hash": ""})
        versions.append(int(version))
        print(f"model v{version}: {len(features)} features, {trained.best_iteration} trees")
    Warehouse(settings.warehouse_uri).write(["lgbm_model"], pl.DataFrame(rows))
    registry.promote(MlflowClient(tracking_uri=settings.mlflow_uri), versions[0])
    return features, versions


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def request_bytes(method: str, path: str, port: int, token: str | None, body: bytes = b"") -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "Connection: keep-alive"]
    if token:
        head.append(f"Authorization: Bearer {token}")
    if body:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# -- the load generator (a separate process) ----------------------------------------------


async def _connection(port: int, request: bytes, warm_until: float, stop_at,
                      latencies: list[float], versions: dict[int, int], errors: list[str],
                      total: list[int]) -> None:
    reader = writer = None
    while True:
        if reader is None:
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
            except OSError as exc:
                errors.append(f"connect: {exc}")
                await asyncio.sleep(0.01)
                if time.monotonic() >= stop_at.value:
                    return
                continue
        t0 = time.perf_counter()
        if time.monotonic() >= stop_at.value:
            writer.close()
            return
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(int(_CONTENT_LENGTH.search(head).group(1)))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, AttributeError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            writer.close()
            reader = writer = None
            continue
        t1 = time.perf_counter()
        total[0] += 1
        status = int(head[9:12])
        if status != 200:
            errors.append(f"status {status}: {body[:200]!r}")
        if t0 >= warm_until:
            latencies.append(t1 - t0)  # perf_counter and monotonic: the same clock here
            match = _VERSION.match(body, 1)
            if match:
                v = int(match.group(1))
                versions[v] = versions.get(v, 0) + 1


def _load(port: int, request: bytes, clients: int, warmup: float, seconds: float,
          cpu: int | None, started, stop_at, results) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    import uvloop

    async def main() -> None:
        latencies: list[float] = []
        versions: dict[int, int] = {}
        errors: list[str] = []
        total = [0]
        now = time.perf_counter()
        warm_until = now + warmup
        if stop_at.value == 0.0:  # else the parent stops the load (the swap case)
            stop_at.value = time.monotonic() + warmup + seconds
        started.set()
        cpu0 = time.process_time()
        await asyncio.gather(*(_connection(port, request, warm_until, stop_at, latencies,
                                           versions, errors, total) for _ in range(clients)))
        results.put({"latencies": latencies, "versions": versions, "errors": errors[:20],
                     "total": total[0], "timed_seconds": time.perf_counter() - warm_until,
                     "n_errors": len(errors),
                     "client_cpu": (time.process_time() - cpu0) / (warmup + seconds)})

    uvloop.run(main())


def run_case(port: int, request: bytes, clients: int, warmup: float, seconds: float,
             client_cpu: int | None, server_pid: int, during=None) -> dict:
    """Drive the scorer for ``warmup`` + ``seconds``. With ``during``: call it a third of
    the way in, and keep the load going for ``seconds`` / 2 after it returned."""
    import psutil

    ctx = mp.get_context("spawn")
    started, results = ctx.Event(), ctx.Queue()
    stop_at = ctx.Value("d", math.inf if during is not None else 0.0, lock=False)
    proc = ctx.Process(target=_load, args=(port, request, clients, warmup, seconds, client_cpu,
                                           started, stop_at, results))
    server = psutil.Process(server_pid)
    proc.start()
    started.wait(60)
    t_start = time.perf_counter()
    cpu_start = sum(server.cpu_times()[:2])
    swap = None
    if during is not None:
        time.sleep(warmup + seconds / 3)
        swap = during()
        time.sleep(seconds / 2)
        stop_at.value = time.monotonic()
    out = results.get(timeout=warmup + seconds + 300)
    cpu_used = sum(server.cpu_times()[:2]) - cpu_start
    server_cpu = cpu_used / (time.perf_counter() - t_start)
    proc.join(30)
    ms = np.asarray(out["latencies"]) * 1000.0
    return {
        "clients": clients, "n": ms.size, "rps": ms.size / out["timed_seconds"],
        "p50": float(np.percentile(ms, 50)) if ms.size else float("nan"),
        "p99": float(np.percentile(ms, 99)) if ms.size else float("nan"),
        "p999": float(np.percentile(ms, 99.9)) if ms.size else float("nan"),
        "failed": out["n_errors"], "errors": out["errors"], "versions": out["versions"],
        "server_cpu": server_cpu, "client_cpu": out["client_cpu"],
        # the scorer's CPU per request (warm-up included on both sides): what a request
        # costs whatever the machine's contention
        "cpu_ms": 1000.0 * cpu_used / max(out["total"], 1),
        "load1": os.getloadavg()[0], "swap": swap,
    }


# -- the handler's own CPU time (no HTTP) -------------------------------------------------


def handler_cpu(bodies: dict[str, bytes], n: int) -> dict[str, float]:
    """Median CPU milliseconds of decode + validate + predict + encode, in this process:
    the floor the wall-clock figures would reach on an idle core."""
    import orjson

    from quant_assets.cli.scorer_app import ModelHolder, registry_loaders
    from quant_assets.serving.scoring import parse_json, rows_to_matrix
    from quant_assets.settings import Settings
    from resources.model_registry import CHAMPION, MODEL_NAME

    settings = Settings.from_env()
    model = ModelHolder(*registry_loaders(settings.mlflow_uri, settings.warehouse_uri,
                                          CHAMPION, MODEL_NAME)).current
    out = {}
    for name, body in bodies.items():
        times = []
        for _ in range(n):
            t0 = time.process_time()
            X = rows_to_matrix(parse_json(body), model.feature_cols)
            scores = model.predict(X)
            orjson.dumps({"model_version": model.version, "scores": scores},
                         option=orjson.OPT_SERIALIZE_NUMPY)
            times.append((time.process_time() - t0) * 1000.0)
        out[name] = float(np.median(times[n // 10:]))
    return out


def _post(port: int, path: str, token: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    conn.request("POST", path, headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per case")
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed seconds per case")
    parser.add_argument("--quick", action="store_true", help="2 s per case")
    parser.add_argument("--no-pin", action="store_true", help="do not pin scorer and load generator")
    parser.add_argument("--scorer-repo", type=Path, default=REPO,
                        help="run the scorer from this checkout (an A/B against older code)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup = 2.0, 0.5
    for name, value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("PYTHONWARNINGS", "ignore")):
        os.environ.setdefault(name, value)
    cpus = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus) >= 2
    server_cpu, client_cpu = (cpus[0], cpus[1]) if pin else (None, None)
    tokens = {role: secrets.token_urlsafe(24) for role in ("score", "admin", "metrics")}
    with tempfile.TemporaryDirectory(prefix="scorer-bench-") as tmp:
        home = Path(tmp)
        features, versions = build_world(home)
        rng = np.random.default_rng(1)
        bodies = {
            rows: json.dumps({"rows": [dict(zip(features, r.tolist(), strict=True))
                                       for r in rng.standard_normal((rows, len(features)))]}).encode()
            for rows in (1, 500)
        }
        port = free_port()
        env = {**os.environ, "QUANT_HOME": str(home), "SCORER_ALIAS_TTL_S": "3600",
               "PYTHONPATH": str(args.scorer_repo),
               **{f"SCORER_{r.upper()}_TOKENS": t for r, t in tokens.items()}}
        log = open(home / "scorer.log", "wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "quant_assets.cli.scorer_app", "--port", str(port)],
            cwd=args.scorer_repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        results: dict[str, list[dict]] = {}
        try:
            if pin:
                os.sched_setaffinity(server.pid, {server_cpu})
            deadline = time.monotonic() + 180
            while True:
                if server.poll() is not None:
                    raise RuntimeError((home / "scorer.log").read_text()[-3000:])
                try:
                    conn = http.client.HTTPConnection(HOST, port, timeout=2)
                    conn.request("GET", "/health")
                    if conn.getresponse().status == 200:
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
                  f"scorer: 1 uvicorn worker{f' on CPU {server_cpu}' if pin else ''}; load "
                  f"generator: 1 process{f' on CPU {client_cpu}' if pin else ' (not pinned)'}")
            health = request_bytes("GET", "/health", port, None)
            for label, request in (("health (baseline)", health),
                                   ("score 1 row", request_bytes("POST", "/score", port, tokens["score"], bodies[1])),
                                   ("score 500 rows", request_bytes("POST", "/score", port, tokens["score"], bodies[500]))):
                results[label] = []
                for clients in (1, 8, 32):
                    r = run_case(port, request, clients, args.warmup, args.seconds, client_cpu, server.pid)
                    results[label].append(r)
                    print(f"  {label:<18} {clients:>2} clients: {r['rps']:8.0f} req/s  "
                          f"p50 {r['p50']:7.2f}  p99 {r['p99']:7.2f}  p99.9 {r['p999']:7.2f} ms  "
                          f"failed {r['failed']}  scorer CPU {r['cpu_ms']:.3f} ms/req", flush=True)

            from mlflow import MlflowClient

            from quant_assets.settings import Settings
            from resources import model_registry as registry

            client = MlflowClient(tracking_uri=Settings.from_env().mlflow_uri)

            def swap() -> dict:
                t0 = time.perf_counter()
                registry.promote(client, versions[1])
                status, body = _post(port, "/reload", tokens["admin"])
                return {"status": status, "body": body.decode(), "seconds": time.perf_counter() - t0}

            swap_seconds = max(args.seconds, 6.0)
            swapped = run_case(port, request_bytes("POST", "/score", port, tokens["score"], bodies[1]),
                               8, args.warmup, swap_seconds, client_cpu, server.pid, during=swap)
            rss = __import__("psutil").Process(server.pid).memory_info().rss
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            log.close()
        cpu = handler_cpu({"1 row": bodies[1], "500 rows": bodies[500]}, 300)

    print(f"\nscorer on {HOST} from {args.scorer_repo}: 1 uvicorn worker, {len(features)} features, keep-alive clients, "
          f"{args.seconds:g} s per case after {args.warmup:g} s warm-up")
    print(f"{'case':<19}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
          f"{'failed':>7}{'scorer CPU':>11}{'CPU ms/req':>11}{'client CPU':>11}{'load1':>7}"
          f"{'p50 / health':>14}")
    for label, rows in results.items():
        for r, base in zip(rows, results["health (baseline)"], strict=True):
            print(f"{label:<19}{r['clients']:>8}{r['rps']:>9.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}"
                  f"{r['p999']:>10.2f}{r['failed']:>7}{r['server_cpu']:>11.0%}{r['cpu_ms']:>11.3f}"
                  f"{r['client_cpu']:>11.0%}"
                  f"{r['load1']:>7.2f}{r['p50'] / base['p50']:>13.1f}x")
    print("\nhandler CPU per request, in process, no HTTP (median ms): "
          + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    print(f"scorer resident memory at the end: {rss / 2**20:.0f} MiB")

    sw = swapped
    print(f"\nalias move under load (8 clients, single row): {sw['n']} requests, "
          f"{sw['failed']} failed, answered by versions {dict(sorted(sw['versions'].items()))}; "
          f"p50 {sw['p50']:.2f} p99 {sw['p99']:.2f} p99.9 {sw['p999']:.2f} ms; "
          f"promote + /reload took {sw['swap']['seconds']:.2f} s -> {sw['swap']['status']} {sw['swap']['body']}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    target = results["score 1 row"][1]["p99"]
    print(f"single-row p99 with 8 clients {target:.2f} ms: "
          f"{'meets' if target <= 5.0 else 'MISSES'} the 5 ms target")
    ok = (sw["failed"] == 0 and sw["swap"]["status"] == 200
          and set(sw["versions"]) == set(versions))
    if not ok:
        print(f"SWAP FAILED: errors {sw['errors']}", file=sys.stderr)
        return 1
    print("swap under load: zero failed requests, both versions answered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
